"""LITv2: Fast Vision Transformers with HiLo Attention (NeurIPS 2022).

Paper: https://arxiv.org/abs/2205.13213 (Zizheng Pan, Jianfei Cai, Bohan Zhuang).
Official code (Apache-2.0): https://github.com/ziplab/LITv2 at commit 7501c86; this is an independent
implementation of the same architecture whose official checkpoints load through ``checkpoint_filter_fn``.

Stages 1-2 hold attention-free blocks (LN, MLP with a 3x3 depth-wise conv); stages 3-4 HiLo attention
(:mod:`visionattn.layers.hilo`) plus the same MLP. Downsampling is DTM, a 2x2 stride-2 deformable conv with BN and
GELU (:mod:`visionattn.layers.deform`, on ``torchvision.ops.deform_conv2d``: no compiled extension, no apex).

Size rule: any input whose sides are at least 32 px. The patch embedding zero-pads the image on the right / bottom
to a multiple of 4, each DTM drops an odd last row / column (as the official dense code does), and HiLo pads each
map to a multiple of its window while keeping the padded tokens out of the Hi-Fi windows and the Lo-Fi pooled keys
(``mask_padding=False``: the official dense code's unmasked padding). At 224 (and any size that needs no padding)
the model computes exactly the official classification model.

Differences from the official code: any input size, ``alpha`` per model and checked, timm's feature /
intermediate / grad-checkpointing API, a working ``reset_classifier``, and the deformable conv on torchvision.
"""

# No `from __future__ import annotations`: FX writes the forward annotations into the traced code, which
# TorchScript then compiles (timm scripts FX-traced models), so they must be real types, not strings.
import math
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    calculate_drop_path_rates,
    register_notrace_function,
    register_notrace_module,
    trunc_normal_,
)
from timm.models import checkpoint_seq, register_model

from visionattn.layers.deform import DeformTokenMerge
from visionattn.layers.hilo import HiLo, linear, plain_ops_wanted
from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import build_model, generate_default_cfgs

from ._pyramid import PyramidContract
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["LITv2", "checkpoint_filter_fn", "offset_paramwise_cfg"]

# The last of three stride-2 DTMs needs a 2x2 map, i.e. a side of at least 32 px after the 4x patch embedding.
MIN_INPUT_SIZE = 32
PATCH_SIZE = 4


def _tuple4(value, name: str) -> tuple:
    """A per-stage setting: one value for all stages or a sequence of 4."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 4:
            raise ValueError(f"{name}={value!r} must be one value or 4 values (one per stage)")
        return tuple(value)
    return (value,) * 4


# public name: FX wraps only functions whose module-level name has no leading underscore
@register_notrace_function
def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """(B, C, H, W) -> zero-padded on the right / bottom to sides that are multiples of ``multiple``."""
    pad_b, pad_r = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    if pad_b or pad_r:
        x = F.pad(x, (0, pad_r, 0, pad_b))
    return x


@register_notrace_function
def patch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """A k x k stride-k conv as one matrix product over the patches; (B, C, H, W) -> (B, H/k, W/k, C_out).

    H, W must be multiples of k. The patches are rearranged channel-major like the conv weight (one copy of the
    image); the output is channels-last, the layout the LayerNorm and the blocks after it want.
    """
    b, c, h, w = x.shape
    out_chs, k = weight.shape[0], weight.shape[-1]
    patches = x.reshape(b, c, h // k, k, w // k, k).permute(0, 2, 4, 1, 3, 5).reshape(b, h // k, w // k, c * k * k)
    return linear(patches, weight.reshape(out_chs, c * k * k), bias)


class PatchEmbed(nn.Module):
    """Input check, zero padding to a multiple of 4, 4x4 stride-4 conv (as one matrix product over the patches),
    LayerNorm; (B, 3, H, W) -> (B, C, H/4, W/4) (channels-last memory)."""

    def __init__(self, in_chs: int, embed_dim: int, min_input_size: int = MIN_INPUT_SIZE, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.min_input_size = min_input_size
        self.patch_size = PATCH_SIZE
        self.proj = nn.Conv2d(in_chs, embed_dim, PATCH_SIZE, stride=PATCH_SIZE, **dd)
        self.norm = nn.LayerNorm(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = check_input_size(x, self.min_input_size)
        x = patch_linear(pad_to_multiple(x, self.patch_size), self.proj.weight, self.proj.bias)
        return self.norm(x).permute(0, 3, 1, 2)


def _probe_onednn_conv_act():
    """torch's oneDNN convolution with the exact (erf) GELU applied as it writes the output, or None where this torch
    build lacks it or its private signature differs (checked once on a tiny depth-wise input)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._convolution_pointwise
        x, w = torch.linspace(-1, 1, 50).reshape(1, 2, 5, 5), torch.linspace(-1, 2, 18).reshape(2, 1, 3, 3)
        b = torch.tensor([0.5, -0.5])  # no draw from the global RNG
        got = op(x, w, b, [1, 1], [1, 1], [1, 1], 2, "gelu", [None], "none")
        return op if torch.allclose(got, F.gelu(F.conv2d(x, w, b, padding=1, groups=2)), atol=1e-5) else None
    except (AttributeError, RuntimeError, TypeError):
        return None


