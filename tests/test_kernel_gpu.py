"""Triton kernels on a real GPU against the float64 reference: every op, forward and backward, fp32 / fp16 /
bf16, at model shapes and at odd ones (borders, sizes that do not divide, masked tokens, every head dim in use).

Marked ``gpu`` (CI deselects it) and skipped without CUDA. Errors are relative to the reference's norm, per
output and per gradient: fp32 runs IEEE products (the default fp32 rule of ``visionattn.kernels._dispatch``),
fp16 / bf16 run tensor-core products with fp32 accumulation, so their bound is a few units of the format's
rounding (2**-11, 2**-8) grown by the softmax and the sums.
"""

from __future__ import annotations

import pytest
import torch
from visionattn.kernels import (
    _dispatch,
    bra,
    bra_reference,
    halo_attn,
    halo_attn_reference,
    last_path,
    na2d,
    na2d_reference,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="needs triton"),
]

DEV = torch.device("cuda")
DTYPES = {
    # dtype: (forward rel. error, gradient rel. error), as ||x - ref|| / ||ref||
    torch.float32: (1e-5, 1e-4),
    torch.float16: (2e-3, 5e-3),
    torch.bfloat16: (1.6e-2, 4e-2),
}
DTYPE_IDS = ["fp32", "fp16", "bf16"]


@pytest.fixture(params=list(DTYPES), ids=DTYPE_IDS)
def dtype(request):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 rule under test: IEEE products
    yield request.param
    torch.backends.cuda.matmul.allow_tf32 = before


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return ((x.double() - ref).norm() / ref.norm().clamp_min(1e-12)).item()


def _check(fn, ref_fn, inputs: dict, dtype, what: str):
    """Run ``fn`` on ``inputs`` cast to ``dtype`` and ``ref_fn`` on their float64 copies; compare outputs and
    the gradients of every floating input."""
    fwd_tol, grad_tol = DTYPES[dtype]
    cast = {
        k: (v.to(dtype).requires_grad_() if v.is_floating_point() else v) if isinstance(v, torch.Tensor) else v
        for k, v in inputs.items()
    }
    ref_in = {
        k: (v.detach().double().requires_grad_() if v.is_floating_point() else v) if isinstance(v, torch.Tensor) else v
        for k, v in cast.items()
    }
    out = fn(**cast)
    ref = ref_fn(**ref_in)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all(), what
    err = _rel(out, ref)
    assert err <= fwd_tol, f"{what}: forward rel. error {err:.2e} > {fwd_tol:.0e}"
    names = [k for k, v in cast.items() if isinstance(v, torch.Tensor) and v.requires_grad]
    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(out, [cast[k] for k in names], grad_out.to(dtype))
    want = torch.autograd.grad(ref, [ref_in[k] for k in names], grad_out)
    for name, g, w in zip(names, got, want):
        assert g.dtype == cast[name].dtype, name
        err = _rel(g, w)
        assert err <= grad_tol, f"{what}: d{name} rel. error {err:.2e} > {grad_tol:.0e}"


def _randn(*shape, scale=1.0):
    return torch.randn(*shape, device=DEV) * scale


# ---------------------------------------------------------------------------------------------------------- BRA


