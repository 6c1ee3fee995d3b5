"""ONNX export of any registered (or timm) model, checked against onnxruntime.

``export_onnx`` writes a graph with a dynamic batch axis (and, with ``dynamic_size=True``, dynamic height and
width), then runs it in onnxruntime and compares it with the PyTorch model at the export batch and at a second
batch size, and at further input sizes on request: with ``dynamic_size`` the same file is checked at them,
otherwise each is exported to its own file (region and window sizes are usually derived from the input size,
so most graphs hold them as constants). The model is built randomly initialised, from its published weights
(``pretrained=True``) or from a checkpoint file (``checkpoint=PATH``: an official file or one in our layout,
mapped by the family's converter).

Exporter choice: the TorchScript-based exporter (``exporter="legacy"``, ``dynamo=False``) is the default.
Both exporters handle every model here with a dynamic batch axis and give the same onnxruntime outputs
and speed, but the legacy one exports ten times faster (torch 2.14.1, one CPU thread: a 13 M-parameter BRA
pyramid at 224 4.4 s vs 53.6 s, both 1.1e-6 from PyTorch, onnxruntime 123 vs 129 ms per image; timm's
vit_tiny_patch16_224 0.8 s vs 9.4 s). ``exporter="dynamo"`` (the ``torch.export`` path) stays available
because the legacy exporter is deprecated upstream.

Routing top-k and parity: models that route (BRA picks the top-k key regions per query region) select
through ``TopK``. PyTorch and onnxruntime compute the routing logits with different summation orders, so a
near-tie between the k-th and (k+1)-th logit (a gap of about 1e-7) can be broken differently; the sample then
attends to other regions and its output legitimately differs by far more than the tolerance (a 57 M-parameter
BRA pyramid, random init, batch 3 at 224: one sample of three, 7.5e-3 from one flip at a margin of 4.5e-8).
:func:`check_onnx` therefore compares every sample at the full tolerance and, when a sample differs, reads the
routing logits and indices of every ``TopK`` from both runtimes: a sample whose first differing selection is a
near-tie that the two runtimes' logit rounding explains (torch's margin between the swapped regions <= their
summed |onnxruntime - torch| logit difference, and that difference within the tolerance) is reported as a
:class:`RoutingFlip` and redrawn; anything else fails.

BRA graphs: the official BRA code gathers routed K/V with ``torch.gather`` on an ``expand``-ed
``(B, regions, regions, ...)`` view; ONNX materialises that ``Expand`` (regions times the K/V tensor).
:func:`find_expand_fed_gathers` finds that pattern in an exported graph; visionattn's BRA gathers
through flat indices and exports without it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "ExportCheck",
    "ExportReport",
    "OnnxMismatchError",
    "RoutingFlip",
    "export_onnx",
    "check_onnx",
    "default_check_size",
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
class RoutingFlip:
    """One top-k selection that PyTorch and onnxruntime made differently for one sample.

    ``call``: index of the top-k in execution order (``node`` is its ONNX name); ``row``: the selection's row
    within the sample (a query region for BRA); ``torch_only`` / ``ort_only``: the indices only one runtime
    picked; ``gap``: the largest margin by which torch's logits prefer one of its picks over one of
    onnxruntime's; ``bound``: the largest swap the two runtimes' logit differences allow for that pair
    (``|d_torch_pick| + |d_ort_pick|``); ``logit_err``: max |onnxruntime - torch| over the row's logits.
    """

    sample: int
    call: int
    node: str
    row: int
    torch_only: tuple[int, ...]
    ort_only: tuple[int, ...]
    gap: float
    bound: float
    logit_err: float

    def __str__(self) -> str:
        return (
            f"sample {self.sample}: top-k #{self.call} ({self.node}) row {self.row}: torch picked "
            f"{list(self.torch_only)}, onnxruntime {list(self.ort_only)}; torch's margin {self.gap:.3g}, "
            f"{self.bound:.3g} allowed by the logit difference (max {self.logit_err:.3g})"
        )


@dataclass
class ExportCheck:
    """One onnxruntime-vs-PyTorch comparison (one batch size at one input size).

    ``max_abs_err`` is over the samples finally compared; ``routing_flips`` lists the near-tie top-k flips
    found on the way, each of whose samples was redrawn (``redraws`` rounds) and compared afresh.
    """

    batch: int
    input_size: tuple[int, int, int]
    max_abs_err: float
    max_ref_abs: float
    ok: bool
    routing_flips: list[RoutingFlip] = field(default_factory=list)
    redraws: int = 0


@dataclass
class ExportReport:
    """What ``export_onnx`` wrote and how its checks went (``paths``: one file per exported input size)."""

    paths: list[str]
    exporter: str
    opset: int
    export_seconds: list[float]
    checks: list[ExportCheck] = field(default_factory=list)
    dynamic_size: bool = False

    @property
    def path(self) -> str:
        return self.paths[0]


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


def _family(model_or_name: nn.Module | str) -> Any:
    """The family record of a model name or a model built by timm (None when no family declares it)."""
    from .models import _registry

    name = model_or_name
    if isinstance(model_or_name, nn.Module):
        name = (getattr(model_or_name, "pretrained_cfg", None) or {}).get("architecture")
    if not isinstance(name, str):
        return None
    try:
        return _registry.get_family(name)
    except KeyError:
        return None


def default_check_size(input_size: Sequence[int], family: Any = None) -> tuple[int, int, int]:
    """A second input size for checking a graph with dynamic height and width: taller by two steps and wider
    by one (not square, so a swapped H/W shows), a step being the family's ``input_multiple`` (16 when it
    takes any size)."""
    c, h, w = _check_size("input_size", input_size)
    step = family.input_multiple if family is not None and family.input_multiple > 1 else 16
    return c, h + 2 * step, w + step


def _make_model(
    model_or_name: nn.Module | str,
    model_kwargs: dict | None,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    sha256: str | None = None,
) -> nn.Module:
    if isinstance(model_or_name, nn.Module):
        if model_kwargs or pretrained or checkpoint is not None:
            raise ValueError(
                "model_kwargs, pretrained and checkpoint are only used when the model is given by name; build the "
                "module with them (or pass its name)"
            )
        return model_or_name
    if not isinstance(model_or_name, str):
        raise TypeError(f"model_or_name must be an nn.Module or a model name, got {type(model_or_name).__name__}")
    import timm

    import visionattn

    if not timm.is_model(model_or_name):
        raise ValueError(
            f"model {model_or_name!r} is neither registered by visionattn nor a timm model; "
            f"see visionattn.list_models() or timm.list_models()"
        )
    kwargs = dict(model_kwargs or {})
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    if checkpoint is not None:
        path = os.fspath(checkpoint)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint={path!r} does not exist; pass an official or converted weights file")
        overlay["file"] = path
        # the file's classifier is kept when the model is built with its class count (timm drops a classifier
        # whose count differs from the cfg's)
        if "num_classes" in kwargs:
            overlay.setdefault("num_classes", kwargs["num_classes"])
        pretrained = True
    if sha256 is not None:
        if not pretrained:
            raise ValueError("sha256 checks a checkpoint; pass it with pretrained=True or checkpoint=PATH")
        overlay["sha256"] = sha256
    if overlay:
        kwargs["pretrained_cfg_overlay"] = overlay
    # visionattn.create_model: published weights and files come through the safe loader and the family's
    # converter, for timm-bound families too.
    if not pretrained:
        return visionattn.create_model(model_or_name, **kwargs)
    from .pretrained import CheckpointError

    try:
        return visionattn.create_model(model_or_name, pretrained=True, **kwargs)
    except RuntimeError as e:  # timm's "no pretrained weights", a state_dict that does not fit the model
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"could not load pretrained weights into {model_or_name}: {e}") from e


def _flat_outputs(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _flat_outputs(o)]
    raise TypeError(f"model output of type {type(out).__name__} cannot be compared with onnxruntime")


def _antialiased_bicubic(g, x, output_size, align_corners, scales_h=None, scales_w=None):
    """``aten::_upsample_bicubic2d_aa`` (bicubic with ``antialias=True``, as timm resamples position tables) as an
    ONNX Resize (opset 18+): antialias on, PyTorch's cubic coefficient -0.5, samples outside the input excluded."""
    from torch.onnx import symbolic_helper

    if symbolic_helper._is_packed_list(output_size):  # sizes traced from the input's shape
        parts = [symbolic_helper._unsqueeze_helper(g, v, [0]) for v in symbolic_helper._unpack_list(output_size)]
        size = g.op("Cast", g.op("Concat", *parts, axis_i=0), to_i=7)  # int64
    else:
        size = g.op("Constant", value_t=torch.tensor(symbolic_helper._parse_arg(output_size, "is"), dtype=torch.int64))
    lead = g.op(
        "Slice",
        g.op("Shape", x),
        g.op("Constant", value_t=torch.tensor([0])),
        g.op("Constant", value_t=torch.tensor([2])),
    )
    empty = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
    corners = symbolic_helper._parse_arg(align_corners, "b")
    return g.op(
        "Resize",
        x,
        empty,
        empty,
        g.op("Concat", lead, size, axis_i=0),
        mode_s="cubic",
        antialias_i=1,
        cubic_coeff_a_f=-0.5,
        exclude_outside_i=1,
        coordinate_transformation_mode_s="align_corners" if corners else "half_pixel",
    )