_ONEDNN_CONV_ACT = _probe_onednn_conv_act()


def _onednn_dwconv_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor | None:
    if (
        _ONEDNN_CONV_ACT is None
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or plain_ops_wanted()
    ):
        return None
    return _ONEDNN_CONV_ACT(x, weight, bias, [1, 1], [1, 1], [1, 1], x.shape[1], "gelu", [None], "none")


@register_notrace_function
def dwconv_gelu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """GELU(3x3 depth-wise conv, padding 1); (B, C, H, W) -> (B, C, H, W).

    Without autograd, float32 on CPU runs as one oneDNN convolution with the GELU fused (one output written
    instead of two: at 56x56 the MLP's hidden maps are the largest tensors of the model); else conv2d + gelu.
    """
    if not torch.jit.is_scripting():
        fast = _onednn_dwconv_gelu(x, weight, bias)
        if fast is not None:
            return fast
    return F.gelu(F.conv2d(x, weight, bias, 1, 1, 1, x.shape[1]))


# Without autograd, an MLP whose hidden map (the whole batch's) has more elements than this runs image by image
# (equal results): at 56x56 the batch's hidden maps would be the largest tensors of the model, and smaller ones
# stay in cache and are reused by the allocator instead of being mapped and page-faulted afresh for every block.
MLP_CHUNK_NUMEL = 2**22


