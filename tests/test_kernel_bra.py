"""Bi-level routing attention: reference vs independent implementations, Triton kernels vs reference, dispatch.

The Triton tests run where ``_dispatch.triton_device()`` says the kernels can run: on CUDA tensors on a GPU
host, else in Triton's CPU interpreter (conftest sets TRITON_INTERPRET=1 when there is no GPU), so the shapes
are tiny. Inputs are drawn on the CPU (seeded generators) and moved there.
"""

from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from visionattn.kernels import BiLevelRoutingAttentionOp, _dispatch, bra, bra_reference, last_path
from visionattn.kernels.bra import gather_regions

DEVICE = _dispatch.triton_device()  # where the Triton path runs here (None: nowhere)
needs_triton = pytest.mark.skipif(
    DEVICE is None, reason="triton is not installed, or there is neither a GPU nor TRITON_INTERPRET=1"
)
interpreter_only = pytest.mark.skipif(
    not _dispatch.interpreting(), reason="checks the interpreter's in-kernel bf16 upcast (GPU: test_kernel_gpu.py)"
)


def _to(device, *tensors):
    return tuple(None if t is None else t.to(device) for t in tensors)


# ---------------------------------------------------------------------------------------------------
# Inputs and independent implementations
# ---------------------------------------------------------------------------------------------------


def _routing(b: int, nr: int, topk: int, gen: torch.Generator) -> torch.Tensor:
    """Distinct routed regions per query region (what torch.topk yields), different in every batch item."""
    return torch.rand(b, nr, nr, generator=gen).argsort(dim=-1)[..., :topk].contiguous()


def _case(b, h, nr, r, d, dv, topk, *, mask=False, no_key=False, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, nr, r, d, generator=gen).to(dtype)
    k = torch.randn(b, h, nr, r, d, generator=gen).to(dtype)
    v = torch.randn(b, h, nr, r, dv, generator=gen).to(dtype)
    routing = _routing(b, nr, topk, gen)
    kpm = None
    if mask:
        kpm = torch.rand(b, nr, r, generator=gen) > 0.3
        # Region 0 of batch item 0 is pure padding and every query region of item 0 routes to it.
        n_pad = topk if no_key else 1
        kpm[0, :n_pad] = False
        routing[0, :, 0] = 0
        if no_key:
            # Query region nr-1 of item 0 routes only to padding: its output must be 0.
            routing[0, nr - 1] = torch.arange(topk)
        routing[0] = _dedupe(routing[0], nr)
    return q, k, v, routing, kpm


def _dedupe(rows: torch.Tensor, nr: int) -> torch.Tensor:
    """Keep the first entry of each row and refill repeats with unused regions (routing has no repeats)."""
    out = rows.clone()
    for i in range(rows.shape[0]):
        seen: list[int] = []
        for j in range(rows.shape[1]):
            val = int(rows[i, j])
            if val in seen:
                val = next(x for x in range(nr) if x not in seen and x not in rows[i, j + 1 :].tolist())
            seen.append(val)
            out[i, j] = val
    return out


def _dense_masked(q, k, v, routing, scale, kpm):
    """Dense attention over all tokens with an explicit (N x N) boolean mask built from the routing."""
    b, h, nr, r, d = q.shape
    n = nr * r
    region_adj = torch.zeros(b, nr, nr, dtype=torch.bool)
    region_adj.scatter_(2, routing.long(), True)
    allowed = region_adj.repeat_interleave(r, dim=1).repeat_interleave(r, dim=2)  # (B, N, N)
    if kpm is not None:
        allowed = allowed & kpm.reshape(b, 1, n)
    logits = (q.reshape(b, h, n, d) * scale) @ k.reshape(b, h, n, d).transpose(-1, -2)
    logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    attn = torch.nan_to_num(logits.softmax(-1), nan=0.0)  # rows with no allowed key -> 0
    return (attn @ v.reshape(b, h, n, -1)).reshape(b, h, nr, r, -1)


