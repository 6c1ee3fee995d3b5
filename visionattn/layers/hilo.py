"""HiLo attention (LITv2): the heads split into a windowed high-frequency group and a pooled-key low-frequency group.

Paper: https://arxiv.org/abs/2205.13213 (Zizheng Pan, Jianfei Cai, Bohan Zhuang), NeurIPS 2022.

* Hi-Fi (``h_heads`` = heads - ``l_heads``): self-attention inside non-overlapping ``window_size`` x ``window_size``
  windows (no shift, no relative position bias), projected by ``h_proj``.
* Lo-Fi (``l_heads`` = ``int(heads * alpha)``): every token queries keys / values computed from the
  ``window_size`` x ``window_size`` average-pooled map, projected by ``l_proj``.
* The output is the channel concatenation [Hi-Fi, Lo-Fi] (no projection mixes the two groups). ``window_size=1``
  is plain multi-head self-attention with every head in the Lo-Fi weights (LITv2's last stage).

Both groups run on ``F.scaled_dot_product_attention``. ``alpha`` may be anything in [0, 1] (0: Hi-Fi only, 1: Lo-Fi
only), as in the paper's sweep.

Size rule: a map whose sides are not multiples of the window is zero-padded on the right / bottom to the next
multiple. With ``mask_padding=True`` (default) the padded tokens are kept out of the attention: a Hi-Fi window
that holds padding masks those keys, and a Lo-Fi pooled key averages the real tokens of its window only. With
``mask_padding=False`` the padded zeros are attended and averaged in, as the official detection / segmentation
code does. Without padding both are the official classification model's computation.
"""

# No `from __future__ import annotations`: TorchScript compiles forward from its annotations.
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module

__all__ = ["HiLo", "hilo_heads", "linear", "plain_ops_wanted"]


def _probe_onednn_linear():
    """torch's oneDNN inner product (fp32: the same products as F.linear, bias and a residual added in its epilogue),
    or None where this torch build lacks it or its private signature differs (checked once on a tiny input)."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        op = torch.ops.mkldnn._linear_pointwise
        x, w = torch.linspace(-1, 1, 12).reshape(3, 4), torch.linspace(-2, 1, 20).reshape(5, 4)
        b, r = torch.linspace(0, 1, 5), torch.linspace(1, -1, 15).reshape(3, 5)  # no draw from the global RNG
        expected = F.linear(x, w, b)
        if not torch.allclose(op(x, w, b, "none", [], ""), expected, atol=1e-5):
            return None
        if not torch.allclose(op.binary(x, r, w, b, "add"), expected + r, atol=1e-5):
            return None
        return op
    except (AttributeError, RuntimeError, TypeError):
        return None


_ONEDNN_LINEAR = _probe_onednn_linear()


def plain_ops_wanted() -> bool:
    """True under a dispatch mode (FlopCounterMode, fake tensors ...), which counts and knows only aten's ops, and
    under CPU autocast, whose casts apply to aten's ops."""
    return torch.utils._python_dispatch._get_current_dispatch_mode() is not None or torch.is_autocast_enabled("cpu")


class _OneDNNLinear(torch.autograd.Function):
    """x @ W.T + b (+ residual) on oneDNN; the backward computes F.linear's gradients (grad @ W on oneDNN)."""

    @staticmethod
    def forward(ctx, x, weight, bias, residual):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if residual is None:
            return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
        return _ONEDNN_LINEAR.binary(x, residual, weight, bias, "add")

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        grad_2d = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[0]:  # grad @ W is an inner product with W.T as the weight (faster there too)
            grad_x = _ONEDNN_LINEAR(grad.contiguous(), weight.t(), None, "none", [], "")
        if ctx.needs_input_grad[1]:
            grad_w = grad_2d.t().mm(x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_2d.sum(0)
        return grad_x, grad_w, grad_b, grad if ctx.needs_input_grad[3] else None


def _onednn_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, residual: torch.Tensor | None
) -> torch.Tensor | None:
    """oneDNN's result where it applies (float32 on CPU, outside tracing and ONNX export), else None."""
    if (
        _ONEDNN_LINEAR is None
        or x.device.type != "cpu"
        or x.dtype != torch.float32
        or weight.dtype != torch.float32
        or (residual is not None and residual.shape != x.shape[:-1] + weight.shape[:1])
        or torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or plain_ops_wanted()
    ):
        return None
    tensors = (x, weight, bias, residual)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _OneDNNLinear.apply(*tensors)
    if residual is None:
        return _ONEDNN_LINEAR(x, weight, bias, "none", [], "")
    return _ONEDNN_LINEAR.binary(x, residual, weight, bias, "add")


