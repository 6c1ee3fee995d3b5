"""Kernel benchmark: each op's implementations, forward and forward + backward, at the shapes of the models that
use it.

The ops and how to make their inputs come from the op specs (:mod:`visionattn.bench.ops`); the cases at real
model shapes and the official baselines from the family records (``Family.kernel_cases``,
``Family.kernel_baselines``), plus the generic cases a spec declares. Per case the implementations are: the
dispatching entry (``visionattn``; ``path`` says whether Triton or the reference ran), the reference, each
family's official baseline of the op (labelled as its record labels it), dense SDPA on the same tokens and the
spec's extra implementations (e.g. ``natten``). GPU times are medians from ``triton.testing.do_bench``; CPU
times the median of ``iters`` wall-clock runs after ``warmup``.

Rates: achieved TB/s on the op's compulsory bytes and TFLOP/s of its useful FLOPs (see
:mod:`visionattn.bench.opspec`), and each as a fraction of the ceilings measured in the same run
(:func:`visionattn.bench.timing.measure_ceilings`) or given by the caller.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from . import ops as _ops  # noqa: F401  (registers the op specs)
from . import timing
from .opspec import Cost, KernelCase, OpSpec, Unavailable, attention_cost, make_case, op_spec, op_specs

__all__ = [
    "GENERIC_IMPLS",
    "KernelResult",
    "QUICK_MAX_FWD_FLOPS",
    "QUICK_MAX_TOKENS",
    "baselines",
    "bench_kernels",
    "impl_names",
    "kernel_cases",
]

GENERIC_IMPLS = ("visionattn", "reference", "official", "sdpa_dense")
# --quick keeps the cases a CPU thread gets through in seconds: at most 64x64 tokens and 0.5 GFLOP per image
QUICK_MAX_TOKENS = 64 * 64
QUICK_MAX_FWD_FLOPS = 0.5e9

_Factory = Callable[[KernelCase, int, torch.device, torch.dtype, bool], tuple[list[torch.Tensor], Callable[[], Any]]]


def impl_names() -> list[str]:
    """Implementation names ``bench_kernels(impls=...)`` takes: the generic ones and every spec's extras."""
    extras = [name for spec in op_specs().values() for name in spec.extra_impls]
    return [*GENERIC_IMPLS, *dict.fromkeys(extras)]


def kernel_cases(quick: bool = False, ops: Sequence[str] | None = None) -> list[KernelCase]:
    """Every family's kernel cases, then each op spec's generic ones (optionally only ``ops``).

    ``quick`` keeps the cases of at most :data:`QUICK_MAX_TOKENS` tokens and :data:`QUICK_MAX_FWD_FLOPS`
    useful forward FLOPs per image.
    """
    from visionattn.models._registry import families

    cases = [make_case(rec, source=fam.name) for fam in families() for rec in fam.kernel_cases]
    cases += [make_case(rec, op=spec.name) for spec in op_specs().values() for rec in spec.cases]
    if ops is not None:
        cases = [c for c in cases if c.op in ops]
    if quick:
        cases = [
            c
            for c in cases
            if c.tokens <= QUICK_MAX_TOKENS and op_spec(c.op).cost(c, 1, 4).fwd_flops <= QUICK_MAX_FWD_FLOPS
        ]
    return cases


def baselines(op: str) -> list[tuple[str, Callable[..., Any]]]:
    """(label, function) of each family's official implementation of ``op``, in registration order."""
    from visionattn.models._registry import families

    found: dict[Callable[..., Any], str] = {}
    for fam in families():
        if op in fam.kernel_baselines:
            label, fn = fam.kernel_baselines[op]
            found.setdefault(fn, label)
    return [(label, fn) for fn, label in found.items()]


@dataclass
class KernelResult:
    """One (case, implementation) measurement; ``*_speedup`` = this row's time / the visionattn row's time,
    ``*_mem_ratio`` likewise for peak memory; ``*_bw_frac`` / ``*_flops_frac`` = achieved rate / ceiling."""

    op: str
    case: str
    impl: str
    path: str
    status: str
    device: str
    dtype: str
    batch: int
    shape: str
    fwd_ms: float = math.nan
    fwdbwd_ms: float = math.nan
    fwd_mem_mb: float = math.nan
    fwdbwd_mem_mb: float = math.nan
    fwd_speedup: float = math.nan
    fwdbwd_speedup: float = math.nan
    fwd_mem_ratio: float = math.nan
    fwdbwd_mem_ratio: float = math.nan
    fwd_tbps: float = math.nan
    fwd_tflops: float = math.nan
    fwd_bw_frac: float = math.nan
    fwd_flops_frac: float = math.nan
    fwdbwd_tbps: float = math.nan
    fwdbwd_tflops: float = math.nan
    fwdbwd_bw_frac: float = math.nan
    fwdbwd_flops_frac: float = math.nan
    peak_tbps: float = math.nan
    peak_tflops: float = math.nan


