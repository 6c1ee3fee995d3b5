"""Bi-level routing attention (BiFormer, CVPR 2023) as an NHWC token mixer.

The feature map is cut into ``n_win x n_win`` regions (``n_win`` is a count of regions per side, not a region
size). Each query region picks the ``topk`` key regions whose mean key is closest to its mean query (routing,
without gradient), then every query token attends to all tokens of those regions (one softmax), plus a
depth-wise convolution of V (LePE). The token attention runs through :func:`visionattn.kernels.bra`.

Inputs of any size: the map is padded right/bottom to a multiple of ``n_win``. With ``mask_padding=True``
(default) padded tokens take part in nothing that reaches a real token: region descriptors average real tokens
only, regions holding no real token are never routed to, padded keys are masked out of the softmax, and LePE
convolves the unpadded V. With ``mask_padding=False`` the layer reproduces the official ``auto_pad`` path
bit for bit (zero padding of the input before the qkv projection, nothing masked).
"""

# No `from __future__ import annotations`: TorchScript reads the annotations of the ignored kernel call.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from visionattn.kernels import bra

__all__ = ["BiLevelRoutingAttention", "region_grid"]


def region_grid(height: int, width: int, n_win: int) -> tuple[int, int, int, int]:
    """Region size and padded map size for ``n_win`` regions per side: ``(rh, rw, Hp, Wp)``."""
    rh, rw = math.ceil(height / n_win), math.ceil(width / n_win)
    return rh, rw, rh * n_win, rw * n_win


def _pad_hw(t: torch.Tensor, pad_b: int, pad_r: int) -> torch.Tensor:
    """Pad an NHWC tensor at the bottom and right: (B, H, W, C) -> (B, H + pad_b, W + pad_r, C)."""
    return F.pad(t, (0, 0, 0, pad_r, 0, pad_b))


