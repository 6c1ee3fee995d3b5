"""Benchmarks: whole models (images/s, latency, peak memory) and attention ops at the real models' shapes.

Model mode (:func:`bench_model`): any visionattn or timm model, inference or training (forward + backward,
no optimizer step), timed per iteration (CUDA events on GPU, ``perf_counter`` on CPU); images/s is
``batch / median latency``. A *spec* names a model and, optionally, environment variables and model kwargs
to apply while it is built and run: ``"biformer_small,VISIONATTN_KERNELS=reference,drop_path_rate=0.1"``
(upper-case keys are environment variables, lower-case keys model kwargs parsed as Python literals).

Kernel mode (:func:`bench_kernels`): each op at the shapes of the models that use it, against its
reference path, dense SDPA on the same tokens, BiFormer's official gather (BRA only) and ``natten.na2d``
(NA only, where installed). GPU times are medians from ``triton.testing.do_bench``; CPU times are the median
of ``iters`` wall-clock runs after warm-up.

Peak memory is the allocator's view on both devices: the peak of bytes allocated minus bytes freed during
one call, above what was allocated before it (so parameters and inputs are not counted, activations,
workspaces, outputs and gradients are). CUDA: ``torch.cuda.max_memory_allocated``; CPU: the running sum of
the CPU allocator's events recorded by ``torch.profiler(profile_memory=True)`` (:func:`cpu_peak_bytes`).
"""

from __future__ import annotations

import ast
import contextlib
import csv
import io
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F

__all__ = [
    "H100_TFLOPS",
    "H100_TBPS",
    "ModelSpec",
    "ModelResult",
    "KernelCase",
    "KernelResult",
    "parse_spec",
    "bench_model",
    "compare_ratio",
    "bench_kernels",
    "kernel_cases",
    "bra_official_gather",
    "to_official_layout",
    "from_official_layout",
    "cpu_peak_bytes",
    "to_csv",
    "to_markdown",
    "plot",
]

# Ceilings measured on the lent H100 (bf16 GEMM, device-to-device copy); see the kernel report convention.
H100_TFLOPS = 798e12
H100_TBPS = 3.0e12
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def _dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name not in DTYPES:
        raise ValueError(f"dtype={name!r} is not one of {sorted(DTYPES)}")
    return DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------------------------------------
