"""TransNeXt: Robust Foveal Visual Perception for Vision Transformers (CVPR 2024).

Paper: https://arxiv.org/abs/2311.17132 (Dai Shi). Official code (Apache-2.0):
https://github.com/DaiShiResearch/TransNeXt at commit c8a9974; this is an independent implementation of the same
architecture whose official checkpoints load through ``checkpoint_filter_fn``.

Differences from the official code: inputs of any size from 32 px, square or not (the official classification
model runs at its construction size only). The geometry of every attention layer (window key counts, pooled grid,
position-bias coordinates) follows the map size of each call, normalised by ``pretrain_size``: at the native size
the model is the official one, at another size it is the official model re-instantiated for that size with
``pretrain_size`` set (the official multi-scale recipe, which its dense code calls extrapolation of the relative
position bias). ``pos_bias="interpolation"`` is the official dense code's other mode (``is_extrapolation=False``):
the bias is computed for inputs of ``pos_bias_size`` (its ``img_size``) and resized bilinearly to each input. A
pooled grid never drops below 1 x 1 (the official code fails there). Aggregated attention runs through
``visionattn.kernels.na2d`` (no unfold, no ``torch.unique``), a working ``reset_classifier``, timm's feature /
intermediate / grad-checkpointing API.
"""

# No `from __future__ import annotations`: FX writes forward annotations into the traced code.
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, calculate_drop_path_rates, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from visionattn.layers.aggregated_attention import AggregatedAttention, CosineAttention
from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import build_model

from ._pyramid import PyramidContract
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["TransNeXt", "checkpoint_filter_fn"]

MIN_INPUT_SIZE = 32


def _tuple4(value, name: str) -> tuple:
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 4:
            raise ValueError(f"{name}={value!r} must be one value or 4 values (one per stage)")
        return tuple(value)
    return (value,) * 4


class ConvGLU(nn.Module):
    """Convolutional GLU: fc1 -> (x, gate); GELU(3x3 DW conv(x)) * gate -> fc2; (B, H, W, C) -> (B, H, W, C).

    ``hidden`` is the expanded width before the official 2/3 shrink (``int(2 * hidden / 3)`` channels per branch).
    """

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        hidden = int(2 * hidden / 3)
        self.fc1 = nn.Linear(dim, hidden * 2, **dd)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **dd)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gate = self.fc1(x).chunk(2, dim=-1)
        x = self.act(self.dwconv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)) * gate
        return self.drop(self.fc2(self.drop(x)))


