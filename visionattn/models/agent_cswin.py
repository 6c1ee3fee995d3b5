"""Agent-CSwin: the CSWin Transformer with agent attention in its first stages (Agent Attention, ECCV 2024).

Paper: https://arxiv.org/abs/2312.08874 (Dongchen Han, Tianzhu Ye, Yizeng Han, Zhuofan Xia, Siyuan Pan, Pengfei Wan,
Shiji Song, Gao Huang); CSWin: https://arxiv.org/abs/2107.00652 (Xiaoyi Dong et al.). Official code:
https://github.com/LeapLabTHU/Agent-Attention (``agent_transformer/models/agent_cswin.py``, commit 207ce3e). timm has
no CSWin; this is an independent implementation whose official checkpoints load through ``checkpoint_filter_fn``.

Layout: a 7x7 stride-4 conv stem (padding 2) + LayerNorm, four stages joined by a 3x3 stride-2 conv + LayerNorm,
a final LayerNorm, average pooling and a linear head. ``attn_type`` picks each stage's blocks (official strings):
``A`` agent attention, ``B`` CSWin's cross-shaped stripe attention, ``M`` the first ``int(attn_type[4:])`` blocks
A and the rest B. All official models are ``AABB``.

* A blocks: the official configs set the agent split (``CSWIN_LA_SPLIT_SIZE``) to the stage resolution, which makes
  the official block one global branch; here it is the shared :class:`~visionattn.layers.agent_attention.
  AgentAttention` over the whole (unpadded) token grid, its biases trained at the native grid and resized to the
  actual one by the official dense rule (bilinear; see the layer).
* B blocks: half of the heads attend within vertical stripes (full height, ``split_size`` wide), the other half
  within horizontal stripes, each branch adding LePE (a depth-wise 3x3 conv of V inside the stripe); in the last
  stage (and wherever the native grid equals the stripe width) one branch attends over the whole map.

Any input size from 32 px, square or not: the map is zero-padded on the right / bottom to a multiple of the stripe
width ``split_size``; padded tokens are masked out of the attention keys and cut from the output, so the result is
that of stripes of ``split_size`` with a narrower last stripe (one stripe of the whole side when the side is
shorter; LePE sees zeros past the real tokens, as at any stripe border). At the native size no padding occurs and
the output is the official classification model's.

Differences from the official code: any input size (above), timm's feature / intermediate / grad-checkpointing /
classifier API, a ``reset_classifier`` that works on any device, ``agent_shapes`` (per-stage agent grids, as the
official Agent-Swin / PVT dense backbones use) as a model argument.
"""

# No `from __future__ import annotations`: FX writes forward annotations into traced code that TorchScript compiles.
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    LayerNorm2d,
    Mlp,
    register_notrace_module,
    trunc_normal_,
)
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from visionattn.layers.agent_attention import AgentAttention
from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import build_model

from ._pyramid import PyramidContract
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["AgentCSWin", "CrossStripeAttention", "checkpoint_filter_fn", "block_types"]

MIN_INPUT_SIZE = 32