@register_notrace_module  # traced as one call: the image-by-image split depends on the input's size
class DWMlp(nn.Module):
    """fc1 -> 3x3 depth-wise conv -> GELU -> fc2; (B, H, W, C) -> (B, H, W, C)."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(dim, hidden, **dd)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, **dd)
        self.fc2 = nn.Linear(hidden, dim, **dd)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual`` (of x's shape) is added to the output by fc2 (without dropout only)."""
        if not torch.jit.is_scripting() and not torch.is_grad_enabled() and not torch.jit.is_tracing():
            if x.shape[0] > 1 and x.shape[1] * x.shape[2] * self.fc1.out_features * x.shape[0] > MLP_CHUNK_NUMEL:
                return torch.cat(
                    [self._mlp(x[i : i + 1], None if residual is None else residual[i : i + 1]) for i in range(len(x))]
                )
        return self._mlp(x, residual)

    def _mlp(self, x: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        x = linear(x, self.fc1.weight, self.fc1.bias)
        x = dwconv_gelu(x.permute(0, 3, 1, 2), self.dwconv.weight, self.dwconv.bias).permute(0, 2, 3, 1)
        if residual is not None and self.training and self.drop.p > 0:
            return residual + self.drop(linear(self.drop(x), self.fc2.weight, self.fc2.bias))
        return self.drop(linear(self.drop(x), self.fc2.weight, self.fc2.bias, residual))


class ConvFFNBlock(nn.Module):
    """Attention-free block of stages 1-2: x + DWMlp(LN(x)); (B, H, W, C) -> (B, H, W, C)."""

    def __init__(
        self, dim: int, mlp_ratio: float = 4.0, drop: float = 0.0, drop_path: float = 0.0, device=None, dtype=None
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        # named norm2 as in the official block, whose norm1 / attention slot is empty here
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = DWMlp(dim, int(dim * mlp_ratio), drop=drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.drop_path, nn.Identity):
            return self.mlp(self.norm2(x), residual=x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class HiLoBlock(nn.Module):
    """x + HiLo(LN(x)), then x + DWMlp(LN(x)); (B, H, W, C) -> (B, H, W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        window_size: int,
        alpha: float,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        mask_padding: bool = True,
        drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = HiLo(
            dim,
            num_heads=num_heads,
            window_size=window_size,
            alpha=alpha,
            qkv_bias=qkv_bias,
            qk_scale=qk_scale,
            mask_padding=mask_padding,
            attn_drop=attn_drop,
            **dd,
        )
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = DWMlp(dim, int(dim * mlp_ratio), drop=drop, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        if isinstance(self.drop_path, nn.Identity):
            return self.mlp(self.norm2(x), residual=x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class LITv2Stage(nn.Module):
    """Optional DTM downsampling, then blocks; (B, C_in, H, W) -> (B, C, H', W')."""

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        downsample: bool,
        num_heads: int,
        window_size: int,
        alpha: float,
        drop_path: Sequence[float] = (),
        dtm_impl: str = "auto",
        device=None,
        dtype=None,
        **block_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grad_checkpointing = False
        self.downsample = DeformTokenMerge(in_chs, dim, impl=dtm_impl, **dd) if downsample else nn.Identity()
        blocks = []
        for i in range(depth):
            dp = drop_path[i] if drop_path else 0.0
            if window_size > 0:
                blocks.append(HiLoBlock(dim, num_heads, window_size, alpha, drop_path=dp, **dd, **block_kwargs))
            else:
                keep = {k: v for k, v in block_kwargs.items() if k in ("mlp_ratio", "drop")}
                blocks.append(ConvFFNBlock(dim, drop_path=dp, **dd, **keep))
        self.blocks = nn.Sequential(*blocks)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the blocks' Linear / LayerNorm want channels-last memory: one copy here instead of one per op
        x = self.downsample(x).permute(0, 2, 3, 1).contiguous()
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return x.permute(0, 3, 1, 2)


class LITv2(PyramidContract, nn.Module):
    """LITv2 backbone and classifier; (B, in_chans, H, W) -> (B, num_classes), any H, W >= 32.

    Args:
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
        global_pool: head pooling, 'avg' or '' (no pooling, with num_classes=0).
        embed_dim: channels of stage 1 (doubled by each DTM).
        depths: blocks per stage.
        num_heads: attention heads per stage (stages without attention ignore theirs).
        local_ws: HiLo window per stage; 0 = attention-free blocks, 1 = plain self-attention.
        alpha: share of Lo-Fi heads in every HiLo layer, 0 ... 1.
        mlp_ratio: MLP expansion.
        qkv_bias: bias in the attention projections.
        qk_scale: attention scale override (default head_dim ** -0.5).
        mask_padding: keep window padding out of HiLo (False: the official dense code's unmasked padding).
        dtm_impl: deformable-conv path of the DTMs ('auto', 'torchvision', 'grid_sample', 'gather').
        drop_rate: dropout in the MLPs and before the classifier.
        attn_drop_rate: attention dropout.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
    """

    pyramid_stem = "patch_embed"

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 96,
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        local_ws: Sequence[int] = (0, 0, 2, 1),
        alpha: float = 0.9,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        qk_scale: float | None = None,
        mask_padding: bool = True,
        dtm_impl: str = "auto",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        depths, num_heads, local_ws = (
            _tuple4(depths, "depths"),
            _tuple4(num_heads, "num_heads"),
            _tuple4(local_ws, "local_ws"),
        )
        for ws in local_ws:
            if isinstance(ws, bool) or not isinstance(ws, int) or ws < 0:
                raise ValueError(f"local_ws={local_ws!r}: each entry must be an int >= 0 (0: no attention)")
        dims = tuple(embed_dim * 2**i for i in range(4))
        for dim, heads, ws in zip(dims, num_heads, local_ws):
            if ws > 0 and dim % heads:
                raise ValueError(f"num_heads={num_heads!r}: {heads} heads do not divide the stage width {dim}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = dims
        self.alpha = alpha
        self.num_features = self.head_hidden_size = dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        dd = dict(device=device, dtype=dtype)
        self.patch_embed = PatchEmbed(in_chans, dims[0], **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        stages, self.feature_info = [], []
        for i in range(4):
            stages.append(
                LITv2Stage(
                    dims[i - 1] if i else dims[0],
                    dims[i],
                    depths[i],
                    downsample=i > 0,
                    num_heads=num_heads[i],
                    window_size=local_ws[i],
                    alpha=alpha,
                    drop_path=dpr[i],
                    dtm_impl=dtm_impl,
                    mlp_ratio=mlp_ratio,
                    qkv_bias=qkv_bias,
                    qk_scale=qk_scale,
                    mask_padding=mask_padding,
                    drop=drop_rate,
                    attn_drop=attn_drop_rate,
                    **dd,
                )
            )
            self.feature_info.append(dict(num_chs=dims[i], reduction=PATCH_SIZE * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features, **dd)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        """The official init: trunc-normal Linear, LayerNorm at identity, fan-out normal depth-wise convs, plain
        init for the patch conv and the DTM (zero offsets)."""
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, DWMlp):
            conv = m.dwconv
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
            nn.init.zeros_(conv.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
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

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C, h, w) after the final LayerNorm."""
        x = self.patch_embed(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.stages, x)
        else:
            x = self.stages(x)
        return self._final_norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes), or the pooled (B, C) with ``pre_logits``."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------
# official checkpoints

_PREFIXES = ("module.", "encoder.", "backbone.")


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official LITv2 state_dict (bare or wrapped in ``{'model': ...}``; classification or dense backbone) -> ours.

    ``layers.{i}.blocks.{j}`` -> ``stages.{i}.blocks.{j}``; ``layers.{i}.downsample`` (end of stage i) ->
    ``stages.{i+1}.downsample`` (start of stage i+1, with ``norm_layer`` -> ``norm``); ``mlp.dwconv.dwconv`` ->
    ``mlp.dwconv``; ``head`` -> ``head.fc``. The dense backbones' per-output ``norm{i}`` are not part of the
    classification model and are dropped. A state_dict already in this layout passes through unchanged.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    clean = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        clean[key] = value
    if any(k.startswith("stages.") for k in clean):
        return clean
    out = {}
    for key, value in clean.items():
        if re.match(r"norm\d+\.", key):
            continue
        m = re.match(r"layers\.(\d+)\.downsample\.(.+)", key)
        if m:
            rest = m.group(2).replace("norm_layer.", "norm.", 1)
            key = f"stages.{int(m.group(1)) + 1}.downsample.{rest}"
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.(.+)", key)
        if m:
            rest = m.group(3).replace("mlp.dwconv.dwconv.", "mlp.dwconv.", 1)
            key = f"stages.{m.group(1)}.blocks.{m.group(2)}.{rest}"
        elif key.startswith("head."):
            key = "head.fc." + key[len("head.") :]
        out[key] = value
    return out


def offset_paramwise_cfg(lr_mult: float = 0.01) -> dict:
    """mmengine ``paramwise_cfg`` giving the DTM offset convs ``lr_mult`` (the official OFFSET_LR_MULTI 0.01)."""
    return dict(custom_keys={"conv_offset": dict(lr_mult=lr_mult)})


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2205.13213",
        "paper_name": "Fast Vision Transformers with HiLo Attention",
        "origin_url": "https://github.com/ziplab/LITv2",
        **kwargs,
    }


_RELEASE = "https://github.com/ziplab/LITv2/releases/download/{}/{}.pth"
# the alpha sweep of LITv2-S (paper Table 6), tag = alpha as written in the release file names
ALPHA_SWEEP = {"0": 0.0, "0.2": 0.2, "0.4": 0.4, "0.5": 0.5, "0.7": 0.7, "0.9": 0.9, "1": 1.0}

default_cfgs = generate_default_cfgs(
    {
        "litv2_small.in1k": _cfg(url=_RELEASE.format("v1.0", "litv2_s")),
        "litv2_medium.in1k": _cfg(url=_RELEASE.format("v1.0", "litv2_m")),
        "litv2_base.in1k": _cfg(url=_RELEASE.format("v1.0", "litv2_b")),
        "litv2_base_384.in1k": _cfg(
            url=_RELEASE.format("v1.0", "litv2_b_384"), input_size=(3, 384, 384), pool_size=(12, 12), crop_pct=1.0
        ),
        **{f"litv2_small.in1k_alpha_{tag}": _cfg(url=_RELEASE.format("v1.1", f"alpha_{tag}")) for tag in ALPHA_SWEEP},
    }
)


def _create_litv2(variant: str, pretrained: bool = False, **kwargs) -> LITv2:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        LITv2,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


def _with_alpha(variant: str, kwargs: dict) -> dict:
    """An alpha-sweep pretrained tag (``litv2_small.in1k_alpha_0.5``) sets the model's alpha unless given."""
    tag = kwargs.get("pretrained_cfg")
    tag = tag if isinstance(tag, str) else ""
    if "alpha" not in kwargs and "_alpha_" in tag:
        kwargs["alpha"] = ALPHA_SWEEP[tag.split("_alpha_")[-1]]
    return kwargs


_S = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24), local_ws=(0, 0, 2, 1), alpha=0.9)
_M = dict(_S, depths=(2, 2, 18, 2))
_B = dict(_M, embed_dim=128, num_heads=(4, 8, 16, 32))