class TransNeXtBlock(nn.Module):
    """LN -> aggregated (or cosine) attention -> LN -> ConvGLU, both residual; (B, H, W, C) -> same."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        sr_ratio: int,
        window_size: int,
        pretrain_size: tuple[int, int],
        fixed_pool_size: int | None = None,
        pos_bias: str = "extrapolation",
        pos_bias_size: tuple[int, int] | None = None,
        drop_path: float = 0.0,
        attn_backend: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        bias = dict(pos_bias=pos_bias, pos_bias_size=pos_bias_size)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if sr_ratio == 1:
            self.attn = CosineAttention(dim, num_heads, pretrain_size=pretrain_size, **bias, **dd)
        else:
            self.attn = AggregatedAttention(
                dim,
                num_heads,
                sr_ratio=sr_ratio,
                window_size=window_size,
                pretrain_size=pretrain_size,
                fixed_pool_size=fixed_pool_size,
                backend=attn_backend,
                **bias,
                **dd,
            )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = ConvGLU(dim, int(dim * mlp_ratio), **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class OverlapPatchEmbed(nn.Module):
    """Overlapping strided conv + LayerNorm; (B, C_in, H, W) -> (B, ceil(H/s), ceil(W/s), C), channels last
    (``channels_last=False``: (B, C, ceil(H/s), ceil(W/s)), the stem's output).

    The stem (``check_size``) checks the input against the family's size rule with a clear error.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel: int,
        stride: int,
        check_size: bool = False,
        channels_last: bool = True,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.check_size = check_size
        self.channels_last = channels_last
        self.proj = nn.Conv2d(in_chs, out_chs, kernel, stride=stride, padding=kernel // 2, **dd)
        self.norm = nn.LayerNorm(out_chs, **dd)  # torch's default eps: the official patch-embedding norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.check_size:
            x = check_input_size(x, MIN_INPUT_SIZE)
        x = self.norm(self.proj(x).permute(0, 2, 3, 1))
        return x if self.channels_last else x.permute(0, 3, 1, 2)


class TransNeXtStage(nn.Module):
    """Patch embedding (none in the first stage, after the stem), blocks, the stage's own LayerNorm;
    (B, C_in, H, W) -> (B, C, H', W')."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        first: bool,
        drop_path: Sequence[float] = (),
        device=None,
        dtype=None,
        **block_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = None if first else OverlapPatchEmbed(in_chs, out_chs, 3, 2, **dd)
        self.blocks = nn.Sequential(
            *[
                TransNeXtBlock(out_chs, drop_path=drop_path[i] if drop_path else 0.0, **dd, **block_kwargs)
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(out_chs, eps=1e-6, **dd)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1) if self.downsample is None else self.downsample(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x).permute(0, 3, 1, 2)


class TransNeXt(PyramidContract, nn.Module):
    """TransNeXt backbone and classifier; (B, in_chans, H, W) -> (B, num_classes), any H, W >= 32.

    Args:
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
        global_pool: head pooling, 'avg' or '' (no pooling, with num_classes=0).
        depths: blocks per stage.
        embed_dims: channels per stage.
        num_heads: heads per stage.
        mlp_ratios: ConvGLU expansion before its 2/3 shrink, one value or one per stage.
        sr_ratios: pooling ratio of the aggregated attention per stage; 1 = cosine attention over all tokens.
        window_size: sliding-window side of the aggregated attention (3 in every official model).
        pretrain_size: input size (int or (H, W)) of pre-training; normalises the position-bias coordinates (224
            for the ImageNet models and their 384 fine-tunes, 256 for micro_aaaa).
        fixed_pool_size: pool every aggregated attention to this grid (official linear inference mode; None:
            the map divided by sr_ratio).
        pos_bias: the official dense backbones' two modes of relative position bias: "extrapolation" (default)
            computes it at each input's size; "interpolation" computes it for an input of ``pos_bias_size`` and
            resizes it bilinearly to each input (the official ``is_extrapolation=False`` with ``img_size``).
        pos_bias_size: input size (int or (H, W), >= 32) of the interpolation mode (the official dense
            ``img_size``: 800 for COCO, 512 for ADE20K).
        attn_backend: kernel path of the aggregated attention (None: ``VISIONATTN_KERNELS`` / device).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
    """

    pyramid_final_norm = False

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: Sequence[int] = (2, 2, 15, 2),
        embed_dims: Sequence[int] = (48, 96, 192, 384),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        mlp_ratios: float | Sequence[float] = (8, 8, 4, 4),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        window_size: int = 3,
        pretrain_size: int | tuple[int, int] = 224,
        fixed_pool_size: int | None = None,
        pos_bias: str = "extrapolation",
        pos_bias_size: int | tuple[int, int] | None = None,
        attn_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        depths, embed_dims = _tuple4(depths, "depths"), _tuple4(embed_dims, "embed_dims")
        num_heads, mlp_ratios = _tuple4(num_heads, "num_heads"), _tuple4(mlp_ratios, "mlp_ratios")
        sr_ratios = _tuple4(sr_ratios, "sr_ratios")
        for dim, heads in zip(embed_dims, num_heads):
            if dim % heads:
                raise ValueError(f"num_heads={num_heads} must divide embed_dims={embed_dims} stage by stage")
        ph, pw = pretrain_size if isinstance(pretrain_size, (tuple, list)) else (pretrain_size, pretrain_size)
        if pos_bias not in ("extrapolation", "interpolation"):
            raise ValueError(f"pos_bias={pos_bias!r} must be 'extrapolation' or 'interpolation'")
        if pos_bias == "interpolation":
            if pos_bias_size is None:
                raise ValueError(
                    "pos_bias='interpolation' needs pos_bias_size, the input size the position bias is computed "
                    "for (the official dense img_size, e.g. 800 for COCO, 512 for ADE20K)"
                )
            if isinstance(pos_bias_size, (tuple, list)) and len(pos_bias_size) != 2:
                raise ValueError(f"pos_bias_size={pos_bias_size!r} must be an int or an (H, W) pair")
            bh, bw = pos_bias_size if isinstance(pos_bias_size, (tuple, list)) else (pos_bias_size, pos_bias_size)
            if not all(isinstance(v, int) for v in (bh, bw)):
                raise TypeError(f"pos_bias_size={pos_bias_size!r} must be an int or an (H, W) pair of ints")
            if min(bh, bw) < MIN_INPUT_SIZE:
                raise ValueError(f"pos_bias_size={pos_bias_size!r} is below {MIN_INPUT_SIZE} px; pass a larger size")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = embed_dims
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        dd = dict(device=device, dtype=dtype)
        self.stem = OverlapPatchEmbed(in_chans, embed_dims[0], 7, 4, check_size=True, channels_last=False, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        for i in range(4):
            stages.append(
                TransNeXtStage(
                    embed_dims[i - 1] if i else embed_dims[0],
                    embed_dims[i],
                    depths[i],
                    first=i == 0,
                    drop_path=dpr[i],
                    num_heads=num_heads[i],
                    mlp_ratio=mlp_ratios[i],
                    sr_ratio=sr_ratios[i],
                    window_size=window_size,
                    pretrain_size=(ph // 2 ** (i + 2), pw // 2 ** (i + 2)),
                    fixed_pool_size=fixed_pool_size,
                    pos_bias=pos_bias,
                    pos_bias_size=(bh // 2 ** (i + 2), bw // 2 ** (i + 2)) if pos_bias == "interpolation" else None,
                    attn_backend=attn_backend,
                    **dd,
                )
            )
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
            nn.init.normal_(m.weight, 0, (2.0 / fan_out) ** 0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay_keywords(self) -> set:
        """Parameter-name fragments the official recipes keep out of weight decay."""
        return {"query_embedding", "relative_pos_bias_local", "cpb", "temperature"}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^stages\.(\d+)\.norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C, H/32, W/32) after the last stage's LayerNorm."""
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes), or the pooled (B, C) with ``pre_logits``."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Buffers the official model registers (non-persistent, so absent from its checkpoints, but dropped if present).
_OFFICIAL_BUFFERS = re.compile(r"(relative_pos_index|relative_coords_table|seq_length_scale|padding_mask)\d*$")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official TransNeXt state_dict (bare, or wrapped in ``{'model': ...}``) -> this layout.

    ``patch_embed1`` becomes ``stem``; ``patch_embed{i}`` / ``block{i}.{j}`` / ``norm{i}`` become
    ``stages.{i-1}.downsample`` / ``.blocks.{j}`` / ``.norm``, the ConvGLU's ``dwconv.dwconv`` its ``dwconv``,
    ``head`` ``head.fc``. A state_dict already in this layout passes through unchanged.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    state_dict = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state_dict.items()}
    if any(k.startswith(("stem.", "stages.")) for k in state_dict):
        return state_dict
    out = {}
    for key, value in state_dict.items():
        if _OFFICIAL_BUFFERS.search(key):
            continue
        m = re.match(r"(patch_embed|block|norm)(\d)\.(.+)", key)
        if m:
            kind, stage, rest = m.group(1), int(m.group(2)) - 1, m.group(3)
            if kind == "patch_embed":
                key = f"stem.{rest}" if stage == 0 else f"stages.{stage}.downsample.{rest}"
            elif kind == "norm":
                key = f"stages.{stage}.norm.{rest}"
            else:
                key = f"stages.{stage}.blocks.{rest.replace('mlp.dwconv.dwconv.', 'mlp.dwconv.')}"
        elif key.startswith("head."):
            key = "head.fc." + key[len("head.") :]
        out[key] = value
    return out


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
        "first_conv": "stem.proj",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2311.17132",
        "paper_name": "TransNeXt: Robust Foveal Visual Perception for Vision Transformers",
        "origin_url": "https://github.com/DaiShiResearch/TransNeXt",
        **kwargs,
    }


