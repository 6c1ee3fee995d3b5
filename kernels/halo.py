"""Halo attention (HaloNet, "Scaling Local Self-Attention for Parameter Efficient Visual Backbones", CVPR'21).

The key map ``(H, W)`` is cut into non-overlapping ``block_size x block_size`` blocks. Every query of block
``(i, j)`` attends, with one softmax, to the ``win x win`` keys of that block grown by ``halo_size`` on each
side, ``win = block_size + 2 * halo_size``: key rows ``[i * block_size - halo, (i + 1) * block_size + halo)``
and likewise for columns. Queries may be strided (timm's ``block_stride``): ``q`` is ``(Hq, Wq) =
(ceil(H / s), ceil(W / s))`` and a query block is ``block_size // s`` wide; ``s`` is inferred from the shapes
(the smallest divisor ``s`` of ``block_size`` with ``Hq = ceil(H / s)`` and ``Wq = ceil(W / s)``).

Relative positions follow timm's ``PosEmbedRel`` (Attention-Augmented-Conv rel-to-abs): for a query at
``(qy, qx)`` inside its (possibly strided) query block and a key at ``(ky, kx)`` inside the window,

    logit = q . k * scale + q . rel_height[ky - qy + win - 1] + q . rel_width[kx - qx + win - 1]

(with ``scale_pos_embed`` the whole sum ``q . k + rel`` is scaled instead), i.e. query-dependent
factorised logits, not a static bias table.

Borders, ``pad_mode``:
- ``"zeros"`` (timm): the window reaches outside the image into zero keys and values, which stay in the
  softmax (logit = relative term only, value 0). For ``H, W`` multiples of ``block_size`` this is exactly
  timm's ``HaloAttn``. Other sizes, which timm rejects, are handled the same way: the key map is padded with
  zeros on the bottom/right up to the block multiple and those zero keys take part too; the padded query rows
  and columns are cropped from the output.
- ``"mask"``: every key outside the ``(H, W)`` image (halo and block padding alike) is excluded; every query
  keeps at least the keys of its own block, so no row is empty.

Paths: ``halo_attn_reference`` (plain PyTorch, the ground truth, differentiable, ONNX-exportable: windows are
built from pad / reshape / slice / cat of block-shifted views, no ``unfold`` or data-dependent gather) and a
Triton forward/backward (one program per (query block, batch * head); the window is read in tiles of whole
window rows with 2-D addressing and boundary masks; the relative logits are precomputed per query in PyTorch as
``(.., Hq, Wq, win)`` tables for rows and for columns and added by index; online softmax, saved LSE; the
backward recomputes the probabilities, writes dq and the gradients of both tables and accumulates dk/dv with
fp32 atomics, since neighbouring windows overlap, so dk/dv are not bit-reproducible on a GPU). Kernel dtypes,
head-dim limit, fp32 precision and fallback: see :mod:`visionattn.kernels._dispatch`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _dispatch

__all__ = ["halo_attn", "halo_attn_reference", "HaloAttentionOp"]

_PAD_MODES = ("zeros", "mask")


class _Geometry(NamedTuple):
    block: int  # key block size
    halo: int
    stride: int  # query stride
    qblock: int  # query block size, block // stride
    win: int  # window size, block + 2 * halo
    nbh: int  # blocks along H
    nbw: int  # blocks along W


def _infer_stride(hq: int, wq: int, h: int, w: int, block_size: int) -> int | None:
    for s in range(1, block_size + 1):
        if block_size % s == 0 and hq == -(-h // s) and wq == -(-w // s):
            return s
    return None


def _check(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    halo_size: int,
    rel_height: torch.Tensor | None,
    rel_width: torch.Tensor | None,
    pad_mode: str,
) -> _Geometry:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(f"{name} must be 5-D (B, heads, H, W, dim), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them first")
    if k.shape[:2] != q.shape[:2] or k.shape[-1] != q.shape[-1] or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(
            "k must be (B, heads, H, W, dqk) with q's B, heads and dqk, and v (B, heads, H, W, dv) with k's "
            f"B, heads, H, W; got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    if isinstance(halo_size, bool) or not isinstance(halo_size, int) or halo_size < 0:
        raise ValueError(f"halo_size must be an int >= 0, got {halo_size!r}")
    if pad_mode not in _PAD_MODES:
        raise ValueError(
            f"pad_mode={pad_mode!r} is not one of {_PAD_MODES}: 'zeros' is timm's HaloAttn, "
            "'mask' excludes keys outside the image"
        )
    hq, wq = q.shape[2:4]
    h, w = k.shape[2:4]
    if min(hq, wq, h, w) < 1:
        raise ValueError(f"empty feature map: q is {hq}x{wq}, k is {h}x{w}")
    stride = _infer_stride(hq, wq, h, w, block_size)
    if stride is None:
        raise ValueError(
            f"q's map {hq}x{wq} does not match k's {h}x{w} for block_size={block_size}: q must be "
            f"(ceil(H / s), ceil(W / s)) for a query stride s dividing block_size (s = 1: the same size)"
        )
    win = block_size + 2 * halo_size
    for name, t in (("rel_height", rel_height), ("rel_width", rel_width)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if tuple(t.shape) != (2 * win - 1, q.shape[-1]):
            raise ValueError(
                f"{name} must be (2 * win - 1, dqk) = {(2 * win - 1, q.shape[-1])} for block_size={block_size}, "
                f"halo_size={halo_size} (win={win}), got {tuple(t.shape)}"
            )
        if t.device != q.device:
            raise ValueError(f"{name} is on {t.device} but q is on {q.device}; move it to q's device")
    # ceil division on non-negative operands: a traced (ONNX) floor division of a negative size truncates instead
    nbh, nbw = (h + block_size - 1) // block_size, (w + block_size - 1) // block_size
    return _Geometry(block_size, halo_size, stride, block_size // stride, win, nbh, nbw)


def _rel_index(n: int, qblock: int, win: int, device: torch.device) -> torch.Tensor:
    """Index into a (2 * win - 1, d) table for query coordinate ``0..n-1`` and window offset: (n, win) long."""
    local = torch.arange(n, device=device) % qblock
    return torch.arange(win, device=device)[None, :] - local[:, None] + (win - 1)


def _rel_logits(q: torch.Tensor, rel: torch.Tensor | None, qblock: int, win: int, axis: int) -> torch.Tensor | None:
    """Per-query relative logits along one axis, in window coordinates.

    q: (B, heads, Hq, Wq, d); rel: (2 * win - 1, d) -> (B, heads, Hq, Wq, win); axis 2 = rows, 3 = columns.
    """
    if rel is None:
        return None
    table = rel.to(q.dtype)[_rel_index(q.shape[axis], qblock, win, q.device)]  # (n, win, d)
    if axis == 2:
        return torch.einsum("bnyxd,yud->bnyxu", q, table)
    return torch.einsum("bnyxd,xud->bnyxu", q, table)


def _windows(x: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """Zero-padded halo windows of every block.

    x: (B, heads, H, W, d) -> (B, heads, nbh, nbw, win, win, d).
    """
    b, nh, h, w, d = x.shape
    bs, t = g.block, -(-g.win // g.block)  # a window spans t consecutive blocks of the padded map
    rows, cols = (g.nbh + t - 1) * bs, (g.nbw + t - 1) * bs
    x = F.pad(x, (0, 0, g.halo, cols - w - g.halo, g.halo, rows - h - g.halo))
    x = x.reshape(b, nh, g.nbh + t - 1, bs, cols, d)
    x = torch.cat([x[:, :, i : i + g.nbh] for i in range(t)], dim=3)[:, :, :, : g.win]
    x = x.reshape(b, nh, g.nbh, g.win, g.nbw + t - 1, bs, d)
    x = torch.cat([x[:, :, :, :, j : j + g.nbw] for j in range(t)], dim=5)[:, :, :, :, :, : g.win]
    return x.permute(0, 1, 2, 4, 3, 5, 6)


def _blocks(x: torch.Tensor, g: _Geometry) -> torch.Tensor:
    """Query blocks, zero-padded to whole blocks: (B, heads, Hq, Wq, c) -> (B, heads, nbh, nbw, bq, bq, c)."""
    b, nh, hq, wq, c = x.shape
    bq = g.qblock
    x = F.pad(x, (0, 0, 0, g.nbw * bq - wq, 0, g.nbh * bq - hq))
    return x.reshape(b, nh, g.nbh, bq, g.nbw, bq, c).permute(0, 1, 2, 4, 3, 5, 6)


def _in_image(n_blocks: int, size: int, g: _Geometry, device: torch.device) -> torch.Tensor:
    """(n_blocks, win) bool: which window positions along one axis fall inside the image."""
    pos = torch.arange(n_blocks, device=device)[:, None] * g.block - g.halo + torch.arange(g.win, device=device)
    return (pos >= 0) & (pos < size)


def halo_attn_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    halo_size: int,
    *,
    rel_height: torch.Tensor | None = None,
    rel_width: torch.Tensor | None = None,
    scale: float | None = None,
    scale_pos_embed: bool = False,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """Plain PyTorch halo attention; differentiable, runs anywhere, the ground truth for the kernels.

    q: (B, heads, Hq, Wq, dqk); k: (B, heads, H, W, dqk); v: (B, heads, H, W, dv);
    rel_height, rel_width: (2 * win - 1, dqk) or None. Returns (B, heads, Hq, Wq, dv).

    Memory: the windows copy K and V ``(win / block_size) ** 2`` times (2.25x for block 8 halo 2, 3.06x for
    halo 3) and the logits are ``(B, heads, blocks, bq ** 2, win ** 2)``, as in timm.
    """
    g = _check(q, k, v, block_size, halo_size, rel_height, rel_width, pad_mode)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    b, nh, hq, wq, _ = q.shape
    bq, win = g.qblock, g.win
    qb = _blocks(q, g)  # (B, nh, nbh, nbw, bq, bq, dqk)
    kw = _windows(k, g).flatten(4, 5)  # (B, nh, nbh, nbw, win^2, dqk)
    vw = _windows(v, g).flatten(4, 5)
    logits = torch.matmul(qb.flatten(4, 5), kw.transpose(-1, -2))  # (B, nh, nbh, nbw, bq^2, win^2)
    rel = None
    if rel_height is not None or rel_width is not None:
        qp = qb.permute(0, 1, 2, 4, 3, 5, 6).reshape(b, nh, g.nbh * bq, g.nbw * bq, -1)
        lh = _rel_logits(qp, rel_height, bq, win, axis=2)
        lw = _rel_logits(qp, rel_width, bq, win, axis=3)
        rel = 0
        if lh is not None:
            rel = rel + _blocks(lh, g)[..., :, None]  # (.., bq, bq, win, 1)
        if lw is not None:
            rel = rel + _blocks(lw, g)[..., None, :]  # (.., bq, bq, 1, win)
        rel = rel.expand(*qb.shape[:6], win, win).reshape(logits.shape)
    if rel is None:
        logits = logits * scale
    elif scale_pos_embed:
        logits = (logits + rel) * scale
    else:
        logits = logits * scale + rel
    if pad_mode == "mask":
        keep = (
            _in_image(g.nbh, k.shape[2], g, q.device)[:, None, :, None]
            & _in_image(g.nbw, k.shape[3], g, q.device)[None, :, None, :]
        )
        logits = logits.masked_fill(~keep.reshape(g.nbh, g.nbw, 1, win * win), torch.finfo(logits.dtype).min)
    out = torch.matmul(logits.softmax(dim=-1), vw)  # (B, nh, nbh, nbw, bq^2, dv)
    out = out.reshape(b, nh, g.nbh, g.nbw, bq, bq, -1).permute(0, 1, 2, 4, 3, 5, 6)
    return out.reshape(b, nh, g.nbh * bq, g.nbw * bq, -1)[:, :, :hq, :wq]


# ----------------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------------

if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _halo_fwd_kernel(
        Q,
        K,
        V,
        LH,
        LW,
        OUT,
        LSE,
        sq_b,
        sq_h,
        sq_y,
        sq_x,
        sq_d,
        sk_b,
        sk_h,
        sk_y,
        sk_x,
        sk_d,
        sv_b,
        sv_h,
        sv_y,
        sv_x,
        sv_d,
        so_b,
        so_h,
        so_y,
        so_x,
        so_d,
        NH,
        H,
        W,
        HQ,
        WQ,
        NBW,
        DQK,
        DV,
        scale,
        BS: tl.constexpr,
        HALO: tl.constexpr,
        BQ: tl.constexpr,
        WIN: tl.constexpr,
        WINP: tl.constexpr,
        ROWS: tl.constexpr,
        BM: tl.constexpr,
        DP: tl.constexpr,
        DVP: tl.constexpr,
        HAS_RH: tl.constexpr,
        HAS_RW: tl.constexpr,
        MASK_PAD: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // NH).to(tl.int64)
        hh = (bh % NH).to(tl.int64)
        by = pid // NBW
        bx = pid % NBW
        # queries of this block, row-major inside the block
        offs_m = tl.arange(0, BM)
        yq = by * BQ + offs_m // BQ
        xq = bx * BQ + offs_m % BQ
        m_ok = (offs_m < BQ * BQ) & (yq < HQ) & (xq < WQ)
        offs_d = tl.arange(0, DP)
        offs_e = tl.arange(0, DVP)
        d_ok = offs_d < DQK
        e_ok = offs_e < DV
        q = tl.load(
            Q + b * sq_b + hh * sq_h + yq[:, None] * sq_y + xq[:, None] * sq_x + offs_d[None, :] * sq_d,
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
        # a key tile is ROWS whole window rows, each padded from WIN to WINP columns
        offs_n = tl.arange(0, ROWS * WINP)
        kr = offs_n // WINP
        kx = offs_n % WINP
        col = bx * BS - HALO + kx
        col_in = (kx < WIN) & (col >= 0) & (col < W)
        rel_row = bh.to(tl.int64) * HQ * WQ * WIN + (yq * WQ + xq) * WIN
        if HAS_RW:
            lw = tl.load(LW + rel_row[:, None] + kx[None, :], mask=m_ok[:, None] & (kx < WIN)[None, :], other=0.0)
            lw = lw.to(tl.float32) * 1.4426950408889634
        qk_scale = scale * 1.4426950408889634  # softmax in base 2
        k_base = K + b * sk_b + hh * sk_h
        v_base = V + b * sv_b + hh * sv_h
        m_i = tl.full([BM], -1.0e30, tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, DVP], tl.float32)
        for ky0 in range(0, WIN, ROWS):
            ky = ky0 + kr
            row = by * BS - HALO + ky
            in_img = col_in & (ky < WIN) & (row >= 0) & (row < H)
            kt = tl.load(
                k_base + row[None, :] * sk_y + col[None, :] * sk_x + offs_d[:, None] * sk_d,
                mask=in_img[None, :] & d_ok[:, None],
                other=0.0,
            )
            vt = tl.load(
                v_base + row[:, None] * sv_y + col[:, None] * sv_x + offs_e[None, :] * sv_d,
                mask=in_img[:, None] & e_ok[None, :],
                other=0.0,
            )
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
            s = tl.dot(q, kt, input_precision=PREC) * qk_scale
            if HAS_RH:
                lh = tl.load(LH + rel_row[:, None] + ky[None, :], mask=m_ok[:, None] & (ky < WIN)[None, :], other=0.0)
                s += lh.to(tl.float32) * 1.4426950408889634
            if HAS_RW:
                s += lw
            if MASK_PAD:
                keep = in_img
            else:  # timm: zero keys outside the image stay in the softmax
                keep = (ky < WIN) & (kx < WIN)
            s = tl.where(keep[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt, input_precision=PREC)
            m_i = m_new
        l_i = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_i[:, None]
        tl.store(
            OUT + b * so_b + hh * so_h + yq[:, None] * so_y + xq[:, None] * so_x + offs_e[None, :] * so_d,
            out.to(OUT.dtype.element_ty),
            mask=m_ok[:, None] & e_ok[None, :],
        )
        # natural-log LSE per query, (B * heads, Hq, Wq)
        lse = (m_i + tl.log2(l_i)) * 0.6931471805599453
        tl.store(LSE + bh.to(tl.int64) * HQ * WQ + yq * WQ + xq, lse, mask=m_ok)

    @triton.jit
    def _halo_bwd_kernel(
        Q,
        K,
        V,
        LH,
        LW,
        DO,
        LSE,
        DELTA,
        DQ,
        DK,
        DVA,
        DLH,
        DLW,
        sq_b,
        sq_h,
        sq_y,
        sq_x,
        sq_d,
        sk_b,
        sk_h,
        sk_y,
        sk_x,
        sk_d,
        sv_b,
        sv_h,
        sv_y,
        sv_x,
        sv_d,
        sd_b,
        sd_h,
        sd_y,
        sd_x,
        sd_d,
        NH,
        H,
        W,
        HQ,
        WQ,
        NBW,
        DQK,
        DV,
        scale,
        BS: tl.constexpr,
        HALO: tl.constexpr,
        BQ: tl.constexpr,
        WIN: tl.constexpr,
        WINP: tl.constexpr,
        ROWS: tl.constexpr,
        BM: tl.constexpr,
        DP: tl.constexpr,
        DVP: tl.constexpr,
        HAS_RH: tl.constexpr,
        HAS_RW: tl.constexpr,
        MASK_PAD: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // NH).to(tl.int64)
        hh = (bh % NH).to(tl.int64)
        by = pid // NBW
        bx = pid % NBW
        offs_m = tl.arange(0, BM)
        yq = by * BQ + offs_m // BQ
        xq = bx * BQ + offs_m % BQ
        m_ok = (offs_m < BQ * BQ) & (yq < HQ) & (xq < WQ)
        offs_d = tl.arange(0, DP)
        offs_e = tl.arange(0, DVP)
        d_ok = offs_d < DQK
        e_ok = offs_e < DV
        q = tl.load(
            Q + b * sq_b + hh * sq_h + yq[:, None] * sq_y + xq[:, None] * sq_x + offs_d[None, :] * sq_d,
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        do = tl.load(
            DO + b * sd_b + hh * sd_h + yq[:, None] * sd_y + xq[:, None] * sd_x + offs_e[None, :] * sd_d,
            mask=m_ok[:, None] & e_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
            do = do.to(tl.float32)
        q_pos = bh.to(tl.int64) * HQ * WQ + yq * WQ + xq
        lse2 = tl.load(LSE + q_pos, mask=m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + q_pos, mask=m_ok, other=0.0)
        offs_n = tl.arange(0, ROWS * WINP)
        kr = offs_n // WINP
        kx = offs_n % WINP
        col = bx * BS - HALO + kx
        col_in = (kx < WIN) & (col >= 0) & (col < W)
        rel_row = q_pos * WIN
        if HAS_RW:
            lw = tl.load(LW + rel_row[:, None] + kx[None, :], mask=m_ok[:, None] & (kx < WIN)[None, :], other=0.0)
            lw = lw.to(tl.float32) * 1.4426950408889634
        qk_scale = scale * 1.4426950408889634
        k_base = K + b * sk_b + hh * sk_h
        v_base = V + b * sv_b + hh * sv_h
        # dk / dv accumulate in contiguous fp32 (B, heads, H, W, d) buffers
        dk_base = DK + bh.to(tl.int64) * H * W * DQK
        dv_base = DVA + bh.to(tl.int64) * H * W * DV
        dq = tl.zeros([BM, DP], tl.float32)
        dlw = tl.zeros([BM, WINP], tl.float32)
        for ky0 in range(0, WIN, ROWS):
            ky = ky0 + kr
            row = by * BS - HALO + ky
            in_img = col_in & (ky < WIN) & (row >= 0) & (row < H)
            kt = tl.load(
                k_base + row[:, None] * sk_y + col[:, None] * sk_x + offs_d[None, :] * sk_d,
                mask=in_img[:, None] & d_ok[None, :],
                other=0.0,
            )
            vt = tl.load(
                v_base + row[:, None] * sv_y + col[:, None] * sv_x + offs_e[None, :] * sv_d,
                mask=in_img[:, None] & e_ok[None, :],
                other=0.0,
            )
            if UPCAST:
                kt = kt.to(tl.float32)
                vt = vt.to(tl.float32)
            s = tl.dot(q, tl.trans(kt), input_precision=PREC) * qk_scale
            if HAS_RH:
                lh = tl.load(LH + rel_row[:, None] + ky[None, :], mask=m_ok[:, None] & (ky < WIN)[None, :], other=0.0)
                s += lh.to(tl.float32) * 1.4426950408889634
            if HAS_RW:
                s += lw
            if MASK_PAD:
                keep = in_img
            else:
                keep = (ky < WIN) & (kx < WIN)
            p = tl.exp2(s - lse2[:, None])
            p = tl.where(keep[None, :] & m_ok[:, None], p, 0.0)
            dv_t = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PREC)
            kv_pos = (row * W + col).to(tl.int64)
            tl.atomic_add(dv_base + kv_pos[:, None] * DV + offs_e[None, :], dv_t, mask=in_img[:, None] & e_ok[None, :])
            dp = tl.dot(do, tl.trans(vt), input_precision=PREC)
            ds = p * (dp - delta[:, None])  # gradient of the natural-unit logit
            dq += tl.dot(ds.to(kt.dtype), kt, input_precision=PREC)
            dk_t = tl.dot(tl.trans(ds.to(q.dtype)), q, input_precision=PREC) * scale
            tl.atomic_add(dk_base + kv_pos[:, None] * DQK + offs_d[None, :], dk_t, mask=in_img[:, None] & d_ok[None, :])
            if HAS_RH:
                ds3 = tl.reshape(ds, (BM, ROWS, WINP))
                r = ky0 + tl.arange(0, ROWS)
                tl.store(DLH + rel_row[:, None] + r[None, :], tl.sum(ds3, 2), mask=m_ok[:, None] & (r < WIN)[None, :])
            if HAS_RW:
                dlw += tl.sum(tl.reshape(ds, (BM, ROWS, WINP)), 1)
        tl.store(
            DQ + bh.to(tl.int64) * HQ * WQ * DQK + (yq * WQ + xq)[:, None] * DQK + offs_d[None, :],
            (dq * scale).to(DQ.dtype.element_ty),
            mask=m_ok[:, None] & d_ok[None, :],
        )
        if HAS_RW:
            kw = tl.arange(0, WINP)
            tl.store(DLW + rel_row[:, None] + kw[None, :], dlw, mask=m_ok[:, None] & (kw < WIN)[None, :])


def _row_options(winp: int) -> list[int]:
    # tl.dot on GPUs wants every tile side >= 16; past 256 keys per tile registers spill
    return [r for r in (1, 2, 4, 8, 16) if 16 <= r * winp <= 256 and r <= winp] or [max(1, 16 // winp)]


# Launch configs kept per kernel and input width, as (keys per tile = ROWS * WINP, warps, stages): those ptxas
# compiles for sm_90 without register spills at block 8 halo 3 (16-column padded window, 64 queries, head dim
# 32), from tools/kernel_report.py (model_cards/kernels.md). Tiles of 128-256 keys spill in every dtype, two
# warps spill past 16 keys, and fp32 (IEEE products) spills past 32 keys in the forward.
_KEEP = {
    "halo_attn_fwd": {
        "half": {(16, 2, 1), (16, 2, 2), (16, 4, 1), (16, 4, 2), (32, 4, 1), (32, 4, 2), (64, 4, 1), (64, 4, 2)},
        "fp32": {(16, 2, 1), (16, 4, 1), (16, 4, 2), (32, 4, 1)},
    },
    "halo_attn_bwd": {
        "half": {(16, 4, 1), (16, 4, 2), (32, 4, 1), (32, 4, 2)},
        "fp32": {(16, 4, 1), (16, 4, 2)},
    },
}


def _pruner(name: str):
    def prune(configs: list, args: dict) -> list:
        """Key-tile heights that fit this window and the kept (keys, warps, stages) for the inputs' width; if
        the window admits none of them (a window over 16 columns), the smallest valid tile with 4 warps."""
        rows = _row_options(args["WINP"])
        keep = _KEEP[name]["fp32" if _dispatch.input_dtype(args) == torch.float32 else "half"]
        valid = [c for c in configs if c.kwargs["ROWS"] in rows]
        kept = [c for c in valid if (c.kwargs["ROWS"] * args["WINP"], c.num_warps, c.num_stages) in keep]
        return kept or [c for c in valid if c.kwargs["ROWS"] == rows[0] and c.num_warps == 4][:1] or valid[:1]

    return prune


# Key-tile height (window rows per inner iteration) in the interpreter; each iteration costs milliseconds
# there, and a small default keeps the multi-iteration path covered by the CPU tests.
_INTERPRET = {"ROWS": lambda args: max(1, 16 // args["WINP"])}
_TUNE_KEY = ["HQ", "WQ", "DQK", "DV", "NH", "WIN", "BQ", "MASK_PAD", "HAS_RH", "HAS_RW", "PREC"]

if _dispatch.HAS_TRITON:
    _CONFIGS = [
        triton.Config({"ROWS": r}, num_warps=nw, num_stages=ns)
        for r in (1, 2, 4, 8, 16)
        for nw in (2, 4, 8)
        for ns in (1, 2)
    ]
    KERNELS = {
        "halo_attn_fwd": _dispatch.TunedKernel(
            "halo_attn_fwd", _halo_fwd_kernel, _CONFIGS, _TUNE_KEY, _INTERPRET, _pruner("halo_attn_fwd")
        ),
        "halo_attn_bwd": _dispatch.TunedKernel(
            "halo_attn_bwd",
            _halo_bwd_kernel,
            _CONFIGS,
            _TUNE_KEY,
            _INTERPRET,
            _pruner("halo_attn_bwd"),
            reset_to_zero=["DK", "DVA"],
        ),
    }
else:  # pragma: no cover - depends on the install
    KERNELS = {}


def _common_args(q, k, v, g: _Geometry, scale: float, has_rh: bool, has_rw: bool, mask_pad: bool) -> dict:
    b, nh, hq, wq, dqk = q.shape
    dv = v.shape[-1]
    win = g.win
    return dict(
        NH=nh,
        H=k.shape[2],
        W=k.shape[3],
        HQ=hq,
        WQ=wq,
        NBW=g.nbw,
        DQK=dqk,
        DV=dv,
        scale=float(scale),
        BS=g.block,
        HALO=g.halo,
        BQ=g.qblock,
        WIN=win,
        WINP=_dispatch.next_pow2(win),
        BM=_dispatch.next_pow2(g.qblock**2, 16),
        DP=_dispatch.next_pow2(dqk, 16),
        DVP=_dispatch.next_pow2(dv, 16),
        HAS_RH=has_rh,
        HAS_RW=has_rw,
        MASK_PAD=mask_pad,
        UPCAST=_dispatch.upcast_bf16(q.dtype),
        PREC=_dispatch.dot_precision(q.dtype),
    )


def _strides(prefix: str, t: torch.Tensor) -> dict:
    return {f"s{prefix}_{n}": s for n, s in zip("bhyxd", t.stride())}


class _HaloAttnTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, lh, lw, g: _Geometry, scale: float, mask_pad: bool):
        b, nh, hq, wq, _ = q.shape
        o = q.new_empty(b, nh, hq, wq, v.shape[-1])
        lse = torch.empty(b, nh, hq, wq, device=q.device, dtype=torch.float32)
        args = _common_args(q, k, v, g, scale, lh is not None, lw is not None, mask_pad)
        dummy = lse  # never read when the table is absent
        grid = (g.nbh * g.nbw, b * nh)
        KERNELS["halo_attn_fwd"][grid](
            Q=q,
            K=k,
            V=v,
            LH=dummy if lh is None else lh,
            LW=dummy if lw is None else lw,
            OUT=o,
            LSE=lse,
            **_strides("q", q),
            **_strides("k", k),
            **_strides("v", v),
            **_strides("o", o),
            **args,
        )
        ctx.save_for_backward(q, k, v, lh, lw, o, lse)
        ctx.g, ctx.scale, ctx.mask_pad = g, scale, mask_pad
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, lh, lw, o, lse = ctx.saved_tensors
        g = ctx.g
        b, nh, hq, wq, dqk = q.shape
        delta = (do.float() * o.float()).sum(-1)
        dq = torch.empty(b, nh, hq, wq, dqk, device=q.device, dtype=q.dtype)
        dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
        dlh = None if lh is None else torch.empty(lh.shape, device=q.device, dtype=torch.float32)
        dlw = None if lw is None else torch.empty(lw.shape, device=q.device, dtype=torch.float32)
        args = _common_args(q, k, v, g, ctx.scale, lh is not None, lw is not None, ctx.mask_pad)
        grid = (g.nbh * g.nbw, b * nh)
        KERNELS["halo_attn_bwd"][grid](
            Q=q,
            K=k,
            V=v,
            LH=lse if lh is None else lh,
            LW=lse if lw is None else lw,
            DO=do,
            LSE=lse,
            DELTA=delta,
            DQ=dq,
            DK=dk,
            DVA=dv,
            DLH=lse if dlh is None else dlh,
            DLW=lse if dlw is None else dlw,
            **_strides("q", q),
            **_strides("k", k),
            **_strides("v", v),
            **_strides("d", do),
            **args,
        )
        dlh = None if dlh is None else dlh.to(lh.dtype)
        dlw = None if dlw is None else dlw.to(lw.dtype)
        return dq, dk.to(k.dtype), dv.to(v.dtype), dlh, dlw, None, None, None


def halo_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_size: int,
    halo_size: int,
    *,
    rel_height: torch.Tensor | None = None,
    rel_width: torch.Tensor | None = None,
    scale: float | None = None,
    scale_pos_embed: bool = False,
    pad_mode: str = "zeros",
    backend: str | None = None,
) -> torch.Tensor:
    """Halo attention; see the module docstring for the semantics and :func:`halo_attn_reference` for shapes.

    q: (B, heads, Hq, Wq, dqk); k: (B, heads, H, W, dqk); v: (B, heads, H, W, dv) -> (B, heads, Hq, Wq, dv).
    ``backend``: None (use ``VISIONATTN_KERNELS`` / the device), "auto", "triton" or "reference"; the
    fallback rule and the fp32 precision rule are those of :mod:`visionattn.kernels._dispatch`.
    """
    g = _check(q, k, v, block_size, halo_size, rel_height, rel_width, pad_mode)
    _dispatch.check_devices("halo_attn", q, k=k, v=v)
    path = _dispatch.select(
        "halo_attn", (q, k, v, rel_height, rel_width), backend, q.dtype, {"q/k": q.shape[-1], "v": v.shape[-1]}
    )
    if path == "reference":
        return halo_attn_reference(
            q,
            k,
            v,
            block_size,
            halo_size,
            rel_height=rel_height,
            rel_width=rel_width,
            scale=scale,
            scale_pos_embed=scale_pos_embed,
            pad_mode=pad_mode,
        )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    lh = _rel_logits(q, rel_height, g.qblock, g.win, axis=2)
    lw = _rel_logits(q, rel_width, g.qblock, g.win, axis=3)
    if scale_pos_embed:
        lh = None if lh is None else lh * scale
        lw = None if lw is None else lw * scale
    lh = None if lh is None else lh.contiguous()
    lw = None if lw is None else lw.contiguous()
    return _HaloAttnTriton.apply(q, k, v, lh, lw, g, float(scale), pad_mode == "mask")


class HaloAttentionOp(nn.Module):
    """Module form of :func:`halo_attn` with fixed block/halo sizes, scale, pad mode and backend.

    forward(q, k, v, rel_height=None, rel_width=None): shapes as in :func:`halo_attn`.
    """

    def __init__(
        self,
        block_size: int,
        halo_size: int,
        scale: float | None = None,
        scale_pos_embed: bool = False,
        pad_mode: str = "zeros",
        backend: str | None = None,
    ):
        super().__init__()
        if pad_mode not in _PAD_MODES:
            raise ValueError(f"pad_mode={pad_mode!r} is not one of {_PAD_MODES}")
        self.block_size = block_size
        self.halo_size = halo_size
        self.scale = scale
        self.scale_pos_embed = scale_pos_embed
        self.pad_mode = pad_mode
        self.backend = backend

    def forward(self, q, k, v, rel_height=None, rel_width=None):
        return halo_attn(
            q,
            k,
            v,
            self.block_size,
            self.halo_size,
            rel_height=rel_height,
            rel_width=rel_width,
            scale=self.scale,
            scale_pos_embed=self.scale_pos_embed,
            pad_mode=self.pad_mode,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"block_size={self.block_size}, halo_size={self.halo_size}, pad_mode={self.pad_mode!r}"
