"""One dispatch, one set of kernel limits and one launch helper for every op in visionattn.kernels.

Ops: ``bra``, ``na2d``, ``halo_attn``, ``sparse_attn`` (:data:`OPS`); ``last_path(op)`` and the error messages use these
names.

Path selection (:func:`select`), in order:

1. an explicit ``backend=`` argument of the op: "auto", "triton" or "reference";
2. otherwise the ``VISIONATTN_KERNELS`` environment variable: ``auto`` (default), ``triton`` or ``reference``;
3. ``auto``: the Triton kernel when triton imports and every tensor is on CUDA, the reference otherwise.

Fallback rule, the same for every op: inputs the kernels cannot take (:func:`kernel_problem`: a dtype other
than float16 / bfloat16 / float32, a head dim over :data:`MAX_HEAD_DIM`) run the reference under ``auto`` and
raise under an explicit ``triton``: ``TypeError`` for the dtype, ``ValueError`` for a size, both worded
"<op>: the Triton kernels take ..., got ...; <what to do>". Inputs of one call on different devices raise
``ValueError`` on every path (:func:`check_devices`).

fp32 precision rule, the same for every ``tl.dot`` of every kernel (:func:`dot_precision`): float32 inputs are
multiplied in IEEE fp32 unless ``torch.backends.cuda.matmul.allow_tf32`` is set, in which case TF32 is used.
Why: the references are the ground truth and run on torch matmuls, which obey exactly that switch; following it
keeps the kernel within ~1e-6 of the reference by default (TF32 keeps 10 mantissa bits: ~1e-3 relative error),
and a user who opted in to TF32 for the rest of the model gets tensor cores here too. The cost of the default
is register pressure: IEEE products do not use tensor cores and need more registers per tile, so the fp32
autotune configs are pruned to small tiles (see ``model_cards/kernels.md`` and ``tools/kernel_report.py``).
float16 and bfloat16 always use tensor cores (the ``input_precision`` argument does not apply to them). In the
Triton interpreter (``TRITON_INTERPRET=1``), whose bfloat16 ``tl.dot`` multiplies raw bit patterns, bfloat16
tiles are upcast to float32 inside the kernels (:func:`upcast_bf16`) and then multiplied in IEEE fp32.

Launch configs (:class:`TunedKernel`): every kernel is autotuned over its GPU configs on a device and runs one
fixed config in the interpreter, which cannot benchmark and whose cost is per inner-loop step (so its config
has big tiles). The interpreter config is a plain dict read at launch time, so tests can shrink the tiles.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import torch

ENV_VAR = "VISIONATTN_KERNELS"
OPS = ("bra", "na2d", "halo_attn", "sparse_attn")
_MODES = ("auto", "triton", "reference")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Tiles hold whole head dims in registers / shared memory; larger head dims would need a split over d.
MAX_HEAD_DIM = 256
_last: dict[str, str] = {}

try:  # triton ships with CUDA builds of torch; CPU-only installs may lack it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    triton = None
    tl = None
    HAS_TRITON = False


def _op_name(op: str) -> str:
    if op not in OPS:
        raise ValueError(f"op={op!r} is not one of {', '.join(OPS)}")
    return op


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0", "false", "False")


def kernel_mode() -> str:
    """The ``VISIONATTN_KERNELS`` mode: "auto", "triton" or "reference"."""
    mode = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if mode not in _MODES:
        raise ValueError(f"{ENV_VAR}={mode!r} is not one of {', '.join(_MODES)}; unset it or pick one of those")
    return mode


def triton_device() -> torch.device | None:
    """Where the Triton path can run in this process: CUDA if present, the CPU under the interpreter, else None."""
    if not HAS_TRITON:
        return None
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu") if interpreting() else None


def choose(op: str, *tensors: torch.Tensor | None, backend: str | None = None) -> str:
    """Return "triton" or "reference" for ``op`` on these tensors before the kernel limits are looked at."""
    _op_name(op)
    mode = kernel_mode() if backend is None else backend
    if mode not in _MODES:
        raise ValueError(f"{op}: backend={backend!r} is not one of {', '.join(_MODES)} (or None for {ENV_VAR})")
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


def explicit_triton(backend: str | None) -> bool:
    """Whether the caller asked for the Triton path (argument, or the environment when the argument is None)."""
    return (kernel_mode() if backend is None else backend) == "triton"


def kernel_problem(op: str, dtype: torch.dtype, head_dims: dict[str, int]) -> tuple[type[Exception], str] | None:
    """Why the Triton kernels of ``op`` cannot take inputs of this dtype / these head dims, or None.

    ``head_dims`` maps an argument description (e.g. "q/k") to its head dim.
    """
    _op_name(op)
    if dtype not in KERNEL_DTYPES:
        return TypeError, (
            f"{op}: the Triton kernels take float16, bfloat16 or float32 inputs, got {dtype}; "
            f"cast the inputs or use backend='reference'"
        )
    for name, d in head_dims.items():
        if d > MAX_HEAD_DIM:
            return ValueError, (
                f"{op}: the Triton kernels take head_dim <= {MAX_HEAD_DIM}, got {name} head_dim {d}; "
                f"split the heads or use backend='reference'"
            )
    return None


def check_devices(op: str, ref: torch.Tensor, **tensors: torch.Tensor | None) -> None:
    """Raise ValueError naming the first tensor that is not on ``ref``'s device (q's, by convention)."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device} but q is on {ref.device}; put all inputs on one device")


def select(
    op: str,
    tensors: Sequence[torch.Tensor | None],
    backend: str | None,
    dtype: torch.dtype,
    head_dims: dict[str, int],
) -> str:
    """The dispatch of one call (see the module docstring); records and returns "triton" or "reference"."""
    path = choose(op, *tensors, backend=backend)
    if path == "triton":
        problem = kernel_problem(op, dtype, head_dims)
        if problem is not None:
            if explicit_triton(backend):
                exc, msg = problem
                raise exc(msg)
            path = "reference"
    record(op, path)
    return path