# Official release: raw fp32 state_dicts on the Hugging Face hub (DaiShiResearch/<repo>/<file>).
_HF = "https://huggingface.co/DaiShiResearch/{}/resolve/main/{}.pth"
_384 = dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0)
default_cfgs = generate_default_cfgs(
    {
        "transnext_micro.in1k": _cfg(url=_HF.format("transnext-micro-224-1k", "transnext_micro_224_1k")),
        "transnext_tiny.in1k": _cfg(url=_HF.format("transnext-tiny-224-1k", "transnext_tiny_224_1k")),
        "transnext_small.in1k": _cfg(url=_HF.format("transnext-small-224-1k", "transnext_small_224_1k")),
        "transnext_small.in1k_384": _cfg(
            url=_HF.format("transnext-small-384-1k-ft-1k", "transnext_small_384_1k_ft_1k"), **_384
        ),
        "transnext_base.in1k": _cfg(url=_HF.format("transnext-base-224-1k", "transnext_base_224_1k")),
        "transnext_base.in1k_384": _cfg(
            url=_HF.format("transnext-base-384-1k-ft-1k", "transnext_base_384_1k_ft_1k"), **_384
        ),
        "transnext_micro_aaaa.in1k": _cfg(
            url=_HF.format("transnext-micro-AAAA-256-1k", "transnext_micro_AAAA_256_1k"),
            input_size=(3, 256, 256),
            pool_size=(8, 8),
        ),
    }
)


