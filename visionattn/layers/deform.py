"""Deformable convolution on ``torchvision.ops.deform_conv2d`` (no compiled extension), and LITv2's DTM.

``DeformConv2dPack`` predicts its sampling offsets with a plain convolution of the input (zero-initialised, so it
starts as an ordinary convolution), in the offset layout of DCNv1 / torchvision / mmcv: channel ``2 * k`` holds the
vertical and ``2 * k + 1`` the horizontal displacement of kernel tap ``k`` (taps in row-major order).

ONNX: the standard ``DeformConv`` op is opset 19 and torchvision exports none; during an ONNX export (or with
``impl="grid_sample"``) the same sampling is expressed with one bilinear ``GridSample`` (zeros outside the map, as
``deform_conv2d`` samples) and a matrix product, which every runtime runs. :func:`deform_conv2d_grid_sample` is
that formulation, equal to ``deform_conv2d`` up to float rounding.

CPU: :func:`deform_conv2d_gather` samples channels-last rows with torchvision's bilinear weights (the same
numbers, summed in the same order) and multiplies all taps at once; it is the default there (``impl="auto"``),
about twice as fast as torchvision's CPU kernel at LITv2's sizes, and its output is a channels-last tensor.
"""

# No `from __future__ import annotations`: TorchScript compiles forward from its annotations.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from timm.layers import register_notrace_module, to_2tuple

from visionattn.layers.hilo import linear

__all__ = ["DeformConv2dPack", "DeformTokenMerge", "deform_conv2d_gather", "deform_conv2d_grid_sample"]

_IMPLS = ("auto", "torchvision", "grid_sample", "gather")


