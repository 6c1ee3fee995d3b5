"""Ahead-of-time compilation of every Triton kernel for a GPU target, without a GPU.

Triton (3.x) lowers a ``@triton.jit`` function to PTX and runs its bundled ``ptxas`` for a target named by
``GPUTarget("cuda", 90, 32)`` (sm_90) with no driver present, so a CPU machine can tell whether each kernel
compiles for the GPU and how many registers, spills and shared memory each launch config needs
(``tools/kernel_report.py``, ``tests/test_kernel_aot.py``).

A job is one kernel at one shape, one dtype and one launch config. Jobs run in a child process
(:func:`run_jobs`), because ``TRITON_INTERPRET=1`` (set by the tests on a machine without CUDA) makes
``@triton.jit`` return interpreter objects that cannot be compiled: the child starts without that variable,
with an empty Triton cache (so ``ptxas`` really runs and its ``-v`` log can be read) and prints one JSON
record per job.

Shapes are per op (the kernels of one op share them): ``bra``: R (tokens per region), TOPK, D, DV, HAS_MASK;
``na2d``: KH, KW, SHIFT, HAS_RPB, HAS_EXTRA, D; ``halo_attn``: BS, HALO, STRIDE, DQK, DV, HAS_RH, HAS_RW,
MASK_PAD; ``sparse_attn``: A (always-attended keys), DQK, DV.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time

DTYPES = ("fp16", "bf16", "fp32")
ARCH = 90

# kernel -> (op, pointer arguments with their element type (None: the data dtype), fp32 scalar arguments).
# Every other non-constexpr argument is an int32.
KERNELS: dict[str, tuple[str, dict[str, str | None], tuple[str, ...]]] = {
    "bra_fwd": (
        "bra",
        dict(Q=None, K=None, V=None, IDX="i32", KPM="u8", OUT=None, LSE="fp32"),
        ("qk_scale",),
    ),
    "bra_bwd_delta": ("bra", dict(OUT=None, DO=None, DELTA="fp32"), ()),
    "bra_bwd_dq": (
        "bra",
        dict(Q=None, K=None, V=None, IDX="i32", KPM="u8", DO=None, LSE="fp32", DELTA="fp32", DQ=None),
        ("qk_scale", "scale"),
    ),
    "bra_bwd_dkdv": (
        "bra",
        dict(Q=None, K=None, V=None, KPM="u8", DO=None, LSE="fp32", DELTA="fp32", DK=None, DV_OUT=None),
        ("qk_scale", "scale"),
    ),
    "na2d_fwd": (
        "na2d",
        dict(Q=None, K=None, V=None, RPB="fp32", AK=None, AV=None, Out=None, LSE="fp32"),
        ("scale2",),
    ),
    "na2d_bwd_dq": (
        "na2d",
        dict(
            Q=None, K=None, V=None, RPB="fp32", AK=None, AV=None, DO=None, LSE="fp32", DELTA="fp32", DQ=None, DS="fp32"
        ),
        ("scale2", "scale"),
    ),
    "na2d_bwd_dkdv": (
        "na2d",
        dict(Q=None, K=None, V=None, RPB="fp32", DO=None, LSE="fp32", DELTA="fp32", DK=None, DV=None),
        ("scale2", "scale"),
    ),
    "na2d_bwd_extra": (
        "na2d",
        dict(Q=None, AK=None, AV=None, DO=None, LSE="fp32", DELTA="fp32", DAK="fp32", DAV="fp32"),
        ("scale2", "scale"),
    ),
    "halo_attn_fwd": (
        "halo_attn",
        dict(Q=None, K=None, V=None, LH=None, LW=None, OUT=None, LSE="fp32"),
        ("scale",),
    ),
    "halo_attn_bwd": (
        "halo_attn",
        dict(
            Q=None,
            K=None,
            V=None,
            LH=None,
            LW=None,
            DO=None,
            LSE="fp32",
            DELTA="fp32",
            DQ=None,
            DK="fp32",
            DVA="fp32",
            DLH="fp32",
            DLW="fp32",
        ),  # fmt: skip
        ("scale",),
    ),
}
KERNELS["sparse_attn_fwd"] = ("sparse_attn", dict(Q=None, K=None, V=None, IDX="i64", OUT=None, LSE="fp32"), ("scale",))
KERNELS["sparse_attn_bwd"] = (
    "sparse_attn",
    dict(Q=None, K=None, V=None, IDX="i64", DO=None, LSE="fp32", DELTA="fp32", DQ=None, DK="fp32", DVA="fp32"),
    ("scale",),
)
# BRA's transposed-routing tables are int32 too
KERNELS["bra_bwd_dkdv"][1].update(QOFF="i32", QREG="i32")

_TORCH_DTYPE_NAMES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def op_modules() -> list[str]:
    """Names of the op modules of this package (every module not starting with an underscore)."""
    import pkgutil

    from . import __path__ as package_path

    return sorted(m.name for m in pkgutil.iter_modules(package_path) if not m.name.startswith("_"))


def _tuned_kernel(name: str):
    import importlib

    # (``from . import bra`` would give the function: the package re-exports the op under its module's name)
    for mod_name in op_modules():
        mod = importlib.import_module(f"{__package__}.{mod_name}")
        if name in mod.KERNELS:
            return mod.KERNELS[name]
    raise ValueError(f"kernel={name!r} is not one of {', '.join(KERNELS)}")


def _derived(op: str, shape: dict, dtype: str) -> dict:
    """Constexpr values the host code derives from the op's shape and dtype."""
    import torch

    from . import _dispatch

    tdtype = getattr(torch, _TORCH_DTYPE_NAMES[dtype])
    # DTYPE stands in for the tensors' dtype that the pruning rules read at run time
    out = dict(shape, UPCAST=False, PREC=_dispatch.dot_precision(tdtype), DTYPE=tdtype)
    if op == "bra":
        out.update(BD=_dispatch.head_block(shape["D"]), BDV=_dispatch.head_block(shape["DV"]))
    elif op == "na2d":
        out.update(BD=_dispatch.head_block(shape["D"]), STORE_DS=shape["HAS_RPB"])
    elif op == "halo_attn":
        win = shape["BS"] + 2 * shape["HALO"]
        bq = shape["BS"] // shape["STRIDE"]
        out.update(
            WIN=win, WINP=_dispatch.next_pow2(win), BQ=bq, BM=_dispatch.next_pow2(bq * bq, 16),
            DP=_dispatch.head_block(shape["DQK"]), DVP=_dispatch.head_block(shape["DV"]),
        )  # fmt: skip
    elif op == "sparse_attn":
        out.update(DP=_dispatch.head_block(shape["DQK"]), DVP=_dispatch.head_block(shape["DV"]))
    return out


