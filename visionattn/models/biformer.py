"""BiFormer: Vision Transformer with Bi-Level Routing Attention (CVPR 2023).

Paper: https://arxiv.org/abs/2303.08810 (Lei Zhu, Xinjiang Wang, Zhanghan Ke, Wayne Zhang, Rynson Lau).
Official code (MIT): https://github.com/rayleizhu/BiFormer at commit 1697bbb; this is an independent
implementation of the same architecture whose official checkpoints load through ``checkpoint_filter_fn``.

Differences from the official code: inputs of any size from 32 px (padded regions are masked out of routing and
attention unless ``mask_padding=False``, which reproduces the official ``auto_pad``), a working
``reset_classifier``, timm's feature / intermediate / grad-checkpointing API, ``n_win`` as a model argument.
"""

# No `from __future__ import annotations`: FX writes the forward annotations into the traced code, which
# TorchScript then compiles (timm scripts FX-traced models), so they must be real types, not strings.
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, calculate_drop_path_rates, trunc_normal_
from timm.models import checkpoint_seq, generate_default_cfgs, register_model

from visionattn.layers.input_size import check_input_size
from visionattn.layers.routing import BiLevelRoutingAttention
from visionattn.pretrained import build_model

from ._pyramid import PyramidContract
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["BiFormer", "checkpoint_filter_fn", "bra_official_gather"]