def deform_conv2d_grid_sample(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (one offset group, no mask, groups=1) with ``F.grid_sample``.

    x: (B, C, H, W); offset: (B, 2*kh*kw, Ho, Wo); weight: (O, C, kh, kw) -> (B, O, Ho, Wo).
    """
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2], offset.shape[-1]
    taps = kh * kw
    dtype, device = x.dtype, x.device
    # sampling position of tap (i, j) for output (y, x): y*stride - pad + i*dilation + dy (same for x)
    base_y = (torch.arange(ho, dtype=dtype, device=device) * stride[0] - padding[0]).view(1, 1, ho, 1)
    base_x = (torch.arange(wo, dtype=dtype, device=device) * stride[1] - padding[1]).view(1, 1, 1, wo)
    tap_y = (torch.arange(kh, dtype=dtype, device=device) * dilation[0]).repeat_interleave(kw).view(1, taps, 1, 1)
    tap_x = (torch.arange(kw, dtype=dtype, device=device) * dilation[1]).repeat(kh).view(1, taps, 1, 1)
    off = offset.view(b, taps, 2, ho, wo)
    pos_y = base_y + tap_y + off[:, :, 0]
    pos_x = base_x + tap_x + off[:, :, 1]
    # align_corners=False: pixel p sits at (2p + 1) / size - 1 (defined for a side of 1 too)
    grid = torch.stack([(2 * pos_x + 1) / w - 1, (2 * pos_y + 1) / h - 1], dim=-1)
    sampled = F.grid_sample(
        x, grid.view(b, taps * ho, wo, 2), mode="bilinear", padding_mode="zeros", align_corners=False
    )  # (B, C, taps*Ho, Wo)
    cols = sampled.view(b, c * taps, ho * wo)
    out = torch.matmul(weight.reshape(o, c * taps), cols).view(b, o, ho, wo)
    if bias is not None:
        out = out + bias.view(1, o, 1, 1)
    return out


class _BilinearRows(torch.autograd.Function):
    """sum_k weights[k, m] * rows[index[k, m]] over the four corners k; (N, C), (4, M), (4, M) -> (M, C).

    The corner rows are gathered into one buffer and accumulated in place, and gathered again in the backward
    instead of being saved (four saved (M, C) terms would be the largest tensors of the DTM).
    """

    @staticmethod
    def forward(ctx, rows, weights, index):
        out = rows.index_select(0, index[0]).mul_(weights[0].unsqueeze(1))
        buf = torch.empty_like(out)
        for k in range(1, index.shape[0]):
            out.add_(torch.index_select(rows, 0, index[k], out=buf).mul_(weights[k].unsqueeze(1)))
        ctx.save_for_backward(rows, weights, index)
        return out

    @staticmethod
    def backward(ctx, grad):
        rows, weights, index = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rows = grad_weights = None
        buf = torch.empty_like(grad)
        if ctx.needs_input_grad[0]:
            grad_rows = torch.zeros_like(rows)
            for k in range(index.shape[0]):
                grad_rows.index_add_(0, index[k], torch.mul(grad, weights[k].unsqueeze(1), out=buf))
        if ctx.needs_input_grad[1]:
            grad_weights = torch.stack(
                [torch.index_select(rows, 0, index[k], out=buf).mul_(grad).sum(1) for k in range(index.shape[0])]
            )
        return grad_rows, grad_weights, None


def deform_conv2d_gather(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: tuple[int, int] = (1, 1),
    padding: tuple[int, int] = (0, 0),
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """``torchvision.ops.deform_conv2d`` (one offset group, no mask, groups=1) on channels-last rows.

    x: (B, H, W, C); offset: (B, 2*kh*kw, Ho, Wo); weight: (O, C, kh, kw) -> (B, Ho, Wo, O).

    Each sample is torchvision's bilinear interpolation (zero outside the map, the same four weights, summed in
    the same order), read as whole C-channel rows of the channels-last map; the rows of all taps are one
    (B*Ho*Wo, kh*kw*C) matrix that a single matrix product with the weight turns into the output.
    """
    b, h, w, c = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = offset.shape[-2], offset.shape[-1]
    taps = kh * kw
    dtype, device = offset.dtype, offset.device
    base_y = (torch.arange(ho, dtype=dtype, device=device) * stride[0] - padding[0]).view(1, ho, 1, 1)
    base_x = (torch.arange(wo, dtype=dtype, device=device) * stride[1] - padding[1]).view(1, 1, wo, 1)
    tap_y = (torch.arange(kh, dtype=dtype, device=device) * dilation[0]).repeat_interleave(kw).view(1, 1, 1, taps)
    tap_x = (torch.arange(kw, dtype=dtype, device=device) * dilation[1]).repeat(kh).view(1, 1, 1, taps)
    off = offset.view(b, taps, 2, ho, wo).permute(0, 3, 4, 1, 2)  # (B, Ho, Wo, taps, 2)
    pos_y = base_y + tap_y + off[..., 0]
    pos_x = base_x + tap_x + off[..., 1]
    inside = (pos_y > -1) & (pos_y < h) & (pos_x > -1) & (pos_x < w)
    y0, x0 = pos_y.floor(), pos_x.floor()
    ly, lx = pos_y - y0, pos_x - x0
    hy, hx = 1 - ly, 1 - lx
    y0, x0 = y0.long(), x0.long()
    first = (torch.arange(b, device=device) * (h * w)).view(b, 1, 1, 1)
    weights, index = [], []
    for dy, dx, wgt in ((0, 0, hy * hx), (0, 1, hy * lx), (1, 0, ly * hx), (1, 1, ly * lx)):
        yy, xx = y0 + dy, x0 + dx
        ok = inside & (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        index.append((first + yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).reshape(-1))
        weights.append((wgt * ok).to(x.dtype).reshape(-1))
    sampled = _BilinearRows.apply(x.reshape(b * h * w, c), torch.stack(weights), torch.stack(index))
    return linear(sampled.view(b, ho, wo, taps * c), weight.permute(0, 2, 3, 1).reshape(o, taps * c), bias)


@register_notrace_module
class DeformConv2dPack(nn.Module):
    """Deformable conv whose offsets come from a conv of the input; (B, C_in, H, W) -> (B, C_out, Ho, Wo).

    Args:
        in_chs, out_chs, kernel_size, stride, padding, dilation: as ``nn.Conv2d`` (groups 1, one offset group).
        bias: learnable bias of the deformable conv.
        impl: ``"auto"`` (the gather form on CPU, torchvision elsewhere and in TorchScript / tracing; the
            grid-sample form inside an ONNX export), ``"torchvision"``, ``"grid_sample"`` or ``"gather"``.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        impl: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if impl not in _IMPLS:
            raise ValueError(f"impl={impl!r} is not one of {_IMPLS}")
        self.impl = impl
        self.kernel_size = to_2tuple(kernel_size)
        self.stride = to_2tuple(stride)
        self.padding = to_2tuple(padding)
        self.dilation = to_2tuple(dilation)
        self.weight = nn.Parameter(torch.empty(out_chs, in_chs, *self.kernel_size, **dd))
        self.bias = nn.Parameter(torch.empty(out_chs, **dd)) if bias else None
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.conv_offset = nn.Conv2d(
            in_chs, 2 * taps, self.kernel_size, self.stride, self.padding, self.dilation, bias=True, **dd
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's init for the conv; zero offsets, so that training starts from a plain convolution."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1]}, {self.weight.shape[0]}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, impl={self.impl!r}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # A NaN offset (from a NaN input) would make torchvision's kernel index out of bounds (every bounds check
        # is false for NaN): such a position samples far outside the map and its output is set to NaN afterwards.
        offset = self.conv_offset(x)
        nan_at = offset.isnan().any(dim=1, keepdim=True)
        has_nan = True
        if not torch.jit.is_scripting():
            if x.device.type == "cpu" and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
                has_nan = bool(nan_at.any())  # no device sync on CPU: skip two full passes when there is none
        if has_nan:
            offset = offset.masked_fill(nan_at, -1e6)
        use_grid = self.impl == "grid_sample"
        use_gather = self.impl == "gather"
        if self.impl == "auto" and not torch.jit.is_scripting():
            use_grid = torch.onnx.is_in_onnx_export()
            use_gather = not use_grid and x.device.type == "cpu" and not torch.jit.is_tracing()
        if use_grid:
            out = deform_conv2d_grid_sample(x, offset, self.weight, self.bias, self.stride, self.padding, self.dilation)
            return out.masked_fill(nan_at, float("nan")) if has_nan else out
        weight, bias = self.weight, self.bias
        dtype = x.dtype
        if dtype != torch.float32 and dtype != torch.float64:
            # half / bfloat16: sampled in float32 (torchvision's CPU kernel has no bfloat16; the official DCN runs
            # in float32 under mixed precision too), the result cast back
            x, offset, weight = x.float(), offset.float(), weight.float()
            bias = bias.float() if bias is not None else None
        if use_gather and not torch.jit.is_scripting():
            # channels-last rows in, channels-last out (a (B, C_out, Ho, Wo) view of (B, Ho, Wo, C_out) memory)
            out = deform_conv2d_gather(
                x.permute(0, 2, 3, 1), offset, weight, bias, self.stride, self.padding, self.dilation
            ).permute(0, 3, 1, 2)
        else:
            out = torchvision.ops.deform_conv2d(
                x, offset, weight, bias, stride=self.stride, padding=self.padding, dilation=self.dilation
            )
        out = out.to(dtype)
        return out.masked_fill(nan_at, float("nan")) if has_nan else out


class DeformTokenMerge(nn.Module):
    """LITv2's DTM: 2x2 stride-2 deformable conv, BatchNorm, GELU; (B, C, H, W) -> (B, C_out, H // 2, W // 2).

    An odd last row / column is dropped (2x2 stride-2 windows without padding), as in the official dense code.
    """

    def __init__(self, in_chs: int, out_chs: int, impl: str = "auto", device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.dconv = DeformConv2dPack(in_chs, out_chs, kernel_size=2, stride=2, padding=0, impl=impl, **dd)
        self.norm = nn.BatchNorm2d(out_chs, **dd)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.dconv(x)))