def configs(kernel: str, shape: dict, dtype: str = "fp16") -> list[dict]:
    """The GPU autotune configs of ``kernel`` that its pruning keeps at this shape, as plain dicts."""
    tk = _tuned_kernel(kernel)
    args = _derived(KERNELS[kernel][0], shape, dtype)
    cfgs = tk.prune(tk.configs, args) if tk.prune is not None else tk.configs
    return [{"kwargs": dict(c.kwargs), "num_warps": c.num_warps, "num_stages": c.num_stages} for c in cfgs]


def all_configs(kernel: str) -> list[dict]:
    """Every candidate config of ``kernel`` (its sweep, before any pruning), as plain dicts."""
    return [
        {"kwargs": dict(c.kwargs), "num_warps": c.num_warps, "num_stages": c.num_stages}
        for c in _tuned_kernel(kernel).sweep
    ]


def jobs(kernel: str, shape: dict, dtypes=DTYPES, which: str = "all", label: str = "") -> list[dict]:
    """Compile jobs for ``kernel`` at ``shape``: every kept config (``which="all"``) or the first one."""
    out = []
    for dtype in dtypes:
        cfgs = configs(kernel, shape, dtype)
        for cfg in cfgs if which == "all" else cfgs[:1]:
            out.append(dict(kernel=kernel, shape=dict(shape), dtype=dtype, config=cfg, label=label))
    return out


_PTXAS = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads"
    r".*?Used (?P<regs>\d+) registers",
    re.S,
)