def _official_legacy(q, k, v, routing, scale):
    """BiFormer's legacy computation: channels (heads * d) per token, K/V gathered from an expanded
    (B, regions, regions, R, C) view, attention per region and head."""
    b, h, nr, r, d = q.shape
    dv = v.shape[-1]
    to_tokens = lambda t: t.permute(0, 2, 3, 1, 4).reshape(b, nr, r, -1)  # noqa: E731 - (B, p2, w2, m*c)
    kv = torch.cat([to_tokens(k), to_tokens(v)], dim=-1)
    c = kv.shape[-1]
    index = routing.long().view(b, nr, -1, 1, 1).expand(-1, -1, -1, r, c)
    kv_sel = torch.gather(kv.view(b, 1, nr, r, c).expand(-1, nr, -1, -1, -1), dim=2, index=index)
    topk = routing.shape[-1]
    k_sel, v_sel = kv_sel.split([h * d, h * dv], dim=-1)  # (B, p2, topk, w2, m*c)
    k_sel = k_sel.reshape(b * nr, topk * r, h, d).permute(0, 2, 3, 1)  # (B*p2, m, c, topk*w2)
    v_sel = v_sel.reshape(b * nr, topk * r, h, dv).permute(0, 2, 1, 3)  # (B*p2, m, topk*w2, c)
    q_win = to_tokens(q).reshape(b * nr, r, h, d).permute(0, 2, 1, 3)  # (B*p2, m, w2, c)
    attn = ((q_win * scale) @ k_sel).softmax(-1)
    out = attn @ v_sel  # (B*p2, m, w2, c)
    return out.view(b, nr, h, r, dv).permute(0, 2, 1, 3, 4)


def _peak_bytes(fn, device=None):
    """Run fn; return (its result, peak live bytes allocated during it, largest single allocation).

    CPU: from the profiler's allocator events; CUDA: from the caching allocator's peak and its history.
    """
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.memory._record_memory_history(max_entries=1_000_000)
        try:
            out = fn()
            torch.cuda.synchronize()
            snap = torch.cuda.memory._snapshot()
        finally:
            torch.cuda.memory._record_memory_history(enabled=None)
        sizes = [e["size"] for trace in snap["device_traces"] for e in trace if e["action"] == "alloc"]
        assert sizes, "the allocator recorded no allocation"
        return out, torch.cuda.max_memory_allocated() - base, max(sizes)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    assert events, "the profiler recorded no allocation"
    live = peak = largest = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
        largest = max(largest, nbytes)
    return out, peak, largest


# ---------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        dict(b=2, h=2, nr=4, r=16, d=8, dv=8, topk=1),
        dict(b=2, h=2, nr=6, r=6, d=5, dv=7, topk=6),
        dict(b=1, h=3, nr=9, r=9, d=4, dv=4, topk=3),
    ],
)
@pytest.mark.parametrize("mask", [False, True])
def test_reference_matches_dense_masked_attention(shape, mask):
    q, k, v, routing, kpm = _case(**shape, mask=mask, no_key=mask and shape["topk"] < shape["nr"])
    scale = 0.37
    out = bra_reference(q, k, v, routing, scale=scale, key_padding_mask=kpm)
    expected = _dense_masked(q, k, v, routing, scale, kpm)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    if mask and shape["topk"] < shape["nr"]:
        assert (out[0, :, -1] == 0).all()  # the query region that sees only padding


@pytest.mark.parametrize("topk", [1, 3, 8])
def test_reference_matches_official_legacy_gather(topk):
    q, k, v, routing, _ = _case(2, 2, 8, 12, 6, 6, topk, seed=topk)
    scale = (2 * 6) ** -0.5  # BiFormer scales by the full qk channel count
    out = bra_reference(q, k, v, routing, scale=scale)
    torch.testing.assert_close(out, _official_legacy(q, k, v, routing, scale), atol=1e-5, rtol=1e-5)


def test_gather_regions_picks_routed_regions():
    x = torch.arange(2 * 1 * 3 * 2 * 1, dtype=torch.float32).view(2, 1, 3, 2, 1)
    routing = torch.tensor([[[2], [0], [1]], [[1], [1], [0]]])
    got = gather_regions(x, routing)
    assert got.shape == (2, 1, 3, 2, 1)
    for b in range(2):
        for r in range(3):
            assert torch.equal(got[b, 0, r], x[b, 0, routing[b, r, 0]])


@pytest.mark.parametrize("mask", [False, True])
def test_reference_gradcheck(mask):
    q, k, v, routing, kpm = _case(1, 2, 4, 3, 3, 2, 2, mask=mask, no_key=mask, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda a, b_, c: bra_reference(a, b_, c, routing, scale=0.7, key_padding_mask=kpm), inputs
    )


