"""Registers, spills and shared memory of every Triton kernel's autotune configs, compiled for sm_90 without a GPU.

Each kernel of each op (forward and backward) is compiled ahead of time (``visionattn.kernels._aot``) for every
autotune config its pruning keeps, at the model shapes, in fp16, bf16 and fp32, and the table lists what
``ptxas`` reports. The BRA shapes come from the families' records (``kernel_cases`` of op ``bra``); NA and
halo shapes are the standard windows (7x7 with and without a bias table, 3x3 masked with extra keys; block 8
halo 3 and halo 2, head dim 32).

    python tools/kernel_report.py --quick                 # one shape per op, fp16 + fp32, a few minutes
    python tools/kernel_report.py --workers 2 --json all.json
    python tools/kernel_report.py --all-configs           # also the configs the pruning removes

Verdicts: ``ok``; ``spills`` (ptxas spilled registers to local memory); ``smem`` (needs more shared memory than
an H100/H200 block can have, 227 KB: cannot launch); ``error`` (did not compile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SMEM_LIMIT = 227 * 1024  # bytes of shared memory one block may use on sm_90

NA_SHAPES = [
    ("7x7 shift rpb d32", dict(KH=7, KW=7, SHIFT=True, HAS_RPB=True, HAS_EXTRA=False, D=32)),
    ("3x3 mask rpb+extra d32", dict(KH=3, KW=3, SHIFT=False, HAS_RPB=True, HAS_EXTRA=True, D=32)),
    ("7x7 shift d32", dict(KH=7, KW=7, SHIFT=True, HAS_RPB=False, HAS_EXTRA=False, D=32)),
]
HALO_SHAPES = [
    ("bs8 h3 d32", dict(BS=8, HALO=3, STRIDE=1, DQK=32, DV=32, HAS_RH=True, HAS_RW=True, MASK_PAD=False)),
    ("bs8 h2 d32", dict(BS=8, HALO=2, STRIDE=1, DQK=32, DV=32, HAS_RH=True, HAS_RW=True, MASK_PAD=False)),
]
SPARSE_SHAPES = [
    ("Sparsifiner-S d64", dict(A=0, DQK=64, DV=64)),
    ("d64, class column always", dict(A=1, DQK=64, DV=64)),
]
OP_KERNELS = {
    "bra": ["bra_fwd", "bra_bwd_delta", "bra_bwd_dq", "bra_bwd_dkdv"],
    "na2d": ["na2d_fwd", "na2d_bwd_dq", "na2d_bwd_dkdv", "na2d_bwd_extra"],
    "halo_attn": ["halo_attn_fwd", "halo_attn_bwd"],
    "sparse_attn": ["sparse_attn_fwd", "sparse_attn_bwd"],
}


def bra_shapes() -> list[tuple[str, dict]]:
    """BRA kernel shapes of every registered family's ``bra`` kernel cases, deduplicated."""
    import visionattn  # noqa: F401  (registers the families)
    from visionattn.models._registry import families

    out, seen = [], set()
    for fam in families():
        for case in fam.kernel_cases:
            if case.get("op") != "bra":
                continue
            side = case["height"] // case["regions_side"]
            shape = dict(R=side * side, TOPK=case["topk"], D=case["head_dim"], DV=case["head_dim"], HAS_MASK=False)
            key = tuple(sorted(shape.items()))
            if key not in seen:
                seen.add(key)
                out.append((f"{case['name']}: R{shape['R']} top{shape['TOPK']} d{shape['D']}", shape))
    return out


def build_jobs(ops, dtypes, quick: bool, all_configs: bool, n_shapes: int | None = None):
    from visionattn.kernels import _aot

    shapes = {"bra": bra_shapes(), "na2d": NA_SHAPES, "halo_attn": HALO_SHAPES, "sparse_attn": SPARSE_SHAPES}
    jobs = []
    for op in ops:
        op_shapes = shapes[op][: 1 if quick else n_shapes]
        for label, shape in op_shapes:
            for kernel in OP_KERNELS[op]:
                if kernel == "na2d_bwd_extra" and not shape["HAS_EXTRA"]:
                    continue
                if all_configs:
                    for dtype in dtypes:
                        for cfg in _aot.all_configs(kernel):
                            jobs.append(dict(kernel=kernel, shape=dict(shape), dtype=dtype, config=cfg, label=label))
                else:
                    jobs += _aot.jobs(kernel, shape, dtypes, "all", label=label)
    return jobs


