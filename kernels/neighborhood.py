"""2-D neighborhood attention (NAT / DiNAT, CVPR'23; TransNeXt's sliding window, CVPR'24).

Every query of a ``(H, W)`` map attends to a ``kh x kw`` window of keys around it. Per axis, with length
``L``, kernel ``K`` and dilation ``d`` (NATTEN's rule):

- dilation groups: position ``i`` belongs to group ``g = i % d`` with in-group coordinate ``i' = i // d``;
  a query only sees keys of its own group, whose length is ``L_g = ceil((L - g) / d)``;
- ``left = K // 2`` keys before the query (``K // 2 - 1`` after it when ``K`` is even);
- ``border="shift"``: the window starts at ``clamp(i' - left, 0, L_g - K)``, so it is shifted inward at the
  borders and every query sees exactly ``K`` keys per axis (needs ``K * d <= L``);
- ``border="mask"``: the window starts at ``i' - left`` and keys outside the image are left out of the
  softmax (TransNeXt's 3x3 sliding window); any map size works.

The 2-D window is the product of the two axes. An optional relative positional bias ``rpb``
``(heads, 2kh-1, 2kw-1)`` is added to the logits at index ``(j' - i') + (K - 1)`` per axis (NAT/DiNAT
checkpoints). Optional ``additional_keys/values`` ``(B, heads, M, d)`` are attended by every query inside the
same softmax (TransNeXt's pooled keys), with an optional per-query bias on their logits ``additional_bias``
``(B or 1, heads, H, W, M)`` (TransNeXt's continuous position bias). The Triton path folds that bias into the
head dimension (``q`` gains the bias row, the extra keys an identity block, the window keys and all values zeros),
so its head-dim limit applies to ``head_dim + M``.

The reference gathers the ``kh * kw`` neighbours of every query with two index tensors (one per axis); the
Triton kernels walk the union of the windows of a tile of queries (its key halo) with an online softmax and
never materialise the attention matrix.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import _dispatch

__all__ = ["na2d", "na2d_reference", "NeighborhoodAttention2DOp", "neighbor_index"]

_BORDERS = ("shift", "mask")


# ----------------------------------------------------------------------------------------------------------
# argument checks


def _pair(value, name: str) -> tuple[int, int]:
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or any(isinstance(x, bool) or not isinstance(x, int) for x in items):
        raise TypeError(f"{name} must be an int or a pair of ints (rows, cols), got {value!r}")
    if any(x < 1 for x in items):
        raise ValueError(f"{name}={value!r} must be >= 1 on both axes")
    return items


def _check(q, k, v, kernel_size, dilation, rpb, additional_keys, additional_values, border, additional_bias=None):
    if border not in _BORDERS:
        raise ValueError(f"border={border!r} is not one of {_BORDERS}; use 'shift' (NATTEN) or 'mask' (TransNeXt)")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if q.dim() != 5:
        raise ValueError(f"q must be (B, heads, H, W, head_dim), got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(
            f"k and v must have the shape of q {tuple(q.shape)}, got k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if not q.is_floating_point() or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    kh, kw = _pair(kernel_size, "kernel_size")
    dh, dw = _pair(dilation, "dilation")
    b, heads, h, w, d = q.shape
    if border == "shift" and (kh * dh > h or kw * dw > w):
        raise ValueError(
            f"border='shift' needs kernel_size * dilation <= the map on both axes, got kernel_size={(kh, kw)}, "
            f"dilation={(dh, dw)} for a {h}x{w} map; pad the input (e.g. F.pad) to at least "
            f"{max(h, kh * dh)}x{max(w, kw * dw)}, lower kernel_size/dilation, or use border='mask'"
        )
    if rpb is not None:
        if not isinstance(rpb, torch.Tensor) or not rpb.is_floating_point():
            raise TypeError(f"rpb must be a floating tensor (heads, 2*kh-1, 2*kw-1), got {type(rpb).__name__}")
        if tuple(rpb.shape) != (heads, 2 * kh - 1, 2 * kw - 1):
            raise ValueError(
                f"rpb must be (heads, 2*kh-1, 2*kw-1) = {(heads, 2 * kh - 1, 2 * kw - 1)} for kernel_size "
                f"{(kh, kw)}, got {tuple(rpb.shape)}"
            )
    if (additional_keys is None) != (additional_values is None):
        raise ValueError("additional_keys and additional_values must be given together (or both left as None)")
    if additional_keys is not None:
        ak, av = additional_keys, additional_values
        if ak.dim() != 4 or ak.shape[:2] != (b, heads) or ak.shape[3] != d or av.shape != ak.shape:
            raise ValueError(
                f"additional_keys/values must both be (B, heads, M, head_dim) = ({b}, {heads}, M, {d}), "
                f"got {tuple(ak.shape)} and {tuple(av.shape)}"
            )
        if ak.dtype != q.dtype or av.dtype != q.dtype:
            raise TypeError(f"additional_keys/values must have q's dtype {q.dtype}, got {ak.dtype}, {av.dtype}")
    if additional_bias is not None:
        if additional_keys is None:
            raise ValueError("additional_bias needs additional_keys/values (it biases their logits); pass them too")
        m = additional_keys.shape[2]
        ab = additional_bias
        if not isinstance(ab, torch.Tensor) or ab.dtype != q.dtype:
            raise TypeError(f"additional_bias must be a tensor of q's dtype {q.dtype}, got {getattr(ab, 'dtype', ab)}")
        if ab.dim() != 5 or ab.shape[0] not in (1, b) or tuple(ab.shape[1:]) != (heads, h, w, m):
            raise ValueError(
                f"additional_bias must be (B or 1, heads, H, W, M) = ({b} or 1, {heads}, {h}, {w}, {m}), "
                f"got {tuple(ab.shape)}"
            )
    return kh, kw, dh, dw


# ----------------------------------------------------------------------------------------------------------
# reference


def neighbor_index(
    length: int, kernel: int, dilation: int, border: str, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Neighbours of every position of one axis.

    Returns ``index`` (L, K) long (key positions, clamped into range), ``valid`` (L, K) bool (False only in
    border="mask" for keys outside the axis) and ``bias_index`` (L, K) long (``(j' - i') + (K - 1)``).
    """
    pos = torch.arange(length, device=device)
    group = pos % dilation
    inner = pos // dilation
    group_len = torch.div(length - group + dilation - 1, dilation, rounding_mode="floor")
    start = inner - kernel // 2
    if border == "shift":
        start = torch.minimum(start.clamp(min=0), group_len - kernel)
    key_inner = start[:, None] + torch.arange(kernel, device=device)
    valid = (key_inner >= 0) & (key_inner < group_len[:, None])
    index = torch.minimum(key_inner.clamp(min=0), group_len[:, None] - 1) * dilation + group[:, None]
    bias_index = key_inner - inner[:, None] + kernel - 1
    return index, valid, bias_index


