"""What the kernel benchmark needs to know about one op: an :class:`OpSpec`, registered with :func:`register_op`.

A spec says how to make the op's inputs for a case, the op's compulsory bytes and useful FLOPs, which
implementations apply beyond the generic ones (the dispatching entry, the reference, the families' official
baselines, dense SDPA on the same tokens) and, optionally, generic cases for shapes no family declares yet.
Cases at real model shapes come from the family records (``Family.kernel_cases``); a case is a plain mapping
with ``op``, ``name``, ``height``, ``width``, ``heads``, ``head_dim``, optionally ``batch_cuda``, and the op's
own shape arguments (the spec's ``params``).

Cost model (:func:`attention_cost`), per call:

* compulsory bytes: the forward reads every input once and writes the output once; the backward reads every
  input and the output gradient once and writes the gradient of every differentiable input once (the output
  itself can be recomputed, so it is not counted);
* useful FLOPs: 2 per multiply-add of the products that define the op (``Q K^T`` and ``P V`` over each query's
  keys, plus any position-bias products the spec adds); the backward does two products per forward product
  (the gradients of both operands), so forward + backward is 3x the forward. Softmax, scaling and index
  arithmetic are not counted, nor is the recomputation of logits some kernels do in the backward.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = [
    "REQUIRED",
    "Cost",
    "ImplFactory",
    "KernelCase",
    "OpInputs",
    "OpSpec",
    "Unavailable",
    "attention_cost",
    "make_case",
    "op_spec",
    "op_specs",
    "register_op",
    "unregister_op",
]


class Unavailable(Exception):
    """An implementation that cannot run here (its op or library is missing); reported, not raised."""


REQUIRED: Any = object()  # marks a shape argument a case must give
_BASE_KEYS = ("op", "name", "height", "width", "heads", "head_dim", "batch_cuda")


@dataclass(frozen=True)
class KernelCase:
    """One op at one shape: ``height x width`` tokens per image, ``heads x head_dim`` channels; the op's own
    shape arguments in ``params``; ``batch_cuda`` is the batch on a GPU (CPU runs use 1)."""

    op: str
    name: str
    height: int
    width: int
    heads: int
    head_dim: int
    batch_cuda: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""  # the family that declared it, or "generic"

    @property
    def tokens(self) -> int:
        return self.height * self.width

    def __getitem__(self, key: str) -> Any:
        return self.params[key]


@dataclass(frozen=True)
class OpInputs:
    """Arguments of one call (``args`` and ``kwargs`` as the op's entry takes them) and the tensors among them
    that get gradients when a backward is timed."""

    args: tuple
    kwargs: Mapping[str, Any]
    leaves: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class Cost:
    """Compulsory bytes and useful FLOPs of one forward call and of one forward + backward."""

    fwd_bytes: float
    fwd_flops: float
    fwdbwd_bytes: float
    fwdbwd_flops: float


# An extra implementation: (case, batch, device, dtype, requires_grad) -> (leaf tensors, forward closure).
ImplFactory = Callable[[KernelCase, int, torch.device, torch.dtype, bool], tuple[list[torch.Tensor], Callable[[], Any]]]


@dataclass(frozen=True)
class OpSpec:
    """One op as the kernel benchmark sees it.

    Args:
        name: the op's name in ``visionattn.kernels`` (also its ``last_path`` key and the ``op`` of cases).
        params: the op's shape arguments a case gives, each with its default (:data:`REQUIRED`: no default).
        make_inputs: ``(case, batch, device, dtype, requires_grad) -> OpInputs``; the entry, the reference and
            every family baseline of the op are called as ``fn(*inputs.args, **inputs.kwargs)``.
        cost: ``(case, batch, itemsize) -> Cost`` (see the module docstring).
        describe: ``case -> str``, the op's shape arguments in words, for the report.
        entry, reference: the dispatching entry and the reference: a name in ``visionattn.kernels`` or a function.
        extra_impls: further implementations of the op (e.g. a third-party library), name -> factory.
        dense: also time dense SDPA over the same tokens.
        cases: generic cases for shapes no family declares (same mappings as ``Family.kernel_cases``).
        test_case: a tiny case (without ``op``) the tests run every implementation of the op on.
    """

    name: str
    params: Mapping[str, Any]
    make_inputs: Callable[[KernelCase, int, torch.device, torch.dtype, bool], OpInputs]
    cost: Callable[[KernelCase, int, int], Cost]
    describe: Callable[[KernelCase], str]
    entry: str | Callable[..., Any] = ""
    reference: str | Callable[..., Any] = ""
    extra_impls: Mapping[str, ImplFactory] = field(default_factory=dict)
    dense: bool = True
    cases: tuple[Mapping[str, Any], ...] = ()
    test_case: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise ValueError(f"OpSpec.name={self.name!r} must be an identifier (the op's name in visionattn.kernels)")
        if not self.entry:
            object.__setattr__(self, "entry", self.name)
        if not self.reference:
            object.__setattr__(self, "reference", f"{self.name}_reference")
        clash = [k for k in self.params if k in _BASE_KEYS]
        if clash:
            raise ValueError(f"op {self.name!r}: params {clash} clash with the case fields {_BASE_KEYS}")


_SPECS: dict[str, OpSpec] = {}


def register_op(spec: OpSpec) -> OpSpec:
    """Make ``spec`` known to the kernel benchmark (replacing a spec of the same name)."""
    _SPECS[spec.name] = spec
    return spec


def unregister_op(name: str) -> None:
    del _SPECS[name]


def op_specs() -> dict[str, OpSpec]:
    """Every registered op spec, by name, in registration order."""
    return dict(_SPECS)


def op_spec(name: str) -> OpSpec:
    if name not in _SPECS:
        raise ValueError(
            f"op {name!r} has no kernel-benchmark spec; known ops: {', '.join(_SPECS)}. "
            "Declare one with visionattn.bench.register_op(OpSpec(...)) (see visionattn/bench/ops.py)"
        )
    return _SPECS[name]


def make_case(record: Mapping[str, Any], source: str = "generic", op: str | None = None) -> KernelCase:
    """A :class:`KernelCase` from a case mapping, checked against its op's spec (``op`` fills a missing key)."""
    rec = dict(record)
    if op is not None:
        rec.setdefault("op", op)
    where = f"kernel case {rec.get('name', rec)!r} of {source}"
    if "op" not in rec:
        raise ValueError(f"{where} has no 'op'; give one of {', '.join(_SPECS)}")
    spec = op_spec(rec["op"])
    missing = [k for k in ("name", "height", "width", "heads", "head_dim") if k not in rec]
    missing += [k for k, d in spec.params.items() if d is REQUIRED and k not in rec]
    if missing:
        raise ValueError(f"{where} lacks {missing}; op {spec.name!r} needs them")
    unknown = [k for k in rec if k not in _BASE_KEYS and k not in spec.params]
    if unknown:
        raise ValueError(
            f"{where}: {unknown} are not shape arguments of op {spec.name!r}; it takes {list(spec.params)}"
        )
    params = {k: rec.get(k, d) for k, d in spec.params.items()}
    return KernelCase(
        op=spec.name,
        name=str(rec["name"]),
        height=int(rec["height"]),
        width=int(rec["width"]),
        heads=int(rec["heads"]),
        head_dim=int(rec["head_dim"]),
        batch_cuda=int(rec.get("batch_cuda", 1)),
        params=params,
        source=source,
    )


def attention_cost(
    *,
    batch: int,
    heads: int,
    queries: int,
    keys_per_query: int,
    head_dim: int,
    itemsize: int,
    kv_tokens: int | None = None,
    index_bytes: int = 0,
    table_bytes: int = 0,
    extra_fwd_flops: float = 0,
) -> Cost:
    """:class:`Cost` of attention from ``queries`` tokens to ``keys_per_query`` keys each (see the module docstring).

    q and the output hold ``queries`` tokens, k and v ``kv_tokens`` (default: as many); ``index_bytes`` are
    inputs without gradient (routing indices), ``table_bytes`` differentiable inputs besides q, k, v
    (position tables), ``extra_fwd_flops`` the forward FLOPs of products beyond ``Q K^T`` and ``P V``.
    """
    kv_tokens = queries if kv_tokens is None else kv_tokens
    per_token = batch * heads * head_dim * itemsize
    q = o = queries * per_token
    k = v = kv_tokens * per_token
    inputs = q + k + v + index_bytes + table_bytes
    fwd_bytes = inputs + o
    bwd_bytes = inputs + o + (q + k + v + table_bytes)  # read inputs and dO, write the gradients
    fwd_flops = 4.0 * batch * heads * queries * keys_per_query * head_dim + extra_fwd_flops
    return Cost(fwd_bytes, fwd_flops, fwd_bytes + bwd_bytes, 3.0 * fwd_flops)