def _create_transnext(variant: str, pretrained: bool = False, **kwargs) -> TransNeXt:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        TransNeXt,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


_COMMON = dict(mlp_ratios=(8, 8, 4, 4), sr_ratios=(8, 4, 2, 1), window_size=3, pretrain_size=224)


@register_model
def transnext_micro(pretrained: bool = False, **kwargs) -> TransNeXt:
    """TransNeXt-Micro: 12.8M params, 82.5% ImageNet top-1 (official)."""
    args = dict(_COMMON, depths=(2, 2, 15, 2), embed_dims=(48, 96, 192, 384), num_heads=(2, 4, 8, 16))
    return _create_transnext("transnext_micro", pretrained, **dict(args, **kwargs))


@register_model
def transnext_tiny(pretrained: bool = False, **kwargs) -> TransNeXt:
    """TransNeXt-Tiny: 28.2M params, 84.0% ImageNet top-1 (official)."""
    args = dict(_COMMON, depths=(2, 2, 15, 2), embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24))
    return _create_transnext("transnext_tiny", pretrained, **dict(args, **kwargs))


@register_model
def transnext_small(pretrained: bool = False, **kwargs) -> TransNeXt:
    """TransNeXt-Small: 49.7M params, 84.7% ImageNet top-1 (official; 86.0% fine-tuned at 384)."""
    args = dict(_COMMON, depths=(5, 5, 22, 5), embed_dims=(72, 144, 288, 576), num_heads=(3, 6, 12, 24))
    return _create_transnext("transnext_small", pretrained, **dict(args, **kwargs))


@register_model
def transnext_base(pretrained: bool = False, **kwargs) -> TransNeXt:
    """TransNeXt-Base: 89.7M params, 84.8% ImageNet top-1 (official; 86.2% fine-tuned at 384)."""
    args = dict(_COMMON, depths=(5, 5, 23, 5), embed_dims=(96, 192, 384, 768), num_heads=(4, 8, 16, 32))
    return _create_transnext("transnext_base", pretrained, **dict(args, **kwargs))


@register_model
def transnext_micro_aaaa(pretrained: bool = False, **kwargs) -> TransNeXt:
    """TransNeXt-Micro-AAAA (aggregated attention in all four stages, 256 px): 13.1M params, 82.6% top-1."""
    args = dict(
        _COMMON,
        depths=(2, 2, 15, 2),
        embed_dims=(48, 96, 192, 384),
        num_heads=(2, 4, 8, 16),
        sr_ratios=(16, 8, 4, 2),
        pretrain_size=256,
    )
    return _create_transnext("transnext_micro_aaaa", pretrained, **dict(args, **kwargs))


register_family(
    Family(
        name="transnext",
        models=("transnext_micro", "transnext_tiny", "transnext_small", "transnext_base", "transnext_micro_aaaa"),
        converter=checkpoint_filter_fn,
        params_m={
            "transnext_micro": 12.8,
            "transnext_tiny": 28.2,
            "transnext_small": 49.7,
            "transnext_base": 89.7,
            "transnext_micro_aaaa": 13.1,
        },
        card="model_cards/transnext.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="hierarchical",
        num_stages=4,
        # one block per stage keeps every block type (aggregated attention in stages 1-3, cosine attention in 4)
        test_kwargs=dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), mlp_ratios=2),
        # official dense backbones: each stage's own norm on its output (part of the stage here), nothing added
        dense=DenseRecipe(out_norm="none"),
        scriptable=False,
        # window key counts, pooled grid and position-bias tables are computed in Python from the input size
        onnx_dynamic_size=False,
        checkpoints=tuple(
            Checkpoint(
                model,
                tag,
                format="state_dict",
                status="unknown",
                top1=top1,
                notes="raw fp32 state_dict (Hugging Face lists only OrderedDict and float-storage pickle imports)",
            )
            for model, tag, top1 in (
                ("transnext_micro", "in1k", 82.5),
                ("transnext_tiny", "in1k", 84.0),
                ("transnext_small", "in1k", 84.7),
                ("transnext_small", "in1k_384", 86.0),
                ("transnext_base", "in1k", 84.8),
                ("transnext_base", "in1k_384", 86.2),
                ("transnext_micro_aaaa", "in1k", 82.6),
            )
        ),
    )
)