def na2d_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    *,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    border: str = "shift",
    additional_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Plain PyTorch neighborhood attention; differentiable, runs anywhere, the ground truth for the kernels.

    q, k, v: (B, heads, H, W, d); rpb: (heads, 2kh-1, 2kw-1); additional_keys/values: (B, heads, M, d);
    additional_bias: (B or 1, heads, H, W, M). Returns (B, heads, H, W, d). Memory: the gathered K and V are
    ``kh * kw`` times the size of K and V.
    """
    kh, kw, dh, dw = _check(
        q, k, v, kernel_size, dilation, rpb, additional_keys, additional_values, border, additional_bias
    )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    h, w = q.shape[2:4]
    idx_h, valid_h, pb_h = neighbor_index(h, kh, dh, border, q.device)
    idx_w, valid_w, pb_w = neighbor_index(w, kw, dw, border, q.device)

    # flat positions of every query's window keys in (H, W, kh, kw) order: one gather gives the window-major layout
    # the products below read as batched matrix products (no permuted copy of the gathered keys / values)
    flat = (idx_h[:, None, :, None] * w + idx_w[None, :, None, :]).reshape(-1)

    def gather(x):  # (B, heads, H, W, d) -> (B, heads, H, W, kh * kw, d)
        return x.flatten(2, 3)[:, :, flat].unflatten(2, (h, w, kh * kw))

    logits = torch.einsum("bnhwd,bnhwkd->bnhwk", q * scale, gather(k)).unflatten(-1, (kh, kw))
    if rpb is not None:
        bias = rpb[:, pb_h[:, None, :, None], pb_w[None, :, None, :]]  # (heads, H, W, kh, kw)
        logits = logits + bias.to(logits.dtype)
    if border == "mask":
        valid = valid_h[:, None, :, None] & valid_w[None, :, None, :]  # (H, W, kh, kw)
        logits = logits.masked_fill(~valid, float("-inf"))
    logits = logits.flatten(-2)
    if additional_keys is not None:
        extra = torch.einsum("bnhwd,bnmd->bnhwm", q * scale, additional_keys)
        if additional_bias is not None:
            extra = extra + additional_bias
        attn = torch.cat([logits, extra], dim=-1).softmax(dim=-1)
        attn, attn_extra = attn.split([kh * kw, extra.shape[-1]], dim=-1)
        out = torch.einsum("bnhwm,bnmd->bnhwd", attn_extra, additional_values)
    else:
        attn = logits.softmax(dim=-1)
        out = 0
    return out + torch.einsum("bnhwk,bnhwkd->bnhwd", attn, gather(v))


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
#
# Layout: q/k/v/o contiguous (B*heads, H, W, D); LSE (B*heads, H*W) fp32 in log2 units. A program owns a
# TH x TW tile of in-group coordinates of one dilation group; its keys are the union of its queries' windows
# (a rectangle, because window starts are monotone in the query coordinate), visited BN keys at a time.

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _win_start(i, length, K: tl.constexpr, SHIFT: tl.constexpr):
        # first in-group key of the window of in-group query i
        if SHIFT:
            start = tl.minimum(tl.maximum(i - K // 2, 0), length - K)
        else:
            start = i - K // 2
        return start

    @triton.jit
    def _key_span(i0, i1, length, K: tl.constexpr, SHIFT: tl.constexpr):
        # in-group keys seen by the queries i0..i1 (i1 >= i0, both < length): [lo, hi]
        if SHIFT:
            lo = _win_start(i0, length, K, SHIFT)
            hi = _win_start(i1, length, K, SHIFT) + K - 1
        else:
            lo = tl.maximum(i0 - K // 2, 0)
            hi = tl.minimum(i1 + (K - 1 - K // 2), length - 1)
        return lo, hi

    @triton.jit
    def _query_span(j0, j1, length, K: tl.constexpr, SHIFT: tl.constexpr):
        # in-group queries whose window holds one of the keys j0..j1: [lo, hi]
        right = K - 1 - K // 2
        if SHIFT:
            lo = tl.where(j0 <= K - 1, 0, j0 - right)
            hi = tl.where(j1 >= length - K, length - 1, j1 + K // 2)
        else:
            lo = tl.maximum(j0 - right, 0)
            hi = tl.minimum(j1 + K // 2, length - 1)
        return lo, hi

    @triton.jit
    def _tile(pid, H, W, dil_h, dil_w, TH: tl.constexpr, TW: tl.constexpr):
        # program id -> dilation group (gy, gx), group lengths, and the tile's first in-group coordinates
        tiles_w = tl.cdiv(tl.cdiv(W, dil_w), TW)
        tiles_h = tl.cdiv(tl.cdiv(H, dil_h), TH)
        tx = pid % tiles_w
        rest = pid // tiles_w
        ty = rest % tiles_h
        rest = rest // tiles_h
        gx = rest % dil_w
        gy = rest // dil_w
        len_h = (H - gy + dil_h - 1) // dil_h
        len_w = (W - gx + dil_w - 1) // dil_w
        return gy, gx, len_h, len_w, ty * TH, tx * TW

    @triton.jit
    def _scores(
        a, b, ar, ac, br, bc, a_win_r, a_win_c, valid, RPB, head, scale2,
        KH: tl.constexpr, KW: tl.constexpr, HAS_RPB: tl.constexpr, PREC: tl.constexpr, A_IS_QUERY: tl.constexpr,
    ):  # fmt: skip
        # log2-scaled logits of a @ b for a tile of queries x keys (or keys x queries when not A_IS_QUERY),
        # with the window membership of every pair; a_win_* are the window starts of the query side
        s = tl.dot(a, b, input_precision=PREC) * scale2
        if A_IS_QUERY:
            dr = br[None, :] - ar[:, None]
            dc = bc[None, :] - ac[:, None]
            member = (br[None, :] >= a_win_r[:, None]) & (br[None, :] < a_win_r[:, None] + KH)
            member &= (bc[None, :] >= a_win_c[:, None]) & (bc[None, :] < a_win_c[:, None] + KW)
        else:
            dr = ar[:, None] - br[None, :]
            dc = ac[:, None] - bc[None, :]
            member = (ar[:, None] >= a_win_r[None, :]) & (ar[:, None] < a_win_r[None, :] + KH)
            member &= (ac[:, None] >= a_win_c[None, :]) & (ac[:, None] < a_win_c[None, :] + KW)
        member &= valid
        if HAS_RPB:
            bias_ptr = RPB + head * (2 * KH - 1) * (2 * KW - 1) + (dr + KH - 1) * (2 * KW - 1) + (dc + KW - 1)
            bias = tl.load(bias_ptr, mask=member, other=0.0).to(tl.float32)
            s += bias * 1.4426950408889634
        return tl.where(member, s, float("-inf")), member

    @triton.jit
    def _na2d_fwd_kernel(
        Q, K, V, RPB, AK, AV, Out, LSE,
        scale2, H, W, D, n_heads, M, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr, SHIFT: tl.constexpr, HAS_RPB: tl.constexpr,
        HAS_EXTRA: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
        TH: tl.constexpr, TW: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        bh = tl.program_id(1)
        head = bh % n_heads
        gy, gx, len_h, len_w, i0, j0 = _tile(tl.program_id(0), H, W, dil_h, dil_w, TH, TW)
        base = bh.to(tl.int64) * H * W * D
        offs_m = tl.arange(0, TH * TW)
        offs_d = tl.arange(0, BD)
        dmask = offs_d < D
        qr = i0 + offs_m // TW
        qc = j0 + offs_m % TW
        qvalid = (qr < len_h) & (qc < len_w)
        q_pix = (qr * dil_h + gy) * W + qc * dil_w + gx
        q = tl.load(Q + base + q_pix[:, None] * D + offs_d[None, :], mask=qvalid[:, None] & dmask[None, :], other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
        win_r = _win_start(qr, len_h, KH, SHIFT)
        win_c = _win_start(qc, len_w, KW, SHIFT)

        empty = (i0 >= len_h) | (j0 >= len_w)
        lo_r, hi_r = _key_span(i0, tl.minimum(i0 + TH - 1, len_h - 1), len_h, KH, SHIFT)
        lo_c, hi_c = _key_span(j0, tl.minimum(j0 + TW - 1, len_w - 1), len_w, KW, SHIFT)
        ext_c = hi_c - lo_c + 1
        n_keys = tl.where(empty, 0, (hi_r - lo_r + 1) * ext_c)

        # a finite start for the running max keeps rows without any key yet free of inf - inf
        m_i = tl.full([TH * TW], -1.0e30, tl.float32)
        l_i = tl.zeros([TH * TW], tl.float32)
        acc = tl.zeros([TH * TW, BD], tl.float32)
        for n0 in range(0, n_keys, BN):
            offs_n = n0 + tl.arange(0, BN)
            kvalid = offs_n < n_keys
            kr = lo_r + offs_n // ext_c
            kc = lo_c + offs_n % ext_c
            k_pix = (kr * dil_h + gy) * W + kc * dil_w + gx
            kt = tl.load(
                K + base + k_pix[None, :] * D + offs_d[:, None], mask=kvalid[None, :] & dmask[:, None], other=0.0
            )
            vv = tl.load(
                V + base + k_pix[:, None] * D + offs_d[None, :], mask=kvalid[:, None] & dmask[None, :], other=0.0
            )
            if UPCAST:
                kt = kt.to(tl.float32)
                vv = vv.to(tl.float32)
            valid = qvalid[:, None] & kvalid[None, :]
            s, _ = _scores(q, kt, qr, qc, kr, kc, win_r, win_c, valid, RPB, head, scale2, KH, KW, HAS_RPB, PREC, True)
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PREC)
            m_i = m_new
        if HAS_EXTRA:
            for e0 in range(0, M, BN):
                offs_e = e0 + tl.arange(0, BN)
                evalid = offs_e < M
                e_off = bh.to(tl.int64) * M * D + offs_e * D
                kt = tl.load(AK + e_off[None, :] + offs_d[:, None], mask=evalid[None, :] & dmask[:, None], other=0.0)
                vv = tl.load(AV + e_off[:, None] + offs_d[None, :], mask=evalid[:, None] & dmask[None, :], other=0.0)
                if UPCAST:
                    kt = kt.to(tl.float32)
                    vv = vv.to(tl.float32)
                s = tl.dot(q, kt, input_precision=PREC) * scale2
                s = tl.where(evalid[None, :], s, float("-inf"))
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PREC)
                m_i = m_new
        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        tl.store(
            Out + base + q_pix[:, None] * D + offs_d[None, :], out.to(Out.dtype.element_ty),
            mask=qvalid[:, None] & dmask[None, :],
        )  # fmt: skip
        tl.store(LSE + bh.to(tl.int64) * H * W + q_pix, m_i + tl.log2(l_safe), mask=qvalid)

    @triton.jit
    def _na2d_bwd_dq_kernel(
        Q, K, V, RPB, AK, AV, DO, LSE, DELTA, DQ, DS,
        scale2, scale, H, W, D, n_heads, M, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr, SHIFT: tl.constexpr, HAS_RPB: tl.constexpr,
        HAS_EXTRA: tl.constexpr, STORE_DS: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
        TH: tl.constexpr, TW: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        # dQ for a tile of queries (same key walk as the forward); with STORE_DS also the logit gradients at
        # their window positions, DS (B*heads, H*W, KH*KW), which the host reduces into d rpb
        bh = tl.program_id(1)
        head = bh % n_heads
        gy, gx, len_h, len_w, i0, j0 = _tile(tl.program_id(0), H, W, dil_h, dil_w, TH, TW)
        base = bh.to(tl.int64) * H * W * D
        offs_m = tl.arange(0, TH * TW)
        offs_d = tl.arange(0, BD)
        dmask = offs_d < D
        qr = i0 + offs_m // TW
        qc = j0 + offs_m % TW
        qvalid = (qr < len_h) & (qc < len_w)
        q_pix = (qr * dil_h + gy) * W + qc * dil_w + gx
        qd_mask = qvalid[:, None] & dmask[None, :]
        q = tl.load(Q + base + q_pix[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
        do = tl.load(DO + base + q_pix[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        lse = tl.load(LSE + bh.to(tl.int64) * H * W + q_pix, mask=qvalid, other=0.0)
        delta = tl.load(DELTA + bh.to(tl.int64) * H * W + q_pix, mask=qvalid, other=0.0)
        win_r = _win_start(qr, len_h, KH, SHIFT)
        win_c = _win_start(qc, len_w, KW, SHIFT)

        empty = (i0 >= len_h) | (j0 >= len_w)
        lo_r, hi_r = _key_span(i0, tl.minimum(i0 + TH - 1, len_h - 1), len_h, KH, SHIFT)
        lo_c, hi_c = _key_span(j0, tl.minimum(j0 + TW - 1, len_w - 1), len_w, KW, SHIFT)
        ext_c = hi_c - lo_c + 1
        n_keys = tl.where(empty, 0, (hi_r - lo_r + 1) * ext_c)

        dq = tl.zeros([TH * TW, BD], tl.float32)
        for n0 in range(0, n_keys, BN):
            offs_n = n0 + tl.arange(0, BN)
            kvalid = offs_n < n_keys
            kr = lo_r + offs_n // ext_c
            kc = lo_c + offs_n % ext_c
            k_pix = (kr * dil_h + gy) * W + kc * dil_w + gx
            kt = tl.load(
                K + base + k_pix[None, :] * D + offs_d[:, None], mask=kvalid[None, :] & dmask[:, None], other=0.0
            )
            vt = tl.load(
                V + base + k_pix[None, :] * D + offs_d[:, None], mask=kvalid[None, :] & dmask[:, None], other=0.0
            )
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
            valid = qvalid[:, None] & kvalid[None, :]
            s, member = _scores(
                q, kt, qr, qc, kr, kc, win_r, win_c, valid, RPB, head, scale2, KH, KW, HAS_RPB, PREC, True
            )
            p = tl.where(member, tl.exp2(s - lse[:, None]), 0.0)
            dp = tl.dot(do, vt, input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
            if STORE_DS:
                pos = (kr[None, :] - win_r[:, None]) * KW + (kc[None, :] - win_c[:, None])
                ds_ptr = DS + (bh.to(tl.int64) * H * W + q_pix[:, None]) * (KH * KW) + pos
                tl.store(ds_ptr, ds, mask=member)
        if HAS_EXTRA:
            for e0 in range(0, M, BN):
                offs_e = e0 + tl.arange(0, BN)
                evalid = offs_e < M
                e_off = bh.to(tl.int64) * M * D + offs_e * D
                kt = tl.load(AK + e_off[None, :] + offs_d[:, None], mask=evalid[None, :] & dmask[:, None], other=0.0)
                vt = tl.load(AV + e_off[None, :] + offs_d[:, None], mask=evalid[None, :] & dmask[:, None], other=0.0)
                if UPCAST:
                    kt = kt.to(tl.float32)
                    vt = vt.to(tl.float32)
                s = tl.dot(q, kt, input_precision=PREC) * scale2
                member = qvalid[:, None] & evalid[None, :]
                p = tl.where(member, tl.exp2(s - lse[:, None]), 0.0)
                dp = tl.dot(do, vt, input_precision=PREC)
                ds = p * (dp - delta[:, None])
                dq += tl.dot(ds.to(kt.dtype), tl.trans(kt), input_precision=PREC)
        tl.store(DQ + base + q_pix[:, None] * D + offs_d[None, :], (dq * scale).to(DQ.dtype.element_ty), mask=qd_mask)

    @triton.jit
    def _na2d_bwd_dkdv_kernel(
        Q, K, V, RPB, DO, LSE, DELTA, DK, DV,
        scale2, scale, H, W, D, n_heads, dil_h, dil_w,
        KH: tl.constexpr, KW: tl.constexpr, SHIFT: tl.constexpr, HAS_RPB: tl.constexpr,
        UPCAST: tl.constexpr, PREC: tl.constexpr,
        TH: tl.constexpr, TW: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        # dK, dV for a tile of keys: walks the rectangle of queries whose windows can hold one of its keys
        bh = tl.program_id(1)
        head = bh % n_heads
        gy, gx, len_h, len_w, i0, j0 = _tile(tl.program_id(0), H, W, dil_h, dil_w, TH, TW)
        base = bh.to(tl.int64) * H * W * D
        offs_m = tl.arange(0, TH * TW)
        offs_d = tl.arange(0, BD)
        dmask = offs_d < D
        kr = i0 + offs_m // TW
        kc = j0 + offs_m % TW
        kvalid = (kr < len_h) & (kc < len_w)
        k_pix = (kr * dil_h + gy) * W + kc * dil_w + gx
        kd_mask = kvalid[:, None] & dmask[None, :]
        k = tl.load(K + base + k_pix[:, None] * D + offs_d[None, :], mask=kd_mask, other=0.0)
        v = tl.load(V + base + k_pix[:, None] * D + offs_d[None, :], mask=kd_mask, other=0.0)
        if UPCAST:
            k = k.to(tl.float32)
            v = v.to(tl.float32)

        empty = (i0 >= len_h) | (j0 >= len_w)
        lo_r, hi_r = _query_span(i0, tl.minimum(i0 + TH - 1, len_h - 1), len_h, KH, SHIFT)
        lo_c, hi_c = _query_span(j0, tl.minimum(j0 + TW - 1, len_w - 1), len_w, KW, SHIFT)
        ext_c = hi_c - lo_c + 1
        n_queries = tl.where(empty, 0, (hi_r - lo_r + 1) * ext_c)

        dk = tl.zeros([TH * TW, BD], tl.float32)
        dv = tl.zeros([TH * TW, BD], tl.float32)
        for n0 in range(0, n_queries, BN):
            offs_n = n0 + tl.arange(0, BN)
            qvalid = offs_n < n_queries
            qr = lo_r + offs_n // ext_c
            qc = lo_c + offs_n % ext_c
            q_pix = (qr * dil_h + gy) * W + qc * dil_w + gx
            qd_mask = qvalid[:, None] & dmask[None, :]
            q = tl.load(Q + base + q_pix[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
            do = tl.load(DO + base + q_pix[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + bh.to(tl.int64) * H * W + q_pix, mask=qvalid, other=0.0)
            delta = tl.load(DELTA + bh.to(tl.int64) * H * W + q_pix, mask=qvalid, other=0.0)
            win_r = _win_start(qr, len_h, KH, SHIFT)
            win_c = _win_start(qc, len_w, KW, SHIFT)
            valid = kvalid[:, None] & qvalid[None, :]
            st, member = _scores(
                k, tl.trans(q), kr, kc, qr, qc, win_r, win_c, valid, RPB, head, scale2, KH, KW, HAS_RPB, PREC, False
            )
            pt = tl.where(member, tl.exp2(st - lse[None, :]), 0.0)
            dv += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
            dpt = tl.dot(v, tl.trans(do), input_precision=PREC)
            dst = pt * (dpt - delta[None, :])
            dk += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
        tl.store(DK + base + k_pix[:, None] * D + offs_d[None, :], (dk * scale).to(DK.dtype.element_ty), mask=kd_mask)
        tl.store(DV + base + k_pix[:, None] * D + offs_d[None, :], dv.to(DV.dtype.element_ty), mask=kd_mask)

    @triton.jit
    def _na2d_bwd_extra_kernel(
        Q, AK, AV, DO, LSE, DELTA, DAK, DAV,
        scale2, scale, N, D, M, queries_per_split,
        UPCAST: tl.constexpr, PREC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr,
    ):  # fmt: skip
        # partial dK, dV of the additional keys over one split of the queries; DAK/DAV (splits, B*heads, M, D)
        # fp32, summed over splits by the host (deterministic, no atomics)
        e_tile = tl.program_id(0)
        split = tl.program_id(1)
        bh = tl.program_id(2)
        offs_e = e_tile * BM + tl.arange(0, BM)
        offs_d = tl.arange(0, BD)
        dmask = offs_d < D
        evalid = offs_e < M
        e_off = bh.to(tl.int64) * M * D + offs_e[:, None] * D + offs_d[None, :]
        ed_mask = evalid[:, None] & dmask[None, :]
        ak = tl.load(AK + e_off, mask=ed_mask, other=0.0)
        av = tl.load(AV + e_off, mask=ed_mask, other=0.0)
        if UPCAST:
            ak = ak.to(tl.float32)
            av = av.to(tl.float32)
        base = bh.to(tl.int64) * N * D
        q_start = split * queries_per_split
        q_end = tl.minimum(q_start + queries_per_split, N)
        dak = tl.zeros([BM, BD], tl.float32)
        dav = tl.zeros([BM, BD], tl.float32)
        for n0 in range(q_start, q_end, BN):
            offs_n = n0 + tl.arange(0, BN)
            qvalid = offs_n < q_end
            qd_mask = qvalid[:, None] & dmask[None, :]
            q = tl.load(Q + base + offs_n[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
            do = tl.load(DO + base + offs_n[:, None] * D + offs_d[None, :], mask=qd_mask, other=0.0)
            if UPCAST:
                q = q.to(tl.float32)
                do = do.to(tl.float32)
            lse = tl.load(LSE + bh.to(tl.int64) * N + offs_n, mask=qvalid, other=0.0)
            delta = tl.load(DELTA + bh.to(tl.int64) * N + offs_n, mask=qvalid, other=0.0)
            st = tl.dot(ak, tl.trans(q), input_precision=PREC) * scale2
            member = evalid[:, None] & qvalid[None, :]
            pt = tl.where(member, tl.exp2(st - lse[None, :]), 0.0)
            dav += tl.dot(pt.to(do.dtype), do, input_precision=PREC)
            dpt = tl.dot(av, tl.trans(do), input_precision=PREC)
            dst = pt * (dpt - delta[None, :])
            dak += tl.dot(dst.to(q.dtype), q, input_precision=PREC)
        out_off = (split * tl.num_programs(2) + bh).to(tl.int64) * M * D + offs_e[:, None] * D + offs_d[None, :]
        tl.store(DAK + out_off, dak * scale, mask=ed_mask)
        tl.store(DAV + out_off, dav, mask=ed_mask)


# Tile configs: one fixed config under the interpreter (big tiles mean few slow iterations; tests shrink them),
# an autotuned set on GPU, pruned with tools/kernel_report.py (model_cards/kernels.md).
_INTERPRET_TILE = {"TH": 8, "TW": 8, "BN": 128}
_INTERPRET_EXTRA = {"BM": 32, "BN": 64}
# The tile walk depends on the window, the border rule, dilation and on which optional inputs are present
# (rpb adds a gathered bias load, extra keys a second loop): all of them key the autotuner.
_TILE_KEY = ["H", "W", "KH", "KW", "dil_h", "dil_w", "BD", "SHIFT", "HAS_RPB", "HAS_EXTRA", "PREC"]
_EXTRA_KEY = ["N", "M", "BD", "UPCAST", "PREC"]


# Autotune configs, chosen with tools/kernel_report.py (model_cards/kernels.md): each kernel was compiled for
# sm_90 with every candidate of the sweep at NA 7x7 on 56x56 with a bias table (head dim 32), and the configs
# kept are those ptxas compiles without register spills, per kernel and per input width. fp32 runs IEEE
# products (no tensor cores) and spills catastrophically (20-40 KB per thread) in every tile over 8x8 queries
# x 32 keys; the backward kernels spill in fp16 too past 8x8 x 64.
_STAGES = 2


def _sweep():
    """The candidate tiles (TH, TW, BN, warps) the report compiles."""
    cands = []
    for th, tw in ((8, 8), (8, 16), (16, 8), (16, 16)):
        for bn in (64, 128):
            for warps in (4, 8):
                if th * tw * bn > 16 * 16 * 64 and warps == 4:
                    continue
                cands.append((th, tw, bn, warps))
    cands += [(8, 8, 32, 4), (8, 8, 32, 8), (8, 8, 16, 4)]
    return cands


_KEEP = {
    "na2d_fwd": {
        "half": [
            (8, 8, 64, 8), (8, 8, 64, 4), (8, 8, 128, 4), (8, 8, 128, 8), (8, 16, 64, 4), (8, 16, 64, 8),
            (16, 8, 64, 4), (16, 8, 64, 8), (8, 16, 128, 8), (16, 8, 128, 8), (16, 16, 64, 8), (8, 8, 32, 4),
            (8, 8, 32, 8),
        ],
        "fp32": [(8, 8, 32, 8), (8, 8, 64, 8), (8, 8, 16, 4)],
    },
    "na2d_bwd_dq": {
        "half": [(8, 8, 64, 8), (8, 8, 32, 4), (8, 8, 32, 8), (8, 8, 16, 4)],
        "fp32": [(8, 8, 32, 8), (8, 8, 16, 4)],
    },
    "na2d_bwd_dkdv": {
        "half": [(8, 8, 64, 8), (8, 8, 64, 4), (8, 8, 32, 4), (8, 8, 32, 8), (8, 8, 16, 4)],
        "fp32": [(8, 8, 32, 8), (8, 8, 16, 4)],
    },
}  # fmt: skip
# Extra-key gradients (BM, BN, warps), compiled at a 3x3 masked window with 49 extra keys.
_EXTRA_SWEEP = [(bm, bn, w) for bm in (32, 64) for bn in (64, 128) for w in (4, 8)]
_EXTRA_KEEP = {
    "half": [(64, 64, 8), (32, 64, 4), (32, 64, 8), (64, 64, 4), (64, 128, 8)],
    "fp32": [(32, 64, 8)],
}


def _tile_config(th, tw, bn, warps):
    return triton.Config({"TH": th, "TW": tw, "BN": bn}, num_warps=warps, num_stages=_STAGES)


def _extra_config(bm, bn, warps):
    return triton.Config({"BM": bm, "BN": bn}, num_warps=warps, num_stages=_STAGES)


def _tuned(name, fn, make, keep, sweep, key, interpret):
    ordered = list(dict.fromkeys(keep["half"] + keep["fp32"]))
    table = {cls: {(*k[:-1], k[-1], _STAGES) for k in keys} for cls, keys in keep.items()}
    return _dispatch.TunedKernel(
        name, fn, [make(*k) for k in ordered], key, interpret,
        prune=_dispatch.configs_for_dtype(table), sweep=[make(*k) for k in sweep],
    )  # fmt: skip


if _dispatch.HAS_TRITON:
    KERNELS = {
        k.name: k
        for k in [
            _tuned(name, fn, _tile_config, _KEEP[name], _sweep(), _TILE_KEY, _INTERPRET_TILE)
            for name, fn in (
                ("na2d_fwd", _na2d_fwd_kernel),
                ("na2d_bwd_dq", _na2d_bwd_dq_kernel),
                ("na2d_bwd_dkdv", _na2d_bwd_dkdv_kernel),
            )
        ]
        + [
            _tuned(
                "na2d_bwd_extra",
                _na2d_bwd_extra_kernel,
                _extra_config,
                _EXTRA_KEEP,
                _EXTRA_SWEEP,
                _EXTRA_KEY,
                _INTERPRET_EXTRA,
            )  # fmt: skip
        ]
    }
else:  # pragma: no cover - depends on the install
    KERNELS = {}


def _kernel(name: str):
    return KERNELS["na2d_" + {"fwd": "fwd", "dq": "bwd_dq", "dkdv": "bwd_dkdv", "extra": "bwd_extra"}[name]]


def _tile_grid(h, w, dh, dw, bh):
    def grid(meta):
        tiles = triton.cdiv(triton.cdiv(h, dh), meta["TH"]) * triton.cdiv(triton.cdiv(w, dw), meta["TW"])
        return (dh * dw * tiles, bh)

    return grid


class _NA2DFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rpb, ak, av, kh, kw, dh, dw, shift, scale):
        b, heads, h, w, d = q.shape
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        has_rpb = rpb is not None
        has_extra = ak is not None
        rpb_c = rpb.contiguous() if has_rpb else q
        ak_c = ak.contiguous() if has_extra else q
        av_c = av.contiguous() if has_extra else q
        m = ak.shape[2] if has_extra else 0
        o = torch.empty_like(q)
        lse = torch.empty((b * heads, h * w), device=q.device, dtype=torch.float32)
        bd = _dispatch.head_block(d)
        upcast = _dispatch.upcast_bf16(q.dtype)
        prec = _dispatch.dot_precision(q.dtype)
        kernel = _kernel("fwd")
        kernel[_tile_grid(h, w, dh, dw, b * heads)](
            q, k, v, rpb_c, ak_c, av_c, o, lse,
            scale * math.log2(math.e), h, w, d, heads, m, dh, dw,
            KH=kh, KW=kw, SHIFT=shift, HAS_RPB=has_rpb, HAS_EXTRA=has_extra, UPCAST=upcast, PREC=prec,
            BD=bd,
        )  # fmt: skip
        ctx.save_for_backward(q, k, v, rpb, ak, av, o, lse)
        ctx.meta = (kh, kw, dh, dw, shift, scale, bd, upcast, prec)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, rpb, ak, av, o, lse = ctx.saved_tensors
        kh, kw, dh, dw, shift, scale, bd, upcast, prec = ctx.meta
        b, heads, h, w, d = q.shape
        has_rpb = rpb is not None
        has_extra = ak is not None
        m = ak.shape[2] if has_extra else 0
        do = do.contiguous()
        delta = (do.float() * o.float()).sum(-1).view(b * heads, h * w)
        scale2 = scale * math.log2(math.e)
        need_ds = has_rpb and ctx.needs_input_grad[3]
        rpb_c = rpb.contiguous() if has_rpb else q
        ak_c = ak.contiguous() if has_extra else q
        av_c = av.contiguous() if has_extra else q
        ds = torch.zeros((b * heads, h * w, kh * kw), device=q.device, dtype=torch.float32) if need_ds else lse
        dq = torch.empty_like(q)
        dk = torch.empty_like(k)
        dv = torch.empty_like(v)
        grid = _tile_grid(h, w, dh, dw, b * heads)

        kernel = _kernel("dq")
        kernel[grid](
            q, k, v, rpb_c, ak_c, av_c, do, lse, delta, dq, ds,
            scale2, scale, h, w, d, heads, m, dh, dw,
            KH=kh, KW=kw, SHIFT=shift, HAS_RPB=has_rpb, HAS_EXTRA=has_extra, STORE_DS=need_ds, UPCAST=upcast,
            PREC=prec, BD=bd,
        )  # fmt: skip
        kernel = _kernel("dkdv")
        kernel[grid](
            q, k, v, rpb_c, do, lse, delta, dk, dv,
            scale2, scale, h, w, d, heads, dh, dw,
            KH=kh, KW=kw, SHIFT=shift, HAS_RPB=has_rpb, UPCAST=upcast, PREC=prec, BD=bd,
        )  # fmt: skip

        drpb = dak = dav = None
        if need_ds:
            border = "shift" if shift else "mask"
            _, _, pb_h = neighbor_index(h, kh, dh, border, q.device)
            _, _, pb_w = neighbor_index(w, kw, dw, border, q.device)
            flat = pb_h[:, None, :, None] * (2 * kw - 1) + pb_w[None, :, None, :]  # (H, W, kh, kw)
            per_head = ds.view(b, heads, -1).sum(0)
            drpb = torch.zeros((heads, (2 * kh - 1) * (2 * kw - 1)), device=q.device, dtype=torch.float32)
            drpb.index_add_(1, flat.reshape(-1), per_head)
            drpb = drpb.view_as(rpb).to(rpb.dtype)
        if has_extra and (ctx.needs_input_grad[4] or ctx.needs_input_grad[5]):
            n = h * w
            if _dispatch.interpreting():
                splits = 1
            else:  # enough programs to fill the GPU, at least 256 queries each
                splits = max(1, min(triton.cdiv(n, 256), triton.cdiv(512, b * heads)))
            per_split = triton.cdiv(n, splits)
            dak_parts = torch.empty((splits, b * heads, m, d), device=q.device, dtype=torch.float32)
            dav_parts = torch.empty_like(dak_parts)
            kernel = _kernel("extra")
            kernel[lambda meta: (triton.cdiv(m, meta["BM"]), splits, b * heads)](
                q, ak_c, av_c, do, lse, delta, dak_parts, dav_parts,
                scale2, scale, n, d, m, per_split, UPCAST=upcast, PREC=prec, BD=bd,
            )  # fmt: skip
            dak = dak_parts.sum(0).view_as(ak).to(ak.dtype)
            dav = dav_parts.sum(0).view_as(av).to(av.dtype)
        return dq, dk, dv, drpb, dak, dav, None, None, None, None, None, None


# ----------------------------------------------------------------------------------------------------------
# entry points


def _fold_bias(q, k, v, ak, av, bias, scale):
    """Per-query bias on the extra keys as extra head channels: q . k' gains ``bias`` for the extra keys only."""
    b, heads, h, w, _ = q.shape
    m = ak.shape[2]
    q = torch.cat([q, (bias / scale).expand(b, -1, -1, -1, -1)], dim=-1)
    zeros = q.new_zeros(b, heads, h, w, m)
    k, v = torch.cat([k, zeros], dim=-1), torch.cat([v, zeros], dim=-1)
    eye = torch.eye(m, device=q.device, dtype=q.dtype).expand(b, heads, m, m)
    ak = torch.cat([ak, eye], dim=-1)
    av = torch.cat([av, av.new_zeros(b, heads, m, m)], dim=-1)
    return q, k, v, ak, av


