"""Bi-level routing attention (BiFormer, CVPR'23).

Tokens are laid out by regions: ``q, k, v`` are ``(B, heads, regions, region_tokens, head_dim)`` and
``routing`` is ``(B, regions, topk)`` (int, shared by all heads): query region ``r`` attends to the
tokens of key regions ``routing[b, r, :]``, with one softmax over all ``topk * region_tokens`` keys.

The reference gathers the routed K/V regions through flat indices (``index_select`` on a
``(B * regions, ...)`` view): one ``topk``-times copy of K and V, never the official
``expand``-then-``gather`` of a ``(B, regions, regions, ...)`` view that ONNX materialises.

The Triton path is block-sparse flash attention whose block layout is the routing index: one program
per (query block, batch * head) walks its routed key regions straight from K and V (nothing gathered,
O(N * d) memory), with an online softmax; it saves the log-sum-exp for the backward. The backward
computes dQ per query block and dK/dV per key block from the transposed routing (for every key
region, the query regions that routed to it), so it needs no atomics and is deterministic.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from . import _dispatch

__all__ = ["bra", "bra_reference", "gather_regions", "BiLevelRoutingAttentionOp"]

_LOG2E = 1.4426950408889634


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
    without), with or without a key padding mask; q, k and v themselves are 15 MB. The Triton path
    keeps O(N * d): the output and an fp32 log-sum-exp per query.
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


# ----------------------------------------------------------------------------------------------------
# Triton kernels
# ----------------------------------------------------------------------------------------------------

if _dispatch.HAS_TRITON:
    triton = _dispatch.triton
    tl = _dispatch.tl

    # Query-major tiling (forward, dQ): BM query rows of one region per program; each inner step reads
    # BN key columns: G whole routed regions when R <= BN (small regions are grouped so tl.dot gets
    # >= 16 columns), else one BN-token chunk of one routed region (KB chunks per region).
    def _q_tiles(args):
        r, topk = args["R"], args["TOPK"]
        bm = min(args["BM_CAP"], max(16, _dispatch.next_pow2(r)))
        if r >= args["BN_CAP"]:
            g, bn = 1, args["BN_CAP"]
        else:
            g = max(1, min(args["BN_CAP"] // r, topk))
            bn = max(16, _dispatch.next_pow2(g * r))
        return {"BM": bm, "BN": bn, "G": g, "MB": -(-r // bm), "KB": -(-r // bn), "NT": -(-topk // g)}

    # Key-major tiling (dK/dV): BN key rows of one region per program; each inner step reads BM query
    # columns, GQ whole query regions from the transposed routing when R <= BM, else a chunk.
    def _kv_tiles(args):
        r = args["R"]
        bn = min(args["BN_CAP"], max(16, _dispatch.next_pow2(r)))
        if r >= args["BM_CAP"]:
            gq, bm = 1, args["BM_CAP"]
        else:
            gq = max(1, args["BM_CAP"] // r)
            bm = max(16, _dispatch.next_pow2(gq * r))
        return {"BN": bn, "BM": bm, "GQ": gq, "NB": -(-r // bn), "KBQ": -(-r // bm)}

    def _heur(fn, keys):
        return {key: (lambda args, key=key: fn(args)[key]) for key in keys}

    # GPU configs, pruned with tools/kernel_report.py (model_cards/kernels.md): (BM_CAP, BN_CAP, warps, stages).
    _FWD_CONFIGS = [
        triton.Config({"BM_CAP": bm, "BN_CAP": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(64, 64, 4, 2), (64, 64, 4, 3), (128, 64, 8, 2), (64, 32, 4, 3), (32, 32, 4, 2)]
    ]
    _DKV_CONFIGS = [
        triton.Config({"BM_CAP": bm, "BN_CAP": bn}, num_warps=w, num_stages=s)
        for bm, bn, w, s in [(64, 64, 4, 2), (32, 64, 4, 2), (64, 128, 8, 2), (32, 32, 4, 2)]
    ]
    # The interpreter's cost is per inner-loop step, not per element: one config with big tiles.
    _INTERPRET = {"BM_CAP": 128, "BN_CAP": 128}
    _TUNE_KEY = ["R", "TOPK", "D", "DV", "HAS_MASK", "PREC"]

    @triton.jit
    def _load_q_block(ptr, base, rows, row_ok, D: tl.constexpr, BD: tl.constexpr, UPCAST: tl.constexpr):
        offs_d = tl.arange(0, BD)
        x = tl.load(
            ptr + base + rows.to(tl.int64)[:, None] * D + offs_d[None, :],
            mask=row_ok[:, None] & (offs_d[None, :] < D),
            other=0.0,
        )
        if UPCAST:
            x = x.to(tl.float32)
        return x

    @triton.jit
    def _routed_columns(
        IDX,
        KPM,
        idx_base,
        b,
        NR,
        it,
        R: tl.constexpr,
        TOPK: tl.constexpr,
        BN: tl.constexpr,
        G: tl.constexpr,
        KB: tl.constexpr,
        HAS_MASK: tl.constexpr,
    ):
        # Column j of step `it` is token tok of routed slot t0 + j // R (whole regions when G > 1, a
        # BN-token chunk of one region when KB > 1).
        t0 = (it // KB) * G
        n0 = (it % KB) * BN
        offs_n = tl.arange(0, BN)
        grp = offs_n // R
        tok = n0 + offs_n % R
        col_ok = (grp < G) & (t0 + grp < TOPK) & (tok < R)
        reg = tl.load(IDX + idx_base + t0 + grp, mask=col_ok, other=0)
        rows = reg.to(tl.int64) * R + tok
        key_ok = col_ok
        if HAS_MASK:
            real = tl.load(KPM + (b * NR + reg).to(tl.int64) * R + tok, mask=col_ok, other=0)
            key_ok = col_ok & (real != 0)
        return rows, col_ok, key_ok

    @triton.heuristics(_heur(_q_tiles, ["BM", "BN", "G", "MB", "KB", "NT"]))
    @triton.jit
    def _bra_fwd_kernel(
        Q,
        K,
        V,
        IDX,
        KPM,
        OUT,
        LSE,
        qk_scale,
        NR,
        H,
        R: tl.constexpr,
        TOPK: tl.constexpr,
        D: tl.constexpr,
        DV: tl.constexpr,
        BD: tl.constexpr,
        BDV: tl.constexpr,
        HAS_MASK: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
        BM_CAP: tl.constexpr,
        BN_CAP: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        G: tl.constexpr,
        MB: tl.constexpr,
        KB: tl.constexpr,
        NT: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        r_q = pid // MB
        offs_m = (pid % MB) * BM + tl.arange(0, BM)
        row_ok = offs_m < R
        q_rows = r_q * R + offs_m
        seq = bh * NR * R  # first token of this (batch, head) in the region-major layout
        q = _load_q_block(Q, seq * D, q_rows, row_ok, D, BD, UPCAST)
        offs_dv = tl.arange(0, BDV)

        m_i = tl.full([BM], float("-inf"), tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, BDV], tl.float32)
        idx_base = (b * NR + r_q) * TOPK
        for it in range(0, NT * KB):
            rows, col_ok, key_ok = _routed_columns(IDX, KPM, idx_base, b, NR, it, R, TOPK, BN, G, KB, HAS_MASK)
            k = _load_q_block(K, seq * D, rows, col_ok, D, BD, UPCAST)
            v = _load_q_block(V, seq * DV, rows, col_ok, DV, BDV, UPCAST)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            s = tl.where(key_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            # A row with no real key so far keeps m = -inf; shifting by 0 then avoids inf - inf.
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.math.exp2(m_i - m_use)
            p = tl.math.exp2(s - m_use[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
            m_i = m_new

        has_key = l_i > 0.0
        out = acc / tl.where(has_key, l_i, 1.0)[:, None]
        q_rows64 = q_rows.to(tl.int64)
        tl.store(
            OUT + seq * DV + q_rows64[:, None] * DV + offs_dv[None, :],
            out.to(OUT.dtype.element_ty),
            mask=row_ok[:, None] & (offs_dv[None, :] < DV),
        )
        # +inf for a query with no real key makes every recomputed probability exp2(s - inf) = 0.
        lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
        tl.store(LSE + seq + q_rows64, lse, mask=row_ok)

    @triton.jit
    def _bra_bwd_delta_kernel(OUT, DO, DELTA, n_rows, DV: tl.constexpr, BDV: tl.constexpr, BLOCK: tl.constexpr):
        rows = (tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
        offs_d = tl.arange(0, BDV)
        ok = (rows < n_rows)[:, None] & (offs_d[None, :] < DV)
        o = tl.load(OUT + rows[:, None] * DV + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
        do = tl.load(DO + rows[:, None] * DV + offs_d[None, :], mask=ok, other=0.0).to(tl.float32)
        tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < n_rows)

    @triton.heuristics(_heur(_q_tiles, ["BM", "BN", "G", "MB", "KB", "NT"]))
    @triton.jit
    def _bra_bwd_dq_kernel(
        Q,
        K,
        V,
        IDX,
        KPM,
        DO,
        LSE,
        DELTA,
        DQ,
        qk_scale,
        scale,
        NR,
        H,
        R: tl.constexpr,
        TOPK: tl.constexpr,
        D: tl.constexpr,
        DV: tl.constexpr,
        BD: tl.constexpr,
        BDV: tl.constexpr,
        HAS_MASK: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
        BM_CAP: tl.constexpr,
        BN_CAP: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        G: tl.constexpr,
        MB: tl.constexpr,
        KB: tl.constexpr,
        NT: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        r_q = pid // MB
        offs_m = (pid % MB) * BM + tl.arange(0, BM)
        row_ok = offs_m < R
        q_rows = r_q * R + offs_m
        q_rows64 = q_rows.to(tl.int64)
        seq = bh * NR * R
        q = _load_q_block(Q, seq * D, q_rows, row_ok, D, BD, UPCAST)
        do = _load_q_block(DO, seq * DV, q_rows, row_ok, DV, BDV, UPCAST)
        lse = tl.load(LSE + seq + q_rows64, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + seq + q_rows64, mask=row_ok, other=0.0)

        dq = tl.zeros([BM, BD], tl.float32)
        idx_base = (b * NR + r_q) * TOPK
        for it in range(0, NT * KB):
            rows, col_ok, key_ok = _routed_columns(IDX, KPM, idx_base, b, NR, it, R, TOPK, BN, G, KB, HAS_MASK)
            k = _load_q_block(K, seq * D, rows, col_ok, D, BD, UPCAST)
            v = _load_q_block(V, seq * DV, rows, col_ok, DV, BDV, UPCAST)
            s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
            p = tl.math.exp2(tl.where(key_ok[None, :], s, float("-inf")) - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)

        offs_d = tl.arange(0, BD)
        tl.store(
            DQ + seq * D + q_rows64[:, None] * D + offs_d[None, :],
            (dq * scale).to(DQ.dtype.element_ty),
            mask=row_ok[:, None] & (offs_d[None, :] < D),
        )

    @triton.heuristics(_heur(_kv_tiles, ["BN", "BM", "GQ", "NB", "KBQ"]))
    @triton.jit
    def _bra_bwd_dkdv_kernel(
        Q,
        K,
        V,
        KPM,
        DO,
        LSE,
        DELTA,
        DK,
        DV_OUT,
        QOFF,
        QREG,
        qk_scale,
        scale,
        NR,
        H,
        R: tl.constexpr,
        TOPK: tl.constexpr,
        D: tl.constexpr,
        DV: tl.constexpr,
        BD: tl.constexpr,
        BDV: tl.constexpr,
        HAS_MASK: tl.constexpr,
        UPCAST: tl.constexpr,
        PREC: tl.constexpr,
        BM_CAP: tl.constexpr,
        BN_CAP: tl.constexpr,
        BN: tl.constexpr,
        BM: tl.constexpr,
        GQ: tl.constexpr,
        NB: tl.constexpr,
        KBQ: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1).to(tl.int64)
        b = bh // H
        r_k = pid // NB
        offs_n = (pid % NB) * BN + tl.arange(0, BN)
        row_ok = offs_n < R
        k_rows64 = (r_k * R + offs_n).to(tl.int64)
        seq = bh * NR * R
        k = _load_q_block(K, seq * D, k_rows64, row_ok, D, BD, UPCAST)
        v = _load_q_block(V, seq * DV, k_rows64, row_ok, DV, BDV, UPCAST)
        key_ok = row_ok
        if HAS_MASK:
            real = tl.load(KPM + (b * NR + r_k) * R + offs_n, mask=row_ok, other=0)
            key_ok = row_ok & (real != 0)

        # Entries [start, end) of the transposed routing: the query regions (one entry per routed slot,
        # so a region routed twice counts twice, as in the forward) that read this key region.
        start = tl.load(QOFF + b * NR + r_k)
        end = tl.load(QOFF + b * NR + r_k + 1)
        n_steps = tl.cdiv(end - start, GQ) * KBQ
        dk = tl.zeros([BN, BD], tl.float32)
        dv = tl.zeros([BN, BDV], tl.float32)
        offs_m = tl.arange(0, BM)
        grp = offs_m // R
        for it in range(0, n_steps):
            e0 = start + (it // KBQ) * GQ
            tok = (it % KBQ) * BM + offs_m % R
            col_ok = (grp < GQ) & (e0 + grp < end) & (tok < R)
            qreg = tl.load(QREG + e0 + grp, mask=col_ok, other=0)
            q_rows = qreg.to(tl.int64) * R + tok
            q = _load_q_block(Q, seq * D, q_rows, col_ok, D, BD, UPCAST)
            do = _load_q_block(DO, seq * DV, q_rows, col_ok, DV, BDV, UPCAST)
            lse = tl.load(LSE + seq + q_rows, mask=col_ok, other=float("inf"))
            delta = tl.load(DELTA + seq + q_rows, mask=col_ok, other=0.0)
            s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale
            p_t = tl.math.exp2(s_t - lse[None, :])
            p_t = tl.where(key_ok[:, None] & col_ok[None, :], p_t, 0.0)
            dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
            dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)

        offs_d = tl.arange(0, BD)
        tl.store(
            DK + seq * D + k_rows64[:, None] * D + offs_d[None, :],
            (dk * scale).to(DK.dtype.element_ty),
            mask=row_ok[:, None] & (offs_d[None, :] < D),
        )
        offs_dv = tl.arange(0, BDV)
        tl.store(
            DV_OUT + seq * DV + k_rows64[:, None] * DV + offs_dv[None, :],
            dv.to(DV_OUT.dtype.element_ty),
            mask=row_ok[:, None] & (offs_dv[None, :] < DV),
        )


if _dispatch.HAS_TRITON:
    _FWD = _dispatch.TunedKernel("bra_fwd", _bra_fwd_kernel, _FWD_CONFIGS, _TUNE_KEY, _INTERPRET)
    _DQ = _dispatch.TunedKernel("bra_bwd_dq", _bra_bwd_dq_kernel, _FWD_CONFIGS, _TUNE_KEY, _INTERPRET)
    # fp32 (IEEE products) dK/dV with 64 x 128 tiles spills registers (1.3 KB at BiFormer-S stage 1,
    # tools/kernel_report.py); every other config compiles without spills at the BiFormer-S shapes.
    _DKV_PRUNE = _dispatch.configs_for_dtype(
        {
            "half": {_dispatch.config_key(c) for c in _DKV_CONFIGS},
            "fp32": {_dispatch.config_key(c) for c in _DKV_CONFIGS if c.kwargs["BN_CAP"] <= 64},
        }
    )
    _DKDV = _dispatch.TunedKernel(
        "bra_bwd_dkdv", _bra_bwd_dkdv_kernel, _DKV_CONFIGS, _TUNE_KEY, _INTERPRET, prune=_DKV_PRUNE
    )
    _DELTA = _dispatch.TunedKernel(
        "bra_bwd_delta", _bra_bwd_delta_kernel, [triton.Config({"BLOCK": 32}, num_warps=4)], ["DV"], {"BLOCK": 64}
    )
    KERNELS = {k.name: k for k in (_FWD, _DQ, _DKDV, _DELTA)}
else:  # pragma: no cover - depends on the install
    KERNELS = {}


def _transpose_routing(routing: torch.Tensor, nr: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For every (batch, key region) the query regions routed to it, as CSR.

    routing: (B, regions, topk) -> offsets (B * regions + 1,) int32, query regions (B * regions * topk,) int32.
    """
    b, _, topk = routing.shape
    keys = (routing.long() + torch.arange(b, device=routing.device).view(b, 1, 1) * nr).reshape(-1)
    # A stable sort keeps the order (and hence the float summation order of dK/dV) reproducible.
    sorted_keys, order = torch.sort(keys, stable=True)
    qreg = ((order // topk) % nr).to(torch.int32)
    bounds = torch.arange(b * nr + 1, device=routing.device, dtype=sorted_keys.dtype)
    offsets = torch.searchsorted(sorted_keys, bounds).to(torch.int32)
    return offsets, qreg


def _launch_args(q: torch.Tensor, v: torch.Tensor):
    b, h, nr, r, d = q.shape
    dv = v.shape[-1]
    meta = dict(
        R=r, D=d, DV=dv, BD=_dispatch.head_block(d), BDV=_dispatch.head_block(dv),
        UPCAST=_dispatch.upcast_bf16(q.dtype), PREC=_dispatch.dot_precision(q.dtype),
    )  # fmt: skip
    return b, h, nr, r, d, dv, meta


def _bra_triton_forward(q, k, v, routing32, kpm, scale):
    b, h, nr, r, d, dv, meta = _launch_args(q, v)
    topk = routing32.shape[-1]
    # The interpreter truncates fp32 -> bf16 on store (no round-to-nearest), so upcast runs store fp32.
    o = torch.empty((b, h, nr, r, dv), device=q.device, dtype=torch.float32 if meta["UPCAST"] else q.dtype)
    lse = torch.empty((b, h, nr, r), device=q.device, dtype=torch.float32)
    has_mask = kpm is not None

    def grid(meta_):
        return (nr * meta_["MB"], b * h)

    _FWD[grid](
        q,
        k,
        v,
        routing32,
        kpm if has_mask else routing32,
        o,
        lse,
        scale * _LOG2E,
        nr,
        h,
        TOPK=topk,
        HAS_MASK=has_mask,
        **meta,
    )
    return o, lse


def _bra_triton_backward(do, q, k, v, o, lse, routing32, kpm, scale, need_dq, need_dkv):
    b, h, nr, r, d, dv, meta = _launch_args(q, v)
    topk = routing32.shape[-1]
    has_mask = kpm is not None
    kpm_arg = kpm if has_mask else routing32
    grad_dtype = torch.float32 if meta["UPCAST"] else q.dtype
    n_rows = b * h * nr * r
    delta = torch.empty((b, h, nr, r), device=q.device, dtype=torch.float32)
    _DELTA[lambda meta_: (triton.cdiv(n_rows, meta_["BLOCK"]),)](o, do, delta, n_rows, DV=dv, BDV=meta["BDV"])

    dq = dk = dvv = None
    if need_dq:
        dq = torch.empty_like(q, dtype=grad_dtype)

        def grid_q(meta_):
            return (nr * meta_["MB"], b * h)

        _DQ[grid_q](
            q,
            k,
            v,
            routing32,
            kpm_arg,
            do,
            lse,
            delta,
            dq,
            scale * _LOG2E,
            scale,
            nr,
            h,
            TOPK=topk,
            HAS_MASK=has_mask,
            **meta,
        )
    if need_dkv:
        dk = torch.empty_like(k, dtype=grad_dtype)
        dvv = torch.empty_like(v, dtype=grad_dtype)
        qoff, qreg = _transpose_routing(routing32, nr)

        def grid_kv(meta_):
            return (nr * meta_["NB"], b * h)

        _DKDV[grid_kv](
            q,
            k,
            v,
            kpm_arg,
            do,
            lse,
            delta,
            dk,
            dvv,
            qoff,
            qreg,
            scale * _LOG2E,
            scale,
            nr,
            h,
            TOPK=topk,
            HAS_MASK=has_mask,
            **meta,
        )
    return dq, dk, dvv


class _BRATriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, routing32, kpm, scale):
        o, lse = _bra_triton_forward(q, k, v, routing32, kpm, scale)
        ctx.save_for_backward(q, k, v, o, lse, routing32, kpm)
        ctx.scale = scale
        return o.to(q.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, do):
        q, k, v, o, lse, routing32, kpm = ctx.saved_tensors
        need_dq = ctx.needs_input_grad[0]
        need_dkv = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grads = _bra_triton_backward(do.contiguous(), q, k, v, o, lse, routing32, kpm, ctx.scale, need_dq, need_dkv)
        dq, dk, dv = (None if g is None else g.to(q.dtype) for g in grads)
        return dq, dk, dv, None, None, None


def _bra_triton(q, k, v, routing, scale, key_padding_mask):
    nr = q.shape[2]
    # One host sync, but an out-of-range region id would read outside K/V silently.
    lo, hi = int(routing.min()), int(routing.max())
    if lo < 0 or hi >= nr:
        raise ValueError(f"routing holds region ids in [{lo}, {hi}]; they must lie in [0, {nr - 1}] (regions={nr})")
    routing32 = routing.to(torch.int32).contiguous()
    kpm = None if key_padding_mask is None else key_padding_mask.contiguous().view(torch.uint8)
    return _BRATriton.apply(q.contiguous(), k.contiguous(), v.contiguous(), routing32, kpm, float(scale))


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

    ``backend``: None (use ``VISIONATTN_KERNELS`` / the device), "auto", "triton" or "reference"; the
    fallback rule and the fp32 precision rule are those of :mod:`visionattn.kernels._dispatch`.
    Routing indices get no gradient.
    """
    _check(q, k, v, routing, key_padding_mask)
    _dispatch.check_devices("bra", q, k=k, v=v, routing=routing, key_padding_mask=key_padding_mask)
    path = _dispatch.select("bra", (q, k, v), backend, q.dtype, {"q/k": q.shape[-1], "v": v.shape[-1]})
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if not math.isfinite(scale):
        raise ValueError(f"scale={scale} must be a finite float")
    if path == "triton":
        return _bra_triton(q, k, v, routing, scale, key_padding_mask)
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