@register_model
def litv2_small(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-S: 27.8M params, 82.0% ImageNet top-1 (official)."""
    return _create_litv2("litv2_small", pretrained, **dict(_S, **_with_alpha("litv2_small", kwargs)))


@register_model
def litv2_medium(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-M: 48.8M params, 83.3% ImageNet top-1 (official)."""
    return _create_litv2("litv2_medium", pretrained, **dict(_M, **kwargs))


@register_model
def litv2_base(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B: 86.5M params, 83.6% ImageNet top-1 (official)."""
    return _create_litv2("litv2_base", pretrained, **dict(_B, **kwargs))


@register_model
def litv2_base_384(pretrained: bool = False, **kwargs) -> LITv2:
    """LITv2-B at 384 (fine-tuned 30 epochs): 86.5M params, 84.7% ImageNet top-1 (official)."""
    return _create_litv2("litv2_base_384", pretrained, **dict(_B, **kwargs))


def _checkpoints() -> tuple[Checkpoint, ...]:
    """The official releases (GitHub, ziplab/LITv2 v1.0 / v1.1; also on the README's Google Drive folder). Not
    downloaded from here (no network where this was written): status unknown, format from the official loaders."""
    dl = "https://github.com/ziplab/LITv2/releases/download/v1.0/"
    cls = [
        Checkpoint(m, "in1k", format="model", top1=top1)
        for m, top1 in (("litv2_small", 82.0), ("litv2_medium", 83.3), ("litv2_base", 83.6), ("litv2_base_384", 84.7))
    ]
    sweep_top1 = {"0": 81.16, "0.2": 81.89, "0.4": 81.81, "0.5": 81.88, "0.7": 81.94, "0.9": 82.03, "1": 81.89}
    sweep = [
        Checkpoint("litv2_small", f"in1k_alpha_{tag}", format="model", top1=sweep_top1[tag], notes=f"alpha={a}")
        for tag, a in ALPHA_SWEEP.items()
    ]
    dense_notes = "mmdet / mmseg checkpoint; the backbone's keys load through the family converter"
    det = [
        Checkpoint(
            {"s": "litv2_small", "m": "litv2_medium", "b": "litv2_base"}[size],
            f"coco_{det}_1x{ws}",
            task="det",
            urls=(f"{dl}{det}_litv2_{size}_fpn_1x_coco{ws.replace('ws4', '_ws_4')}.pth",),
            format="mmcv",
            result=result,
            notes=dense_notes,
        )
        for det, size, ws, result in (
            ("retinanet", "s", "", "box AP 44.0"),
            ("retinanet", "s", "_ws4", "box AP 43.7"),
            ("retinanet", "m", "", "box AP 46.0"),
            ("retinanet", "m", "_ws4", "box AP 45.8"),
            ("retinanet", "b", "", "box AP 46.7"),
            ("retinanet", "b", "_ws4", "box AP 46.3"),
            ("mask_rcnn", "s", "", "box AP 44.9 / mask AP 40.8"),
            ("mask_rcnn", "s", "_ws4", "box AP 44.7 / mask AP 40.7"),
            ("mask_rcnn", "m", "", "box AP 46.8 / mask AP 42.3"),
            ("mask_rcnn", "m", "_ws4", "box AP 46.5 / mask AP 42.0"),
            ("mask_rcnn", "b", "", "box AP 47.3 / mask AP 42.6"),
            ("mask_rcnn", "b", "_ws4", "box AP 46.8 / mask AP 42.3"),
        )
    ]
    seg = [
        Checkpoint(
            model,
            "ade20k_fpn_80k",
            task="seg",
            urls=(f"{dl}litv2_{size}_fpn_r50_512x512_80k_ade20k.pth",),
            format="mmcv",
            result=f"mIoU {miou}",
            notes=dense_notes,
        )
        for model, size, miou in (("litv2_small", "s", 44.3), ("litv2_medium", "m", 45.7), ("litv2_base", "b", 47.2))
    ]
    return tuple(cls + sweep + det + seg)


register_family(
    Family(
        name="litv2",
        models=("litv2_small", "litv2_medium", "litv2_base", "litv2_base_384"),
        aliases={"litv2_s": "litv2_small", "litv2_m": "litv2_medium", "litv2_b": "litv2_base"},
        converter=checkpoint_filter_fn,
        params_m={"litv2_small": 27.8, "litv2_medium": 48.8, "litv2_base": 86.5, "litv2_base_384": 86.5},
        card="model_cards/litv2.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="hierarchical",
        num_stages=4,
        # one block per stage keeps every block type (attention-free, windowed HiLo, plain attention) and DTMs
        test_kwargs=dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8)),
        # the official mmdet-3 backbone: nn.LayerNorm (eps 1e-5) on outputs 1-3 only (its mmseg twin norms all
        # four: the segmentation configs pass out_norm_levels=(0, 1, 2, 3)); HiLo pads without masking
        dense=DenseRecipe(
            out_norm="ln2d", out_norm_eps=1e-5, out_norm_levels=(1, 2, 3), model_kwargs=dict(mask_padding=False)
        ),
        # HiLo's window padding and the DTM sampling grid are computed in Python from the input size
        onnx_dynamic_size=False,
        checkpoints=_checkpoints(),
    )
)
