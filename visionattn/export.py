"""ONNX export of any registered (or timm) model, checked against onnxruntime.

``export_onnx`` writes a graph with a dynamic batch axis, then runs it in onnxruntime and compares it with
the PyTorch model at the export batch and at a second batch size (and, on request, exports and checks
again at further input sizes: spatial sizes are baked into the graph, because region and window sizes are
derived from them).

Exporter choice: the TorchScript-based exporter (``exporter="legacy"``, ``dynamo=False``) is the default.
Both exporters handle every model here with a dynamic batch axis and give the same onnxruntime outputs
and speed, but the legacy one exports ten times faster (torch 2.14.1, one CPU thread: biformer_tiny at 224
4.4 s vs 53.6 s, both 1.1e-6 from PyTorch, onnxruntime 123 vs 129 ms per image; vit_tiny_patch16_224 0.8 s
vs 9.4 s). ``exporter="dynamo"`` (the ``torch.export`` path) stays available because the legacy exporter is
deprecated upstream.

BRA graphs: the official BiFormer code gathers routed K/V with ``torch.gather`` on an ``expand``-ed
``(B, regions, regions, ...)`` view; ONNX materialises that ``Expand`` (regions times the K/V tensor).
:func:`find_expand_fed_gathers` finds that pattern in an exported graph; visionattn's BRA gathers
through flat indices and exports without it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = [
    "ExportCheck",
    "ExportReport",
    "OnnxMismatchError",
    "export_onnx",
    "check_onnx",
    "find_expand_fed_gathers",
    "require_onnx",
]

EXTRA_HINT = "pip install visionattn[onnx]"
EXPORTERS = ("legacy", "dynamo")
GATHER_OPS = ("Gather", "GatherElements", "GatherND")
# Ops that only re-view or re-type a tensor: an Expand behind them still feeds the gather a full copy.
_PASS_THROUGH_OPS = ("Reshape", "Unsqueeze", "Squeeze", "Transpose", "Identity", "Cast", "Flatten")


class OnnxMismatchError(AssertionError):
    """onnxruntime's output differs from PyTorch's by more than the tolerance."""


@dataclass
class ExportCheck:
    """One onnxruntime-vs-PyTorch comparison."""

    batch: int
    input_size: tuple[int, int, int]
    max_abs_err: float
    max_ref_abs: float
    ok: bool


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how its checks went (one entry per exported file)."""

    paths: list[str]
    exporter: str
    opset: int
    export_seconds: list[float]
    checks: list[ExportCheck] = field(default_factory=list)

    @property
    def path(self) -> str:
        return self.paths[0]

    @property
    def max_abs_err(self) -> float:
        return max((c.max_abs_err for c in self.checks), default=float("nan"))


