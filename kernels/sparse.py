"""Index-sparse attention (Sparsifiner, "Learning Sparse Instance-Dependent Attention for Efficient Vision
Transformers", CVPR'23): every query attends only to its own list of keys.

``q`` is ``(B, heads, Nq, d)``, ``k`` / ``v`` are ``(B, heads, Nk, d)`` / ``(B, heads, Nk, dv)``, and
``index`` ``(B, heads, Nq, K)`` holds, per query, the ``K`` key positions it attends to. With ``always = A``
the first ``A`` keys (e.g. a class token's column) are attended by every query as well. One softmax runs over
those ``A + K`` logits ``q . k * scale`` per query::

    out[b, h, i] = sum_j softmax_j(q_i . k_j * scale) v_j,   j in [0, A) followed by index[b, h, i, :]

A key listed twice (in ``index`` twice, or in ``index`` and below ``A``) counts twice, as it would in a softmax
over the concatenated list; callers pass distinct positions (a top-k selection is).

Cost: ``Nq * (A + K) * d`` multiply-adds per head for the logits and again for the output; memory for the
attention itself is ``O(Nq * (A + K))`` per head, never ``O(Nq * Nk)``. The reference gathers the selected key
and value rows, ``(B, heads, Nq, K, d)``: ``O(Nq * K * d)`` memory, the upper bound the op allows; the Triton
kernels read the rows straight from ``k`` / ``v`` through the index (one program per tile of queries, keys in
chunks with an online softmax, LSE saved; the backward recomputes the probabilities and scatters dk / dv with
fp32 atomics, since queries share keys, so dk / dv are not bit-reproducible on a GPU).

Paths: :func:`sparse_attn_reference` (plain PyTorch, differentiable, ONNX-exportable: a flat ``index_select``
and a batched product, no scatter) and the Triton kernels; dtypes, head-dim limit and fallback follow
:mod:`visionattn.kernels._dispatch`. The kernels multiply and accumulate in fp32 element by element (a query's
keys differ from its neighbours', so there is no shared tile for ``tl.dot``): fp32 inputs are computed in full
IEEE precision whatever the TF32 switch says. Key positions must lie in ``[0, Nk)``: the reference raises an
IndexError on others, the kernels (which do not check, to stay asynchronous) leave them out.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from . import _dispatch

__all__ = ["sparse_attn", "sparse_attn_reference", "SparseAttentionOp"]


def _check(q, k, v, index, always: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v), ("index", index)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    for name, t in (("q", q), ("k", k), ("v", v), ("index", index)):
        if t.dim() != 4:
            want = "(B, heads, Nq, K)" if name == "index" else "(B, heads, N, dim)"
            raise ValueError(f"{name} must be 4-D {want}, got shape {tuple(t.shape)}")
    if not q.is_floating_point() or k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share one floating dtype, got {q.dtype}, {k.dtype}, {v.dtype}; cast them")
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"index must be int64 or int32 key positions, got {index.dtype}")
    b, nh, nq, d = q.shape
    if k.shape[:2] != (b, nh) or k.shape[-1] != d or v.shape[:3] != k.shape[:3]:
        raise ValueError(
            "k must be (B, heads, Nk, d) with q's B, heads and d, and v (B, heads, Nk, dv) with k's Nk; "
            f"got q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
        )
    if tuple(index.shape[:3]) != (b, nh, nq):
        raise ValueError(f"index must be (B, heads, Nq, K) = ({b}, {nh}, {nq}, K), got {tuple(index.shape)}")
    if isinstance(always, bool) or not isinstance(always, int) or not 0 <= always <= k.shape[2]:
        raise ValueError(f"always={always!r} must be an int in [0, Nk={k.shape[2]}] (keys every query attends)")
    if index.shape[-1] + always == 0:
        raise ValueError("every query needs at least one key: index has K=0 columns and always=0")


def _gather_rows(t: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Rows of ``t`` (B, heads, Nk, d) picked per query by ``index`` (B, heads, Nq, K) -> (B, heads, Nq, K, d)."""
    b, nh, nk, d = t.shape
    offset = torch.arange(b * nh, device=t.device).view(b, nh, 1, 1) * nk
    flat = (index.long() + offset).reshape(-1)
    return t.reshape(b * nh * nk, d).index_select(0, flat).view(*index.shape, d)


