"""Agent-Swin: Swin Transformer with agent attention (Agent Attention, ECCV 2024).

Paper: https://arxiv.org/abs/2312.08874 (Dongchen Han, Tianzhu Ye, Yizeng Han, Zhuofan Xia, Siyuan Pan, Pengfei Wan,
Shiji Song, Gao Huang). Official code: https://github.com/LeapLabTHU/Agent-Attention
(``agent_transformer/models/agent_swin.py``); this is an independent implementation of the same architecture whose
official checkpoints load through :func:`checkpoint_filter_fn`.

A Swin Transformer whose blocks are of two kinds, chosen per stage by ``attn_type`` (one letter per stage, then the
digits of ``M``): ``A`` blocks hold global agent attention
(:class:`visionattn.layers.agent_attention.AgentAttention`, over the whole stage map: the official classification
window equals the stage resolution, so there is no partition, shift or mask), ``B`` blocks are timm's own
``SwinTransformerBlock`` (shifted-window attention with relative position bias; :class:`WindowBlock` only builds its
shift mask in one FX-leaf function), ``M<k>`` puts k ``A`` blocks first and ``B`` blocks after them. The patch
embedding, patch merging, blocks and head are timm's Swin pieces, under timm's key names (downsampling at the start
of a stage, ``head.fc``).

Size rule: any input from 32 px, square or not. The patch embedding zero-pads the image to a multiple of 4 and
each patch merging zero-pads an odd side (as the official dense backbone does). ``B`` blocks follow timm's Swin:
the map is zero-padded to the window multiple and the shift mask is built for the actual map on every forward;
their window and shift are fixed when the model is built (a stage whose grid at ``img_size`` is not larger than
the window has one window and no shift, the official classification rule; ``always_partition=True`` keeps the
window and the shift everywhere, the official dense rule). ``A`` blocks are global over the actual (unpadded) map;
their biases, trained at the ``img_size`` grid, are resized bilinearly to it by the official dense rule (see the
layer) and the agent count stays the trained one unless ``agent_shapes`` (the official dense agent grids) is
given. At ``img_size`` the output is the official classification model's.
"""

# No `from __future__ import annotations`: FX writes the forward annotations into the traced code, which
# TorchScript then compiles (timm scripts FX-traced models), so they must be real types, not strings.
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    Mlp,
    PatchEmbed,
    calculate_drop_path_rates,
    register_notrace_function,
    resize_rel_pos_bias_table,
    trunc_normal_,
)
from timm.models import checkpoint_seq, register_model
from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock

from visionattn.layers.agent_attention import ROW_COL_BIASES, AgentAttention, resize_row_col_bias
from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import build_model, generate_default_cfgs

from ._pyramid import PyramidContract
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = [
    "convert_dense_checkpoint",
    "AgentSwinTransformer",
    "AgentSwinBlock",
    "WindowBlock",
    "shifted_window_mask",
    "checkpoint_filter_fn",
    "parse_attn_type",
]

# Three 2x patch mergings after the 4x patch embedding: a 32 px side leaves one token in the last stage.
MIN_INPUT_SIZE = 32


def parse_attn_type(attn_type: str, depths: Sequence[int]) -> list[list[str]]:
    """The official ``attn_type`` string -> the kind ('A' or 'B') of every block, per stage.

    One letter per stage (``A``: agent attention, ``B``: shifted-window attention, ``M``: mixed), then, if any stage
    is ``M``, the number k of its leading ``A`` blocks: ``"AAMB2"`` is A, A, then 2 A and the rest B, then B.
    """
    n = len(depths)
    if not isinstance(attn_type, str) or len(attn_type) < n or any(c not in "ABM" for c in attn_type[:n]):
        raise ValueError(
            f"attn_type={attn_type!r} must give one of 'A', 'B', 'M' per stage ({n} stages), followed by the number "
            "of leading A blocks if a stage is 'M', e.g. 'AAAB' or 'AAMB2'"
        )
    rest = attn_type[n:]
    if ("M" in attn_type[:n]) != bool(rest) or (rest and not rest.isdigit()):
        raise ValueError(
            f"attn_type={attn_type!r}: digits must follow the stage letters exactly when a stage is 'M' "
            "(the number of its leading A blocks, e.g. 'AAMB2')"
        )
    kinds = []
    for letter, depth in zip(attn_type[:n], depths):
        if letter == "M":
            kinds.append(["A" if i < int(rest) else "B" for i in range(depth)])
        else:
            kinds.append([letter] * depth)
    return kinds


