"""Every Triton kernel compiles for the GPU (sm_90) in fp16, bf16 and fp32, checked without a GPU.

``visionattn.kernels._aot`` compiles ahead of time with Triton's bundled ptxas in a child process without
``TRITON_INTERPRET`` (conftest sets it here when there is no CUDA, and interpreted kernels cannot be
compiled). One representative shape per op, the first autotune config the pruning keeps, forward and backward
kernels: 30 compiles, about a minute on two cores. ``tools/kernel_report.py`` covers every config.
"""

from __future__ import annotations

import importlib

import pytest
from visionattn.kernels import _dispatch

if _dispatch.HAS_TRITON:
    from visionattn.kernels import _aot

needs_triton = pytest.mark.skipif(not _dispatch.HAS_TRITON, reason="triton is not installed")

# One shape per op exercising every optional input (key padding mask; bias table and extra keys; both tables).
SHAPES = {
    "bra": dict(R=64, TOPK=4, D=32, DV=32, HAS_MASK=True),
    "na2d": dict(KH=7, KW=7, SHIFT=True, HAS_RPB=True, HAS_EXTRA=True, D=32),
    "halo_attn": dict(BS=8, HALO=3, STRIDE=1, DQK=32, DV=32, HAS_RH=True, HAS_RW=True, MASK_PAD=True),
    "sparse_attn": dict(A=1, DQK=64, DV=64),
}
SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90


@pytest.fixture(scope="module")
def compiled():
    jobs = []
    for kernel, (op, _, _) in _aot.KERNELS.items():
        jobs += _aot.jobs(kernel, SHAPES[op], _aot.DTYPES, which="first")
    records = _aot.run_jobs(jobs, workers=2, timeout=1500)
    return {(r["kernel"], r["dtype"]): r for r in records}


@needs_triton
def test_every_kernel_has_a_compile_spec():
    """A kernel added to an op module without a spec here would escape the compile check."""
    names = set()
    for mod in _aot.op_modules():
        names |= set(importlib.import_module(f"visionattn.kernels.{mod}").KERNELS)
    assert names == set(_aot.KERNELS)


@needs_triton
def test_compile_refuses_the_interpreter(monkeypatch):
    monkeypatch.setattr(_dispatch, "interpreting", lambda: True)
    job = _aot.jobs("bra_fwd", SHAPES["bra"], ("fp16",), which="first")[0]
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        _aot.compile_job(job)


@needs_triton
@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
@pytest.mark.parametrize("kernel", sorted(_aot.KERNELS) if _dispatch.HAS_TRITON else [])
def test_kernel_compiles_for_sm90(compiled, kernel, dtype):
    rec = compiled[(kernel, dtype)]
    assert rec["ok"], f"{kernel} {dtype} {rec['config']}: {rec.get('error')}"
    # what ptxas reported: a real kernel for the target, launchable as configured
    assert rec["regs"] > 0 and rec["regs"] <= 255, rec
    assert rec["shared"] <= SMEM_LIMIT, f"{kernel} {dtype} {rec['config']} needs {rec['shared']} B of shared memory"