# measurement primitives


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fn: Callable[[], object], device: torch.device, iters: int, warmup: int) -> list[float]:
    """Seconds per call of ``fn``, one entry per timed call, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
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
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return times


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
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - base
    return cpu_peak_bytes(fn)


def mem_method(device: torch.device) -> str:
    return "cuda_max_memory_allocated" if device.type == "cuda" else "cpu_allocator_profiler"


@contextlib.contextmanager
def _env(overrides: dict[str, str]) -> Iterator[None]:
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
def _threads(n: int | None) -> Iterator[None]:
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _p90(xs: Sequence[float]) -> float:
    return torch.tensor(list(xs), dtype=torch.float64).quantile(0.9).item()


# ----------------------------------------------------------------------------------------------------------
# model mode


@dataclass
class ModelSpec:
    """A model name plus environment variables and model kwargs applied while it is built and run."""

    model: str
    env: dict[str, str] = field(default_factory=dict)
    kwargs: dict[str, object] = field(default_factory=dict)

    @property
    def label(self) -> str:
        extra = [f"{k}={v}" for k, v in self.env.items()] + [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return ",".join([self.model, *extra])


def _split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, so ``depths=(1,1,1,1)`` stays one item."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch in "([{") - (ch in ")]}")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return [*parts, cur]


def parse_spec(text: str, default: str | ModelSpec | None = None) -> ModelSpec:
    """Parse ``"NAME[,KEY=VALUE...]"``; upper-case keys are env vars, others model kwargs (Python literals).

    The name may be left out (``"VISIONATTN_KERNELS=reference"``) when ``default`` is given: the spec is then
    ``default`` (a name, or a spec whose env and kwargs are kept) with these items added or overridden.
    """
    parts = [p.strip() for p in _split_top_level(text) if p.strip()]
    if not parts:
        raise ValueError("empty model spec; give a model name, e.g. 'biformer_small' or 'resnet50,VAR=value'")
    base = ModelSpec(default) if isinstance(default, str) else default
    if "=" not in parts[0]:
        base = ModelSpec(parts.pop(0))
    if base is None:
        raise ValueError(
            f"model spec {text!r} names no model; start it with a model name, e.g. 'biformer_small,{text}'"
        )
    env, kwargs = dict(base.env), dict(base.kwargs)
    for p in parts:
        if "=" not in p:
            raise ValueError(f"model spec {text!r}: {p!r} is not KEY=VALUE; only the first item may be a model name")
        k, v = (s.strip() for s in p.split("=", 1))
        if k.isupper():
            env[k] = v
        else:
            try:
                kwargs[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                kwargs[k] = v
    return ModelSpec(base.model, env, kwargs)


@dataclass
class ModelResult:
    """One model-mode measurement; ``images_per_s == batch / (latency_ms / 1e3)``."""

    label: str
    mode: str
    device: str
    dtype: str
    batch: int
    height: int
    width: int
    threads: int
    channels_last: bool
    compiled: bool
    iters: int
    images_per_s: float
    latency_ms: float
    latency_p90_ms: float
    peak_mem_mb: float
    mem_method: str
    params_m: float


MODEL_RATIO_FIELDS = ("images_per_s", "latency_ms", "latency_p90_ms", "peak_mem_mb")


def compare_ratio(a: ModelResult, b: ModelResult) -> dict[str, float]:
    """``a / b`` for images/s, latencies and peak memory (images/s ratio > 1: ``a`` is faster)."""
    return {f: (getattr(a, f) / getattr(b, f)) if getattr(b, f) else math.nan for f in MODEL_RATIO_FIELDS}


def _loss(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    if isinstance(out, dict):
        out = list(out.values())
    return sum(_loss(o) for o in out)  # type: ignore[union-attr]


def bench_model(
    spec: str | ModelSpec,
    *,
    size: tuple[int, int] = (224, 224),
    batch: int = 1,
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    threads: int | None = None,
    channels_last: bool = False,
    compile: bool = False,
    train: bool = False,
    warmup: int | None = None,
    iters: int | None = None,
    memory: bool = True,
    in_chans: int = 3,
) -> ModelResult:
    """Time one model on random ``(batch, in_chans, H, W)`` input; see the module docstring for the method.

    Inference casts model and input to ``dtype`` and runs under ``torch.inference_mode``; training keeps
    float32 weights, runs under autocast for a lower ``dtype`` and backpropagates ``output.float().mean()``.
    ``threads`` defaults to 1 on CPU (timings with several threads are noisy on shared machines).
    """
    import timm

    import visionattn  # noqa: F401  (registers visionattn models with timm)

    spec = parse_spec(spec) if isinstance(spec, str) else spec
    device = torch.device(device)
    dt = _dtype(dtype)
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    if not timm.is_model(spec.model):
        raise ValueError(f"model {spec.model!r} is neither registered by visionattn nor a timm model")
    if threads is None and device.type == "cpu":
        threads = 1
    warmup = (10 if device.type == "cuda" else 2) if warmup is None else warmup
    iters = (50 if device.type == "cuda" else 10) if iters is None else iters
    with _env(spec.env), _threads(threads):
        torch.manual_seed(0)
        model = timm.create_model(spec.model, pretrained=False, **spec.kwargs)
        n_params = sum(p.numel() for p in model.parameters())
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        x = torch.randn(batch, in_chans, *size, device=device)
        if train:
            model = model.to(device, memory_format=fmt).train()
            x = x.contiguous(memory_format=fmt)
        else:
            model = model.to(device, dt, memory_format=fmt).eval()
            x = x.to(dt).contiguous(memory_format=fmt)
        run = model
        if compile:
            torch._dynamo.reset()
            run = torch.compile(model)
        params = list(model.parameters())

        if train:
            amp = dt != torch.float32

            def step() -> None:
                with torch.autocast(device.type, dtype=dt, enabled=amp):
                    out = run(x)
                _loss(out).backward()
                for p in params:
                    p.grad = None
        else:

            def step() -> None:
                with torch.inference_mode():
                    run(x)

        times = time_calls(step, device, iters, warmup)
        peak = peak_bytes(step, device) if memory else 0
    lat = statistics.median(times)
    return ModelResult(
        label=spec.label,
        mode="train" if train else "infer",
        device=str(device),
        dtype=_dtype_name(dt),
        batch=batch,
        height=size[0],
        width=size[1],
        threads=torch.get_num_threads() if threads is None else threads,
        channels_last=channels_last,
        compiled=compile,
        iters=iters,
        images_per_s=batch / lat,
        latency_ms=lat * 1e3,
        latency_p90_ms=_p90(times) * 1e3,
        peak_mem_mb=peak / 2**20 if memory else math.nan,
        mem_method=mem_method(device) if memory else "off",
        params_m=n_params / 1e6,
    )


# ----------------------------------------------------------------------------------------------------------
# BiFormer's official routed gather (the baseline users run today)


def to_official_layout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """visionattn BRA layout to the official one, heads folded into channels head-major.

    q, k: (B, heads, regions, R, d); v: (B, heads, regions, R, dv) -> q (B, regions, R, heads*d),
    kv (B, regions, R, heads*d + heads*dv).
    """
    b, h, n, r, _ = q.shape
    fold = lambda t: t.permute(0, 2, 3, 1, 4).reshape(b, n, r, h * t.shape[-1])
    return fold(q), torch.cat([fold(k), fold(v)], dim=-1)


def from_official_layout(out: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, regions, R, heads*dv) -> (B, heads, regions, R, dv)."""
    b, n, r, c = out.shape
    return out.view(b, n, r, heads, c // heads).permute(0, 3, 1, 2, 4)


def bra_official_gather(
    q: torch.Tensor, kv: torch.Tensor, routing: torch.Tensor, heads: int, *, scale: float | None = None
) -> torch.Tensor:
    """BRA as BiFormer's official code computes it: ``torch.gather`` on an expanded region view.

    q: (B, regions, R, heads*d); kv: (B, regions, R, heads*(d+dv)); routing: (B, regions, topk)
    -> (B, regions, R, heads*dv). The K/V view is expanded to (B, regions, regions, R, C) and the index to
    (B, regions, topk, R, C) before the gather; ``scale`` defaults to d**-0.5.
    """
    b, n, r, cq = q.shape
    c_kv = kv.shape[-1]
    topk = routing.shape[-1]
    d, dv = cq // heads, (c_kv - cq) // heads
    if scale is None:
        scale = d**-0.5
    index = routing.long().view(b, n, topk, 1, 1).expand(-1, -1, -1, r, c_kv)
    picked = torch.gather(kv.view(b, 1, n, r, c_kv).expand(-1, n, -1, -1, -1), dim=2, index=index)
    k_sel, v_sel = picked.split([cq, c_kv - cq], dim=-1)  # (B, regions, topk, R, C)
    qh = q.reshape(b * n, r, heads, d).transpose(1, 2)
    kh = k_sel.reshape(b * n, topk * r, heads, d).permute(0, 2, 3, 1)
    vh = v_sel.reshape(b * n, topk * r, heads, dv).transpose(1, 2)
    attn = torch.softmax((qh * scale) @ kh, dim=-1)
    return (attn @ vh).transpose(1, 2).reshape(b, n, r, heads * dv)


def bra_official_gather_ours_layout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, routing: torch.Tensor, *, scale: float | None = None
) -> torch.Tensor:
    """:func:`bra_official_gather` with visionattn's BRA signature: (B, heads, regions, R, d) in and out."""
    qo, kvo = to_official_layout(q, k, v)
    return from_official_layout(bra_official_gather(qo, kvo, routing, q.shape[1], scale=scale), q.shape[1])