def require_onnx(dynamo: bool = False) -> tuple[Any, Any]:
    """Import onnx and onnxruntime (and onnxscript for the dynamo exporter) or say which extra to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ImportError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing); {EXTRA_HINT}") from e
    if dynamo:
        try:
            import onnxscript  # noqa: F401
        except ImportError as e:
            raise ImportError(f"exporter='dynamo' needs onnxscript; {EXTRA_HINT} or use exporter='legacy'") from e
    return onnx, onnxruntime


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int, int]:
    if len(size) != 3 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"{name} must be three positive ints (C, H, W), got {size!r}; e.g. (3, 224, 224)")
    return tuple(size)  # type: ignore[return-value]


def _make_model(model_or_name: nn.Module | str, model_kwargs: dict | None) -> nn.Module:
    if isinstance(model_or_name, nn.Module):
        if model_kwargs:
            raise ValueError("model_kwargs are only used when the model is given by name; build the module with them")
        return model_or_name
    if not isinstance(model_or_name, str):
        raise TypeError(f"model_or_name must be an nn.Module or a model name, got {type(model_or_name).__name__}")
    import timm

    import visionattn  # noqa: F401  (registers visionattn models with timm)

    if not timm.is_model(model_or_name):
        raise ValueError(
            f"model {model_or_name!r} is neither registered by visionattn nor a timm model; "
            f"see visionattn.list_models() or timm.list_models()"
        )
    return timm.create_model(model_or_name, pretrained=False, **(model_kwargs or {}))


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_outputs(o)]
    raise TypeError(f"model output of type {type(out).__name__} cannot be compared with onnxruntime")


def _export_one(
    model: nn.Module, x: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool, exporter: str, n_out: int
) -> None:
    out_names = ["output"] if n_out == 1 else [f"output{i}" for i in range(n_out)]
    path.parent.mkdir(parents=True, exist_ok=True)
    if exporter == "legacy":
        axes = {n: {0: "batch"} for n in ["input", *out_names]} if dynamic_batch else None
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=out_names,
            opset_version=opset,
            dynamic_axes=axes,
            do_constant_folding=True,
            dynamo=False,
        )
    else:
        shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
        program = torch.onnx.export(
            model,
            (x,),
            input_names=["input"],
            output_names=out_names,
            opset_version=opset,
            dynamic_shapes=shapes,
            dynamo=True,
            verbose=False,
        )
        # One self-contained file (weights inline) like the legacy exporter writes, up to protobuf's 2 GB.
        program.save(str(path), external_data=False)


def check_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_size: Sequence[int] = (3, 224, 224),
    batches: Sequence[int] = (2, 3),
    *,
    atol: float = 1e-4,
    rtol: float = 0.0,
    raise_on_mismatch: bool = True,
    seed: int = 0,
) -> list[ExportCheck]:
    """Run ``path`` in onnxruntime (CPU) and compare with ``model`` on random inputs (B, C, H, W), per batch.

    A check passes when ``max|ort - torch| <= atol + rtol * max|torch|`` for every output.
    """
    _, ort = require_onnx()
    input_size = _check_size("input_size", input_size)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    in_name = sess.get_inputs()[0].name
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    checks = []
    for b in batches:
        x = torch.randn(b, *input_size, generator=gen)
        with torch.no_grad():
            refs = _flat_outputs(model(x))
        outs = sess.run(None, {in_name: x.numpy()})
        if len(outs) != len(refs):
            raise OnnxMismatchError(f"{path}: onnxruntime returned {len(outs)} outputs, PyTorch {len(refs)}")
        err = ref_max = 0.0
        for o, r in zip(outs, refs):
            r = r.float()
            if tuple(o.shape) != tuple(r.shape):
                raise OnnxMismatchError(
                    f"{path}: batch {b}: onnxruntime output shape {tuple(o.shape)} != PyTorch {tuple(r.shape)} "
                    f"(a batch-dependent value was baked into the graph)"
                )
            err = max(err, (torch.from_numpy(o).float() - r).abs().max().item())
            ref_max = max(ref_max, r.abs().max().item())
        ok = err <= atol + rtol * ref_max
        checks.append(ExportCheck(b, input_size, err, ref_max, ok))
        if raise_on_mismatch and not ok:
            raise OnnxMismatchError(
                f"{path}: batch {b}, input {input_size}: max |onnxruntime - torch| = {err:.3g} > "
                f"atol {atol:g} + rtol {rtol:g} * {ref_max:.3g}"
            )
    return checks


def _sized_path(path: Path, size: tuple[int, int, int]) -> Path:
    return path.with_name(f"{path.stem}_{size[1]}x{size[2]}{path.suffix or '.onnx'}")


def export_onnx(
    model_or_name: nn.Module | str,
    path: str | os.PathLike,
    input_size: Sequence[int] = (3, 224, 224),
    batch: int = 2,
    opset: int = 18,
    dynamic_batch: bool = True,
    check: bool = True,
    atol: float = 1e-4,
    *,
    rtol: float = 0.0,
    check_batch: int | None = None,
    extra_sizes: Sequence[Sequence[int]] = (),
    exporter: str = "legacy",
    model_kwargs: dict | None = None,
) -> ExportReport:
    """Export a model to ONNX (input ``(batch, C, H, W)``, batch axis dynamic) and check it in onnxruntime.

    ``check_batch`` (default ``batch + 1``) is the second batch size checked; each of ``extra_sizes``
    (C, H, W) is exported to ``<stem>_<H>x<W>.onnx`` next to ``path`` and checked the same way.
    Raises :class:`OnnxMismatchError` when a check exceeds ``atol + rtol * max|torch|``.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter={exporter!r} is not one of {EXPORTERS}; 'legacy' is the fast default")
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch={batch!r} must be a positive int")
    if not isinstance(opset, int) or not 13 <= opset <= 23:
        raise ValueError(f"opset={opset!r} must be an int between 13 and 23; 18 is the default")
    require_onnx(dynamo=exporter == "dynamo")
    sizes = [_check_size("input_size", input_size)] + [_check_size("extra_sizes", s) for s in extra_sizes]
    if check_batch is None:
        check_batch = batch + 1
    if dynamic_batch and check_batch == batch:
        raise ValueError(f"check_batch={check_batch} must differ from batch={batch} to test the dynamic batch axis")
    model = _make_model(model_or_name, model_kwargs).eval()
    base = Path(path)
    report = ExportReport(paths=[], exporter=exporter, opset=opset, export_seconds=[])
    gen = torch.Generator().manual_seed(0)
    for i, size in enumerate(sizes):
        out_path = base if i == 0 else _sized_path(base, size)
        x = torch.randn(batch, *size, generator=gen)
        with torch.no_grad():
            n_out = len(_flat_outputs(model(x)))
        t0 = time.perf_counter()
        with torch.no_grad():
            _export_one(model, x, out_path, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter, n_out=n_out)
        report.export_seconds.append(time.perf_counter() - t0)
        report.paths.append(str(out_path))
        if check:
            batches = (batch, check_batch) if dynamic_batch else (batch,)
            report.checks += check_onnx(model, out_path, size, batches, atol=atol, rtol=rtol)
    return report


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _sample_input(model: Any) -> Any:
    """A random array for the graph's first input; symbolic (batch) dims become 2."""
    import numpy as np

    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 2 for d in dims]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _run_shapes(model: Any, names: list[str], sample: Any) -> dict[str, tuple]:
    """Concrete shapes of the tensors ``names`` when ``model`` runs on ``sample`` in onnxruntime."""
    onnx, ort = require_onnx()
    shapes = {t.name: tuple(t.dims) for t in model.graph.initializer if t.name in names}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    wanted = [n for n in dict.fromkeys(names) if n not in shapes]
    for n in wanted:
        if n not in known:
            probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    # Unoptimised, so that no intermediate tensor is fused away before it can be read.
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    outs = sess.run(wanted, {sess.get_inputs()[0].name: sample})
    shapes.update({n: tuple(o.shape) for n, o in zip(wanted, outs)})
    return shapes