def _resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(ref):
        return ref
    try:
        return getattr(importlib.import_module("visionattn.kernels"), ref)
    except (ImportError, AttributeError) as e:
        raise Unavailable(f"not available (visionattn.kernels.{ref}: {e})") from e


def _op_impl(spec: OpSpec, ref: str | Callable[..., Any]) -> _Factory:
    """A factory calling ``ref`` (an implementation with the op's signature) on the spec's inputs."""

    def make(case, b, device, dtype, grad):
        fn = _resolve(ref)
        inp = spec.make_inputs(case, b, device, dtype, grad)
        return list(inp.leaves), lambda: fn(*inp.args, **inp.kwargs)

    return make


def _sdpa_dense(case: KernelCase, b: int, device: torch.device, dtype: torch.dtype, grad: bool):
    shape = (b, case.heads, case.tokens, case.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad) for _ in range(3))
    return [q, k, v], lambda: F.scaled_dot_product_attention(q, k, v)


def _dense_cost(case: KernelCase, b: int, itemsize: int) -> Cost:
    return attention_cost(
        batch=b,
        heads=case.heads,
        queries=case.tokens,
        keys_per_query=case.tokens,
        head_dim=case.head_dim,
        itemsize=itemsize,
    )


def _implementations(spec: OpSpec, wanted: Sequence[str]) -> list[tuple[str, str, _Factory]]:
    """(kind, label, factory) for each implementation of the op that ``wanted`` asks for; the entry comes first."""
    out = [("visionattn", "visionattn", _op_impl(spec, spec.entry))]
    if "reference" in wanted:
        out.append(("reference", "reference", _op_impl(spec, spec.reference)))
    if "official" in wanted:
        out += [("official", label, _op_impl(spec, fn)) for label, fn in baselines(spec.name)]
    if "sdpa_dense" in wanted and spec.dense:
        out.append(("sdpa_dense", "sdpa_dense", _sdpa_dense))
    out += [(name, name, factory) for name, factory in spec.extra_impls.items() if name in wanted]
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def _last_path(op: str) -> str:
    try:
        from visionattn.kernels import last_path

        return last_path(op) or "-"
    except (ImportError, ValueError):  # no kernels, or an op outside visionattn.kernels (nothing recorded)
        return "-"


def _run_impl(
    case: KernelCase,
    kind: str,
    label: str,
    factory: _Factory,
    b: int,
    device: torch.device,
    dtype: torch.dtype,
    iters: int,
    warmup: int,
    backward: bool,
    memory: bool,
) -> KernelResult:
    shape = f"{case.height}x{case.width} tok, {case.heads}x{case.head_dim}, {op_spec(case.op).describe(case)}"
    res = KernelResult(case.op, case.name, label, kind, "ok", str(device), timing.dtype_name(dtype), b, shape)
    try:
        leaves, fwd = factory(case, b, device, dtype, False)
        if kind == "visionattn":
            with torch.no_grad():
                fwd()
            res.path = _last_path(case.op)

        def fwd_nograd() -> None:
            with torch.no_grad():
                fwd()

        res.fwd_ms = timing.time_ms(fwd_nograd, device, iters, warmup)
        if memory:
            res.fwd_mem_mb = timing.peak_bytes(fwd_nograd, device) / 2**20
        del leaves, fwd
    except Unavailable as e:
        res.status = str(e)
        return res
    except torch.OutOfMemoryError:
        res.status = "out of memory"
        return res
    except Exception as e:  # one broken implementation must not end the whole table
        res.status = _first_line(e)
        return res
    if backward:
        try:
            leaves, fwd = factory(case, b, device, dtype, True)
            grad_out = torch.randn_like(fwd().detach())

            def fwd_bwd() -> None:
                fwd().backward(grad_out)
                for t in leaves:
                    t.grad = None

            res.fwdbwd_ms = timing.time_ms(fwd_bwd, device, iters, warmup, grads=leaves)
            if memory:
                res.fwdbwd_mem_mb = timing.peak_bytes(fwd_bwd, device) / 2**20
            del leaves, fwd, grad_out
        except torch.OutOfMemoryError:
            res.status = "forward ok; backward out of memory"
        except Exception as e:  # e.g. a library without a backward on this device
            res.status = f"forward ok; backward {_first_line(e)}"
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(b) else math.nan


def _rates(r: KernelResult, cost: Cost, ceilings: timing.Ceilings | None) -> None:
    for prefix, nbytes, flops, ms in (
        ("fwd", cost.fwd_bytes, cost.fwd_flops, r.fwd_ms),
        ("fwdbwd", cost.fwdbwd_bytes, cost.fwdbwd_flops, r.fwdbwd_ms),
    ):
        bytes_per_s, flops_per_s = nbytes / (ms / 1e3), flops / (ms / 1e3)
        setattr(r, f"{prefix}_tbps", bytes_per_s / 1e12)
        setattr(r, f"{prefix}_tflops", flops_per_s / 1e12)
        if ceilings is not None:
            setattr(r, f"{prefix}_bw_frac", bytes_per_s / ceilings.bandwidth)
            setattr(r, f"{prefix}_flops_frac", flops_per_s / ceilings.flops)
    if ceilings is not None:
        r.peak_tbps, r.peak_tflops = ceilings.bandwidth / 1e12, ceilings.flops / 1e12