# ----------------------------------------------------------------------------------------------------------
# kernel mode


@dataclass
class KernelCase:
    """One op at one model's shape. Tokens ``height x width`` per image; ``heads`` x ``head_dim``."""

    op: str  # "bra" | "na2d" | "halo"
    name: str
    height: int
    width: int
    heads: int
    head_dim: int
    batch_cuda: int
    regions_side: int = 0  # bra: regions per side (BiFormer's n_win)
    topk: int = 0  # bra
    kernel_size: int = 0  # na2d
    dilation: int = 1  # na2d
    block_size: int = 0  # halo
    halo_size: int = 0  # halo

    @property
    def tokens(self) -> int:
        return self.height * self.width

    @property
    def keys_per_query(self) -> int:
        if self.op == "bra":
            return self.topk * (self.height // self.regions_side) * (self.width // self.regions_side)
        if self.op == "na2d":
            return self.kernel_size**2
        win = self.block_size + 2 * self.halo_size
        return win * win

    @property
    def shape_text(self) -> str:
        hw = f"{self.height}x{self.width} tok, {self.heads}x{self.head_dim}"
        if self.op == "bra":
            rh, rw = self.height // self.regions_side, self.width // self.regions_side
            return f"{hw}, {self.regions_side}^2 regions of {rh}x{rw}, topk {self.topk}"
        if self.op == "na2d":
            return f"{hw}, kernel {self.kernel_size}, dilation {self.dilation}"
        return f"{hw}, block {self.block_size}, halo {self.halo_size}"


def kernel_cases(quick: bool = False) -> list[KernelCase]:
    """The shapes of the models that use each op (BiFormer-S: heads 2/4/8, head_dim 32, topk 1/4/16).

    224: classification, n_win 7. 512: ADE20K segmentation, n_win 8. NA: NAT stage-1 width (2 heads x 32).
    Halo: halonet50ts stage-2 attention (block 8, halo 3, 4 heads x 32) at a 512 input (64x64 tokens).
    ``quick`` keeps the 224 BRA stages, NA 7x7 and the halo case: about a minute on one CPU thread.
    """
    cases = [
        KernelCase("bra", "BiFormer-S s1 @224", 56, 56, 2, 32, 128, regions_side=7, topk=1),
        KernelCase("bra", "BiFormer-S s2 @224", 28, 28, 4, 32, 128, regions_side=7, topk=4),
        KernelCase("bra", "BiFormer-S s3 @224", 14, 14, 8, 32, 128, regions_side=7, topk=16),
        KernelCase("bra", "BiFormer-S s1 @512", 128, 128, 2, 32, 16, regions_side=8, topk=1),
        KernelCase("bra", "BiFormer-S s2 @512", 64, 64, 4, 32, 16, regions_side=8, topk=4),
        KernelCase("bra", "BiFormer-S s3 @512", 32, 32, 8, 32, 16, regions_side=8, topk=16),
        KernelCase("na2d", "NA 7x7 @56x56", 56, 56, 2, 32, 128, kernel_size=7),
        KernelCase("na2d", "NA 3x3 @128x128", 128, 128, 2, 32, 16, kernel_size=3),
        KernelCase("halo", "Halo 8/3 @64x64", 64, 64, 4, 32, 32, block_size=8, halo_size=3),
    ]
    if quick:
        cases = [c for c in cases if "@512" not in c.name and "128x128" not in c.name]
    return cases


@dataclass
class KernelResult:
    """One (case, implementation) measurement; ``*_speedup`` = this row's time / the visionattn row's time."""

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
    fwd_tbps: float = math.nan
    fwd_tflops: float = math.nan
    fwd_roofline_pct: float = math.nan
    fwdbwd_tbps: float = math.nan
    fwdbwd_tflops: float = math.nan
    fwdbwd_roofline_pct: float = math.nan


class _Unavailable(Exception):
    pass


def _import_op(op: str) -> tuple[Callable, Callable]:
    """(dispatching entry, reference) of an op, imported only when asked for."""
    import importlib

    module, names = {
        "bra": ("visionattn.kernels.bra", ("bra", "bra_reference")),
        "na2d": ("visionattn.kernels.neighborhood", ("na2d", "na2d_reference")),
        "halo": ("visionattn.kernels.halo", ("halo_attn", "halo_attn_reference")),
    }[op]
    try:
        mod = importlib.import_module(module)
        return getattr(mod, names[0]), getattr(mod, names[1])
    except (ImportError, AttributeError) as e:
        raise _Unavailable(f"not available ({module}: {e})") from e


# An implementation: given (case, batch, device, dtype, requires_grad) -> (leaf inputs, forward closure).
_Impl = Callable[[KernelCase, int, torch.device, torch.dtype, bool], tuple[list[torch.Tensor], Callable]]


def _qkv(case: KernelCase, b: int, device, dtype, grad: bool) -> list[torch.Tensor]:
    shape = (b, case.heads, case.height, case.width, case.head_dim)
    return [torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad) for _ in range(3)]