def na2d(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    kernel_size: int | tuple[int, int],
    dilation: int | tuple[int, int] = 1,
    *,
    rpb: torch.Tensor | None = None,
    scale: float | None = None,
    additional_keys: torch.Tensor | None = None,
    additional_values: torch.Tensor | None = None,
    border: str = "shift",
    backend: str | None = None,
    additional_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """2-D neighborhood attention; see the module docstring for the window rule.

    q, k, v: (B, heads, H, W, d); rpb: (heads, 2kh-1, 2kw-1); additional_keys/values: (B, heads, M, d);
    additional_bias: (B or 1, heads, H, W, M). Returns (B, heads, H, W, d). ``backend``: None
    (``VISIONATTN_KERNELS`` / the device), "auto", "triton" or "reference"; the fallback rule and the fp32
    precision rule are those of :mod:`visionattn.kernels._dispatch`.
    """
    kh, kw, dh, dw = _check(
        q, k, v, kernel_size, dilation, rpb, additional_keys, additional_values, border, additional_bias
    )
    _dispatch.check_devices(
        "na2d", q, k=k, v=v, rpb=rpb, additional_keys=additional_keys, additional_values=additional_values,
        additional_bias=additional_bias,
    )  # fmt: skip
    folded = q.shape[-1] + (additional_bias.shape[-1] if additional_bias is not None else 0)
    path = _dispatch.select(
        "na2d", (q, k, v, rpb, additional_keys, additional_values, additional_bias), backend, q.dtype,
        {"q/k/v": q.shape[-1]} if additional_bias is None else {"q/k/v with additional_bias": folded},
    )  # fmt: skip
    if path == "reference":
        return na2d_reference(
            q, k, v, (kh, kw), (dh, dw), rpb=rpb, scale=scale,
            additional_keys=additional_keys, additional_values=additional_values, border=border,
            additional_bias=additional_bias,
        )  # fmt: skip
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if additional_bias is not None:
        q, k, v, additional_keys, additional_values = _fold_bias(
            q, k, v, additional_keys, additional_values, additional_bias, float(scale)
        )
        out = _NA2DFunction.apply(
            q, k, v, rpb, additional_keys, additional_values, kh, kw, dh, dw, border == "shift", float(scale)
        )
        return out[..., : out.shape[-1] - additional_bias.shape[-1]]
    return _NA2DFunction.apply(
        q, k, v, rpb, additional_keys, additional_values, kh, kw, dh, dw, border == "shift", float(scale)
    )


class NeighborhoodAttention2DOp(nn.Module):
    """Module form of :func:`na2d` with a fixed window, border rule and backend.

    forward: q, k, v (B, heads, H, W, d), rpb (heads, 2kh-1, 2kw-1), additional_keys/values (B, heads, M, d)
    -> (B, heads, H, W, d).
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        dilation: int | tuple[int, int] = 1,
        border: str = "shift",
        backend: str | None = None,
        *,
        scale: float | None = None,
    ):
        super().__init__()
        _pair(kernel_size, "kernel_size")
        _pair(dilation, "dilation")
        if border not in _BORDERS:
            raise ValueError(f"border={border!r} is not one of {_BORDERS}")
        self.kernel_size = kernel_size
        self.dilation = dilation
        self.border = border
        self.backend = backend
        self.scale = scale

    def forward(self, q, k, v, rpb=None, additional_keys=None, additional_values=None, additional_bias=None):
        return na2d(
            q, k, v, self.kernel_size, self.dilation, rpb=rpb, scale=self.scale,
            additional_keys=additional_keys, additional_values=additional_values,
            border=self.border, backend=self.backend, additional_bias=additional_bias,
        )  # fmt: skip

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, dilation={self.dilation}, border={self.border!r}"