def _per_stage(value, name: str) -> tuple:
    """One value for all four stages, or a sequence of four."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 4:
            raise ValueError(f"{name}={value!r} must be one value or 4 values (one per stage)")
        return tuple(value)
    return (value,) * 4


def block_types(attn_type: str, depths: Sequence[int]) -> list[list[str]]:
    """The official ``attn_type`` string ('AABB', 'AAMB2', ...) -> 'A' / 'B' per block of each stage.

    ``M`` at stage i makes the first ``int(attn_type[4:])`` blocks of that stage A and the rest B (the official rule,
    which reads the count after the four stage letters).
    """
    if not isinstance(attn_type, str) or len(attn_type) < 4 or any(t not in "ABM" for t in attn_type[:4]):
        raise ValueError(f"attn_type={attn_type!r} must be 4 letters of A / B / M (e.g. 'AABB', 'AAMB2')")
    if "M" in attn_type[:4] and not attn_type[4:].isdigit():
        raise ValueError(f"attn_type={attn_type!r}: an 'M' stage needs the count of its A blocks after the 4 letters")
    out = []
    for i, depth in enumerate(depths):
        kind = attn_type[i]
        out.append(["A" if kind == "A" or (kind == "M" and j < int(attn_type[4:])) else "B" for j in range(depth)])
    return out


@register_notrace_module
class CrossStripeAttention(nn.Module):
    """CSWin's cross-shaped window attention with LePE; (B, H, W, C) -> (B, H, W, C).

    ``branches=2``: channels / heads split in halves; the first half attends within vertical stripes (all rows,
    ``split_size`` columns), the second within horizontal stripes (``split_size`` rows, all columns).
    ``branches=1``: one window over the whole map. Each branch adds LePE, a depth-wise 3x3 conv of V within the
    window. A side that is not a multiple of the stripe width is padded and the padding masked (module docstring).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: int = 7,
        branches: int = 2,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if branches not in (1, 2):
            raise ValueError(f"branches={branches} must be 1 (one global window) or 2 (vertical + horizontal stripes)")
        if num_heads % branches or dim % num_heads:
            raise ValueError(f"dim={dim} and num_heads={num_heads} must split evenly over {branches} branches")
        if split_size < 1:
            raise ValueError(f"split_size={split_size} must be a positive stripe width")
        self.dim = dim
        self.num_heads = num_heads
        self.split_size = split_size
        self.branches = branches
        self.attn_drop = attn_drop
        width = dim // branches
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.lepe = nn.ModuleList([nn.Conv2d(width, width, 3, padding=1, groups=width, **dd) for _ in range(branches)])
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def _partition(
        self, qkv: torch.Tensor, wh: int, ww: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """qkv (B, H, W, 3, C') -> q, k, v (B', N, C') of the (wh, ww) windows of the padded map, and the additive
        key mask (B', 1, 1, N) of the padding (None without padding)."""
        b, h, w, _, c = qkv.shape
        pad_h = (wh - h % wh) % wh
        pad_w = (ww - w % ww) % ww
        # unconditional pad and, when exporting, an unconditional mask: the traced graph then holds at every size
        qkv = F.pad(qkv, (0, 0, 0, 0, 0, pad_w, 0, pad_h))
        hp, wp = h + pad_h, w + pad_w
        nh, nw, n = hp // wh, wp // ww, wh * ww
        t = qkv.reshape(b, nh, wh, nw, ww, 3, c).permute(5, 0, 1, 3, 2, 4, 6).reshape(3, b * nh * nw, n, c)
        mask: torch.Tensor | None = None
        if pad_h > 0 or pad_w > 0 or torch.jit.is_tracing():
            rows = torch.arange(hp, device=qkv.device) < h
            cols = torch.arange(wp, device=qkv.device) < w
            real = (rows[:, None] & cols[None, :]).reshape(nh, wh, nw, ww).permute(0, 2, 1, 3).reshape(nh * nw, n)
            bias = torch.zeros(real.shape, dtype=qkv.dtype, device=qkv.device).masked_fill(~real, float("-inf"))
            mask = bias[None, :, None, None, :].expand(b, -1, -1, -1, -1).reshape(b * nh * nw, 1, 1, n)
        return t[0], t[1], t[2], mask

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention within each window: (B', N, C') -> (B', N, C')."""
        bn, n, c = q.shape
        heads = self.num_heads // self.branches
        q = q.reshape(bn, n, heads, c // heads).transpose(1, 2)
        k = k.reshape(bn, n, heads, c // heads).transpose(1, 2)
        v = v.reshape(bn, n, heads, c // heads).transpose(1, 2)
        drop = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        return out.transpose(1, 2).reshape(bn, n, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        qkv = self.qkv(x).reshape(b, h, w, 3, c)
        width = c // self.branches
        outs: list[torch.Tensor] = []
        for i, conv in enumerate(self.lepe):
            # a side shorter than the stripe width is padded to it and masked: one stripe of the whole side
            if self.branches == 1:
                wh, ww = h, w
            elif i == 0:
                wh, ww = h, self.split_size
            else:
                wh, ww = self.split_size, w
            q, k, v, mask = self._partition(qkv[..., i * width : (i + 1) * width], wh, ww)
            lepe = conv(v.transpose(1, 2).reshape(-1, width, wh, ww)).flatten(2).transpose(1, 2)  # (B', N, C')
            out = self._attend(q, k, v, mask) + lepe
            hp, wp = (h + wh - 1) // wh * wh, (w + ww - 1) // ww * ww
            out = out.reshape(b, hp // wh, wp // ww, wh, ww, width).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, width)
            outs.append(out[:, :h, :w])
        out = outs[0] if self.branches == 1 else torch.cat(outs, dim=-1)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, split_size={self.split_size}, branches={self.branches}"


class AgentBlock(nn.Module):
    """LN -> global agent attention -> LN -> MLP, both residual; (B, H, W, C) -> (B, H, W, C)."""

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
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
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
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        y = self.attn(self.norm1(x).reshape(b, h * w, c), (h, w)).reshape(b, h, w, c)
        x = x + self.drop_path1(y)
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class StripeBlock(nn.Module):
    """LN -> cross-shaped stripe attention -> LN -> MLP, both residual; (B, H, W, C) -> (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        split_size: int,
        branches: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = CrossStripeAttention(
            dim, num_heads, split_size, branches, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class Stem(nn.Module):
    """7x7 stride-4 conv (padding 2) + LayerNorm; (B, 3, H, W) -> (B, C, floor((H - 3) / 4) + 1, ...)."""

    def __init__(self, in_chans: int, dim: int, min_input_size: int = MIN_INPUT_SIZE, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.min_input_size = min_input_size
        self.conv = nn.Conv2d(in_chans, dim, 7, stride=4, padding=2, **dd)
        self.norm = LayerNorm2d(dim, eps=1e-5, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input_size(x, self.min_input_size)
        return self.norm(self.conv(x))


class MergeBlock(nn.Module):
    """3x3 stride-2 conv (padding 1) + LayerNorm; (B, C, H, W) -> (B, C', ceil(H / 2), ceil(W / 2))."""

    def __init__(self, dim: int, dim_out: int, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.conv = nn.Conv2d(dim, dim_out, 3, stride=2, padding=1, **dd)
        self.norm = LayerNorm2d(dim_out, eps=1e-5, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class AgentCSWinStage(nn.Module):
    """Optional merge block, then blocks (channels-last inside); (B, C_in, H, W) -> (B, C, H', W')."""

    def __init__(self, in_dim: int, dim: int, downsample: bool, blocks: list[nn.Module], device=None, dtype=None):
        super().__init__()
        self.grad_checkpointing = False
        self.downsample = MergeBlock(in_dim, dim, device=device, dtype=dtype) if downsample else nn.Identity()
        self.blocks = nn.Sequential(*blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


def _stage_grids(img_size: tuple[int, int]) -> list[tuple[int, int]]:
    """Token grid of each stage for an input of ``img_size`` (stem: 7x7/4 padding 2, merges: 3x3/2 padding 1)."""
    h, w = (img_size[0] + 4 - 7) // 4 + 1, (img_size[1] + 4 - 7) // 4 + 1
    grids = [(h, w)]
    for _ in range(3):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        grids.append((h, w))
    return grids


class AgentCSWin(PyramidContract, nn.Module):
    """Agent-CSwin backbone and classifier; (B, in_chans, H, W) -> (B, num_classes), any H, W >= 32.

    Args:
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
        global_pool: head pooling, 'avg' or '' (no pooling, with num_classes=0).
        img_size: the training input size; sets the grid of the agent biases and, as in the official code, makes a
            B block one global branch where its stage grid equals the stripe width (any input is accepted).
        embed_dim: channels of stage 1 (doubled at each stage).
        depths: blocks per stage.
        num_heads: heads per stage.
        split_size: stripe width of the B blocks per stage (1, 2, 7, 7 at 224; 1, 2, 12, 12 at 384).
        attn_type: official block-kind string ('AABB': A in stages 1-2, B in 3-4; see ``block_types``).
        agent_num: agents per stage (perfect squares; official 9, 16, 49, 49).
        agent_shapes: agent grid (ph, pw) per stage to use instead of the trained sqrt(n) x sqrt(n) (biases resized
            over the agent axes, the official dense rule); None: the trained grids.
        mlp_ratio: MLP expansion.
        qkv_bias: bias in the q / k / v projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the attention and MLP projections.
        attn_drop_rate: dropout on attention maps.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        img_size: int | Sequence[int] = 224,
        embed_dim: int = 64,
        depths: Sequence[int] = (2, 4, 18, 1),
        num_heads: Sequence[int] = (2, 4, 8, 16),
        split_size: int | Sequence[int] = (1, 2, 7, 7),
        attn_type: str = "AABB",
        agent_num: int | Sequence[int] = (9, 16, 49, 49),
        agent_shapes: Sequence[Sequence[int] | None] | None = None,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        depths, num_heads = _per_stage(depths, "depths"), _per_stage(num_heads, "num_heads")
        split_size, agent_num = _per_stage(split_size, "split_size"), _per_stage(agent_num, "agent_num")
        shapes = _per_stage(agent_shapes, "agent_shapes") if agent_shapes is not None else (None,) * 4
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        if len(img_size) != 2 or min(img_size) < MIN_INPUT_SIZE:
            raise ValueError(f"img_size={img_size!r} must be one side or (height, width), each >= {MIN_INPUT_SIZE}")
        kinds = block_types(attn_type, depths)
        dims = [embed_dim * 2**i for i in range(4)]
        grids = _stage_grids(tuple(img_size))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = tuple(dims)
        self.attn_type = attn_type
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, dims[0], **dd)
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        stages, self.feature_info, first = [], [], 0
        for i in range(4):
            gh, gw = grids[i]
            blocks: list[nn.Module] = []
            for j, kind in enumerate(kinds[i]):
                common = dict(
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    proj_drop=proj_drop_rate,
                    attn_drop=attn_drop_rate,
                    drop_path=rates[first + j],
                    **dd,
                )
                if kind == "A":
                    shape = tuple(shapes[i]) if shapes[i] is not None else None
                    blocks.append(AgentBlock(dims[i], num_heads[i], agent_num[i], (gh, gw), shape, **common))
                else:
                    # the official block is one global branch in the last stage and where its grid is the stripe
                    one = i == 3 or (gh == split_size[i] and gw == split_size[i])
                    blocks.append(StripeBlock(dims[i], num_heads[i], split_size[i], 1 if one else 2, **common))
            first += depths[i]
            stages.append(AgentCSWinStage(dims[i - 1] if i else dims[0], dims[i], i > 0, blocks, **dd))
            self.feature_info.append(dict(num_chs=dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = LayerNorm2d(self.num_features, eps=1e-5, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^stem",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.downsample", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
                (r"^norm", (99999,)),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C, H/32, W/32) after the final LayerNorm."""
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes), or the pooled (B, C) with ``pre_logits``."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official Agent-CSwin state_dict (bare, or in ``{'model': ...}`` / ``{'state_dict': ...}``) -> this layout.

    ``stage1_conv_embed.{0,2}`` -> ``stem.{conv,norm}``; ``merge{i}`` -> ``stages.{i}.downsample``;
    ``stage{s}.{j}`` -> ``stages.{s-1}.blocks.{j}`` with the block's ``qkv`` / ``proj`` -> ``attn.qkv`` /
    ``attn.proj``; an A block's ``attns.0.get_v`` -> ``attn.dwc`` and ``attns.0.*_bias`` -> ``attn.*_bias``; a B
    block's ``attns.{k}.get_v`` -> ``attn.lepe.{k}``; ``head`` -> ``head.fc``. A state_dict already in this layout
    passes through unchanged.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("stem.") for k in state_dict):
        return state_dict
    agent_blocks = {m.group(1) for k in state_dict if (m := re.match(r"(stage\d\.\d+)\.attns\.0\.an_bias$", k))}
    out = {}
    for key, value in state_dict.items():
        if key.startswith("stage1_conv_embed."):
            slot, rest = key.split(".", 2)[1:]
            key = f"stem.{ {'0': 'conv', '2': 'norm'}[slot] }.{rest}"
        elif m := re.match(r"merge(\d)\.(.+)", key):
            key = f"stages.{m.group(1)}.downsample.{m.group(2)}"
        elif m := re.match(r"(stage(\d)\.(\d+))\.(.+)", key):
            block, rest = f"stages.{int(m.group(2)) - 1}.blocks.{m.group(3)}", m.group(4)
            if rest.startswith(("qkv.", "proj.")):
                rest = "attn." + rest
            elif mm := re.match(r"attns\.(\d+)\.(.+)", rest):
                branch, name = mm.group(1), mm.group(2)
                if m.group(1) in agent_blocks:
                    rest = "attn.dwc." + name[len("get_v.") :] if name.startswith("get_v.") else "attn." + name
                else:
                    rest = f"attn.lepe.{branch}.{name.removeprefix('get_v.')}"
            key = f"{block}.{rest}"
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
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.conv",
        "classifier": "head.fc",
        "license": "mit",
        "paper_ids": "arXiv:2312.08874",
        "paper_name": "Agent Attention: On the Integration of Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/Agent-Attention",
        **kwargs,
    }


_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
# (model, Tsinghua Cloud id, ImageNet-1k top-1 of the official README)
_RELEASES = (
    ("agent_cswin_tiny", "8c562a74441e46d5902b", 83.1),
    ("agent_cswin_small", "30eb8af675bc4b7a8747", 83.9),
    ("agent_cswin_base", "c8035b0839b2410c8c9f", 84.7),
    ("agent_cswin_base_384", "1239be0df44b47719432", 85.8),
)

default_cfgs = generate_default_cfgs(
    {
        f"{model}.in1k": _cfg(
            url=_TSINGHUA.format(cid),
            **(dict(input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0) if model.endswith("384") else {}),
        )
        for model, cid, _ in _RELEASES
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> AgentCSWin:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        AgentCSWin, variant, pretrained, feature_cfg=dict(flatten_sequential=True, out_indices=out_indices), **kwargs
    )


_AGENTS = dict(attn_type="AABB", agent_num=(9, 16, 49, 49), mlp_ratio=4.0, qkv_bias=True)


@register_model
def agent_cswin_tiny(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-T: 64 wide, depths 2-4-18-1, AABB (official drop path 0.2)."""
    args = dict(_AGENTS, embed_dim=64, depths=(2, 4, 18, 1), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7))
    return _create("agent_cswin_tiny", pretrained, **dict(args, **kwargs))


@register_model
def agent_cswin_small(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-S: 64 wide, depths 3-6-29-2, AABB (official drop path 0.4)."""
    args = dict(_AGENTS, embed_dim=64, depths=(3, 6, 29, 2), num_heads=(2, 4, 8, 16), split_size=(1, 2, 7, 7))
    return _create("agent_cswin_small", pretrained, **dict(args, **kwargs))


@register_model
def agent_cswin_base(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-B: 96 wide, depths 3-6-29-2, AABB (official drop path 0.5)."""
    args = dict(_AGENTS, embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 7, 7))
    return _create("agent_cswin_base", pretrained, **dict(args, **kwargs))


@register_model
def agent_cswin_base_384(pretrained: bool = False, **kwargs) -> AgentCSWin:
    """Agent-CSwin-B at 384: stripes 12 wide, agent biases at the 96-48-24-12 grids (official drop path 0.7)."""
    args = dict(
        _AGENTS, img_size=384, embed_dim=96, depths=(3, 6, 29, 2), num_heads=(4, 8, 16, 32), split_size=(1, 2, 12, 12)
    )
    return _create("agent_cswin_base_384", pretrained, **dict(args, **kwargs))


register_family(
    Family(
        name="agent_cswin",
        models=("agent_cswin_tiny", "agent_cswin_small", "agent_cswin_base", "agent_cswin_base_384"),
        aliases={
            "agent_cswin_t": "agent_cswin_tiny",
            "agent_cswin_s": "agent_cswin_small",
            "agent_cswin_b": "agent_cswin_base",
        },
        converter=checkpoint_filter_fn,
        params_m={
            "agent_cswin_tiny": 20.46,
            "agent_cswin_small": 32.81,
            "agent_cswin_base": 73.25,
            "agent_cswin_base_384": 73.33,
        },
        card="model_cards/agent_attention.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="hierarchical",
        num_stages=4,
        # one block per stage keeps every block kind: A (stages 1-2), two-branch stripes (3), one global branch (4)
        test_kwargs=dict(depths=(1, 1, 1, 1), embed_dim=16),
        # CSWin's own segmentation backbone puts an nn.LayerNorm (eps 1e-5) on each of its four outputs; the official
        # repository has no Agent-CSwin dense backbone, so its agent grids stay the trained ones
        dense=DenseRecipe(out_norm="ln2d", out_norm_eps=1e-5),
        # one graph holds at other sizes: pooling matrices, bias resizes, stripe padding and masks are traced from the
        # map's shape. Exported at the training size itself, AgentAttention skips its identity bias resizes and the
        # graph holds at that size only; the export's check at a second size reports it.
        onnx_dynamic_size=True,
        checkpoints=tuple(Checkpoint(m, "in1k", format="model", top1=top1) for m, _, top1 in _RELEASES),
    )
)