def _grown_axes(src: tuple, dst: tuple) -> list[int]:
    """Axes of ``dst`` that Expand enlarged from size 1 (numpy broadcasting aligns shapes on the right)."""
    src = (1,) * (len(dst) - len(src)) + tuple(src)
    return [i for i, (a, b) in enumerate(zip(src, dst)) if a == 1 and b > 1]


def find_expand_fed_gathers(model: Any, sample: Any = None, *, allow_batch_broadcast: bool = True) -> list[str]:
    """Gather nodes fed by an ``Expand`` that copies a tensor along a non-batch axis.

    ``model``: an ``onnx.ModelProto`` or a path; ``sample``: an input array (default: random, symbolic dims 2).
    What is checked, precisely: every ``Gather``/``GatherElements``/``GatherND`` node (main graph and
    functions); each of its inputs is followed upstream through Reshape/Unsqueeze/Squeeze/Transpose/Identity/
    Cast/Flatten producers; when that reaches an ``Expand`` node, the graph is run on ``sample`` to read the
    Expand's input and output shapes, and the pair is reported unless the Expand only enlarged axis 0 (a
    per-image tensor broadcast over the batch, e.g. a padding mask; with ``allow_batch_broadcast=False``
    that is reported too). Expands inside functions have no concrete shapes and are always reported.
    A report reads ``"<gather op> <name> <- Expand <name> <input shape> -> <output shape>"``. The official
    BiFormer KV gather produces two: the K/V view ``(B, 1, n, R, C) -> (B, n, n, R, C)`` (n regions)
    and its index ``(B, n, topk, 1, 1) -> (B, n, topk, R, C)``.
    """
    onnx, _ = require_onnx()
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    found = []
    for graph in [model.graph, *model.functions]:
        producers = _producers(graph)
        for node in graph.node:
            if node.op_type not in GATHER_OPS:
                continue
            for name in node.input:
                seen = set()
                prod = producers.get(name)
                while prod is not None and prod.op_type in _PASS_THROUGH_OPS and prod.name not in seen:
                    seen.add(prod.name)
                    prod = producers.get(prod.input[0])
                if prod is not None and prod.op_type == "Expand":
                    found.append((node, prod, graph is model.graph))
    in_main = [t for g, e, main in found if main for t in (e.input[0], e.output[0])]
    shapes = _run_shapes(model, in_main, _sample_input(model) if sample is None else sample) if in_main else {}
    hits = []
    for g, e, main in found:
        src, dst = shapes.get(e.input[0]), shapes.get(e.output[0])
        if main and allow_batch_broadcast and set(_grown_axes(src, dst)) <= {0}:
            continue
        hits.append(f"{g.op_type} {g.name} <- Expand {e.name} {src} -> {dst}")
    return hits