def _tuple4(value, name: str) -> tuple:
    """A per-stage setting: one value for all stages or a sequence of 4."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 4:
            raise ValueError(f"{name}={value!r} must be one value or 4 values (one per stage)")
        return tuple(value)
    return (value,) * 4


# Smallest input side of every BiFormer: the STL stem and patch-merging downsamplings floor each side by 32,
# so a side below 32 px leaves the last downsampling nothing to convolve. T/S/B (padded convs) are held to the
# same rule, so that the whole family has one size rule, the one its record states.
MIN_INPUT_SIZE = 32


class ConvStem(nn.Module):
    """Two overlapping 3x3 stride-2 convs (BiFormer-T/S/B); (B, 3, H, W) -> (B, C, ceil(H/4), ceil(W/4)).

    Checks the input against the family's size rule (each side >= ``min_input_size``) with a clear error.
    """

    def __init__(self, in_chs: int, out_chs: int, min_input_size: int = MIN_INPUT_SIZE, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.min_input_size = min_input_size
        self.conv1 = nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1, **dd)
        self.norm1 = nn.BatchNorm2d(out_chs // 2, **dd)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1, **dd)
        self.norm2 = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input_size(x, self.min_input_size)
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class PatchStem(nn.Module):
    """4x4 stride-4 patchify conv + BN (BiFormer-STL); (B, 3, H, W) -> (B, C, floor(H/4), floor(W/4)).

    Checks the input against the family's size rule (each side >= ``min_input_size``) with a clear error.
    """

    def __init__(self, in_chs: int, out_chs: int, min_input_size: int = MIN_INPUT_SIZE, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.min_input_size = min_input_size
        self.conv = nn.Conv2d(in_chs, out_chs, 4, stride=4, **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input_size(x, self.min_input_size)
        return self.norm(self.conv(x))


class Downsample(nn.Module):
    """Stride-2 downsampling; (B, C, H, W) -> (B, C', H/2, W/2).

    ``patch=False``: 3x3 conv (padding 1) then BN, rounding up (BiFormer-T/S/B);
    ``patch=True``: BN then 2x2 conv, rounding down (BiFormer-STL, Swin-style patch merging).
    """

    def __init__(self, in_chs: int, out_chs: int, patch: bool = False, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.patch = patch
        if patch:
            self.norm = nn.BatchNorm2d(in_chs, **dd)
            self.conv = nn.Conv2d(in_chs, out_chs, 2, stride=2, **dd)
        else:
            self.conv = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1, **dd)
            self.norm = nn.BatchNorm2d(out_chs, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.norm(x)) if self.patch else self.norm(self.conv(x))


class AttentionLePE(nn.Module):
    """Global multi-head self-attention plus a depth-wise conv of the input (last stage); (B, H, W, C) -> same.

    Checkpoint-parity quirk ("fixed 8 heads, LePE on x"): the official last stage always uses 8 heads whatever
    the head width, and its LePE convolves the attention input x, not V as the routing stages do.
    """

    def __init__(
        self, dim: int, num_heads: int = 8, side_dwconv: int = 5, qkv_bias: bool = False, device=None, dtype=None
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd) if side_dwconv else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        q, k, v = self.qkv(x).view(b, h * w, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, h, w, c)
        if self.lepe is not None:
            out = out + self.lepe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.proj(out)


class BiFormerBlock(nn.Module):
    """[3x3 DW conv residual] -> LN -> BRA (or global attention) -> LN -> MLP; (B, H, W, C) -> (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        topk: int,
        n_win: int = 7,
        mlp_ratio: float = 3.0,
        drop_path: float = 0.0,
        cpe_kernel_size: int = 3,
        side_dwconv: int = 5,
        qk_scale: float | None = None,
        last_stage_heads: int = 8,
        mask_padding: bool = True,
        attn_backend: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.cpe = (
            nn.Conv2d(dim, dim, cpe_kernel_size, padding=cpe_kernel_size // 2, groups=dim, **dd)
            if cpe_kernel_size
            else None
        )
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if topk > 0:
            self.attn = BiLevelRoutingAttention(
                dim,
                num_heads=num_heads,
                n_win=n_win,
                qk_scale=qk_scale,
                topk=topk,
                side_dwconv=side_dwconv,
                mask_padding=mask_padding,
                backend=attn_backend,
                **dd,
            )
        elif topk == -2:
            self.attn = AttentionLePE(dim, num_heads=last_stage_heads, side_dwconv=side_dwconv, **dd)
        else:
            raise ValueError(f"topk={topk} is not supported: use a positive top-k (routing) or -2 (global attention)")
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(mlp_ratio * dim), act_layer=nn.GELU, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cpe is not None:
            x = x + self.cpe(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class BiFormerStage(nn.Module):
    """Optional downsampling, then blocks; (B, C_in, H, W) -> (B, C, H', W')."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        depth: int,
        downsample: bool,
        patch_downsample: bool = False,
        drop_path: Sequence[float] = (),
        device=None,
        dtype=None,
        **block_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = Downsample(in_chs, out_chs, patch=patch_downsample, **dd) if downsample else nn.Identity()
        self.blocks = nn.Sequential(
            *[
                BiFormerBlock(out_chs, drop_path=drop_path[i] if drop_path else 0.0, **dd, **block_kwargs)
                for i in range(depth)
            ]
        )

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


class BiFormer(PyramidContract, nn.Module):
    """BiFormer backbone and classifier; (B, in_chans, H, W) -> (B, num_classes), any H, W >= 32.

    Args:
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
        global_pool: head pooling, 'avg' or '' (no pooling, with num_classes=0).
        depths: blocks per stage.
        embed_dims: channels per stage.
        head_dim: channels per head in the routing stages (heads = dim // head_dim).
        mlp_ratios: MLP expansion, one value or one per stage.
        n_win: regions per side in the routing stages, one value or one per stage (7 for ImageNet at 224;
            the official detection / segmentation configs use 16 / 8).
        topks: routed regions per stage; -2 = global attention with LePE on x (the official last stage).
        side_dwconv: LePE kernel size.
        qk_scale: override of the attention / routing scale (default qk_dim ** -0.5, the official choice).
        cpe_kernel_size: kernel of the depth-wise conv residual before each block (0: none, as in STL).
        stem_type: 'conv' (two 3x3 stride-2 convs, 3x3 conv downsampling) or 'patch' (4x4 patchify, BN + 2x2 conv
            downsampling, BiFormer-STL).
        last_stage_heads: heads of the global-attention stage (8 in all official models).
        mask_padding: mask padded tokens in the routing stages (False: official auto_pad behaviour).
        attn_backend: kernel path for the routing attention (None: ``VISIONATTN_KERNELS`` / device).
        drop_rate: dropout before the classifier.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        depths: Sequence[int] = (2, 2, 8, 2),
        embed_dims: Sequence[int] = (64, 128, 256, 512),
        head_dim: int = 32,
        mlp_ratios: float | Sequence[float] = 3.0,
        n_win: int | Sequence[int] = 7,
        topks: Sequence[int] = (1, 4, 16, -2),
        side_dwconv: int = 5,
        qk_scale: float | None = None,
        cpe_kernel_size: int = 3,
        stem_type: str = "conv",
        last_stage_heads: int = 8,
        mask_padding: bool = True,
        attn_backend: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        depths, embed_dims, topks = (
            _tuple4(depths, "depths"),
            _tuple4(embed_dims, "embed_dims"),
            _tuple4(topks, "topks"),
        )
        mlp_ratios, n_wins = _tuple4(mlp_ratios, "mlp_ratios"), _tuple4(n_win, "n_win")
        if stem_type not in ("conv", "patch"):
            raise ValueError(f"stem_type={stem_type!r} must be 'conv' (BiFormer-T/S/B) or 'patch' (BiFormer-STL)")
        for dim, topk in zip(embed_dims, topks):
            if topk > 0 and dim % head_dim:
                raise ValueError(f"head_dim={head_dim} must divide every routing-stage width, got {dim}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = embed_dims
        self.stem_type = stem_type
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        dd = dict(device=device, dtype=dtype)
        stem = ConvStem if stem_type == "conv" else PatchStem
        self.stem = stem(in_chans, embed_dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        for i in range(4):
            stages.append(
                BiFormerStage(
                    embed_dims[i - 1] if i else embed_dims[0],
                    embed_dims[i],
                    depths[i],
                    downsample=i > 0,
                    patch_downsample=stem_type == "patch",
                    drop_path=dpr[i],
                    num_heads=embed_dims[i] // head_dim,
                    topk=topks[i],
                    n_win=n_wins[i],
                    mlp_ratio=mlp_ratios[i],
                    cpe_kernel_size=cpe_kernel_size,
                    side_dwconv=side_dwconv,
                    qk_scale=qk_scale,
                    last_stage_heads=last_stage_heads,
                    mask_padding=mask_padding,
                    attn_backend=attn_backend,
                    **dd,
                )
            )
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=4 * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(self.num_features, **dd)
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
        """(B, in_chans, H, W) -> (B, C, H/32, W/32) after the final BatchNorm."""
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


# Official key -> ours. Stem (downsample_layers.0) Sequential slots for the conv stem and the STL patch stem.
_STEM_SLOTS = {"conv": {0: "conv1", 1: "norm1", 3: "conv2", 4: "norm2"}, "patch": {0: "conv", 1: "norm"}}
# downsample_layers.{1,2,3}: conv then BN (T/S/B), BN then conv (STL).
_DOWN_SLOTS = {"conv": {0: "conv", 1: "norm"}, "patch": {0: "norm", 1: "conv"}}
_BLOCK_RENAMES = (("pos_embed.", "cpe."), ("attn.qkv.qkv.", "attn.qkv."), ("attn.wo.", "attn.proj."))


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official BiFormer / BiFormer-STL state_dict (bare or wrapped in ``{'model': ...}``) -> this layout.

    A state_dict already in this layout passes through unchanged.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if any(k.startswith("stem.") for k in state_dict):
        return state_dict
    kind = getattr(model, "stem_type", "conv")
    out = {}
    for key, value in state_dict.items():
        m = re.match(r"downsample_layers\.(\d+)\.(\d+)\.(.+)", key)
        if m:
            i, slot, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            if i == 0:
                key = f"stem.{_STEM_SLOTS[kind][slot]}.{rest}"
            else:
                key = f"stages.{i}.downsample.{_DOWN_SLOTS[kind][slot]}.{rest}"
        m = re.match(r"stages\.(\d+)\.(?:blocks\.)?(\d+)\.(.+)", key)
        if m:
            rest = m.group(3)
            for old, new in _BLOCK_RENAMES:
                if rest.startswith(old):
                    rest = new + rest[len(old) :]
            # The MLP is Linear, [Identity,] GELU, Linear: slot 0 is fc1, the other slot holding weights is fc2.
            mm = re.match(r"mlp\.(\d+)\.(.+)", rest)
            if mm:
                rest = f"mlp.{'fc1' if mm.group(1) == '0' else 'fc2'}.{mm.group(2)}"
            key = f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
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
        "first_conv": "stem.conv1",
        "classifier": "head.fc",
        "license": "mit",
        "paper_ids": "arXiv:2303.08810",
        "paper_name": "BiFormer: Vision Transformer with Bi-Level Routing Attention",
        "origin_url": "https://github.com/rayleizhu/BiFormer",
        **kwargs,
    }


# Official release links (OneDrive). Reported dead since 2026-03 (rayleizhu/BiFormer#53); kept so a restored
# mirror or a local copy (pretrained_cfg_overlay=dict(file=...)) loads through checkpoint_filter_fn.
_ONEDRIVE = "https://api.onedrive.com/v1.0/shares/s!{}/root/content"
default_cfgs = generate_default_cfgs(
    {
        "biformer_tiny.in1k": _cfg(url=_ONEDRIVE.format("AkBbczdRlZvChHEOoGkgwgQzEDlM")),
        "biformer_small.in1k": _cfg(url=_ONEDRIVE.format("AkBbczdRlZvChHDyM-x9KWRBZ832")),
        "biformer_base.in1k": _cfg(url=_ONEDRIVE.format("AkBbczdRlZvChHI_XPhoadjaNxtO")),
        "biformer_stl.in1k": _cfg(url=_ONEDRIVE.format("AkBbczdRlZvChSf-m7ujkvx9lIQ1"), first_conv="stem.conv"),
    }
)


def _create_biformer(variant: str, pretrained: bool = False, **kwargs) -> BiFormer:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        BiFormer,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


_T_S_B = dict(head_dim=32, mlp_ratios=3.0, n_win=7, topks=(1, 4, 16, -2), side_dwconv=5, cpe_kernel_size=3)


@register_model
def biformer_tiny(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-T: 13.1M params, 81.4% ImageNet top-1 (official)."""
    args = dict(_T_S_B, depths=(2, 2, 8, 2), embed_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_tiny", pretrained, **dict(args, **kwargs))


@register_model
def biformer_small(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-S: 25.5M params, 83.8% ImageNet top-1 (official)."""
    args = dict(_T_S_B, depths=(4, 4, 18, 4), embed_dims=(64, 128, 256, 512))
    return _create_biformer("biformer_small", pretrained, **dict(args, **kwargs))


@register_model
def biformer_base(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-B: 56.8M params, 84.3% ImageNet top-1 (official)."""
    args = dict(_T_S_B, depths=(4, 4, 18, 4), embed_dims=(96, 192, 384, 768))
    return _create_biformer("biformer_base", pretrained, **dict(args, **kwargs))


@register_model
def biformer_stl(pretrained: bool = False, **kwargs) -> BiFormer:
    """BiFormer-STL (Swin-T layout): 28.4M params, 82.7% ImageNet top-1 (official)."""
    args = dict(
        depths=(2, 2, 6, 2),
        embed_dims=(96, 192, 384, 768),
        head_dim=32,
        mlp_ratios=4.0,
        n_win=7,
        topks=(1, 4, 16, -2),
        side_dwconv=5,
        cpe_kernel_size=0,
        stem_type="patch",
    )
    return _create_biformer("biformer_stl", pretrained, **dict(args, **kwargs))


# ----------------------------------------------------------------------------------------------------------
# The official routed gather: BiFormer's own BRA computation, the baseline users run today. The kernel
# benchmark times it beside visionattn.kernels.bra and the tests use it as an independent reference.


def to_official_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """visionattn BRA layout to the official one, heads folded into channels head-major.

    q, k: (B, heads, regions, R, d); v: (B, heads, regions, R, dv) -> q (B, regions, R, heads*d),
    kv (B, regions, R, heads*d + heads*dv).
    """
    b, h, n, r, _ = q.shape

    def fold(t: torch.Tensor) -> torch.Tensor:
        return t.permute(0, 2, 3, 1, 4).reshape(b, n, r, h * t.shape[-1])

    return fold(q), torch.cat([fold(k), fold(v)], dim=-1)


def from_official_layout(out: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, regions, R, heads*dv) -> (B, heads, regions, R, dv)."""
    b, n, r, c = out.shape
    return out.view(b, n, r, heads, c // heads).permute(0, 3, 1, 2, 4)


def bra_official_gather_raw(
    q: torch.Tensor, kv: torch.Tensor, routing: torch.Tensor, heads: int, *, scale: float | None = None
) -> torch.Tensor:
    """BRA as BiFormer's official code computes it: ``torch.gather`` on an expanded region view.

    q: (B, regions, R, heads*d); kv: (B, regions, R, heads*(d+dv)); routing: (B, regions, topk)
    -> (B, regions, R, heads*dv). The K/V view is expanded to (B, regions, regions, R, C) and the index to
    (B, regions, topk, R, C) before the gather; ``scale`` defaults to d**-0.5.
    """
    b, n, r, cq = q.shape
    c_kv = kv.shape[-1]
    topk = routing.shape[-1]
    d, dv = cq // heads, (c_kv - cq) // heads
    if scale is None:
        scale = d**-0.5
    index = routing.long().view(b, n, topk, 1, 1).expand(-1, -1, -1, r, c_kv)
    picked = torch.gather(kv.view(b, 1, n, r, c_kv).expand(-1, n, -1, -1, -1), dim=2, index=index)
    k_sel, v_sel = picked.split([cq, c_kv - cq], dim=-1)  # (B, regions, topk, R, C)
    qh = q.reshape(b * n, r, heads, d).transpose(1, 2)
    kh = k_sel.reshape(b * n, topk * r, heads, d).permute(0, 2, 3, 1)
    vh = v_sel.reshape(b * n, topk * r, heads, dv).transpose(1, 2)
    attn = torch.softmax((qh * scale) @ kh, dim=-1)
    return (attn @ vh).transpose(1, 2).reshape(b, n, r, heads * dv)


def bra_official_gather(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, routing: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """:func:`bra_official_gather_raw` with visionattn's ``bra`` signature: (B, heads, regions, R, d) in and out."""
    qo, kvo = to_official_layout(q, k, v)
    return from_official_layout(bra_official_gather_raw(qo, kvo, routing, q.shape[1], scale=scale), q.shape[1])


def _kernel_cases() -> tuple[dict, ...]:
    """BiFormer-S's routing stages (heads 2/4/8 of 32 channels, top-k 1/4/16): ImageNet 224 with n_win 7 and
    ADE20K 512 with n_win 8; ``batch_cuda`` is the GPU batch."""
    cases = []
    for size, n_win, batch in ((224, 7, 128), (512, 8, 16)):
        for stage, (heads, topk) in enumerate(((2, 1), (4, 4), (8, 16))):
            side = size // 4 // 2**stage
            cases.append(
                dict(
                    op="bra",
                    name=f"BiFormer-S s{stage + 1} @{size}",
                    height=side,
                    width=side,
                    heads=heads,
                    head_dim=32,
                    batch_cuda=batch,
                    regions_side=n_win,
                    topk=topk,
                )
            )
    return tuple(cases)


register_family(
    Family(
        name="biformer",
        models=("biformer_tiny", "biformer_small", "biformer_base", "biformer_stl"),
        aliases={"biformer_t": "biformer_tiny", "biformer_s": "biformer_small", "biformer_b": "biformer_base"},
        converter=checkpoint_filter_fn,
        params_m={"biformer_tiny": 13.1, "biformer_small": 25.5, "biformer_base": 56.8, "biformer_stl": 28.4},
        card="model_cards/biformer.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="hierarchical",
        num_stages=4,
        # one block per stage keeps every block type (routing in stages 1-3, global attention in stage 4)
        test_kwargs=dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64)),
        # official dense backbones: a LayerNorm on each output, 16 regions per side for COCO (8 for ADE20K 512),
        # padded regions unmasked (the official auto_pad)
        dense=DenseRecipe(out_norm="ln2d", model_kwargs=dict(n_win=16, mask_padding=False)),
        # the region grid is computed in Python from the input size, so an export holds at its own size only
        onnx_dynamic_size=False,
        kernel_cases=_kernel_cases(),
        kernel_baselines={"bra": ("official gather", bra_official_gather)},
        # the official ImageNet-1k releases (README top-1); no detection or segmentation weights were released
        checkpoints=tuple(
            Checkpoint(
                model,
                "in1k",
                format="model",
                status="dead",
                checked="2026-03",
                evidence="the OneDrive share links answer 'The provided share id was malformed.' "
                "(https://github.com/rayleizhu/BiFormer/issues/53); no mirror is known",
                top1=top1,
            )
            for model, top1 in (
                ("biformer_tiny", 81.4),
                ("biformer_small", 83.8),
                ("biformer_base", 84.3),
                ("biformer_stl", 82.7),
            )
        ),
    )
)