def bench_kernels(
    ops: Sequence[str] | None = None,
    *,
    quick: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    batch: int | None = None,
    threads: int | None = None,
    iters: int | None = None,
    warmup: int | None = None,
    impls: Sequence[str] | None = None,
    cases: Sequence[str] | None = None,
    case_list: Sequence[KernelCase] | None = None,
    backward: bool = True,
    memory: bool = True,
    ceilings: timing.Ceilings | str | None = "measure",
    progress: Callable[[KernelResult], None] | None = None,
) -> list[KernelResult]:
    """Time each op's implementations at :func:`kernel_cases` shapes; returns one row per (case, implementation).

    Args:
        ops: op names (default: every registered spec).
        quick: the quick case preset (see :func:`kernel_cases`) and fewer iterations.
        device, dtype: default dtype bfloat16 on CUDA, float32 on CPU.
        batch: batch of every case (default: each case's ``batch_cuda`` on CUDA, 1 on CPU).
        threads: CPU threads (default 1 on CPU).
        impls: implementation kinds (see :func:`impl_names`; default all). The entry always runs: the
            speedups are relative to it; it is dropped from the rows when not asked for.
        cases: keep cases whose name contains one of these substrings.
        case_list: run these cases instead of :func:`kernel_cases`.
        backward, memory: also time forward + backward; also measure peak memory.
        ceilings: ``"measure"`` (a copy and a matmul on this device and dtype, before the cases), a
            :class:`~visionattn.bench.timing.Ceilings`, or None (no fractions).
        progress: called with each row as it is finished.
    """
    device = torch.device(device)
    specs = op_specs()
    ops = list(specs) if ops is None else list(ops)
    for op in ops:
        if op not in specs:
            raise ValueError(f"op {op!r} is not one of {', '.join(specs)}; pick from those")
    known = impl_names()
    impls = known if impls is None else list(impls)
    for name in impls:
        if name not in known:
            raise ValueError(f"impl {name!r} is not one of {', '.join(known)}")
    if not (ceilings is None or ceilings == "measure" or isinstance(ceilings, timing.Ceilings)):
        raise TypeError(f"ceilings={ceilings!r} must be 'measure', a Ceilings or None")
    dt = (
        timing.dtype_from_name(dtype)
        if dtype is not None
        else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    )
    itemsize = torch.empty((), dtype=dt).element_size()
    if device.type == "cpu" and threads is None:
        threads = 1
    iters = (10 if not quick else 3) if iters is None else iters
    warmup = (2 if not quick else 1) if warmup is None else warmup
    todo = kernel_cases(quick, ops) if case_list is None else [c for c in case_list if c.op in ops]
    if cases:
        todo = [c for c in todo if any(s in c.name for s in cases)]
    rows: list[KernelResult] = []
    with timing.threads(threads):
        if ceilings == "measure":
            ceilings = timing.measure_ceilings(device, dt, matmul_size=1024 if quick and device.type == "cpu" else None)
        for case in todo:
            spec = op_spec(case.op)
            b = batch or (case.batch_cuda if device.type == "cuda" else 1)
            case_rows: list[KernelResult] = []
            for kind, label, factory in _implementations(spec, impls):
                if kind == "reference" and case_rows[0].path == "reference":
                    continue  # the dispatch already ran the reference; timing it twice says nothing
                torch.manual_seed(0)
                r = _run_impl(case, kind, label, factory, b, device, dt, iters, warmup, backward, memory)
                case_rows.append(r)
                if progress is not None:
                    progress(r)
                if kind == "visionattn" and r.status.startswith("not available"):
                    break  # the op itself is missing: nothing to compare against
            base = case_rows[0]
            for r in case_rows:
                r.fwd_speedup = _ratio(r.fwd_ms, base.fwd_ms)
                r.fwdbwd_speedup = _ratio(r.fwdbwd_ms, base.fwdbwd_ms)
                r.fwd_mem_ratio = _ratio(r.fwd_mem_mb, base.fwd_mem_mb)
                r.fwdbwd_mem_ratio = _ratio(r.fwdbwd_mem_mb, base.fwdbwd_mem_mb)
                cost = _dense_cost(case, b, itemsize) if r.path == "sdpa_dense" else spec.cost(case, b, itemsize)
                _rates(r, cost, ceilings)
            if "visionattn" not in impls:
                case_rows = case_rows[1:]
            rows += case_rows
    return rows