def record(op: str, path: str) -> None:
    _last[_op_name(op)] = path


def last_path(op: str) -> str | None:
    """Which path ("triton" or "reference") the last call of ``op`` took, or None if it was never called.

    ``op`` is one of :data:`OPS`; another name raises ValueError (there are no aliases).
    """
    return _last.get(_op_name(op))


# ----------------------------------------------------------------------------------------------------------
# shared kernel plumbing


def next_pow2(n: int, floor: int = 1) -> int:
    """The smallest power of two >= max(n, floor); tile sides must be powers of two."""
    return max(floor, 1 << (max(int(n), 1) - 1).bit_length())


def head_block(d: int) -> int:
    """Tile width for a head dim: a power of two >= 16 (the smallest tl.dot side on a GPU)."""
    return next_pow2(d, 16)


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of every ``tl.dot`` for inputs of ``dtype`` (the fp32 rule of the module docstring)."""
    if dtype == torch.float32 or upcast_bf16(dtype):
        return "tf32" if _tf32_allowed() else "ieee"
    return "tf32"  # ignored for fp16 / bf16 operands


def _tf32_allowed() -> bool:
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except (AttributeError, RuntimeError):  # pragma: no cover - torch builds without the switch
        return False


def upcast_bf16(dtype: torch.dtype) -> bool:
    """Whether bfloat16 tiles must be upcast to float32 inside the kernels (only in the interpreter)."""
    return dtype == torch.bfloat16 and interpreting()


def input_dtype(args: dict) -> torch.dtype:
    """The dtype of a launch's inputs, for config pruning: q's tensor at run time, ``DTYPE`` when compiling
    ahead of time (``visionattn.kernels._aot``, which has no tensors)."""
    for name in ("Q", "q"):
        t = args.get(name)
        if isinstance(t, torch.Tensor):
            return t.dtype
    return args["DTYPE"]


def configs_for_dtype(table: dict) -> Callable:
    """A prune function that keeps, of the candidate configs, those ``table`` lists for the inputs' width.

    ``table``: ``{"half": keys, "fp32": keys}`` with keys as made by ``config_key``; "half" covers float16 and
    bfloat16. If nothing is kept the first candidate stays (the autotuner needs one).
    """

    def prune(configs: list, args: dict) -> list:
        keep = table["fp32" if input_dtype(args) == torch.float32 else "half"]
        return [c for c in configs if config_key(c) in keep] or configs[:1]

    return prune


def config_key(config) -> tuple:
    """(meta-parameter values in order, num_warps, num_stages) of a ``triton.Config``."""
    return (*config.kwargs.values(), config.num_warps, config.num_stages)


class TunedKernel:
    """A Triton kernel with its GPU autotune configs and its interpreter config.

    ``fn``: the ``@triton.jit`` function, optionally wrapped in ``triton.heuristics``; ``configs``: the GPU
    configs (a list of ``triton.Config``); ``key``: autotune key (argument names); ``interpret``: a dict of
    meta-parameters (plus optional ``num_warps`` / ``num_stages``) used under the interpreter, read at every
    launch (a value may be a callable of the launch's keyword arguments); ``prune``: optional
    ``(configs, args) -> configs`` run before benchmarking (limits that depend on the arguments, e.g. the
    window or the dtype, see :func:`input_dtype`); ``reset_to_zero``: outputs the autotuner must clear between
    trials; ``sweep``: the wider candidate set ``tools/kernel_report.py --all-configs`` compiles (default:
    ``configs``), from which ``configs`` were chosen.
    ``kernel[grid](*args, **kwargs)`` launches it.
    """

    def __init__(
        self,
        name: str,
        fn,
        configs: list,
        key: list[str],
        interpret: dict,
        prune: Callable | None = None,
        reset_to_zero: list[str] | None = None,
        sweep: list | None = None,
    ):
        self.name = name
        self.sweep = configs if sweep is None else sweep
        self.fn = fn
        self.configs = configs
        self.key = key
        self.interpret = interpret
        self.prune = prune
        self.reset_to_zero = reset_to_zero
        self._tuned = None

    @property
    def jit_fn(self):
        """The underlying JITFunction (what ahead-of-time compilation needs)."""
        fn = self.fn
        while not hasattr(fn, "arg_names") or hasattr(fn, "values"):
            fn = fn.fn
        return fn

    def heuristic_values(self, args: dict) -> dict:
        """Meta-parameters that ``triton.heuristics`` derives from ``args`` (empty without heuristics)."""
        values = getattr(self.fn, "values", None) or {}
        out = {}
        for name, rule in values.items():
            out[name] = rule({**args, **out})
        return out

    def _autotuned(self):
        if self._tuned is None:
            extra = {}
            if self.prune is not None:
                prune = self.prune

                def early(configs, named_args, **kwargs):
                    return prune(configs, {**named_args, **kwargs})

                extra["prune_configs_by"] = {"early_config_prune": early}
            if self.reset_to_zero:
                extra["reset_to_zero"] = self.reset_to_zero
            self._tuned = triton.autotune(configs=self.configs, key=self.key, **extra)(self.fn)
        return self._tuned

    def __getitem__(self, grid):
        if not interpreting():
            return self._autotuned()[grid]

        def launch(*args, **kwargs):
            meta = {k: (v(kwargs) if callable(v) else v) for k, v in self.interpret.items()}
            meta.setdefault("num_warps", 4)
            meta.setdefault("num_stages", 1)
            return self.fn[grid](*args, **kwargs, **meta)

        return launch