def _bra_inputs(case: KernelCase, b: int, device, dtype, grad: bool):
    s = case.regions_side
    rh, rw = case.height // s, case.width // s
    shape = (b, case.heads, s * s, rh * rw, case.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad) for _ in range(3))
    routing = torch.rand(b, s * s, s * s, device=device).topk(case.topk, dim=-1).indices
    return q, k, v, routing, (case.heads * case.head_dim) ** -0.5  # BiFormer's full-channel scale


def _impl_op(which: str) -> _Impl:
    def make(case, b, device, dtype, grad):
        entry, ref = _import_op(case.op)
        fn = entry if which == "visionattn" else ref
        if case.op == "bra":
            q, k, v, routing, scale = _bra_inputs(case, b, device, dtype, grad)
            return [q, k, v], lambda: fn(q, k, v, routing, scale=scale)
        q, k, v = _qkv(case, b, device, dtype, grad)
        if case.op == "na2d":
            return [q, k, v], lambda: fn(q, k, v, case.kernel_size, case.dilation)
        win = case.block_size + 2 * case.halo_size
        rel_h, rel_w = (torch.randn(2 * win - 1, case.head_dim, device=device, dtype=dtype) * 0.02 for _ in range(2))
        return [q, k, v], lambda: fn(q, k, v, case.block_size, case.halo_size, rel_height=rel_h, rel_width=rel_w)

    return make