def compile_job(job: dict) -> dict:
    """Compile one job in this process (TRITON_INTERPRET must be unset); the job plus its measurements."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import _dispatch

    if _dispatch.interpreting():
        raise RuntimeError("compile_job cannot run with TRITON_INTERPRET=1; use run_jobs (a clean child process)")
    name = job["kernel"]
    op, pointers, floats = KERNELS[name]
    tk = _tuned_kernel(name)
    fn = tk.jit_fn
    cfg = job["config"]
    values = _derived(op, job["shape"], job["dtype"])
    values.update(cfg["kwargs"])
    values.update(tk.heuristic_values(values))
    signature, constexprs, attrs = {}, {}, {}
    for i, param in enumerate(fn.params):
        arg = param.name
        if param.is_constexpr:
            if arg not in values:
                raise KeyError(f"{name}: no value for constexpr {arg}")
            signature[arg] = "constexpr"
            constexprs[arg] = values[arg]
        elif arg in pointers:
            signature[arg] = "*" + (pointers[arg] or job["dtype"])
            attrs[(i,)] = [["tt.divisibility", 16]]  # torch allocations are 16-byte aligned
        elif arg in floats:
            signature[arg] = "fp32"
        else:
            signature[arg] = "i32"
    record = dict(job)
    buf = io.StringIO()
    t0 = time.perf_counter()
    try:
        with contextlib.redirect_stdout(buf):
            kernel = triton.compile(
                ASTSource(fn, signature, constexprs=constexprs, attrs=attrs),
                target=GPUTarget("cuda", ARCH, 32),
                options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]},
            )
    except Exception as exc:  # noqa: BLE001 - the record carries the failure
        record.update(ok=False, error=f"{type(exc).__name__}: {str(exc)[:2000]}", seconds=time.perf_counter() - t0)
        return record
    record.update(ok=True, seconds=time.perf_counter() - t0, shared=int(kernel.metadata.shared))
    if os.environ.get("VISIONATTN_AOT_LOG"):
        sys.stderr.write(buf.getvalue())
    m = _PTXAS.search(buf.getvalue())
    if m:
        record.update(
            regs=int(m["regs"]), spill_stores=int(m["stores"]), spill_loads=int(m["loads"]), stack=int(m["stack"])
        )
    return record


def run_jobs(jobs_: list[dict], workers: int = 1, timeout: float | None = None) -> list[dict]:
    """Compile ``jobs_`` in ``workers`` clean child processes (no TRITON_INTERPRET, empty cache); records in order."""
    if not jobs_:
        return []
    workers = max(1, min(workers, len(jobs_)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DUMP_PTXAS_LOG"] = "1"
    results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="visionattn-aot-") as tmp:
        procs = []
        for i in range(workers):
            chunk = jobs_[i::workers]
            jobs_path, out_path = os.path.join(tmp, f"jobs{i}.json"), os.path.join(tmp, f"out{i}.jsonl")
            with open(jobs_path, "w") as f:
                json.dump(chunk, f)
            with open(out_path, "w") as out, open(os.path.join(tmp, f"err{i}.txt"), "w") as err:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "visionattn.kernels._aot", jobs_path],
                    stdout=out, stderr=err, env=dict(env, TRITON_CACHE_DIR=os.path.join(tmp, f"cache{i}")),
                )  # fmt: skip
            procs.append((proc, chunk, out_path))
        deadline = None if timeout is None else time.monotonic() + timeout
        for i, (proc, chunk, out_path) in enumerate(procs):
            try:
                proc.wait(None if deadline is None else max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for p, _, _ in procs:
                    p.kill()
                raise
            with open(out_path) as f:
                recs = [json.loads(line[len("AOT ") :]) for line in f if line.startswith("AOT ")]
            if proc.returncode != 0 or len(recs) != len(chunk):
                with open(os.path.join(tmp, f"err{i}.txt")) as f:
                    err = f.read()
                raise RuntimeError(
                    f"AOT worker {i} exited with {proc.returncode} after {len(recs)} jobs:\n{err[-4000:]}"
                )
            for j, rec in enumerate(recs):
                results[i + j * workers] = rec
    return [results[i] for i in range(len(jobs_))]


def _main() -> None:
    with open(sys.argv[1]) as f:
        for job in json.load(f):
            print("AOT " + json.dumps(compile_job(job)), flush=True)


if __name__ == "__main__":
    _main()
