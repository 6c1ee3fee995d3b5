"""Bi-level routing attention (BiFormer, CVPR'23).

Tokens are laid out by regions: ``q, k, v`` are ``(B, heads, regions, region_tokens, head_dim)`` and
``routing`` is ``(B, regions, topk)`` (int, shared by all heads): query region ``r`` attends to the
tokens of key regions ``routing[b, r, :]``, with one softmax over all ``topk * region_tokens`` keys.

The reference gathers the routed K/V regions through flat indices (``index_select`` on a
``(B * regions, ...)`` view): one ``topk``-times copy of K and V, never the official
``expand``-then-``gather`` of a ``(B, regions, regions, ...)`` view that ONNX materialises.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import _dispatch

__all__ = ["bra", "bra_reference", "gather_regions", "BiLevelRoutingAttentionOp"]


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, routing: torch.Tensor, mask: torch.Tensor | None):
    if q.dim() != 5:
        raise ValueError(f"q must be (B, heads, regions, region_tokens, head_dim), got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.dim() != 5 or v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"k must match q {tuple(q.shape)} and v must match it but for head_dim; "
            f"got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise TypeError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    b, _, nr, r, _ = q.shape
    if routing.dim() != 3 or routing.shape[0] != b or routing.shape[1] != nr:
        raise ValueError(f"routing must be (B={b}, regions={nr}, topk), got shape {tuple(routing.shape)}")
    if routing.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"routing must be an int32 or int64 tensor of region indices, got {routing.dtype}")
    if routing.shape[2] < 1 or routing.shape[2] > nr:
        raise ValueError(f"topk={routing.shape[2]} must be between 1 and the number of regions ({nr})")
    if mask is not None and (mask.shape != (b, nr, r) or mask.dtype != torch.bool):
        raise ValueError(
            f"key_padding_mask must be a bool tensor (B, regions, region_tokens) = {(b, nr, r)} "
            f"(True = real token), got {mask.dtype} {tuple(mask.shape)}"
        )


def gather_regions(x: torch.Tensor, routing: torch.Tensor) -> torch.Tensor:
    """Routed regions of ``x`` through flat indices.

    x: (B, heads, regions, R, d); routing: (B, regions, topk) -> (B, heads, regions, topk * R, d).
    """
    b, h, nr, r, d = x.shape
    topk = routing.shape[-1]
    offsets = torch.arange(b, device=routing.device, dtype=routing.dtype).view(b, 1, 1) * nr
    flat_idx = (routing + offsets).reshape(-1)
    flat = x.transpose(1, 2).reshape(b * nr, h, r, d)
    picked = flat.index_select(0, flat_idx).view(b, nr, topk, h, r, d)
    return picked.permute(0, 3, 1, 2, 4, 5).reshape(b, h, nr, topk * r, d)


def bra_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    routing: torch.Tensor,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch BRA; differentiable, runs anywhere, the ground truth for the kernels.

    q, k: (B, heads, regions, R, d); v: (B, heads, regions, R, dv); routing: (B, regions, topk);
    key_padding_mask: (B, regions, R) bool, True = real token. Returns (B, heads, regions, R, dv).
    A query whose routed keys are all padding gets a zero output.

    Memory (measured by tests/test_kernel_bra.py): the peak is about ``2 * L + (2 * topk + 2) * Q`` bytes,
    with L the size of the logits ``(B, heads, regions, R, topk * R)`` (alive together with the
    probabilities while the softmax runs) and Q the size of q (the scaled q, the output and the
    ``topk`` gathered copies of K and of V). For BiFormer's first stage at 600x500 input (150x125
    tokens padded to 154x126, 7x7 regions of 22x18 = 396 tokens, 64 channels as 2 heads of 32, topk 1)
    L = 61.5 MB and Q = 5.0 MB: a peak of 143 MB per image in fp32 while autograd records (133 MB
    without), with or without a key padding mask; q, k and v themselves are 15 MB.
    """
    _check(q, k, v, routing, key_padding_mask)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    routing = routing.long()
    kg = gather_regions(k, routing)
    vg = gather_regions(v, routing)
    logits = torch.matmul(q * scale, kg.transpose(-1, -2))
    keep = None
    if key_padding_mask is not None:
        b, nr, r = key_padding_mask.shape
        keep = gather_regions(key_padding_mask.view(b, 1, nr, r, 1), routing).view(b, 1, nr, 1, -1)
        # In place (the matmul backward does not need its output); finfo.min instead of -inf keeps rows
        # with no real key finite, and they are zeroed below.
        logits.masked_fill_(~keep, torch.finfo(logits.dtype).min)
    attn = logits.softmax(dim=-1)
    del logits
    out = torch.matmul(attn, vg)
    if keep is not None:
        out = out * keep.any(dim=-1, keepdim=True).to(out.dtype)
    return out


def bra(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    routing: torch.Tensor,
    *,
    scale: float | None = None,
    key_padding_mask: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Bi-level routing attention; see :func:`bra_reference` for shapes.

    ``backend``: None (use ``VISIONATTN_KERNELS`` / the device), "auto", "triton" or "reference".
    """
    path = _dispatch.choose("bra", q, k, v, backend=backend)
    if path == "triton":
        raise NotImplementedError("the Triton BRA kernel is not available yet; use backend='reference'")
    _dispatch.record("bra", path)
    return bra_reference(q, k, v, routing, scale=scale, key_padding_mask=key_padding_mask)


class BiLevelRoutingAttentionOp(nn.Module):
    """Module form of :func:`bra` with a fixed scale and backend."""

    def __init__(self, scale: float | None = None, backend: str | None = None):
        super().__init__()
        self.scale = scale
        self.backend = backend

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        routing: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q, k: (B, heads, regions, R, d); v: (B, heads, regions, R, dv) -> (B, heads, regions, R, dv)."""
        return bra(q, k, v, routing, scale=self.scale, key_padding_mask=key_padding_mask, backend=self.backend)