@register_notrace_function
def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, residual: torch.Tensor | None = None
) -> torch.Tensor:
    """``residual + F.linear(x, weight, bias)`` (residual optional, of the output's shape).

    float32 on CPU runs on oneDNN's inner product, which adds the bias and the residual while it writes the
    output (``F.linear`` writes the broadcast bias first and the residual sum is one more pass); the products are
    the same. Elsewhere (other dtypes / devices, TorchScript, tracing, ONNX export, under a dispatch mode such as
    ``FlopCounterMode``) it is ``F.linear`` and ``+``.
    """
    if not torch.jit.is_scripting():
        fast = _onednn_linear(x, weight, bias, residual)
        if fast is not None:
            return fast
    out = F.linear(x, weight, bias)
    return out if residual is None else residual + out


def hilo_heads(num_heads: int, alpha: float, window_size: int) -> tuple[int, int]:
    """(Lo-Fi heads, Hi-Fi heads) of a HiLo layer: ``int(num_heads * alpha)`` Lo-Fi heads, the rest Hi-Fi;
    every head is Lo-Fi when ``window_size == 1`` (plain self-attention)."""
    if window_size == 1:
        return num_heads, 0
    low = int(num_heads * alpha)
    return low, num_heads - low


@register_notrace_module
class HiLo(nn.Module):
    """HiLo attention; (B, H, W, C) -> (B, H, W, C), any H, W >= 1.

    Args:
        dim: channels C.
        num_heads: heads in total (head dim = dim // num_heads for both groups).
        window_size: Hi-Fi window side and Lo-Fi pooling size (the paper's ``s``); 1: plain self-attention.
        alpha: share of the heads in the Lo-Fi group, 0 ... 1.
        qkv_bias: bias in the q / kv / qkv projections.
        qk_scale: attention scale (default head_dim ** -0.5).
        mask_padding: keep the window padding out of both groups (False: the official dense code's padding).
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projections.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        window_size: int = 2,
        alpha: float = 0.5,
        qkv_bias: bool = False,
        qk_scale: float | None = None,
        mask_padding: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if not isinstance(num_heads, int) or num_heads < 1 or dim % num_heads:
            raise ValueError(f"num_heads={num_heads!r} must be a positive int dividing dim={dim}")
        if isinstance(window_size, bool) or not isinstance(window_size, int) or window_size < 1:
            raise ValueError(f"window_size={window_size!r} must be an int >= 1 (1: plain self-attention)")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha={alpha!r} must be a number in [0, 1] (the share of Lo-Fi heads)")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.ws = window_size
        self.alpha = float(alpha)
        self.mask_padding = mask_padding
        self.l_heads, self.h_heads = hilo_heads(num_heads, alpha, window_size)
        self.l_dim = self.l_heads * self.head_dim
        self.h_dim = self.h_heads * self.head_dim
        self.scale = qk_scale or self.head_dim**-0.5
        self.attn_drop = attn_drop
        if self.l_heads > 0:
            self.l_q = nn.Linear(dim, self.l_dim, bias=qkv_bias, **dd)
            self.l_kv = nn.Linear(dim, 2 * self.l_dim, bias=qkv_bias, **dd)
            self.l_proj = nn.Linear(self.l_dim, self.l_dim, **dd)
        else:
            self.l_q = self.l_kv = self.l_proj = None
        if self.h_heads > 0:
            self.h_qkv = nn.Linear(dim, 3 * self.h_dim, bias=qkv_bias, **dd)
            self.h_proj = nn.Linear(self.h_dim, self.h_dim, **dd)
        else:
            self.h_qkv = self.h_proj = None
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, window_size={self.ws}, lofi_heads={self.l_heads}, hifi_heads={self.h_heads}, "
            f"mask_padding={self.mask_padding}"
        )

    def _drop(self) -> float:
        return self.attn_drop if self.training else 0.0

    def _hifi(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, Hp, Wp, C) padded map -> (B, H, W, h_dim)."""
        b, hp, wp, c = x.shape
        ws, heads, hd = self.ws, self.h_heads, self.head_dim
        nh, nw = hp // ws, wp // ws
        assert self.h_qkv is not None and self.h_proj is not None
        x = x.view(b, nh, ws, nw, ws, c).transpose(2, 3).reshape(b * nh * nw, ws * ws, c)
        q, k, v = (
            linear(x, self.h_qkv.weight, self.h_qkv.bias)
            .view(b * nh * nw, ws * ws, 3, heads, hd)
            .permute(2, 0, 3, 1, 4)
            .unbind(0)
        )
        mask: torch.Tensor | None = None
        if self.mask_padding and (hp != height or wp != width):
            valid = torch.ones(height, width, dtype=torch.bool, device=x.device)
            valid = F.pad(valid, (0, wp - width, 0, hp - height))
            # keys of each window; the window's first token is always real, so no row is fully masked
            mask = valid.view(nh, ws, nw, ws).transpose(1, 2).reshape(1, nh * nw, 1, 1, ws * ws)
            mask = mask.expand(b, -1, -1, -1, -1).reshape(b * nh * nw, 1, 1, ws * ws)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self._drop(), scale=self.scale)
        out = out.transpose(1, 2).reshape(b, nh, nw, ws, ws, self.h_dim).transpose(2, 3).reshape(b, hp, wp, -1)
        return linear(out[:, :height, :width], self.h_proj.weight, self.h_proj.bias)

    def _lofi(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(B, Hp, Wp, C) padded map -> (B, H, W, l_dim)."""
        b, hp, wp, c = x.shape
        heads, hd = self.l_heads, self.head_dim
        assert self.l_q is not None and self.l_kv is not None and self.l_proj is not None
        x_real = x[:, :height, :width]
        q = linear(x_real, self.l_q.weight, self.l_q.bias).view(b, height * width, heads, hd).transpose(1, 2)
        if self.ws > 1:
            pooled = F.avg_pool2d(x.permute(0, 3, 1, 2), self.ws, self.ws)
            if self.mask_padding and (hp != height or wp != width):
                # padded tokens are zeros: dividing by the real-token share averages the real tokens only
                valid = torch.ones(1, 1, height, width, dtype=x.dtype, device=x.device)
                share = F.avg_pool2d(F.pad(valid, (0, wp - width, 0, hp - height)), self.ws, self.ws)
                pooled = pooled / share
            kv_in = pooled.flatten(2).transpose(1, 2)
        else:
            kv_in = x_real.reshape(b, height * width, c)
        k, v = (
            linear(kv_in, self.l_kv.weight, self.l_kv.bias).view(b, -1, 2, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
        )
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self._drop(), scale=self.scale)
        return linear(out.transpose(1, 2).reshape(b, height, width, self.l_dim), self.l_proj.weight, self.l_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, height, width, _ = x.shape
        pad_b, pad_r = (-height) % self.ws, (-width) % self.ws
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        if self.l_heads == 0:
            out = self._hifi(x, height, width)
        elif self.h_heads == 0:
            out = self._lofi(x, height, width)
        else:
            out = torch.cat([self._hifi(x, height, width), self._lofi(x, height, width)], dim=-1)
        return self.proj_drop(out)
