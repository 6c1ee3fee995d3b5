"""Measurement primitives: device sync, timed calls, peak memory, thread / environment context, ceilings.

Times: CUDA events on GPU (``triton.testing.do_bench`` medians in :func:`time_ms` where triton imports),
``clock()`` (``time.perf_counter``) on CPU. Peak memory is the allocator's view on both devices: the peak of
bytes allocated minus bytes freed during one call, above what was allocated before it (so parameters and
inputs are not counted; activations, workspaces, outputs and gradients are). CUDA:
``torch.cuda.max_memory_allocated``; CPU: the running sum of the CPU allocator's events recorded by
``torch.profiler(profile_memory=True)`` (:func:`cpu_peak_bytes`).

Ceilings (:func:`measure_ceilings`) are measured in the same run on the same device, threads and dtype:
memory bandwidth from a large device-to-device copy (bytes read + bytes written per second), matmul
throughput from a large square matmul in the benchmark dtype. A ceiling given by the caller replaces the
measurement and is labelled as given.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "DTYPES",
    "Ceilings",
    "clock",
    "cpu_peak_bytes",
    "dtype_from_name",
    "dtype_name",
    "env_vars",
    "mem_method",
    "measure_ceilings",
    "p90",
    "peak_bytes",
    "sync",
    "threads",
    "time_calls",
    "time_ms",
]

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}

# The CPU clock; a module attribute so that a test can script the durations it reports.
clock: Callable[[], float] = time.perf_counter


def dtype_from_name(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {sorted(DTYPES)}; pass e.g. dtype='bfloat16'")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn``, one entry per timed call, after ``warmup`` untimed calls."""
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters={iters} must be >= 1 and warmup={warmup} >= 0")
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = clock()
            fn()
            times.append(clock() - t0)
    return times


def time_ms(
    fn: Callable[[], object],
    device: torch.device,
    iters: int,
    warmup: int,
    grads: Sequence[torch.Tensor] | None = None,
    stat: str = "median",
) -> float:
    """Milliseconds per call, the median (or with ``stat="min"`` the fastest) of the timed calls:
    ``triton.testing.do_bench`` on CUDA (it flushes the L2 cache between calls and clears ``grads``), else
    :func:`time_calls`."""
    if stat not in ("median", "min"):
        raise ValueError(f"stat={stat!r} is not 'median' or 'min'")
    if device.type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            pass
        else:
            return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode=stat))
    times = time_calls(fn, device, iters, warmup)
    return (min(times) if stat == "min" else statistics.median(times)) * 1e3


def p90(xs: Sequence[float]) -> float:
    """90th percentile, linear interpolation between the closest ranks."""
    return torch.tensor(list(xs), dtype=torch.float64).quantile(0.9).item()


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2: the profiler's C++ side logs every start and stop there."""
    try:
        saved = os.dup(2)
    except OSError:  # no real stderr (embedded interpreters): nothing to silence
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak net bytes the CPU allocator handed out while ``fn()`` ran (profiler memory events, in time order)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [
        e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated during one ``fn()`` above what was allocated before it (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    return cpu_peak_bytes(fn)


def mem_method(device: torch.device) -> str:
    return "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_allocator_profiler"


@contextlib.contextmanager
def env_vars(overrides: dict[str, str]) -> Iterator[None]:
    """Set environment variables for the duration of the block, then restore the previous values."""
    old = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n)`` (unchanged when None), then restore."""
    old = torch.get_num_threads()
    if n is not None:
        if n < 1:
            raise ValueError(f"threads={n} must be >= 1 (or None to keep torch's setting)")
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass(frozen=True)
class Ceilings:
    """Memory bandwidth (bytes/s) and matmul throughput (FLOP/s) the achieved rates are divided by.

    ``bandwidth_how`` / ``flops_how`` say where each figure came from ("measured: ..." or "given").
    """

    bandwidth: float
    flops: float
    bandwidth_how: str = "given"
    flops_how: str = "given"

    def __post_init__(self) -> None:
        for name in ("bandwidth", "flops"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Ceilings.{name}={value!r} must be a positive rate")

    @property
    def text(self) -> str:
        return (
            f"ceilings: {self.bandwidth / 1e12:.4g} TB/s ({self.bandwidth_how}), "
            f"{self.flops / 1e12:.4g} TFLOP/s ({self.flops_how})"
        )


def measure_ceilings(
    device: str | torch.device,
    dtype: str | torch.dtype,
    *,
    bandwidth: float | None = None,
    flops: float | None = None,
    copy_bytes: int | None = None,
    matmul_size: int | None = None,
    iters: int = 10,
    warmup: int = 2,
) -> Ceilings:
    """Measure what is not given: bandwidth from copying ``copy_bytes`` (default 1 GiB on CUDA, 256 MiB on
    CPU: beyond the caches), counting the bytes read plus the bytes written; matmul FLOP/s from an
    ``n x n @ n x n`` product in ``dtype`` (default n 8192 on CUDA, 2048 on CPU), counting ``2 n^3``.
    Each uses the fastest of ``iters`` calls: a ceiling is the best rate the device reached."""
    device = torch.device(device)
    dt = dtype_from_name(dtype)
    bw_how = fl_how = "given"
    if bandwidth is None:
        nbytes = copy_bytes or (2**30 if device.type == "cuda" else 2**28)
        src = torch.empty(nbytes // 4, device=device, dtype=torch.float32).fill_(1.0)
        dst = torch.empty_like(src)
        ms = time_ms(lambda: dst.copy_(src), device, iters, warmup, stat="min")
        bandwidth = 2 * src.nbytes / (ms / 1e3)
        bw_how = f"measured: {src.nbytes / 2**20:.0f} MiB {device.type} copy, read + write"
        del src, dst
    if flops is None:
        n = matmul_size or (8192 if device.type == "cuda" else 2048)
        a = torch.randn(n, n, device=device).to(dt)
        b = torch.randn(n, n, device=device).to(dt)
        ms = time_ms(lambda: a @ b, device, iters, warmup, stat="min")
        flops = 2 * n**3 / (ms / 1e3)
        fl_how = f"measured: {n}^3 {dtype_name(dt)} matmul"
        del a, b
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return Ceilings(float(bandwidth), float(flops), bw_how, fl_how)
