"""Model benchmark: images/s, latency and peak memory of any visionattn or timm model.

A model is timed per iteration, inference or training (forward + backward, no optimizer step); images/s is
``batch / median latency``. A :class:`ModelSpec` names a model and, optionally, environment variables and
model kwargs applied while it is built and run; :func:`parse_spec` reads ``"NAME[,ENV_VAR=value][,kwarg=value]"``
(upper-case keys are environment variables, the others model kwargs written as in ``--model-kwargs``).
Models compared with each other are timed in one process, interleaved (:func:`bench_models`); a name of the form
``"path/to/file.py:function"`` is an external builder, e.g. a paper's official code from a local checkout.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from visionattn.cli import parse_model_kwargs

from . import timing

__all__ = [
    "MODEL_RATIO_FIELDS",
    "ModelResult",
    "ModelSpec",
    "bench_model",
    "bench_models",
    "build_external",
    "compare_ratio",
    "parse_spec",
]


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
        raise ValueError("empty model spec; give a model name, e.g. 'resnet50' or 'resnet50,VAR=value'")
    base = ModelSpec(default) if isinstance(default, str) else default
    if "=" not in parts[0]:
        base = ModelSpec(parts.pop(0))
    if base is None:
        raise ValueError(f"model spec {text!r} names no model; start it with a model name, e.g. 'resnet50,{text}'")
    env, kwargs = dict(base.env), dict(base.kwargs)
    for p in parts:
        if "=" not in p:
            raise ValueError(f"model spec {text!r}: {p!r} is not KEY=VALUE; only the first item may be a model name")
        key = p.split("=", 1)[0].strip()
        if key.isupper():
            env[key] = p.split("=", 1)[1].strip()
        else:
            kwargs.update(parse_model_kwargs([p]))
    return ModelSpec(base.model, env, kwargs)


@dataclass
class ModelResult:
    """One model measurement; ``images_per_s`` is ``batch`` over the median latency."""

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


def _is_external(name: str) -> bool:
    return ".py:" in name


def build_external(name: str, kwargs: dict[str, object]) -> torch.nn.Module:
    """Build a model from an external builder ``"path/to/file.py:function"``: ``function(**kwargs)``.

    This is how an implementation that is not a timm model (a paper's official code from a local checkout, another
    zoo installed aside) is benchmarked beside ours: a small adapter file (``tools/external/<family>.py``) puts
    that code on ``sys.path`` and returns an ``nn.Module`` that takes ``(B, 3, H, W)``.
    """
    import importlib.util
    from pathlib import Path

    file, _, func = name.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise ValueError(f"external builder {name!r}: {file!r} is not a file; give 'path/to/file.py:function'")
    module_spec = importlib.util.spec_from_file_location(f"_visionattn_external_{path.stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # type: ignore[union-attr]
    builder = getattr(module, func, None)
    if not callable(builder):
        raise ValueError(f"external builder {name!r}: {file} has no function {func!r}")
    model = builder(**kwargs)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"external builder {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def _build(spec: ModelSpec) -> torch.nn.Module:
    import timm

    import visionattn  # noqa: F401  (registers visionattn models with timm)

    if _is_external(spec.model):
        return build_external(spec.model, spec.kwargs)
    if not timm.is_model(spec.model):
        raise ValueError(
            f"model {spec.model!r} is neither registered by visionattn nor a timm model; "
            "see visionattn.list_models() or timm.list_models(), or give an external builder 'file.py:function'"
        )
    return timm.create_model(spec.model, pretrained=False, **spec.kwargs)


@dataclass
class _Prepared:
    spec: ModelSpec
    step: object
    n_params: int


def bench_models(
    specs: list[str | ModelSpec],
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
) -> list[ModelResult]:
    """Time several models on the same random ``(batch, in_chans, H, W)`` input, interleaved.

    Every model is built and warmed up first; then each timed iteration runs every model once, the order reversed
    on every other iteration (A B, B A, ...), so a machine that slows down or speeds up during the run shifts all
    of them alike and their ratio stays fair. A spec's environment variables are set while its model is built
    and while each of its calls runs. Inference casts model and input to ``dtype`` and runs under
    ``torch.inference_mode``; training keeps float32 weights, runs under autocast for a lower ``dtype`` and
    backpropagates ``output.float().mean()``. ``threads`` defaults to 1 on CPU (timings with several threads
    are noisy on shared machines). A model name of the form ``"file.py:function"`` is an external builder
    (:func:`build_external`).
    """
    specs = [parse_spec(s) if isinstance(s, str) else s for s in specs]
    device = torch.device(device)
    dt = timing.dtype_from_name(dtype)
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    if threads is None and device.type == "cpu":
        threads = 1
    warmup = (10 if device.type == "cuda" else 2) if warmup is None else warmup
    iters = (50 if device.type == "cuda" else 10) if iters is None else iters
    if iters < 1 or warmup < 0:
        raise ValueError(f"iters={iters} must be >= 1 and warmup={warmup} >= 0")
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    with timing.threads(threads):
        torch.manual_seed(0)
        x0 = torch.randn(batch, in_chans, *size, device=device)
        prepared = [_prepare(spec, x0, device, dt, fmt, compile, train) for spec in specs]
        for p in prepared:
            with timing.env_vars(p.spec.env):
                for _ in range(warmup):
                    p.step()
        times: list[list[float]] = [[] for _ in prepared]
        for i in range(iters):
            order = range(len(prepared)) if i % 2 == 0 else reversed(range(len(prepared)))
            for j in order:
                with timing.env_vars(prepared[j].spec.env):
                    times[j] += timing.time_calls(prepared[j].step, device, 1, 0)
        peaks = []
        for p in prepared:
            with timing.env_vars(p.spec.env):
                peaks.append(timing.peak_bytes(p.step, device) if memory else 0)
        n_threads = torch.get_num_threads() if threads is None else threads
    results = []
    for p, t, peak in zip(prepared, times, peaks):
        lat = statistics.median(t)
        results.append(
            ModelResult(
                label=p.spec.label,
                mode="train" if train else "infer",
                device=str(device),
                dtype=timing.dtype_name(dt),
                batch=batch,
                height=size[0],
                width=size[1],
                threads=n_threads,
                channels_last=channels_last,
                compiled=compile,
                iters=iters,
                images_per_s=batch / lat,
                latency_ms=lat * 1e3,
                latency_p90_ms=timing.p90(t) * 1e3,
                peak_mem_mb=peak / 2**20 if memory else math.nan,
                mem_method=timing.mem_method(device) if memory else "off",
                params_m=p.n_params / 1e6,
            )
        )
    return results


def _prepare(
    spec: ModelSpec,
    x0: torch.Tensor,
    device: torch.device,
    dt: torch.dtype,
    fmt: torch.memory_format,
    compile: bool,
    train: bool,
) -> _Prepared:
    with timing.env_vars(spec.env):
        torch.manual_seed(0)
        model = _build(spec)
    n_params = sum(p.numel() for p in model.parameters())
    if train:
        model = model.to(device, memory_format=fmt).train()
        x = x0.contiguous(memory_format=fmt)
    else:
        model = model.to(device, dt, memory_format=fmt).eval()
        x = x0.to(dt).contiguous(memory_format=fmt)
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

    return _Prepared(spec, step, n_params)


def bench_model(spec: str | ModelSpec, **kwargs: object) -> ModelResult:
    """Time one model (see :func:`bench_models`, which takes the same keyword arguments)."""
    return bench_models([spec], **kwargs)[0]  # type: ignore[arg-type]