_SYMBOLICS_REGISTERED: set[int] = set()


def _register_symbolics(opset: int) -> None:
    """Ops the legacy exporter lacks: antialiased bicubic resampling, which ONNX Resize has from opset 18."""
    if opset >= 18 and opset not in _SYMBOLICS_REGISTERED:
        torch.onnx.register_custom_op_symbolic("aten::_upsample_bicubic2d_aa", _antialiased_bicubic, opset)
        _SYMBOLICS_REGISTERED.add(opset)


def _export_one(
    model: nn.Module,
    x: torch.Tensor,
    path: Path,
    *,
    opset: int,
    dynamic_batch: bool,
    dynamic_size: bool,
    exporter: str,
    out_ranks: list[int],
) -> None:
    out_names = ["output"] if len(out_ranks) == 1 else [f"output{i}" for i in range(len(out_ranks))]
    path.parent.mkdir(parents=True, exist_ok=True)
    if exporter == "legacy":
        _register_symbolics(opset)
        axes: dict[str, dict[int, str]] = {}
        if dynamic_batch:
            axes = {n: {0: "batch"} for n in ["input", *out_names]}
        if dynamic_size:
            axes.setdefault("input", {}).update({2: "height", 3: "width"})
            # an output's spatial extent follows the input's; every non-batch axis is left symbolic
            for name, rank in zip(out_names, out_ranks):
                axes.setdefault(name, {}).update({a: f"{name}_{a}" for a in range(1, rank)})
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=out_names,
            opset_version=opset,
            dynamic_axes=axes or None,
            do_constant_folding=True,
            dynamo=False,
        )
    else:
        dims: dict[int, Any] = {}
        if dynamic_batch:
            dims[0] = torch.export.Dim("batch", min=1, max=4096)
        if dynamic_size:
            dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})
        program = torch.onnx.export(
            model,
            (x,),
            input_names=["input"],
            output_names=out_names,
            opset_version=opset,
            dynamic_shapes=(dims,) if dims else None,
            dynamo=True,
            verbose=False,
        )
        # One self-contained file (weights inline) like the legacy exporter writes, up to protobuf's 2 GB.
        program.save(str(path), external_data=False)