def _impl_sdpa(case, b, device, dtype, grad):
    shape = (b, case.heads, case.tokens, case.head_dim)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad) for _ in range(3))
    return [q, k, v], lambda: F.scaled_dot_product_attention(q, k, v)


def _impl_official_gather(case, b, device, dtype, grad):
    if case.op != "bra":
        raise _Unavailable("only for bra")
    q, k, v, routing, scale = _bra_inputs(case, b, device, dtype, False)
    qo, kvo = (t.detach().requires_grad_(grad) for t in to_official_layout(q, k, v))
    return [qo, kvo], lambda: bra_official_gather(qo, kvo, routing, case.heads, scale=scale)


def _impl_natten(case, b, device, dtype, grad):
    if case.op != "na2d":
        raise _Unavailable("only for na2d")
    try:
        import natten
    except ImportError as e:
        raise _Unavailable("not available (natten not installed; pip install visionattn[natten])") from e
    shape = (b, case.height, case.width, case.heads, case.head_dim)  # natten is heads-last
    q, k, v = (torch.randn(shape, device=device, dtype=dtype).requires_grad_(grad) for _ in range(3))
    return [q, k, v], lambda: natten.na2d(q, k, v, kernel_size=case.kernel_size, dilation=case.dilation)


IMPLS: dict[str, _Impl] = {
    "visionattn": _impl_op("visionattn"),
    "reference": _impl_op("reference"),
    "official_gather": _impl_official_gather,
    "sdpa_dense": _impl_sdpa,
    "natten": _impl_natten,
}


def _bytes_flops(case: KernelCase, impl: str, b: int, itemsize: int) -> tuple[float, float, float, float]:
    """(fwd bytes, fwd FLOPs, fwd+bwd bytes, fwd+bwd FLOPs): compulsory traffic and useful work.

    Bytes: read q, k, v and write o once (fwd); the backward adds reading q, k, v, o, dO and writing dq, dk,
    dv. FLOPs: 4 * B * heads * queries * keys_per_query * head_dim (fwd), x2.5 more for the backward.
    """
    t = b * case.heads * case.tokens * case.head_dim * itemsize
    keys = case.tokens if impl == "sdpa_dense" else case.keys_per_query
    flops = 4.0 * b * case.heads * case.tokens * keys * case.head_dim
    return 4 * t, flops, 4 * t + 8 * t, 3.5 * flops


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:160]


def _time_ms(fn: Callable[[], object], device: torch.device, iters: int, warmup: int, grads=None) -> float:
    if device.type == "cuda":
        try:
            from triton.testing import do_bench

            return float(do_bench(fn, warmup=25, rep=100, grad_to_none=grads, return_mode="median"))
        except ImportError:
            pass
    return statistics.median(time_calls(fn, device, iters, warmup)) * 1e3