def verdict(rec: dict) -> str:
    if not rec.get("ok"):
        return "error"
    if rec.get("shared", 0) > SMEM_LIMIT:
        return "smem"
    if rec.get("spill_stores", 0) > 0:
        return "spills"
    return "ok"


def config_str(cfg: dict) -> str:
    kw = " ".join(f"{k}={v}" for k, v in cfg["kwargs"].items())
    return f"{kw} w{cfg['num_warps']} s{cfg['num_stages']}"


def table(records: list[dict]) -> str:
    head = ["kernel", "shape", "dtype", "config", "regs", "spill st/ld B", "stack B", "smem KB", "verdict"]
    rows = []
    for r in records:
        rows.append(
            [
                r["kernel"],
                r["label"],
                r["dtype"],
                config_str(r["config"]),
                str(r.get("regs", "-")),
                f"{r.get('spill_stores', '-')}/{r.get('spill_loads', '-')}",
                str(r.get("stack", "-")),
                f"{r['shared'] / 1024:.1f}" if "shared" in r else "-",
                verdict(r),
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = [" | ".join(h.ljust(w) for h, w in zip(head, widths)), "-+-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def summary(records: list[dict]) -> str:
    """Per kernel and dtype: configs compiled, how many spill / exceed shared memory / fail, the worst spill."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["kernel"], r["dtype"]), []).append(r)
    lines = ["kernel | dtype | compiled | ok | spills | smem>227KB | errors | max spill stores B | max regs"]
    for (kernel, dtype), recs in groups.items():
        v = [verdict(r) for r in recs]
        lines.append(
            f"{kernel} | {dtype} | {len(recs)} | {v.count('ok')} | {v.count('spills')} | {v.count('smem')} | "
            f"{v.count('error')} | {max((r.get('spill_stores', 0) for r in recs), default=0)} | "
            f"{max((r.get('regs', 0) for r in recs), default=0)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--op", action="append", choices=list(OP_KERNELS), help="op(s) to report (default: all)")
    p.add_argument("--dtype", action="append", choices=["fp16", "bf16", "fp32"], help="dtype(s) (default: all)")
    p.add_argument("--quick", action="store_true", help="the first shape of each op, fp16 and fp32 only")
    p.add_argument("--shapes", type=int, help="only the first N shapes of each op")
    p.add_argument("--all-configs", action="store_true", help="every config, including those the pruning drops")
    p.add_argument("--workers", type=int, default=1, help="compiler processes (default 1)")
    p.add_argument("--json", help="also write the records to this file")
    p.add_argument("--summary-only", action="store_true", help="print only the per-kernel summary")
    p.add_argument("--from-json", help="print the tables of records saved by --json instead of compiling")
    args = p.parse_args(argv)
    from visionattn.kernels import _aot

    if args.from_json:
        with open(args.from_json) as f:
            records = json.load(f)
        if not args.summary_only:
            print(table(records) + "\n")
        print(summary(records))
        return 0

    ops = args.op or list(OP_KERNELS)
    dtypes = args.dtype or (["fp16", "fp32"] if args.quick else list(_aot.DTYPES))
    jobs = build_jobs(ops, dtypes, args.quick, args.all_configs, args.shapes)
    t0 = time.perf_counter()
    records = _aot.run_jobs(jobs, workers=args.workers)
    took = time.perf_counter() - t0
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=1)
    if not args.summary_only:
        print(table(records))
        print()
    print(summary(records))
    cpu = sum(r["seconds"] for r in records)
    print(f"\n{len(records)} compiles for sm_{_aot.ARCH} in {took:.0f} s ({cpu:.0f} s of compiler time)")
    return 1 if any(verdict(r) == "error" for r in records) else 0


if __name__ == "__main__":
    raise SystemExit(main())