class _TopkRecorder(TorchFunctionMode):
    """Records the input and the returned indices of every ``topk`` PyTorch runs, in call order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[torch.Tensor, torch.Tensor, int, bool]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if getattr(func, "__name__", "") == "topk":
            # topk(input, k, dim=-1, largest=True, sorted=True)
            dim = args[2] if len(args) > 2 else kwargs.get("dim", -1)
            largest = args[3] if len(args) > 3 else kwargs.get("largest", True)
            self.calls.append((args[0].detach().clone(), out[1].detach().clone(), int(dim), bool(largest)))
        return out


def _session(ort: Any, path: str) -> Any:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class _RoutingProbe:
    """The graph again, with the routing logits (input 0) and indices (output 1) of every ``TopK`` as extra
    outputs, so that onnxruntime's selections can be set beside PyTorch's."""

    def __init__(self, path: str) -> None:
        onnx, self.ort = require_onnx()
        # Weights stay where they are (external data resolves next to the original file).
        model = onnx.load(path, load_external_data=False)
        self.nodes = [n for n in model.graph.node if n.op_type == "TopK"]
        self.attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in self.nodes]
        self.n_out = len(model.graph.output)
        self._path = path
        self._sess = None
        self._model = model
        for node in self.nodes:
            for name in (node.input[0], node.output[1]):
                model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))

    def run(self, feed: dict) -> list[tuple[Any, Any]]:
        if self._sess is None:
            folder = os.path.dirname(os.path.abspath(self._path))
            fd, probe = tempfile.mkstemp(suffix=".onnx", dir=folder)
            os.close(fd)
            try:
                with open(probe, "wb") as f:
                    f.write(self._model.SerializeToString())
                self._sess = _session(self.ort, probe)
            finally:
                os.remove(probe)
        outs = self._sess.run(None, feed)[self.n_out :]
        return list(zip(outs[0::2], outs[1::2]))


def _per_sample(t: torch.Tensor, b: int) -> torch.Tensor:
    """(B, ...) -> (B,) max over each sample; a tensor without a leading batch axis counts for every sample."""
    if t.dim() >= 1 and t.shape[0] == b:
        return t.reshape(b, -1).amax(1) if t[0].numel() else torch.zeros(b)
    return t.max().expand(b) if t.numel() else torch.zeros(b)


def _rows(t: torch.Tensor, axis: int, b: int) -> torch.Tensor | None:
    """A top-k operand as (B, rows, n) with the selection axis last; None when its leading axis is not the batch
    (or a batch-major multiple of it)."""
    t = t.movedim(axis, -1)
    if t.dim() < 2 or t.shape[0] % b:
        return None
    return t.reshape(b, -1, t.shape[-1])


def _first_flips(
    s: int,
    calls: list[tuple[torch.Tensor, torch.Tensor, int, bool]],
    ort_calls: list[tuple[Any, Any]],
    probe: _RoutingProbe,
    b: int,
    atol: float,
    rtol: float,
) -> tuple[list[RoutingFlip], str]:
    """Sample ``s``'s first top-k that the runtimes made differently, and whether rounding explains it.

    Later top-k's are downstream of the first difference and are not examined. Returns (the flipped rows,
    "") when every differing row of that top-k is an explained near-tie, ([], reason) otherwise."""
    for i, ((lt, it, dim, largest), (lo, io), attrs) in enumerate(zip(calls, ort_calls, probe.attrs)):
        # torch's own call says which way it prefers; a TopK that disagrees is a real mismatch, found as such
        axis = attrs.get("axis", -1)
        lt, it = _rows(lt.float(), dim, b), _rows(it, dim, b)
        lo, io = _rows(torch.from_numpy(lo).float(), axis, b), _rows(torch.from_numpy(io), axis, b)
        if any(t is None for t in (lt, it, lo, io)) or lt.shape != lo.shape or it.shape != io.shape:
            return [], f"top-k #{i} ({probe.nodes[i].name}) cannot be split per sample or differs in shape"
        lt, it, lo, io = lt[s], it[s], lo[s], io[s]
        differ = (it.sort(-1).values != io.sort(-1).values).any(-1).nonzero().flatten().tolist()
        if not differ:
            continue
        sign = 1.0 if largest else -1.0
        flips = []
        for row in differ:
            t_only = sorted(set(it[row].tolist()) - set(io[row].tolist()))
            o_only = sorted(set(io[row].tolist()) - set(it[row].tolist()))
            delta = (lo[row] - lt[row]).abs()
            # the pair closest to contradicting rounding: torch's margin minus what the logit differences allow
            gap, bound = max(
                (
                    (sign * (lt[row, a] - lt[row, c]).item(), (delta[a] + delta[c]).item())
                    for a in t_only
                    for c in o_only
                ),
                key=lambda p: p[0] - p[1],
            )
            logit_err = delta.max().item()
            tol = atol + rtol * lt[row].abs().max().item()
            flip = RoutingFlip(s, i, probe.nodes[i].name, row, tuple(t_only), tuple(o_only), gap, bound, logit_err)
            if gap > bound:
                return [], f"{flip}: NOT a near-tie, torch's margin exceeds what the logit difference allows"
            if logit_err > tol:
                return [], f"{flip}: the routing logits themselves differ by {logit_err:.3g} > {tol:.3g}"
            flips.append(flip)
        return flips, ""
    return [], "every top-k selected the same indices in both runtimes, so no routing flip explains it"


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
    redraws: int = 3,
) -> list[ExportCheck]:
    """Run ``path`` in onnxruntime (CPU) and compare with ``model`` on random inputs (B, C, H, W), per batch.

    A sample passes when ``max|ort - torch| <= atol + rtol * max|torch|`` over every output. A sample that
    fails is examined through the graph's ``TopK`` nodes: if its first selection that differs between the
    runtimes is a near-tie explained by their logit rounding (see the module docstring), the flip is recorded
    in ``ExportCheck.routing_flips`` and the sample is redrawn, up to ``redraws`` times; every sample in the
    final comparison has passed at the full tolerance. Any other difference fails the check.
    """
    _, ort = require_onnx()
    input_size = _check_size("input_size", input_size)
    path = str(path)
    sess = _session(ort, path)
    in_name = sess.get_inputs()[0].name
    probe: _RoutingProbe | None = None
    gen = torch.Generator().manual_seed(seed)
    model = model.eval()
    checks = []
    for b in batches:
        x = torch.randn(b, *input_size, generator=gen)
        flips: list[RoutingFlip] = []
        failure = ""
        rounds = 0
        for attempt in range(redraws + 1):
            recorder = _TopkRecorder()
            with torch.no_grad(), recorder:
                refs = _flat_outputs(model(x))
            try:
                outs = sess.run(None, {in_name: x.numpy()})
            except Exception as e:  # onnxruntime raises its own exception types
                failure = f"onnxruntime failed at batch {b}, input {input_size}: {str(e).strip()[:500]}"
                err, ref_max = float("inf"), 0.0
                break
            if len(outs) != len(refs):
                raise OnnxMismatchError(f"{path}: onnxruntime returned {len(outs)} outputs, PyTorch {len(refs)}")
            sample_err, ref_max = torch.zeros(b), 0.0
            for o, r in zip(outs, refs):
                r = r.float()
                if tuple(o.shape) != tuple(r.shape):
                    raise OnnxMismatchError(
                        f"{path}: batch {b}, input {input_size}: onnxruntime output shape {tuple(o.shape)} != "
                        f"PyTorch {tuple(r.shape)} (a batch- or size-dependent value was baked into the graph)"
                    )
                sample_err = torch.maximum(sample_err, _per_sample((torch.from_numpy(o).float() - r).abs(), b))
                ref_max = max(ref_max, r.abs().max().item())
            tol = atol + rtol * ref_max
            bad = (sample_err > tol).nonzero().flatten().tolist()
            err = sample_err.max().item()
            if not bad:
                failure = ""
                break
            failure = f"max |onnxruntime - torch| = {err:.3g} > atol {atol:g} + rtol {rtol:g} * {ref_max:.3g}"
            if probe is None:
                probe = _RoutingProbe(path)
            if not probe.nodes:
                break
            if len(probe.nodes) != len(recorder.calls):
                failure += (
                    f" (routing not compared: {len(probe.nodes)} TopK nodes, {len(recorder.calls)} torch.topk calls)"
                )
                break
            ort_calls = probe.run({in_name: x.numpy()})
            found = []
            for s in bad:
                sample_flips, reason = _first_flips(s, recorder.calls, ort_calls, probe, b, atol, rtol)
                if not sample_flips:
                    failure += f"; sample {s} (error {sample_err[s].item():.3g}): {reason}"
                    found = []
                    break
                found += sample_flips
            if not found:
                break
            flips += found
            if attempt == redraws:
                failure += f"; routing near-ties in {redraws + 1} draws of sample(s) {bad}: " + "; ".join(
                    map(str, found)
                )
                break
            for s in bad:  # a fresh draw for each sample whose routing flipped
                x[s] = torch.randn(*input_size, generator=gen)
            rounds += 1
        ok = not failure
        checks.append(ExportCheck(b, input_size, err, ref_max, ok, flips, rounds))
        if raise_on_mismatch and not ok:
            raise OnnxMismatchError(f"{path}: batch {b}, input {input_size}: {failure}")
    return checks


@contextlib.contextmanager
def _mha_fastpath(enabled: bool):
    """Switch ``nn.MultiheadAttention``'s inference fast path (a fused op ONNX cannot express) for a block."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


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
    dynamic_size: bool = False,
    exporter: str = "legacy",
    model_kwargs: dict | None = None,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | None = None,
    sha256: str | None = None,
) -> ExportReport:
    """Export a model to ONNX (input ``(batch, C, H, W)``, batch axis dynamic) and check it in onnxruntime.

    A model given by name is built with ``visionattn.create_model(name, pretrained, **model_kwargs)``;
    ``checkpoint`` (implies ``pretrained``) loads that file through the family's converter (an official
    checkpoint or one in our layout), ``sha256`` verifies it. ``check_batch`` (default ``batch + 1``) is the
    second batch size checked. Without ``dynamic_size`` each of ``extra_sizes`` (C, H, W) is exported to
    ``<stem>_<H>x<W>.onnx`` next to ``path`` and checked the same way; with it, height and width are dynamic
    axes of the one file, which is checked at every extra size (default: :func:`default_check_size`).
    Raises :class:`OnnxMismatchError` when a check fails (see :func:`check_onnx`).
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
    family = _family(model_or_name)
    arch = (
        model_or_name
        if isinstance(model_or_name, str)
        else (getattr(model_or_name, "pretrained_cfg", None) or {}).get("architecture", "")
    )
    if dynamic_size and family is not None and family.is_fixed(arch):
        raise ValueError(
            f"dynamic_size=True: {arch or family.name!r} only takes its pretrained cfg's input size; export "
            f"without dynamic_size"
        )
    if dynamic_size and len(sizes) == 1:
        sizes.append(default_check_size(sizes[0], family))
    if dynamic_size and any(s[0] != sizes[0][0] for s in sizes):
        raise ValueError(f"dynamic_size=True keeps the channel count; extra_sizes {list(extra_sizes)} change it")
    model = _make_model(model_or_name, model_kwargs, pretrained, checkpoint, sha256).eval()
    base = Path(path)
    report = ExportReport(paths=[], exporter=exporter, opset=opset, export_seconds=[], dynamic_size=dynamic_size)
    gen = torch.Generator().manual_seed(0)
    batches = (batch, check_batch) if dynamic_batch else (batch,)
    for i, size in enumerate(sizes):
        if dynamic_size and i > 0:
            if check:  # the same file at another size
                report.checks += _checked(model, base, size, batches, atol, rtol, dynamic_size)
            continue
        out_path = base if i == 0 else _sized_path(base, size)
        x = torch.randn(batch, *size, generator=gen)
        with torch.no_grad():
            ranks = [t.dim() for t in _flat_outputs(model(x))]
        t0 = time.perf_counter()
        with torch.no_grad(), _mha_fastpath(False):
            _export_one(
                model,
                x,
                out_path,
                opset=opset,
                dynamic_batch=dynamic_batch,
                dynamic_size=dynamic_size,
                exporter=exporter,
                out_ranks=ranks,
            )
        report.export_seconds.append(time.perf_counter() - t0)
        report.paths.append(str(out_path))
        if check:
            report.checks += _checked(model, out_path, size, batches, atol, rtol, dynamic_size and i > 0)
    return report


def _checked(
    model: nn.Module,
    path: Path,
    size: tuple[int, int, int],
    batches: Sequence[int],
    atol: float,
    rtol: float,
    other_size: bool,
) -> list[ExportCheck]:
    try:
        return check_onnx(model, path, size, batches, atol=atol, rtol=rtol)
    except OnnxMismatchError as e:
        if not other_size:
            raise
        raise OnnxMismatchError(
            f"{e}\nThe graph was exported with dynamic height/width but does not hold at {size[1]}x{size[2]}: the "
            f"model bakes a size-derived value (a region or window size, a padding) into the graph. Export "
            f"without dynamic_size (--dynamic-size), one file per input size (extra_sizes / --check-size)."
        ) from None


def _producers(graph: Any) -> dict[str, Any]:
    return {out: node for node in graph.node for out in node.output}


def _sample_input(model: Any) -> Any:
    """A random array for the graph's first input; a symbolic batch axis becomes 2."""
    import numpy as np

    dims = model.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else 2 if i == 0 else 0 for i, d in enumerate(dims)]
    if 0 in shape[1:]:
        raise ValueError(
            f"the graph's input has symbolic axes beyond the batch ({[d.dim_param or d.dim_value for d in dims]}); "
            "pass sample= an input array of a size the model takes"
        )
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _run_shapes(model: Any, names: list[str], sample: Any, folder: str | None = None) -> dict[str, tuple]:
    """Concrete shapes of the tensors ``names`` when ``model`` runs on ``sample`` in onnxruntime (``folder``: where
    ``model``'s external weights lie, for a graph loaded without them)."""
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
    if folder is None:
        sess = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    else:  # beside the external weights, which resolve relative to the graph file
        fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder)
        os.close(fd)
        try:
            onnx.save(probe, tmp)
            sess = ort.InferenceSession(tmp, opts, providers=["CPUExecutionProvider"])
        finally:
            os.remove(tmp)
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
    BRA K/V gather produces two: the K/V view ``(B, 1, n, R, C) -> (B, n, n, R, C)`` (n regions)
    and its index ``(B, n, topk, 1, 1) -> (B, n, topk, R, C)``.
    """
    onnx, _ = require_onnx()
    folder = None
    if not isinstance(model, onnx.ModelProto):
        # weights stay on disk: a graph over 2 GB keeps them as external data, which the probe reads in place
        folder = os.path.dirname(os.path.abspath(str(model)))
        model = onnx.load(str(model), load_external_data=False)
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
    if in_main:
        shapes = _run_shapes(model, in_main, _sample_input(model) if sample is None else sample, folder)
    else:
        shapes = {}
    hits = []
    for g, e, main in found:
        src, dst = shapes.get(e.input[0]), shapes.get(e.output[0])
        if main and allow_batch_broadcast and set(_grown_axes(src, dst)) <= {0}:
            continue
        hits.append(f"{g.op_type} {g.name} <- Expand {e.name} {src} -> {dst}")
    return hits