def test_reference_peak_memory_biformer_stage1_600x500():
    """The docstring's statement: BiFormer stage 1 at 600x500 (tokens 150x125 -> padded 154x126, 7x7 regions of
    22x18 = 396 tokens, 2 heads x 32, topk 1) peaks at 2 * logits + (2 * topk + 2) * |q| = 142.8 MB in fp32."""
    b, h, nr, r, d, topk = 1, 2, 49, 22 * 18, 32, 1
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, nr, r, d, generator=gen).requires_grad_() for _ in range(3))
    routing = _routing(b, nr, topk, gen)
    kpm = torch.ones(b, nr, r, dtype=torch.bool)
    kpm[:, 6::7, 18 - 2 :: 18] = False  # the right-hand regions hold 2 padded columns (125 -> 126)
    logits_bytes = b * h * nr * r * topk * r * 4
    q_bytes = q.numel() * 4
    stated = 2 * logits_bytes + (2 * topk + 2) * q_bytes
    assert abs(logits_bytes / 1e6 - 61.5) < 0.05 and abs(stated / 1e6 - 142.8) < 0.05
    for key_padding_mask in (None, kpm):
        out, peak, _ = _peak_bytes(lambda m=key_padding_mask: bra_reference(q, k, v, routing, key_padding_mask=m))
        assert 2 * logits_bytes <= peak <= 1.01 * stated, (peak, stated)
        del out
    with torch.no_grad():
        _, peak, _ = _peak_bytes(lambda: bra_reference(q, k, v, routing))
    assert 2 * logits_bytes <= peak <= stated - q_bytes  # without autograd the scaled q is freed early


# ---------------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU)
# ---------------------------------------------------------------------------------------------------

_TRITON_CASES = {
    # name: (b, h, nr, r, d, dv, topk, mask, no_key)
    "r16_topk1": (1, 1, 4, 16, 32, 32, 1, False, False),
    "r6_topk_all_masked_region": (2, 2, 6, 6, 12, 10, 6, True, False),
    "r9_no_key_query": (2, 1, 4, 9, 20, 20, 2, True, True),
    "r4_grouped_topk_all": (1, 2, 16, 4, 8, 8, 16, False, False),
    "r5_d3_masked": (1, 2, 5, 5, 3, 6, 3, True, True),
}


@needs_triton
@pytest.mark.parametrize("name", list(_TRITON_CASES))
def test_triton_forward_backward_fp32(name):
    b, h, nr, r, d, dv, topk, mask, no_key = _TRITON_CASES[name]
    q, k, v, routing, kpm = _to(DEVICE, *_case(b, h, nr, r, d, dv, topk, mask=mask, no_key=no_key, seed=len(name)))
    scale = 0.29
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = bra(q, k, v, routing, scale=scale, key_padding_mask=kpm, backend="triton")
    assert last_path("bra") == "triton"
    ref = bra_reference(q, k, v, routing, scale=scale, key_padding_mask=kpm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    if no_key:
        assert (out[0, :, -1] == 0).all()
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    want = torch.autograd.grad(ref, (q, k, v), grad_out)
    for name_, g, w in zip("qkv", got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4, msg=lambda m, n=name_: f"d{n}: {m}")


@needs_triton
@pytest.mark.slow
def test_triton_large_region_is_tiled():
    """R = 200 exceeds one tile: query rows and key columns are split into chunks."""
    q, k, v, routing, kpm = _to(DEVICE, *_case(1, 1, 3, 200, 16, 16, 2, mask=True, seed=3))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = bra(q, k, v, routing, key_padding_mask=kpm, backend="triton")
    ref = bra_reference(q, k, v, routing, key_padding_mask=kpm)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(ref, (q, k, v), grad_out)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@needs_triton
def test_triton_repeated_routing_matches_reference():
    """A region routed twice counts twice in the softmax (as in the gather), forward and backward."""
    q, k, v, _, _ = _to(DEVICE, *_case(1, 1, 3, 4, 8, 8, 2, seed=5))
    routing = torch.tensor([[[1, 1], [0, 2], [2, 2]]], device=DEVICE)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = bra(q, k, v, routing, backend="triton")
    ref = bra_reference(q, k, v, routing)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    grad_out = torch.randn_like(out)
    for g, w in zip(torch.autograd.grad(out, (q, k, v), grad_out), torch.autograd.grad(ref, (q, k, v), grad_out)):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


@needs_triton
@pytest.mark.parametrize(
    "dtype, atol, rtol",
    [(torch.float16, 2e-3, 0), pytest.param(torch.bfloat16, 1e-4, 2**-8, marks=interpreter_only)],
)
def test_triton_half_precision_forward(dtype, atol, rtol):
    """fp16 runs in fp16 tl.dot; bf16 is upcast to fp32 inside the kernel (interpreter), so only its output
    rounding (2**-9 relative) remains."""
    q, k, v, routing, kpm = _to(DEVICE, *_case(2, 2, 6, 6, 12, 12, 3, mask=True, no_key=True, dtype=dtype, seed=11))
    out = bra(q, k, v, routing, key_padding_mask=kpm, backend="triton")
    assert out.dtype == dtype
    ref = bra_reference(q.float(), k.float(), v.float(), routing, key_padding_mask=kpm)
    torch.testing.assert_close(out.float(), ref, atol=atol, rtol=rtol)


@needs_triton
@pytest.mark.parametrize(
    "dtype, atol", [(torch.float16, 2e-3), pytest.param(torch.bfloat16, 8e-3, marks=interpreter_only)]
)
def test_triton_half_precision_backward(dtype, atol):
    q, k, v, routing, _ = _to(DEVICE, *_case(1, 1, 4, 16, 16, 16, 2, dtype=dtype, seed=2))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    out = bra(q, k, v, routing, backend="triton")
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad_out)
    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(bra_reference(q32, k32, v32, routing), (q32, k32, v32), grad_out.float())
    for g, w in zip(got, want):
        assert g.dtype == dtype
        torch.testing.assert_close(g.float(), w, atol=atol, rtol=0)