def sparse_attn_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    *,
    scale: float | None = None,
    always: int = 0,
) -> torch.Tensor:
    """Reference of :func:`sparse_attn` (ground truth; CPU; differentiable in q, k, v).

    q: (B, heads, Nq, d); k: (B, heads, Nk, d); v: (B, heads, Nk, dv); index: (B, heads, Nq, K) -> (B, heads, Nq, dv).
    """
    _check(q, k, v, index, always)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    ks, vs = _gather_rows(k, index), _gather_rows(v, index)  # (B, heads, Nq, K, d)
    logits = torch.einsum("bhnkd,bhnd->bhnk", ks, q) * scale  # (B, heads, Nq, K)
    if always:
        logits = torch.cat([q @ k[:, :, :always].transpose(-1, -2) * scale, logits], dim=-1)
    p = logits.softmax(-1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(q.dtype)
    out = (p[..., always:].unsqueeze(-2) @ vs).squeeze(-2)
    if always:
        out = out + p[..., :always] @ v[:, :, :always]
    return out


if _dispatch.HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _slot_keys(IDX, idx_row, offs_m, m_ok, slot, A: tl.constexpr, KSEL, NK):
        """Key positions of one chunk of slots for a tile of queries: slot < A is key ``slot``, the others read
        ``index[query, slot - A]``; (BM, BK) positions and validity."""
        sel = (slot >= A) & (slot < A + KSEL)
        pos = tl.load(IDX + idx_row[:, None] + (slot - A)[None, :], mask=m_ok[:, None] & sel[None, :], other=0)
        pos = tl.where((slot < A)[None, :], slot[None, :], pos).to(tl.int64)
        ok = m_ok[:, None] & (slot < A + KSEL)[None, :] & (pos >= 0) & (pos < NK)
        return pos, ok

    @triton.jit
    def _gather_rows_tile(base, pos, ok, offs_c, c_ok, s_n, s_c):
        """Rows ``pos`` (BM, BK) of one head's (N, C) map, read in place: (BM, BK, C) float32, 0 where not ``ok``."""
        return tl.load(
            base + pos[:, :, None] * s_n + offs_c[None, None, :] * s_c,
            mask=ok[:, :, None] & c_ok[None, None, :],
            other=0.0,
        ).to(tl.float32)

    @triton.jit
    def _sparse_fwd_kernel(
        Q,
        K,
        V,
        IDX,
        OUT,
        LSE,
        sq_b,
        sq_h,
        sq_n,
        sq_d,
        sk_b,
        sk_h,
        sk_n,
        sk_d,
        sv_b,
        sv_h,
        sv_n,
        sv_d,
        so_b,
        so_h,
        so_n,
        so_d,
        NH,
        NQ,
        NK,
        KSEL,
        DQK,
        DV,
        scale,
        A: tl.constexpr,
        BM: tl.constexpr,
        BK: tl.constexpr,
        DP: tl.constexpr,
        DVP: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // NH).to(tl.int64)
        hh = (bh % NH).to(tl.int64)
        offs_m = pid * BM + tl.arange(0, BM)
        m_ok = offs_m < NQ
        offs_d = tl.arange(0, DP)
        offs_e = tl.arange(0, DVP)
        d_ok = offs_d < DQK
        e_ok = offs_e < DV
        q = tl.load(
            Q + b * sq_b + hh * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        idx_row = (bh.to(tl.int64) * NQ + offs_m) * KSEL
        k_base = K + b * sk_b + hh * sk_h
        v_base = V + b * sv_b + hh * sv_h
        qk_scale = scale * 1.4426950408889634  # softmax in base 2
        m_i = tl.full([BM], -1.0e30, tl.float32)
        l_i = tl.zeros([BM], tl.float32)
        acc = tl.zeros([BM, DVP], tl.float32)
        for j0 in range(0, A + KSEL, BK):
            slot = j0 + tl.arange(0, BK)
            pos, ok = _slot_keys(IDX, idx_row, offs_m, m_ok, slot, A, KSEL, NK)
            kt = _gather_rows_tile(k_base, pos, ok, offs_d, d_ok, sk_n, sk_d)
            s = tl.sum(q[:, None, :] * kt, 2) * qk_scale
            s = tl.where(ok, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vt = _gather_rows_tile(v_base, pos, ok, offs_e, e_ok, sv_n, sv_d)
            acc = acc * alpha[:, None] + tl.sum(p[:, :, None] * vt, 1)
            m_i = m_new
        l_i = tl.where(l_i > 0.0, l_i, 1.0)
        out = acc / l_i[:, None]
        tl.store(
            OUT + b * so_b + hh * so_h + offs_m[:, None] * so_n + offs_e[None, :] * so_d,
            out.to(OUT.dtype.element_ty),
            mask=m_ok[:, None] & e_ok[None, :],
        )
        lse = (m_i + tl.log2(l_i)) * 0.6931471805599453  # natural-log LSE per query, (B * heads, Nq)
        tl.store(LSE + bh.to(tl.int64) * NQ + offs_m, lse, mask=m_ok)

    @triton.jit
    def _sparse_bwd_kernel(
        Q,
        K,
        V,
        IDX,
        DO,
        LSE,
        DELTA,
        DQ,
        DK,
        DVA,
        sq_b,
        sq_h,
        sq_n,
        sq_d,
        sk_b,
        sk_h,
        sk_n,
        sk_d,
        sv_b,
        sv_h,
        sv_n,
        sv_d,
        sd_b,
        sd_h,
        sd_n,
        sd_d,
        NH,
        NQ,
        NK,
        KSEL,
        DQK,
        DV,
        scale,
        A: tl.constexpr,
        BM: tl.constexpr,
        BK: tl.constexpr,
        DP: tl.constexpr,
        DVP: tl.constexpr,
    ):
        pid = tl.program_id(0)
        bh = tl.program_id(1)
        b = (bh // NH).to(tl.int64)
        hh = (bh % NH).to(tl.int64)
        offs_m = pid * BM + tl.arange(0, BM)
        m_ok = offs_m < NQ
        offs_d = tl.arange(0, DP)
        offs_e = tl.arange(0, DVP)
        d_ok = offs_d < DQK
        e_ok = offs_e < DV
        q = tl.load(
            Q + b * sq_b + hh * sq_h + offs_m[:, None] * sq_n + offs_d[None, :] * sq_d,
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        do = tl.load(
            DO + b * sd_b + hh * sd_h + offs_m[:, None] * sd_n + offs_e[None, :] * sd_d,
            mask=m_ok[:, None] & e_ok[None, :],
            other=0.0,
        ).to(tl.float32)
        q_pos = bh.to(tl.int64) * NQ + offs_m
        lse2 = tl.load(LSE + q_pos, mask=m_ok, other=0.0) * 1.4426950408889634
        delta = tl.load(DELTA + q_pos, mask=m_ok, other=0.0)
        idx_row = q_pos * KSEL
        k_base = K + b * sk_b + hh * sk_h
        v_base = V + b * sv_b + hh * sv_h
        # dk / dv accumulate in contiguous fp32 (B, heads, Nk, d) buffers
        dk_base = DK + bh.to(tl.int64) * NK * DQK
        dv_base = DVA + bh.to(tl.int64) * NK * DV
        qk_scale = scale * 1.4426950408889634
        dq = tl.zeros([BM, DP], tl.float32)
        for j0 in range(0, A + KSEL, BK):
            slot = j0 + tl.arange(0, BK)
            pos, ok = _slot_keys(IDX, idx_row, offs_m, m_ok, slot, A, KSEL, NK)
            kt = _gather_rows_tile(k_base, pos, ok, offs_d, d_ok, sk_n, sk_d)
            vt = _gather_rows_tile(v_base, pos, ok, offs_e, e_ok, sv_n, sv_d)
            s = tl.sum(q[:, None, :] * kt, 2) * qk_scale
            p = tl.where(ok, tl.exp2(s - lse2[:, None]), 0.0)
            tl.atomic_add(
                dv_base + pos[:, :, None] * DV + offs_e[None, None, :],
                p[:, :, None] * do[:, None, :],
                mask=ok[:, :, None] & e_ok[None, None, :],
            )
            dp = tl.sum(do[:, None, :] * vt, 2)
            ds = p * (dp - delta[:, None])  # gradient of the natural-unit logit
            dq += tl.sum(ds[:, :, None] * kt, 1)
            tl.atomic_add(
                dk_base + pos[:, :, None] * DQK + offs_d[None, None, :],
                ds[:, :, None] * q[:, None, :] * scale,
                mask=ok[:, :, None] & d_ok[None, None, :],
            )
        tl.store(
            DQ + q_pos[:, None] * DQK + offs_d[None, :],
            (dq * scale).to(DQ.dtype.element_ty),
            mask=m_ok[:, None] & d_ok[None, :],
        )

    # A program holds (BM, BK, d) tiles of gathered rows. Kept: the (BM, BK, warps) that ptxas compiles for sm_90
    # without register spills at head dim 64 in fp16 and fp32 (tools/kernel_report.py); 16 x 16 tiles spill in
    # both kernels, and the backward (three tiles live) spills from 8 x 8 on 4 warps.
    _SWEEP = [
        triton.Config({"BM": bm, "BK": bk}, num_warps=nw, num_stages=1)
        for bm in (4, 8, 16, 32)
        for bk in (4, 8, 16)
        for nw in (2, 4, 8)
    ]
    _FWD = [(4, 8, 4), (8, 4, 4), (8, 8, 4), (8, 8, 8), (16, 4, 8), (4, 4, 4)]
    _BWD = [(4, 8, 4), (8, 4, 4), (8, 8, 8)]

    def _configs(kept: list) -> list:
        return [triton.Config({"BM": bm, "BK": bk}, num_warps=nw, num_stages=1) for bm, bk, nw in kept]

    _TUNE_KEY = ["NQ", "NK", "KSEL", "DQK", "DV", "NH", "A"]
    # In the interpreter each inner step costs milliseconds: big query tiles, and key chunks small enough that
    # the tests' shapes take several chunks (the online softmax's multi-step path).
    _INTERPRET = {"BM": 32, "BK": 8}
    KERNELS = {
        "sparse_attn_fwd": _dispatch.TunedKernel(
            "sparse_attn_fwd", _sparse_fwd_kernel, _configs(_FWD), _TUNE_KEY, _INTERPRET, sweep=_SWEEP
        ),
        "sparse_attn_bwd": _dispatch.TunedKernel(
            "sparse_attn_bwd",
            _sparse_bwd_kernel,
            _configs(_BWD),
            _TUNE_KEY,
            _INTERPRET,
            reset_to_zero=["DK", "DVA"],
            sweep=_SWEEP,
        ),
    }
else:  # pragma: no cover - depends on the install
    KERNELS = {}


def _args(q, k, v, index, scale: float, always: int) -> dict:
    nh, nq, dqk = q.shape[1:]
    return dict(
        NH=nh,
        NQ=nq,
        NK=k.shape[2],
        KSEL=index.shape[-1],
        DQK=dqk,
        DV=v.shape[-1],
        scale=float(scale),
        A=always,
        DP=_dispatch.next_pow2(dqk, 16),
        DVP=_dispatch.next_pow2(v.shape[-1], 16),
    )


def _strides(prefix: str, t: torch.Tensor) -> dict:
    return {f"s{prefix}_{n}": s for n, s in zip("bhnd", t.stride())}


def _grid(nq: int, bh: int):
    return lambda meta: (triton.cdiv(nq, meta["BM"]), bh)


class _SparseAttnTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, index, scale: float, always: int):
        b, nh, nq, _ = q.shape
        index = index.contiguous()
        o = q.new_empty(b, nh, nq, v.shape[-1])
        lse = torch.empty(b, nh, nq, device=q.device, dtype=torch.float32)
        KERNELS["sparse_attn_fwd"][_grid(nq, b * nh)](
            Q=q,
            K=k,
            V=v,
            IDX=index,
            OUT=o,
            LSE=lse,
            **_strides("q", q),
            **_strides("k", k),
            **_strides("v", v),
            **_strides("o", o),
            **_args(q, k, v, index, scale, always),
        )
        ctx.save_for_backward(q, k, v, index, o, lse)
        ctx.scale, ctx.always = scale, always
        ctx.mark_non_differentiable(index)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, index, o, lse = ctx.saved_tensors
        b, nh, nq, dqk = q.shape
        delta = (do.float() * o.float()).sum(-1)
        dq = torch.empty(b, nh, nq, dqk, device=q.device, dtype=q.dtype)
        dk = torch.zeros(k.shape, device=q.device, dtype=torch.float32)
        dv = torch.zeros(v.shape, device=q.device, dtype=torch.float32)
        KERNELS["sparse_attn_bwd"][_grid(nq, b * nh)](
            Q=q,
            K=k,
            V=v,
            IDX=index,
            DO=do,
            LSE=lse,
            DELTA=delta,
            DQ=dq,
            DK=dk,
            DVA=dv,
            **_strides("q", q),
            **_strides("k", k),
            **_strides("v", v),
            **_strides("d", do),
            **_args(q, k, v, index, ctx.scale, ctx.always),
        )
        return dq, dk.to(k.dtype), dv.to(v.dtype), None, None, None


def sparse_attn(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    index: torch.Tensor,
    *,
    scale: float | None = None,
    always: int = 0,
    backend: str | None = None,
) -> torch.Tensor:
    """Index-sparse attention; see the module docstring for the semantics.

    q: (B, heads, Nq, d); k: (B, heads, Nk, d); v: (B, heads, Nk, dv); index: (B, heads, Nq, K) int64/int32
    key positions -> (B, heads, Nq, dv). ``scale`` defaults to ``d ** -0.5``; ``always``: the first ``always``
    keys are attended by every query too. ``backend``: None (``VISIONATTN_KERNELS`` / the device), "auto",
    "triton" or "reference"; fallback and fp32 precision rules are those of :mod:`visionattn.kernels._dispatch`.
    """
    _check(q, k, v, index, always)
    _dispatch.check_devices("sparse_attn", q, k=k, v=v, index=index)
    path = _dispatch.select("sparse_attn", (q, k, v, index), backend, q.dtype, {"q/k": q.shape[-1], "v": v.shape[-1]})
    if path == "reference":
        return sparse_attn_reference(q, k, v, index, scale=scale, always=always)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    return _SparseAttnTriton.apply(q, k, v, index, float(scale), always)


class SparseAttentionOp(nn.Module):
    """Module form of :func:`sparse_attn` with a fixed scale, ``always`` and backend.

    forward(q, k, v, index): shapes as in :func:`sparse_attn`.
    """

    def __init__(self, scale: float | None = None, always: int = 0, backend: str | None = None):
        super().__init__()
        self.scale = scale
        self.always = always
        self.backend = backend

    def forward(self, q, k, v, index):
        return sparse_attn(q, k, v, index, scale=self.scale, always=self.always, backend=self.backend)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, always={self.always}"