class AgentSwinPatchEmbed(PatchEmbed):
    """Input size check, zero padding to a multiple of the patch, patch conv, LayerNorm;
    (B, C_in, H, W) -> (B, C, ceil(H/4), ceil(W/4)) (NCHW)."""

    def __init__(self, *args, min_input_size: int = MIN_INPUT_SIZE, **kwargs):
        super().__init__(*args, strict_img_size=False, dynamic_img_pad=True, output_fmt="NHWC", **kwargs)
        self.min_input_size = min_input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input_size(x, self.min_input_size)
        ph, pw = self.patch_size
        pad_h, pad_w = (-x.shape[-2]) % ph, (-x.shape[-1]) % pw
        x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x).permute(0, 2, 3, 1)
        return self.norm(x).permute(0, 3, 1, 2)


@register_notrace_function
def shifted_window_mask(x: torch.Tensor, window_size: tuple[int, int], shift_size: tuple[int, int]) -> torch.Tensor:
    """The (num_windows, wh*ww, wh*ww) additive mask (0 / -100) of timm's shifted windows on a padded, rolled map
    x (B, Hp, Wp, C): tokens of different regions (before the last window, in it before the shift, in the shift;
    per axis) do not attend to each other. Computed from the map's shape, so that it follows any input size."""
    hp, wp = x.shape[1], x.shape[2]
    wh, ww = window_size
    sh, sw = shift_size
    rows = torch.arange(hp, device=x.device)
    cols = torch.arange(wp, device=x.device)
    row_id = (rows >= hp - wh).long() + (rows >= hp - sh).long()
    col_id = (cols >= wp - ww).long() + (cols >= wp - sw).long()
    region = row_id[:, None] * 3 + col_id[None, :]  # (Hp, Wp)
    windows = region.reshape(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    differs = windows[:, None, :] != windows[:, :, None]
    return differs.to(x.dtype) * -100.0


class WindowBlock(SwinTransformerBlock):
    """timm's ``SwinTransformerBlock`` (the official ``B`` block: shifted-window attention with relative position
    bias) whose shift mask, built for the actual map on every forward, is one traced-as-a-leaf function, so that FX
    traces the block at any size; (B, H, W, C) -> (B, H, W, C)."""

    def get_attn_mask(
        self,
        x: torch.Tensor | None = None,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor | None:
        if x is None:
            raise ValueError("WindowBlock builds its shift mask from the map: pass x (B, Hp, Wp, C)")
        if self.shift_size[0] == 0 and self.shift_size[1] == 0:
            return None
        return shifted_window_mask(x, self.window_size, self.shift_size)


class AgentSwinBlock(nn.Module):
    """x + AgentAttention(LN(x)) over the whole map, then x + MLP(LN(x)); (B, H, W, C) -> (B, H, W, C).

    Key names as timm's ``SwinTransformerBlock`` (``norm1``, ``attn``, ``norm2``, ``mlp``).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        agent_num: int,
        bias_size: tuple[int, int],
        agent_shape: tuple[int, int] | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = AgentAttention(
            dim,
            num_heads,
            agent_num=agent_num,
            bias_size=bias_size,
            qkv_bias=qkv_bias,
            agent_shape=agent_shape,
            attn_drop=attn_drop,
            proj_drop=proj_drop,
            **dd,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        x = x + self.drop_path1(self.attn(self.norm1(x), (h, w)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x.reshape(b, h, w, c)


class AgentSwinStage(nn.Module):
    """Optional patch merging, then ``A`` / ``B`` blocks; (B, C_in, H, W) -> (B, C, H', W') (NCHW outside,
    channels-last inside, as timm's Swin blocks want)."""

    def __init__(
        self,
        dim: int,
        out_dim: int,
        input_resolution: tuple[int, int],
        kinds: Sequence[str],
        downsample: bool,
        num_heads: int,
        window_size: int,
        agent_num: int,
        agent_shape: tuple[int, int] | None = None,
        always_partition: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: Sequence[float] = (),
        norm_layer: type[nn.Module] = nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.input_resolution = input_resolution
        res = tuple((r + 1) // 2 for r in input_resolution) if downsample else tuple(input_resolution)
        self.output_resolution = res
        self.downsample = PatchMerging(dim, out_dim, norm_layer=norm_layer, **dd) if downsample else nn.Identity()
        common = dict(
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            qkv_bias=qkv_bias,
            proj_drop=proj_drop,
            attn_drop=attn_drop,
            norm_layer=norm_layer,
            **dd,
        )
        blocks = []
        for i, kind in enumerate(kinds):
            dp = drop_path[i] if drop_path else 0.0
            if kind == "A":
                blocks.append(
                    AgentSwinBlock(
                        out_dim, agent_num=agent_num, bias_size=res, agent_shape=agent_shape, drop_path=dp, **common
                    )
                )
            else:
                # the official stage counts A blocks too when it alternates the shift (index within the stage)
                blocks.append(
                    WindowBlock(
                        out_dim,
                        input_resolution=res,
                        window_size=window_size,
                        shift_size=0 if i % 2 == 0 else window_size // 2,
                        always_partition=always_partition,
                        dynamic_mask=True,
                        drop_path=dp,
                        **common,
                    )
                )
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x.permute(0, 2, 3, 1))
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class AgentSwinTransformer(PyramidContract, nn.Module):
    """Agent-Swin backbone and classifier; (B, in_chans, H, W) -> (B, num_classes), any H, W >= 32.

    Args:
        img_size: the training size: the stage grids at it size the agent biases (and fix the ``B`` windows'
            clamping, as in the official model); any other size runs too.
        patch_size: patch embedding stride.
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head).
        global_pool: head pooling, 'avg' or '' (no pooling, with num_classes=0).
        embed_dim: channels of stage 1 (doubled by each patch merging).
        depths: blocks per stage.
        num_heads: attention heads per stage.
        window_size: window of the ``B`` blocks (the official ``max(7, WINDOW_SIZE // 8)``: 7, 9 at 288, 12 at 384).
        attn_type: block kinds per stage, the official string ('AAAB', 'AABB', 'AAMB2'; see :func:`parse_attn_type`).
        agent_num: agents per stage (perfect squares).
        agent_shapes: agent grid per stage for the ``A`` blocks (the official dense backbones use
            ((9, 9), (12, 12), (14, 14), (7, 7))); None: the trained sqrt(agent_num) grid.
        always_partition: ``B`` blocks keep their window and shift even where the grid at ``img_size`` is not larger
            than the window (timm's option; the official dense rule).
        mlp_ratio: MLP expansion.
        qkv_bias: bias in the q / k / v projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the attention projections and in the MLPs.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
        norm_layer: normalisation layer.
    """

    pyramid_stem = "patch_embed"
    pyramid_stages = "layers"

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 4,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        attn_type: str = "AAAB",
        agent_num: Sequence[int] = (9, 16, 49, 49),
        agent_shapes: Sequence[tuple[int, int]] | None = None,
        always_partition: bool = False,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        depths = tuple(depths)
        n = len(depths)
        kinds = parse_attn_type(attn_type, depths)
        for name, value in (("num_heads", num_heads), ("agent_num", agent_num)):
            if len(value) != n:
                raise ValueError(f"{name}={tuple(value)!r} must give one value per stage ({n} stages: depths={depths})")
        if agent_shapes is not None and len(agent_shapes) != n:
            raise ValueError(f"agent_shapes={agent_shapes!r} must give one (ph, pw) per stage ({n}) or be None")
        if not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size={window_size!r} must be a positive int (the B blocks' window)")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.global_pool = global_pool
        self.attn_type = attn_type
        dims = [int(embed_dim * 2**i) for i in range(n)]
        self.embed_dim = embed_dim
        self.num_features = self.head_hidden_size = dims[-1]
        self.grad_checkpointing = False

        self.patch_embed = AgentSwinPatchEmbed(
            img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=dims[0], norm_layer=norm_layer, **dd
        )
        grid = tuple(self.patch_embed.grid_size)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        res = grid
        for i in range(n):
            stage = AgentSwinStage(
                dims[i - 1] if i else dims[0],
                dims[i],
                res,
                kinds[i],
                downsample=i > 0,
                num_heads=num_heads[i],
                window_size=window_size,
                agent_num=int(agent_num[i]),
                agent_shape=None if agent_shapes is None else tuple(agent_shapes[i]),
                always_partition=always_partition,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                proj_drop=proj_drop_rate,
                attn_drop=attn_drop_rate,
                drop_path=dpr[i],
                norm_layer=norm_layer,
                **dd,
            )
            res = stage.output_resolution
            stages.append(stage)
            self.feature_info.append(dict(num_chs=dims[i], reduction=patch_size * 2**i, module=f"layers.{i}"))
        self.layers = nn.Sequential(*stages)
        self.norm = norm_layer(self.num_features, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The official init: trunc-normal Linear weights (std 0.02), zero biases, LayerNorm at identity."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        return {"relative_position_bias_table"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^layers\.(\d+)"
            if coarse
            else [
                (r"^layers\.(\d+)\.downsample", (0,)),
                (r"^layers\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.layers:
            stage.grad_checkpointing = enable

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier with ``num_classes`` outputs (0: none); ``global_pool`` 'avg' or '' if given."""
        super().reset_classifier(num_classes, global_pool)
        if global_pool is not None:
            self.global_pool = global_pool

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C, h, w) after the final LayerNorm."""
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.layers, x)
        else:
            x = self.layers(x)
        return self._final_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes), or the pooled (B, C) with ``pre_logits``."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------
# official checkpoints

_PREFIXES = ("module.", "backbone.")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official Agent-Swin state_dict (bare or in ``{'model': ...}`` / ``{'state_dict': ...}``) -> ours.

    ``layers.{i}.downsample`` (end of stage i) -> ``layers.{i+1}.downsample`` (start of stage i+1, timm's layout);
    ``head`` -> ``head.fc``; the buffers ``relative_position_index`` and ``attn_mask`` are dropped (rebuilt), as are
    the dense backbones' output norms ``norm{i}``. Weights trained at another size are resized to the model's:
    ``ah/aw/ha/wa_bias`` linearly over their spatial axis, ``relative_position_bias_table`` by timm's rule. A
    state_dict already in this layout passes through (resized where needed).
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    clean = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        clean[key] = value
    ours = "head.fc.weight" in clean or "layers.1.downsample.reduction.weight" in clean
    ours = ours and "layers.0.downsample.reduction.weight" not in clean
    target = model.state_dict() if model is not None else {}
    out = {}
    for key, value in clean.items():
        if key.endswith(("relative_position_index", "attn_mask")) or re.match(r"norm\d+\.", key):
            continue
        if not ours:
            m = re.match(r"layers\.(\d+)\.downsample\.(.+)", key)
            if m:
                key = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
            elif key.startswith("head."):
                key = "head.fc." + key[len("head.") :]
        if key in target and value.shape != target[key].shape:
            if key.endswith(tuple(ROW_COL_BIASES)):
                axis = ROW_COL_BIASES[key.rsplit(".", 1)[-1]]
                value = resize_row_col_bias(key, value, target[key].shape[axis]).to(value.dtype)
            elif key.endswith("relative_position_bias_table"):
                win = model.get_submodule(key[: -len(".relative_position_bias_table")]).window_size
                value = resize_rel_pos_bias_table(value, new_window_size=win, new_bias_shape=target[key].shape)
        out[key] = value
    return out


def convert_dense_checkpoint(checkpoint: dict, prefix: str = "backbone.") -> dict:
    """An official Agent-Swin detection / segmentation checkpoint -> the state_dict of our detector / segmentor.

    The official dense code (mmdet 2.25 / mmseg 0.28) saves ``{'state_dict': {...}, 'meta': ...}`` whose backbone keys
    are the classification layout (``backbone.layers.*``, downsampling at the end of a stage) plus one LayerNorm per
    output (``backbone.norm{i}``). Our models hold ``VisionAttnBackbone('agent_swin_*')``: the ``features_only`` trunk
    under ``backbone.trunk.`` (stage i as ``layers_{i}``) and the output norms under ``backbone.out_norms.{i}``. The
    backbone keys go through :func:`checkpoint_filter_fn`; every other key (FPN, RPN / RoI heads, UPerHead, FCNHead:
    names kept by mmdet 3.x / mmseg 1.x) is passed on unchanged.
    """
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise TypeError(f"checkpoint must be a state_dict or {{'state_dict': ...}}, got {type(checkpoint).__name__}")
    backbone = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not backbone:
        raise ValueError(
            f"no key of the checkpoint starts with prefix={prefix!r} (first keys: {list(state)[:3]}); pass the "
            "prefix the official model used for its backbone"
        )
    if any(k.startswith(("trunk.", "out_norms.")) for k in backbone):
        raise ValueError(f"the checkpoint's {prefix}* keys are already in visionattn's layout; load it as it is")
    out = {k: v for k, v in state.items() if not k.startswith(prefix)}
    trunk = {}
    for key, value in backbone.items():
        m = re.match(r"norm(\d+)\.(weight|bias)$", key)
        if m:
            out[f"{prefix}out_norms.{m[1]}.{m[2]}"] = value
        else:
            trunk[key] = value
    for key, value in checkpoint_filter_fn(trunk, None).items():
        out[prefix + "trunk." + re.sub(r"^layers\.(\d+)\.", r"layers_\1.", key)] = value
    return out


# ----------------------------------------------------------------------------------------------------------
# configurations

_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
# official ImageNet-1k releases (agent_transformer/README.md): Tsinghua Cloud file id, top-1
_RELEASES = {
    "agent_swin_tiny": ("a2ddc1190c224f768a41", 82.6),
    "agent_swin_small": ("f607172c9fea4d6e99bb", 83.7),
    "agent_swin_base": ("4fcd2d0114bb490483c3", 84.0),
    "agent_swin_small_288": ("09760394e93b4046a25e", 84.1),
    "agent_swin_base_384": ("bb84ee9058954706a557", 84.9),
}


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        "license": "mit",
        "paper_ids": "arXiv:2312.08874",
        "paper_name": "Agent Attention: On the Integration of Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/Agent-Attention",
        **kwargs,
    }


def _release(name: str, **kwargs) -> dict:
    return _cfg(url=_TSINGHUA.format(_RELEASES[name][0]), **kwargs)


# the official test transform of the fine-tuned 288 / 384 models resizes without a crop (TEST.CROP False)
default_cfgs = generate_default_cfgs(
    {
        "agent_swin_tiny.in1k": _release("agent_swin_tiny"),
        "agent_swin_small.in1k": _release("agent_swin_small"),
        "agent_swin_base.in1k": _release("agent_swin_base"),
        "agent_swin_small_288.in1k": _release(
            "agent_swin_small_288", input_size=(3, 288, 288), pool_size=(9, 9), crop_pct=1.0
        ),
        "agent_swin_base_384.in1k": _release(
            "agent_swin_base_384", input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0
        ),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        AgentSwinTransformer,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


# the official cfgs/agent_swin_*.yaml; window_size is the B blocks' max(7, WINDOW_SIZE // 8)
_T = dict(
    embed_dim=96,
    depths=(2, 2, 6, 2),
    num_heads=(3, 6, 12, 24),
    attn_type="AAAB",
    agent_num=(9, 16, 49, 49),
    window_size=7,
    drop_path_rate=0.2,
)
_S = dict(_T, depths=(2, 2, 18, 2), attn_type="AABB", drop_path_rate=0.3)
_B = dict(_S, embed_dim=128, num_heads=(4, 8, 16, 32), attn_type="AAMB2", drop_path_rate=0.5)
_S288 = dict(_S, img_size=288, window_size=9)  # WINDOW_SIZE 72
_B384 = dict(_B, img_size=384, window_size=12)  # WINDOW_SIZE 96


@register_model
def agent_swin_tiny(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-T (AAAB): 28.9M params, 82.6% ImageNet top-1 (official)."""
    return _create("agent_swin_tiny", pretrained, **{**_T, **kwargs})


@register_model
def agent_swin_small(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S (AABB): 49.7M params, 83.7% ImageNet top-1 (official)."""
    return _create("agent_swin_small", pretrained, **{**_S, **kwargs})


@register_model
def agent_swin_base(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B (AAMB2): 88.1M params, 84.0% ImageNet top-1 (official)."""
    return _create("agent_swin_base", pretrained, **{**_B, **kwargs})


@register_model
def agent_swin_small_288(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-S at 288 (B windows 9): 49.7M params, 84.1% ImageNet top-1 (official)."""
    return _create("agent_swin_small_288", pretrained, **{**_S288, **kwargs})


@register_model
def agent_swin_base_384(pretrained: bool = False, **kwargs) -> AgentSwinTransformer:
    """Agent-Swin-B at 384 (B windows 12): 88.3M params, 84.9% ImageNet top-1 (official)."""
    return _create("agent_swin_base_384", pretrained, **{**_B384, **kwargs})


_DENSE_NOTES = "full mmdet 2.x / mmseg 0.x model: backbone.* in the official layout plus norm0..3 (LN per output)"
# the official downstream READMEs (detection/README.md, segmentation/README.md): (model, tag): (task, result, id)
_DENSE = {
    ("agent_swin_tiny", "coco_maskrcnn_1x"): ("det", "box AP 44.6 / mask AP 40.7", "258e208469084e6abf26"),
    ("agent_swin_tiny", "coco_maskrcnn_3x"): ("det", "box AP 47.3 / mask AP 42.7", "e0ab821875704960a505"),
    ("agent_swin_small", "coco_maskrcnn_1x"): ("det", "box AP 47.2 / mask AP 42.7", "52714305c21a4104bbc5"),
    ("agent_swin_small", "coco_maskrcnn_3x"): ("det", "box AP 48.9 / mask AP 43.8", "b78f6ff837b84b61b122"),
    ("agent_swin_tiny", "coco_cascade_maskrcnn_1x"): ("det", "box AP 49.2 / mask AP 42.7", "39d78fddf90241e58db0"),
    ("agent_swin_tiny", "coco_cascade_maskrcnn_3x"): ("det", "box AP 51.4 / mask AP 44.5", "ed2af911d0e64d359aa3"),
    ("agent_swin_small", "coco_cascade_maskrcnn_3x"): ("det", "box AP 52.6 / mask AP 45.5", "3d092a23b935458b98ed"),
    ("agent_swin_base", "coco_cascade_maskrcnn_3x"): ("det", "box AP 52.6 / mask AP 45.3", "b3a628e668eb460ca532"),
    ("agent_swin_tiny", "ade20k_upernet_160k"): ("seg", "mIoU 46.68 (mAcc 58.53)", "280481ee38024bce8364"),
    ("agent_swin_small", "ade20k_upernet_160k"): ("seg", "mIoU 48.08 (mAcc 59.78)", ""),
    ("agent_swin_base", "ade20k_upernet_160k"): ("seg", "mIoU 48.73 (mAcc 60.01)", ""),
}
_CHECKPOINTS = (
    *(
        Checkpoint(
            model,
            "in1k",
            format="model",
            top1=top1,
            notes="official training save {'model', 'optimizer', ..., 'config'}; only the tensors are read",
        )
        for model, (_, top1) in _RELEASES.items()
    ),
    *(
        Checkpoint(
            model,
            tag,
            task=task,
            urls=(_TSINGHUA.format(file_id),) if file_id else (),
            status="unknown" if file_id else "none",
            checked="" if file_id else "2026-11",
            evidence=""
            if file_id
            else "the official segmentation README gives the result with an empty link ([TsinghuaCloud]() at 207ce3e)",
            format="mmcv",
            result=result,
            notes=_DENSE_NOTES
            + (
                "; the README's config link for this row names a file the repository lacks"
                if model == "agent_swin_base" and task == "det"
                else ""
            ),
            converter=f"{__name__}.convert_dense_checkpoint",
        )
        for (model, tag), (task, result, file_id) in _DENSE.items()
    ),
)

register_family(
    Family(
        name="agent_swin",
        models=tuple(_RELEASES),
        aliases={
            "agent_swin_t": "agent_swin_tiny",
            "agent_swin_s": "agent_swin_small",
            "agent_swin_b": "agent_swin_base",
        },
        converter=checkpoint_filter_fn,
        params_m={
            "agent_swin_tiny": 28.9,
            "agent_swin_small": 49.7,
            "agent_swin_base": 88.1,
            "agent_swin_small_288": 49.7,
            "agent_swin_base_384": 88.3,
        },
        card="model_cards/agent_attention.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="hierarchical",
        num_stages=4,
        # every block kind: A in stages 1-2 and first in stage 3, a shifted B (masked windows) second in stage 3,
        # an unshifted single-window B in stage 4
        test_kwargs=dict(embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), attn_type="AAMB1"),
        # the official dense backbones: nn.LayerNorm (eps 1e-5) per output, agent grids 9-12-14-7, B windows kept
        # (no clamping to a small map, shift on every odd block)
        dense=DenseRecipe(
            out_norm="ln2d",
            out_norm_eps=1e-5,
            model_kwargs=dict(agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7)), always_partition=True),
        ),
        # one graph holds at other sizes (tested): pooling matrices, bias resizes, window padding and shift masks are
        # traced from the map's shape. Exported at the training size itself, the bias resize is skipped (identity)
        # and the graph then holds at that size only; the export's check at a second size reports it.
        onnx_dynamic_size=True,
        checkpoints=_CHECKPOINTS,
    )
)