@needs_triton
def test_triton_allocates_nothing_of_gathered_size():
    """The reference allocates topk copies of K (and V); the Triton path only O(N * d) (output, LSE, grads).

    Measured through the allocator (torch profiler on CPU, the caching allocator on CUDA); in the interpreter
    the tiles themselves live in numpy.
    """
    b, h, nr, r, d, topk = 1, 1, 8, 8, 16, 8
    q, k, v, routing, _ = _to(DEVICE, *_case(b, h, nr, r, d, d, topk, seed=7))
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    gathered_bytes = topk * k.numel() * 4  # one topk-times copy of K
    grad_out = torch.randn(b, h, nr, r, d, device=DEVICE)

    def fwd_bwd(backend):
        out = bra(q, k, v, routing, backend=backend)
        return torch.autograd.grad(out, (q, k, v), grad_out)

    fwd_bwd("triton")  # compile / autotune outside the measurement
    _, peak_triton, largest_triton = _peak_bytes(lambda: fwd_bwd("triton"), DEVICE)
    _, peak_ref, largest_ref = _peak_bytes(lambda: fwd_bwd("reference"), DEVICE)
    assert largest_ref >= gathered_bytes  # the measurement sees the reference's gather
    assert largest_triton < gathered_bytes / 4, largest_triton
    # output + dq + dk + dv + small per-row/per-region tables
    assert peak_triton < gathered_bytes, (peak_triton, gathered_bytes)
    assert peak_triton * 3 < peak_ref


# ---------------------------------------------------------------------------------------------------
# Dispatch and errors
# ---------------------------------------------------------------------------------------------------


def test_dispatch_env_and_backend(monkeypatch):
    q, k, v, routing, _ = _to(DEVICE or "cpu", *_case(1, 1, 2, 4, 4, 4, 1))
    ref = bra_reference(q, k, v, routing)
    monkeypatch.setenv("VISIONATTN_KERNELS", "reference")
    torch.testing.assert_close(bra(q, k, v, routing), ref)
    assert last_path("bra") == "reference"
    monkeypatch.setenv("VISIONATTN_KERNELS", "auto")
    bra(q, k, v, routing)
    assert last_path("bra") == ("triton" if q.is_cuda else "reference")  # CPU tensors take the reference
    monkeypatch.setenv("VISIONATTN_KERNELS", "bogus")
    with pytest.raises(ValueError, match="VISIONATTN_KERNELS"):
        bra(q, k, v, routing)
    with pytest.raises(ValueError, match="backend"):
        bra(q, k, v, routing, backend="cuda")
    monkeypatch.setenv("VISIONATTN_KERNELS", "triton")
    torch.testing.assert_close(bra(q, k, v, routing, backend="reference"), ref)  # argument beats env
    assert last_path("bra") == "reference"
    module = BiLevelRoutingAttentionOp(scale=0.5, backend="reference")
    torch.testing.assert_close(module(q, k, v, routing), bra_reference(q, k, v, routing, scale=0.5))