def _bra_inputs(b, heads, nr, r, d, topk, mask=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    routing = torch.rand(b, nr, nr, generator=gen).argsort(-1)[..., :topk]
    kpm = None
    if mask:  # padded tokens, and one key region of pure padding that every query region of item 0 routes to
        kpm = torch.rand(b, nr, r, generator=gen) > 0.2
        kpm[0, 0] = False
        for i in range(nr):  # region 0 first, then topk - 1 distinct others (routing ids are distinct)
            others = (torch.randperm(nr - 1, generator=gen) + 1)[: topk - 1]
            routing[0, i] = torch.cat([torch.zeros(1, dtype=routing.dtype), others])
        kpm = kpm.to(DEV)
    routing = routing.contiguous().to(DEV)
    torch.manual_seed(seed)
    return dict(
        q=_randn(b, heads, nr, r, d), k=_randn(b, heads, nr, r, d), v=_randn(b, heads, nr, r, d),
        routing=routing, key_padding_mask=kpm, scale=(heads * d) ** -0.5,
    )  # fmt: skip


BRA_CASES = {
    # BiFormer-S at 224: 7x7 regions; stage 1 (56^2, 2 heads, 8x8 regions, top-1), 2 (28^2, 4 heads, top-4),
    # 3 (14^2, 8 heads, 2x2 regions, top-16); head dim 32
    "s1-224": (2, 2, 49, 64, 32, 1, False),
    "s2-224": (2, 4, 49, 16, 32, 4, False),
    "s3-224": (2, 8, 49, 4, 32, 16, False),
    # odd: 600x500 stage 1 regions (22x18 = 396 tokens, several tiles per region) with padded tokens
    "s1-600x500-masked": (1, 2, 49, 396, 32, 1, True),
    # non-power-of-two tokens and head dims, every region routed, masked tokens
    "r9-d24-masked": (2, 3, 9, 9, 24, 9, True),
    "r16-d16": (2, 2, 16, 16, 16, 3, False),
    "r4-d64": (2, 2, 36, 4, 64, 8, False),
}


@pytest.mark.parametrize("case", list(BRA_CASES))
def test_bra_gpu(case, dtype):
    inputs = _bra_inputs(*BRA_CASES[case])

    def run(**kw):
        out = bra(**kw, backend="triton")
        assert last_path("bra") == "triton"
        return out

    _check(run, bra_reference, inputs, dtype, f"bra {case}")


# ---------------------------------------------------------------------------------------------------------- NA


NA_CASES = {
    # name: (B, heads, H, W, d, kernel, dilation, border, rpb, extra keys)
    "nat-7x7-56": (2, 2, 56, 56, 32, 7, 1, "shift", True, 0),
    "nat-7x7-56-no-rpb": (2, 2, 56, 56, 32, 7, 1, "shift", False, 0),
    "dinat-7x7-dil4-28": (1, 4, 28, 28, 32, 7, 4, "shift", True, 0),
    "3x3-mask-extra-odd-map": (2, 2, 17, 23, 32, 3, 1, "mask", True, 49),
    "5x4-even-dil-d16": (1, 2, 13, 10, 16, (5, 4), (1, 2), "shift", True, 0),
    "7x7-d64-window-over-border-mask": (1, 2, 6, 9, 64, 7, 1, "mask", False, 5),
}


@pytest.mark.parametrize("case", list(NA_CASES))
def test_na2d_gpu(case, dtype):
    b, heads, h, w, d, kernel, dilation, border, has_rpb, m = NA_CASES[case]
    torch.manual_seed(1)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    inputs = dict(
        q=_randn(b, heads, h, w, d), k=_randn(b, heads, h, w, d), v=_randn(b, heads, h, w, d),
        kernel_size=kernel, dilation=dilation, border=border,
        rpb=_randn(heads, 2 * kh - 1, 2 * kw - 1, scale=0.5) if has_rpb else None,
        additional_keys=_randn(b, heads, m, d) if m else None,
        additional_values=_randn(b, heads, m, d) if m else None,
    )  # fmt: skip

    def run(**kw):
        out = na2d(**kw, backend="triton")
        assert last_path("na2d") == "triton"
        return out

    _check(run, na2d_reference, inputs, dtype, f"na2d {case}")


# ---------------------------------------------------------------------------------------------------------- halo


HALO_CASES = {
    # name: (B, heads, H, W, block, halo, query stride, dqk, dv, pad_mode)
    "bs8-h3-32": (2, 8, 32, 32, 8, 3, 1, 32, 32, "zeros"),
    "bs8-h2-16-d16": (2, 8, 16, 16, 8, 2, 1, 16, 16, "zeros"),
    "bs8-h3-stride2": (2, 4, 32, 32, 8, 3, 2, 32, 32, "zeros"),
    "bs8-h3-20x20-not-divisible": (1, 4, 20, 20, 8, 3, 1, 32, 32, "zeros"),
    "bs8-h3-masked-border-dv64": (1, 2, 24, 19, 8, 3, 1, 16, 64, "mask"),
    "bs7-h2-d24": (1, 2, 21, 14, 7, 2, 1, 24, 24, "mask"),
}


@pytest.mark.parametrize("case", list(HALO_CASES))
def test_halo_attn_gpu(case, dtype):
    b, heads, h, w, bs, halo, stride, dqk, dv, pad_mode = HALO_CASES[case]
    torch.manual_seed(2)
    hq, wq = -(-h // stride), -(-w // stride)
    win = bs + 2 * halo
    inputs = dict(
        q=_randn(b, heads, hq, wq, dqk), k=_randn(b, heads, h, w, dqk), v=_randn(b, heads, h, w, dv),
        block_size=bs, halo_size=halo, pad_mode=pad_mode,
        rel_height=_randn(2 * win - 1, dqk, scale=0.2), rel_width=_randn(2 * win - 1, dqk, scale=0.2),
    )  # fmt: skip

    def run(**kw):
        out = halo_attn(**kw, backend="triton")
        assert last_path("halo_attn") == "triton"
        return out

    _check(run, halo_attn_reference, inputs, dtype, f"halo_attn {case}")


def test_auto_picks_the_kernel_on_cuda_and_falls_back_for_float64():
    q = _randn(1, 1, 4, 4, 16)
    na2d(q, q, q, 3)
    assert last_path("na2d") == "triton"
    q64 = q.double()
    torch.testing.assert_close(na2d(q64, q64, q64, 3), na2d_reference(q64, q64, q64, 3))
    assert last_path("na2d") == "reference"