def _run_impl(
    case: KernelCase,
    impl: str,
    b: int,
    device: torch.device,
    dtype: torch.dtype,
    iters: int,
    warmup: int,
    backward: bool,
) -> KernelResult:
    res = KernelResult(case.op, case.name, impl, "", "ok", str(device), _dtype_name(dtype), b, case.shape_text)
    try:
        leaves, fwd = IMPLS[impl](case, b, device, dtype, False)
        if impl == "visionattn":
            from visionattn.kernels import last_path

            with torch.no_grad():
                fwd()
            res.path = last_path({"halo": "halo_attn"}.get(case.op, case.op)) or last_path(case.op) or "?"
        else:
            res.path = impl

        def fwd_nograd() -> None:
            with torch.no_grad():
                fwd()

        res.fwd_ms = _time_ms(fwd_nograd, device, iters, warmup)
        res.fwd_mem_mb = peak_bytes(fwd_nograd, device) / 2**20
        del leaves, fwd
        natten_cpu = impl == "natten" and device.type == "cpu"  # FlexAttention has no CPU backward
        if backward and not natten_cpu:
            leaves, fwd = IMPLS[impl](case, b, device, dtype, True)
            grad_out = torch.randn_like(fwd().detach())

            def fwd_bwd() -> None:
                fwd().backward(grad_out)
                for t in leaves:
                    t.grad = None

            res.fwdbwd_ms = _time_ms(fwd_bwd, device, iters, warmup, grads=leaves)
            res.fwdbwd_mem_mb = peak_bytes(fwd_bwd, device) / 2**20
            del leaves, fwd, grad_out
    except _Unavailable as e:
        res.status = str(e)
    except torch.OutOfMemoryError:
        res.status = "out of memory"
    except Exception as e:  # one broken implementation must not end the whole table
        res.status = _first_line(e)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def bench_kernels(
    ops: Sequence[str] = ("bra", "na2d", "halo"),
    *,
    quick: bool = False,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    batch: int | None = None,
    threads: int | None = None,
    iters: int | None = None,
    warmup: int | None = None,
    impls: Sequence[str] = tuple(IMPLS),
    cases: Sequence[str] | None = None,
    backward: bool = True,
    peak_tflops: float = H100_TFLOPS,
    peak_tbps: float = H100_TBPS,
    progress: Callable[[KernelResult], None] | None = None,
) -> list[KernelResult]:
    """Time each op's implementations at :func:`kernel_cases` shapes; returns one row per (case, impl).

    Defaults: CUDA bf16 at each case's batch, CPU float32 batch 1 on 1 thread. ``cases`` keeps cases whose
    name contains one of the given substrings. On CUDA, rows also get achieved TB/s (compulsory bytes), useful
    TFLOP/s and the roofline percentage against ``peak_tflops``/``peak_tbps`` (H100 by default).
    """
    device = torch.device(device)
    for op in ops:
        if op not in ("bra", "na2d", "halo"):
            raise ValueError(f"op {op!r} is not one of bra, na2d, halo")
    for name in impls:
        if name not in IMPLS:
            raise ValueError(f"impl {name!r} is not one of {', '.join(IMPLS)}")
    dt = _dtype(dtype) if dtype is not None else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if device.type == "cpu" and threads is None:
        threads = 1
    iters = (10 if not quick else 3) if iters is None else iters
    warmup = (2 if not quick else 1) if warmup is None else warmup
    todo = [c for c in kernel_cases(quick) if c.op in ops and (not cases or any(s in c.name for s in cases))]
    rows: list[KernelResult] = []
    with _threads(threads):
        for case in todo:
            b = batch or (case.batch_cuda if device.type == "cuda" else 1)
            torch.manual_seed(0)
            case_rows = []
            for impl in ["visionattn", *[i for i in impls if i != "visionattn"]]:
                if impl == "official_gather" and case.op != "bra" or impl == "natten" and case.op != "na2d":
                    continue
                if impl == "reference" and case_rows[0].path == "reference":
                    continue  # the dispatch already ran the reference; timing it twice says nothing
                r = _run_impl(case, impl, b, device, dt, iters, warmup, backward)
                case_rows.append(r)
                if progress is not None:
                    progress(r)
                if r.status.startswith("not available") and impl == "visionattn":
                    break  # the op itself is missing: nothing to compare against
            base = case_rows[0]
            for r in case_rows:
                r.fwd_speedup = r.fwd_ms / base.fwd_ms
                r.fwdbwd_speedup = r.fwdbwd_ms / base.fwdbwd_ms
                r.fwd_mem_ratio = r.fwd_mem_mb / base.fwd_mem_mb if base.fwd_mem_mb else math.nan
                if device.type == "cuda":
                    fb, ff, bb, bf = _bytes_flops(case, r.impl, b, torch.finfo(dt).bits // 8)
                    r.fwd_tbps, r.fwd_tflops = fb / r.fwd_ms / 1e9, ff / r.fwd_ms / 1e9
                    r.fwdbwd_tbps, r.fwdbwd_tflops = bb / r.fwdbwd_ms / 1e9, bf / r.fwdbwd_ms / 1e9
                    r.fwd_roofline_pct = 100 * max(ff / peak_tflops, fb / peak_tbps) / (r.fwd_ms / 1e3)
                    r.fwdbwd_roofline_pct = 100 * max(bf / peak_tflops, bb / peak_tbps) / (r.fwdbwd_ms / 1e3)
            if "visionattn" not in impls:
                case_rows = [r for r in case_rows if r.impl != "visionattn"]
            rows += case_rows
    return rows


# ----------------------------------------------------------------------------------------------------------
# output


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}"
    return str(v)


