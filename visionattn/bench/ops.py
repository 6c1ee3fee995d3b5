"""The kernel benchmark's op specs: one per op, each beside the code that makes its inputs.

Adding an op to the benchmark is adding one :class:`~visionattn.bench.opspec.OpSpec` here (or anywhere, with
``register_op``); the cases at model shapes come from the family records.
"""

from __future__ import annotations

import math

import torch

from .opspec import REQUIRED, Cost, KernelCase, OpInputs, OpSpec, Unavailable, attention_cost, register_op

__all__ = ["BRA", "HALO_ATTN", "NA2D", "SPARSE_ATTN"]


def _randn(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype, grad: bool) -> torch.Tensor:
    return torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad)


def _qkv(case: KernelCase, b: int, device: torch.device, dtype: torch.dtype, grad: bool) -> list[torch.Tensor]:
    return [_randn((b, case.heads, case.height, case.width, case.head_dim), device, dtype, grad) for _ in range(3)]


# ----------------------------------------------------------------------------------------------------------
# bra: bi-level routing attention over regions_side^2 regions, each query region attending to its topk routed
# regions. Inputs in the op's layout, (B, heads, regions, tokens per region, head_dim), and random routing.


def _bra_regions(case: KernelCase) -> tuple[int, int]:
    s = case["regions_side"]
    if case.height % s or case.width % s:
        raise ValueError(f"bra case {case.name!r}: {case.height}x{case.width} tokens do not split into {s}x{s} regions")
    return s * s, (case.height // s) * (case.width // s)


def _bra_inputs(case: KernelCase, b: int, device: torch.device, dtype: torch.dtype, grad: bool) -> OpInputs:
    n, r = _bra_regions(case)
    q, k, v = (_randn((b, case.heads, n, r, case.head_dim), device, dtype, grad) for _ in range(3))
    routing = torch.rand(b, n, n, device=device).topk(case["topk"], dim=-1).indices
    return OpInputs((q, k, v, routing), {}, (q, k, v))


def _bra_cost(case: KernelCase, b: int, itemsize: int) -> Cost:
    n, r = _bra_regions(case)
    routing_bytes = b * n * case["topk"] * 8  # int64 indices
    return attention_cost(
        batch=b,
        heads=case.heads,
        queries=case.tokens,
        keys_per_query=case["topk"] * r,
        head_dim=case.head_dim,
        itemsize=itemsize,
        index_bytes=routing_bytes,
    )


def _bra_describe(case: KernelCase) -> str:
    s = case["regions_side"]
    return f"{s}^2 regions of {case.height // s}x{case.width // s}, topk {case['topk']}"


BRA = register_op(
    OpSpec(
        name="bra",
        params={"regions_side": REQUIRED, "topk": REQUIRED},
        make_inputs=_bra_inputs,
        cost=_bra_cost,
        describe=_bra_describe,
        test_case=dict(name="tiny", height=8, width=8, heads=2, head_dim=4, regions_side=2, topk=2),
    )
)


# ----------------------------------------------------------------------------------------------------------
# na2d: 2-D neighborhood attention, kernel_size^2 keys per query (windows shifted inside at the borders).


def _na2d_inputs(case: KernelCase, b: int, device: torch.device, dtype: torch.dtype, grad: bool) -> OpInputs:
    q, k, v = _qkv(case, b, device, dtype, grad)
    return OpInputs((q, k, v, case["kernel_size"], case["dilation"]), {}, (q, k, v))


def _na2d_cost(case: KernelCase, b: int, itemsize: int) -> Cost:
    return attention_cost(
        batch=b,
        heads=case.heads,
        queries=case.tokens,
        keys_per_query=case["kernel_size"] ** 2,
        head_dim=case.head_dim,
        itemsize=itemsize,
    )


def _natten_na2d(case: KernelCase, b: int, device: torch.device, dtype: torch.dtype, grad: bool):
    try:
        import natten
    except ImportError as e:
        raise Unavailable("not available (natten not installed; pip install visionattn[natten])") from e
    shape = (b, case.height, case.width, case.heads, case.head_dim)  # natten is heads-last
    q, k, v = (_randn(shape, device, dtype, grad) for _ in range(3))
    return [q, k, v], lambda: natten.na2d(q, k, v, kernel_size=case["kernel_size"], dilation=case["dilation"])


NA2D = register_op(
    OpSpec(
        name="na2d",
        params={"kernel_size": REQUIRED, "dilation": 1},
        make_inputs=_na2d_inputs,
        cost=_na2d_cost,
        describe=lambda case: f"kernel {case['kernel_size']}, dilation {case['dilation']}",
        extra_impls={"natten": _natten_na2d},
        # until a family declares na2d cases: a first-stage width (2 heads x 32) at 56x56, and 3x3 at 128x128
        cases=(
            dict(name="NA 7x7 @56x56", height=56, width=56, heads=2, head_dim=32, batch_cuda=128, kernel_size=7),
            dict(name="NA 3x3 @128x128", height=128, width=128, heads=2, head_dim=32, batch_cuda=16, kernel_size=3),
        ),
        test_case=dict(name="tiny", height=6, width=7, heads=2, head_dim=4, kernel_size=3),
    )
)


# ----------------------------------------------------------------------------------------------------------
# halo_attn: blocked local attention, block_size^2 queries per block attending to the
# (block_size + 2 halo_size)^2 window around the block, with learned relative-position tables per axis.


def _halo_win(case: KernelCase) -> int:
    return case["block_size"] + 2 * case["halo_size"]


def _halo_inputs(case: KernelCase, b: int, device: torch.device, dtype: torch.dtype, grad: bool) -> OpInputs:
    q, k, v = _qkv(case, b, device, dtype, grad)
    win = _halo_win(case)
    rel_h, rel_w = ((torch.randn(2 * win - 1, case.head_dim, device=device) * 0.02).to(dtype) for _ in range(2))
    rel_h.requires_grad_(grad)
    rel_w.requires_grad_(grad)
    kwargs = dict(rel_height=rel_h, rel_width=rel_w)
    return OpInputs((q, k, v, case["block_size"], case["halo_size"]), kwargs, (q, k, v, rel_h, rel_w))


def _halo_cost(case: KernelCase, b: int, itemsize: int) -> Cost:
    win = _halo_win(case)
    return attention_cost(
        batch=b,
        heads=case.heads,
        queries=case.tokens,
        keys_per_query=win * win,
        head_dim=case.head_dim,
        itemsize=itemsize,
        table_bytes=2 * (2 * win - 1) * case.head_dim * itemsize,
        # relative logits: each query against the win offsets of its window along each axis
        extra_fwd_flops=2 * 2.0 * b * case.heads * case.tokens * win * case.head_dim,
    )


HALO_ATTN = register_op(
    OpSpec(
        name="halo_attn",
        params={"block_size": REQUIRED, "halo_size": REQUIRED},
        make_inputs=_halo_inputs,
        cost=_halo_cost,
        describe=lambda case: f"block {case['block_size']}, halo {case['halo_size']}",
        # until a family declares halo_attn cases: block 8, halo 3, 4 heads x 32 over 64x64 tokens (a stride-8
        # stage of a 512 input)
        cases=(
            dict(
                name="Halo 8/3 @64x64",
                height=64,
                width=64,
                heads=4,
                head_dim=32,
                batch_cuda=32,
                block_size=8,
                halo_size=3,
            ),
        ),
        test_case=dict(name="tiny", height=8, width=8, heads=2, head_dim=4, block_size=4, halo_size=1),
    )
)


# ----------------------------------------------------------------------------------------------------------
# sparse_attn: each of height x width patch queries attends to its own ceil(keep * N) keys among the N =
# prefix + height x width tokens (a ViT's patch rows picking their keys; prefix: the class token's column).


def _sparse_shape(case: KernelCase) -> tuple[int, int]:
    n = case.tokens + case["prefix"]
    return n, min(n, math.ceil(case["keep"] * n))


def _sparse_inputs(case: KernelCase, b: int, device: torch.device, dtype: torch.dtype, grad: bool) -> OpInputs:
    n, kk = _sparse_shape(case)
    q = _randn((b, case.heads, case.tokens, case.head_dim), device, dtype, grad)
    k, v = (_randn((b, case.heads, n, case.head_dim), device, dtype, grad) for _ in range(2))
    index = torch.rand(b, case.heads, case.tokens, n, device=device).topk(kk, dim=-1).indices
    return OpInputs((q, k, v, index), {}, (q, k, v))


def _sparse_cost(case: KernelCase, b: int, itemsize: int) -> Cost:
    n, kk = _sparse_shape(case)
    return attention_cost(
        batch=b,
        heads=case.heads,
        queries=case.tokens,
        keys_per_query=kk,
        head_dim=case.head_dim,
        itemsize=itemsize,
        kv_tokens=n,
        index_bytes=b * case.heads * case.tokens * kk * 8,  # int64 positions
    )


SPARSE_ATTN = register_op(
    OpSpec(
        name="sparse_attn",
        params={"keep": REQUIRED, "prefix": 0},
        make_inputs=_sparse_inputs,
        cost=_sparse_cost,
        describe=lambda case: f"{_sparse_shape(case)[1]} of {_sparse_shape(case)[0]} keys per query",
        test_case=dict(name="tiny", height=4, width=5, heads=2, head_dim=4, keep=0.25, prefix=1),
    )
)
