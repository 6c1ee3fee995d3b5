"""One dispatch rule for every op in visionattn.kernels.

Path selection, in order:
1. an explicit ``backend=`` argument of the op ("triton" or "reference");
2. the ``VISIONATTN_KERNELS`` environment variable: ``auto`` (default), ``triton`` or ``reference``;
3. ``auto``: the Triton kernel when every tensor is on CUDA and triton imports, the reference otherwise.

``last_path(op)`` tells which path the most recent call of an op took.
"""

from __future__ import annotations

import os

import torch

ENV_VAR = "VISIONATTN_KERNELS"
_MODES = ("auto", "triton", "reference")
_last: dict[str, str] = {}

try:  # triton ships with CUDA builds of torch; CPU-only installs may lack it.
    import triton  # noqa: F401
    import triton.language as tl  # noqa: F401

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAS_TRITON = False


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def kernel_mode() -> str:
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {', '.join(_MODES)}; unset it or pick one of those")
    return mode


def choose(op: str, *tensors: torch.Tensor | None, backend: str | None = None) -> str:
    """Return "triton" or "reference" for ``op`` on these tensors (see the module docstring)."""
    mode = kernel_mode() if backend is None else backend
    if mode not in _MODES:
        raise ValueError(f"backend={backend!r} for {op} is not one of {', '.join(_MODES)}")
    if mode == "reference":
        return "reference"
    on_cuda = all(t.is_cuda for t in tensors if t is not None)
    if mode == "triton":
        if not HAS_TRITON:
            raise ImportError(
                f"{op}: the Triton path was requested but triton is not installed; "
                f"install a CUDA build of torch (it brings triton) or set {ENV_VAR}=reference"
            )
        if not on_cuda and not interpreting():
            raise ValueError(
                f"{op}: the Triton path needs CUDA tensors (got {tensors[0].device}); move the inputs to a GPU, "
                f"set TRITON_INTERPRET=1 before importing visionattn to run the kernels on CPU, "
                f"or set {ENV_VAR}=reference"
            )
        return "triton"
    return "triton" if (HAS_TRITON and on_cuda) else "reference"


def record(op: str, path: str) -> None:
    _last[op] = path


def last_path(op: str) -> str | None:
    """Which path ("triton" or "reference") the last call of ``op`` took, or None if it was never called."""
    return _last.get(op)