def _as_dict(row: object) -> dict:
    return row if isinstance(row, dict) else asdict(row)


def _columns(rows: Sequence[object]) -> list[str]:
    first = next((r for r in rows if not isinstance(r, dict)), None)
    if first is None:
        raise ValueError("a table needs at least one result row (dict rows only fill its columns)")
    return [f.name for f in fields(first)]


def to_csv(rows: Sequence[object]) -> str:
    """CSV (full precision) of result rows in order; dict rows (e.g. ratios) may fill a subset of the columns."""
    if not rows:
        return ""
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = _as_dict(r)
        w.writerow({c: d.get(c, "") for c in cols})
    return buf.getvalue()


def to_markdown(rows: Sequence[object], columns: Sequence[str] | None = None) -> str:
    """Markdown table (4 significant digits) of result rows in order; dict rows as in :func:`to_csv`."""
    if not rows:
        return ""
    cols = list(columns or _columns(rows))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        d = _as_dict(r)
        lines.append("| " + " | ".join(_fmt(d.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


MODEL_MD_COLUMNS = (
    "label",
    "mode",
    "device",
    "dtype",
    "batch",
    "height",
    "width",
    "threads",
    "images_per_s",
    "latency_ms",
    "latency_p90_ms",
    "peak_mem_mb",
    "params_m",
)
KERNEL_MD_COLUMNS = (
    "case",
    "impl",
    "path",
    "status",
    "batch",
    "fwd_ms",
    "fwdbwd_ms",
    "fwd_mem_mb",
    "fwdbwd_mem_mb",
    "fwd_speedup",
    "fwdbwd_speedup",
    "fwd_tbps",
    "fwd_tflops",
    "fwd_roofline_pct",
    "fwdbwd_roofline_pct",
)


def plot(rows: Sequence[object], path: str, *, title: str = "") -> None:
    """Bar chart: images/s per model row, or forward (and fwd+bwd) ms per kernel case and implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib; pip install matplotlib (or visionattn[dev])") from e
    rows = [r for r in rows if not isinstance(r, dict)]
    if rows and isinstance(rows[0], ModelResult):
        labels = [f"{r.label} b{r.batch} {r.height}x{r.width} {r.mode}" for r in rows]
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
        ax.barh(labels, [r.images_per_s for r in rows])
        ax.set_xlabel("images / s")
    else:
        kr = [r for r in rows if isinstance(r, KernelResult)]
        case_names = list(dict.fromkeys(r.case for r in kr))
        impl_names = list(dict.fromkeys(r.impl for r in kr))
        fig, axes = plt.subplots(1, 2, figsize=(14, 0.6 * len(case_names) + 2), sharey=True)
        width = 0.8 / max(len(impl_names), 1)
        for ax, key in zip(axes, ("fwd_ms", "fwdbwd_ms")):
            for j, impl in enumerate(impl_names):
                vals = {r.case: getattr(r, key) for r in kr if r.impl == impl}
                ys = [i + j * width for i in range(len(case_names))]
                ax.barh(ys, [vals.get(c, math.nan) for c in case_names], height=width, label=impl)
            ax.set_xscale("log")
            ax.set_xlabel(key.replace("_ms", " ms").replace("fwdbwd", "fwd+bwd"))
            ax.set_yticks([i + 0.4 - width / 2 for i in range(len(case_names))], case_names)
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
