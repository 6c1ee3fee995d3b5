"""Model benchmark: images/s, latency and peak memory of any visionattn or timm model.

A model is timed per iteration, inference or training (forward + backward, no optimizer step); images/s is
``batch / median latency``. A :class:`ModelSpec` names a model and, optionally, environment variables and
model kwargs applied while it is built and run; :func:`parse_spec` reads ``"NAME[,ENV_VAR=value][,kwarg=value]"``
(upper-case keys are environment variables, the others model kwargs written as in ``--model-kwargs``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import torch

from visionattn.cli import parse_model_kwargs

from . import timing

__all__ = ["MODEL_RATIO_FIELDS", "ModelResult", "ModelSpec", "bench_model", "compare_ratio", "parse_spec"]


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
    dt = timing.dtype_from_name(dtype)
    if batch < 1:
        raise ValueError(f"batch={batch} must be >= 1")
    if not timm.is_model(spec.model):
        raise ValueError(
            f"model {spec.model!r} is neither registered by visionattn nor a timm model; "
            "see visionattn.list_models() or timm.list_models()"
        )
    if threads is None and device.type == "cpu":
        threads = 1
    warmup = (10 if device.type == "cuda" else 2) if warmup is None else warmup
    iters = (50 if device.type == "cuda" else 10) if iters is None else iters
    with timing.env_vars(spec.env), timing.threads(threads):
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

        times = timing.time_calls(step, device, iters, warmup)
        peak = timing.peak_bytes(step, device) if memory else 0
    lat = statistics.median(times)
    return ModelResult(
        label=spec.label,
        mode="train" if train else "infer",
        device=str(device),
        dtype=timing.dtype_name(dt),
        batch=batch,
        height=size[0],
        width=size[1],
        threads=torch.get_num_threads() if threads is None else threads,
        channels_last=channels_last,
        compiled=compile,
        iters=iters,
        images_per_s=batch / lat,
        latency_ms=lat * 1e3,
        latency_p90_ms=timing.p90(times) * 1e3,
        peak_mem_mb=peak / 2**20 if memory else math.nan,
        mem_method=timing.mem_method(device) if memory else "off",
        params_m=n_params / 1e6,
    )