@needs_triton
def test_dispatch_env_triton(monkeypatch):
    q, k, v, routing, _ = _to(DEVICE, *_case(1, 1, 2, 4, 4, 4, 1))
    monkeypatch.setenv("VISIONATTN_KERNELS", "triton")
    torch.testing.assert_close(bra(q, k, v, routing), bra_reference(q, k, v, routing), atol=1e-5, rtol=1e-5)
    assert last_path("bra") == "triton"


def test_triton_on_cpu_without_interpreter_raises(monkeypatch):
    q, k, v, routing, _ = _case(1, 1, 2, 4, 4, 4, 1)
    monkeypatch.setattr(_dispatch, "interpreting", lambda: False)
    if _dispatch.HAS_TRITON:
        with pytest.raises(ValueError, match="CUDA"):
            bra(q, k, v, routing, backend="triton")
    else:
        with pytest.raises(ImportError, match="triton"):
            bra(q, k, v, routing, backend="triton")


@pytest.mark.parametrize(
    "change, exc, match",
    [
        (lambda a: {**a, "q": a["q"][0]}, ValueError, "q must be"),
        (lambda a: {**a, "k": a["k"][:, :, :, :2]}, ValueError, "k must match"),
        (lambda a: {**a, "v": a["v"][:, :, :2]}, ValueError, "k must match"),
        (lambda a: {**a, "k": a["k"].double()}, TypeError, "share one floating dtype"),
        (lambda a: {**a, "routing": a["routing"][:, :2]}, ValueError, "routing must be"),
        (lambda a: {**a, "routing": a["routing"].float()}, TypeError, "int32 or int64"),
        (lambda a: {**a, "routing": torch.zeros(1, 3, 4, dtype=torch.long)}, ValueError, "topk=4"),
        (lambda a: {**a, "routing": torch.zeros(1, 3, 0, dtype=torch.long)}, ValueError, "topk=0"),
        (lambda a: {**a, "key_padding_mask": torch.ones(1, 3, 4)}, ValueError, "key_padding_mask"),
        (lambda a: {**a, "key_padding_mask": torch.ones(1, 3, 5, dtype=torch.bool)}, ValueError, "key_padding_mask"),
    ],
)
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_inputs_raise(change, exc, match, backend):
    q, k, v, routing, _ = _case(1, 1, 3, 4, 4, 4, 2)
    args = change(dict(q=q, k=k, v=v, routing=routing, key_padding_mask=None))
    with pytest.raises(exc, match=match):
        bra(args.pop("q"), args.pop("k"), args.pop("v"), args.pop("routing"), **args, backend=backend)


def test_auto_falls_back_to_reference_for_unsupported_dtype(monkeypatch):
    """Where auto would pick Triton (CUDA inputs), inputs the kernel cannot take go to the reference."""
    q, k, v, routing, _ = _case(1, 1, 3, 4, 4, 4, 2, dtype=torch.float64)
    monkeypatch.setattr(_dispatch, "choose", lambda op, *tensors, backend=None: "triton")
    monkeypatch.setenv("VISIONATTN_KERNELS", "auto")
    torch.testing.assert_close(bra(q, k, v, routing), bra_reference(q, k, v, routing))
    assert last_path("bra") == "reference"
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        bra(q, k, v, routing, backend="triton")


@needs_triton
def test_triton_constraint_errors():
    q, k, v, routing, _ = _to(DEVICE, *_case(1, 1, 3, 4, 4, 4, 2))
    with pytest.raises(TypeError, match="float16, bfloat16 or float32"):
        bra(q.double(), k.double(), v.double(), routing, backend="triton")
    big = torch.randn(1, 1, 3, 4, 300, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim <= 256"):
        bra(big, big, big, routing, backend="triton")
    with pytest.raises(ValueError, match=r"region ids in \[0, 3\]"):
        bra(q, k, v, torch.tensor([[[0, 3], [1, 2], [0, 1]]], device=DEVICE), backend="triton")
    with pytest.raises(ValueError, match="scale"):
        bra(q, k, v, routing, scale=float("inf"), backend="triton")