def _to_regions(t: torch.Tensor, n_win: int, rh: int, rw: int, heads: int) -> torch.Tensor:
    """(B, Hp, Wp, heads * d) -> (B, heads, n_win**2, rh * rw, d), regions and their tokens row-major."""
    b, _, _, c = t.shape
    t = t.view(b, n_win, rh, n_win, rw, heads, c // heads)
    return t.permute(0, 5, 1, 3, 2, 4, 6).reshape(b, heads, n_win * n_win, rh * rw, c // heads)


def _from_regions(t: torch.Tensor, n_win: int, rh: int, rw: int) -> torch.Tensor:
    """(B, heads, n_win**2, rh * rw, d) -> (B, Hp, Wp, heads * d)."""
    b, heads, _, _, d = t.shape
    t = t.view(b, heads, n_win, n_win, rh, rw, d)
    return t.permute(0, 2, 4, 3, 5, 1, 6).reshape(b, n_win * rh, n_win * rw, heads * d)


# FX traces through models as a leaf (region sizes and padding depend on the input size, which symbolic tracing
# cannot branch on); TorchScript compiles it, calling the kernel dispatch in Python.
@register_notrace_module
class BiLevelRoutingAttention(nn.Module):
    """Bi-level routing attention with LePE; (B, H, W, C) -> (B, H, W, C).

    Args:
        dim: channels C of input and output.
        num_heads: heads of the token attention; must divide ``dim`` and ``qk_dim``.
        n_win: regions per side (the map is split into ``n_win ** 2`` regions).
        qk_dim: channels of queries and keys (default ``dim``).
        qk_scale: logit scale for routing and attention (default ``qk_dim ** -0.5``, see below).
        topk: key regions per query region; clipped to the regions holding real tokens.
        side_dwconv: kernel of the depth-wise LePE convolution on V (0 disables it).
        mask_padding: keep padded tokens out of routing, attention and LePE (see the module docstring).
        proj_drop: dropout after the output projection.
        backend: kernel path for :func:`visionattn.kernels.bra` (None: environment / device).
        device, dtype: factory kwargs of the parameters (timm's convention; ``device="meta"`` allocates nothing).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        n_win: int = 7,
        qk_dim: int | None = None,
        qk_scale: float | None = None,
        topk: int = 4,
        side_dwconv: int = 5,
        mask_padding: bool = True,
        proj_drop: float = 0.0,
        backend: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        qk_dim = qk_dim or dim
        if num_heads < 1 or dim % num_heads or qk_dim % num_heads:
            raise ValueError(
                f"num_heads={num_heads} must be >= 1 and divide dim={dim} and qk_dim={qk_dim}; "
                f"pick a head count that divides both"
            )
        if not isinstance(n_win, int) or n_win < 1:
            raise ValueError(f"n_win={n_win!r} must be a positive int (regions per side, e.g. 7)")
        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"topk={topk!r} must be a positive int (key regions routed to each query region)")
        if side_dwconv < 0 or (side_dwconv > 0 and side_dwconv % 2 == 0):
            raise ValueError(f"side_dwconv={side_dwconv} must be 0 (no LePE) or an odd kernel size such as 5")
        self.dim = dim
        self.qk_dim = qk_dim
        self.num_heads = num_heads
        self.n_win = n_win
        self.topk = topk
        self.mask_padding = mask_padding
        self.backend = backend
        # Checkpoint-parity quirk ("full-dim scale"): the official BRA scales routing and token-attention logits
        # by qk_dim ** -0.5, the whole query width, not the per-head width; released weights were trained so.
        self.scale = qk_scale or qk_dim**-0.5

        # One projection whose rows are [q | k | v], each head-major, as in the official checkpoints.
        self.qkv = nn.Linear(dim, 2 * qk_dim + dim, **dd)
        self.lepe = (
            nn.Conv2d(dim, dim, side_dwconv, padding=side_dwconv // 2, groups=dim, **dd) if side_dwconv else None
        )
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, qk_dim={self.qk_dim}, num_heads={self.num_heads}, n_win={self.n_win}, "
            f"topk={self.topk}, mask_padding={self.mask_padding}"
        )

    def _lepe(self, v: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        if self.lepe is None:
            return torch.zeros_like(v)
        return self.lepe(v.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)

    def _route(
        self, q: torch.Tensor, k: torch.Tensor, real: torch.Tensor | None, rh: int, rw: int, topk: int
    ) -> torch.Tensor:
        """Top-k key regions per query region from region-mean q and k (no gradient).

        q, k: (B, Hp, Wp, qk_dim); real: (Hp, Wp) bool or None (True = real token) -> (B, n_win**2, topk) int64.
        """
        with torch.no_grad():
            b, s = q.shape[0], self.n_win
            q = q.view(b, s, rh, s, rw, -1)
            k = k.view(b, s, rh, s, rw, -1)
            if real is None:
                q_win, k_win = q.mean((2, 4)), k.mean((2, 4))
                logits = (q_win.reshape(b, s * s, -1) * self.scale) @ k_win.reshape(b, s * s, -1).transpose(-1, -2)
            else:
                w = real.view(1, s, rh, s, rw, 1).to(q.dtype)
                count = w.sum((2, 4))
                empty = (count == 0).view(1, 1, s * s)
                count = count.clamp(min=1)
                q_win, k_win = (q * w).sum((2, 4)) / count, (k * w).sum((2, 4)) / count
                logits = (q_win.reshape(b, s * s, -1) * self.scale) @ k_win.reshape(b, s * s, -1).transpose(-1, -2)
                # topk is clipped to the regions holding real tokens, so -inf is never selected.
                logits = logits.masked_fill(empty, float("-inf"))
            return logits.topk(topk, dim=-1).indices

    @torch.jit.ignore
    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        routing: torch.Tensor,
        key_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The token attention through the kernel dispatch (Python: Triton launches and autograd Functions).

        q, k: (B, heads, regions, R, qk_dim / heads); v: (B, heads, regions, R, dim / heads) -> like v.
        """
        return bra(q, k, v, routing, scale=self.scale, key_padding_mask=key_mask, backend=self.backend)

    def forward(self, x: torch.Tensor, return_routing: bool = False):
        """(B, H, W, C) -> (B, H, W, C); with ``return_routing`` also the (B, n_win**2, topk) region indices
        (eager only: a TorchScript-compiled layer returns the map alone)."""
        if x.dim() != 4 or x.shape[-1] != self.dim:
            shape = ", ".join([str(n) for n in x.shape])
            raise ValueError(f"x must be (B, H, W, C={self.dim}) channels-last, got shape ({shape})")
        b, h, w = x.shape[0], x.shape[1], x.shape[2]
        s = self.n_win
        rh, rw, hp, wp = region_grid(h, w, s)
        pad_b, pad_r = hp - h, wp - w
        padded = pad_b > 0 or pad_r > 0
        real: torch.Tensor | None = None
        key_mask: torch.Tensor | None = None

        if self.mask_padding:
            q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
            lepe = self._lepe(v)
            topk = min(self.topk, math.ceil(h / rh) * math.ceil(w / rw))
            if padded:
                q, k, v = _pad_hw(q, pad_b, pad_r), _pad_hw(k, pad_b, pad_r), _pad_hw(v, pad_b, pad_r)
                real_hw = torch.zeros(hp, wp, dtype=torch.bool, device=x.device)
                real_hw[:h, :w] = True
                key_mask = real_hw.view(s, rh, s, rw).transpose(1, 2).reshape(1, s * s, rh * rw).expand(b, -1, -1)
                real = real_hw
        else:
            # Official auto_pad: zero-pad the input, so padded tokens carry the qkv bias and are never masked.
            if padded:
                x = _pad_hw(x, pad_b, pad_r)
            q, k, v = self.qkv(x).split([self.qk_dim, self.qk_dim, self.dim], dim=-1)
            lepe = self._lepe(v)[:, :h, :w]
            topk = min(self.topk, s * s)

        routing = self._route(q, k, real, rh, rw, topk)
        m = self.num_heads
        out = self._attend(
            _to_regions(q, s, rh, rw, m), _to_regions(k, s, rh, rw, m), _to_regions(v, s, rh, rw, m), routing, key_mask
        )
        out = _from_regions(out, s, rh, rw)[:, :h, :w]
        out = self.proj_drop(self.proj(out + lepe))
        if not torch.jit.is_scripting():
            # TorchScript needs one return type; the routing is an eager-mode debugging aid.
            if return_routing:
                return out, routing
        return out
