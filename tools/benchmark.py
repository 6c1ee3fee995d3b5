"""Benchmark models (images/s, latency, peak memory) or attention ops at the real models' shapes.

Model mode (default):
    python tools/benchmark.py biformer_small --size 224 --batch 1 32 --device cuda --dtype bfloat16
    python tools/benchmark.py biformer_tiny --model-kwargs drop_path_rate=0.1 --compare VISIONATTN_KERNELS=reference
    python tools/benchmark.py resnet50 --train --size 160 --compare convnext_tiny --plot out.png
Kernel mode:
    python tools/benchmark.py kernels --quick                       # CPU, about a minute
    python tools/benchmark.py kernels --op bra --device cuda --csv bra.csv --md bra.md

The model is a name; ``--model-kwargs KEY=VALUE ...`` passes it keyword arguments. ``--compare`` takes a spec
``[NAME][,ENV_VAR=value][,kwarg=value]`` (see visionattn.bench.parse_spec): without a name it is the first model
with its kwargs plus these items; with a name, a different model built with these items only. Ratios are
first / compare; the two are timed in one process, interleaved (A B, B A, ...). A name ``FILE.py:FUNC`` is an
external builder: ``FUNC(**kwargs)`` returns the model, e.g. a paper's official code from a local checkout
(``tools/external/<family>.py``; the checkout's path in the spec's ``VISIONATTN_OFFICIAL``):
    python tools/benchmark.py biformer_tiny --batch 4 \
        --compare tools/external/biformer.py:official,VISIONATTN_OFFICIAL=/path/to/BiFormer

Kernel mode measures its ceilings (a device copy and a large matmul in the benchmark dtype) before the cases;
``--peak-tbps`` / ``--peak-tflops`` give them instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from visionattn import bench
from visionattn.cli import add_model_kwargs_argument, parse_model_kwargs


def _size(text: str) -> tuple[int, int]:
    try:
        h, _, w = text.lower().partition("x")
        return int(h), int(w or h)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must be H or HxW, e.g. 224 or 512x1024") from None


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument(
        "--dtype", default=None, help="float32 | float16 | bfloat16 (models: float32; kernels: bf16 on CUDA)"
    )
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default 1 on CPU)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=None, help="untimed iterations first")
    p.add_argument("--csv", type=Path, default=None, help="write the table as CSV here")
    p.add_argument("--md", type=Path, default=None, help="write the table as markdown here")
    p.add_argument("--plot", type=Path, default=None, help="bar chart (PNG) here; needs matplotlib")


def _parser_model() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmark.py [model]", description="Benchmark a model (or compare two).")
    p.add_argument("model", help="model name (visionattn or timm); kwargs go in --model-kwargs")
    add_model_kwargs_argument(p)
    p.add_argument("--size", type=_size, nargs="+", default=[(224, 224)], help="input sizes, H or HxW")
    p.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--train", action="store_true", help="time forward+backward (training mode) instead of inference")
    p.add_argument("--compare", default=None, help="second spec run in the same process; prints the ratio")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory pass")
    _common(p)
    return p


def _parser_kernels() -> argparse.ArgumentParser:
    ops, impls = list(bench.op_specs()), bench.impl_names()
    p = argparse.ArgumentParser(prog="benchmark.py kernels", description="Benchmark attention ops vs baselines.")
    p.add_argument("--op", nargs="+", default=ops, choices=ops)
    p.add_argument("--quick", action="store_true", help="small cases only, 3 iterations")
    p.add_argument("--cases", nargs="+", default=None, help="keep cases whose name contains one of these")
    p.add_argument("--impls", nargs="+", default=impls, choices=impls, help="'official': the families' baselines")
    p.add_argument("--batch", type=int, default=None, help="batch for every case (default: CUDA per case, CPU 1)")
    p.add_argument("--no-backward", action="store_true", help="forward only")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory passes")
    p.add_argument("--peak-tbps", type=float, default=None, help="memory bandwidth ceiling (default: measured)")
    p.add_argument("--peak-tflops", type=float, default=None, help="matmul ceiling (default: measured)")
    _common(p)
    return p


def _write(args: argparse.Namespace, rows: list, md_cols, preamble: str = "") -> str:
    md = preamble + bench.to_markdown(rows, md_cols)
    if args.md:
        args.md.write_text(preamble + bench.to_markdown(rows))
    if args.csv:
        args.csv.write_text(bench.to_csv(rows))
    if args.plot:
        bench.plot(rows, str(args.plot))
    return md


def run_models(argv: list[str]) -> str:
    args = _parser_model().parse_args(argv)
    if "," in args.model or "=" in args.model:
        raise SystemExit(
            f"model {args.model!r}: give a plain model name; pass kwargs with --model-kwargs KEY=VALUE and "
            "environment variables in the shell (or in a --compare spec)"
        )
    first = bench.ModelSpec(args.model, kwargs=parse_model_kwargs(args.model_kwargs))
    specs = [first] + ([bench.parse_spec(args.compare, default=first)] if args.compare else [])
    rows: list = []
    for size in args.size:
        for batch in args.batch:
            pair = bench.bench_models(
                specs,
                size=size,
                batch=batch,
                dtype=args.dtype or "float32",
                device=args.device,
                threads=args.threads,
                channels_last=args.channels_last,
                compile=args.compile,
                train=args.train,
                warmup=args.warmup,
                iters=args.iters,
                memory=not args.no_memory,
            )
            rows += pair
            if len(pair) == 2:
                ratio = bench.compare_ratio(*pair)
                rows.append(
                    {"label": "ratio (first / compare)", "batch": batch, "height": size[0], "width": size[1], **ratio}
                )
    return _write(args, rows, bench.MODEL_MD_COLUMNS)


def run_kernels(argv: list[str]) -> str:
    args = _parser_kernels().parse_args(argv)
    import torch

    device = torch.device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    given = dict(
        bandwidth=None if args.peak_tbps is None else args.peak_tbps * 1e12,
        flops=None if args.peak_tflops is None else args.peak_tflops * 1e12,
    )
    threads = args.threads if args.threads is not None or device.type != "cpu" else 1
    with bench.timing.threads(threads):
        ceilings = bench.measure_ceilings(device, dtype, matmul_size=1024 if args.quick else None, **given)
    print(ceilings.text, file=sys.stderr, flush=True)
    rows = bench.bench_kernels(
        args.op,
        quick=args.quick,
        device=device,
        dtype=dtype,
        batch=args.batch,
        threads=threads,
        iters=args.iters,
        warmup=args.warmup,
        impls=args.impls,
        cases=args.cases,
        backward=not args.no_backward,
        memory=not args.no_memory,
        ceilings=ceilings,
        progress=lambda r: print(f"  {r.case:22s} {r.impl:16s} {r.status}", file=sys.stderr, flush=True),
    )
    return _write(args, rows, bench.KERNEL_MD_COLUMNS, preamble=ceilings.text + "\n\n")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "kernels":
        print(run_kernels(argv[1:]))
    else:
        print(run_models(argv[1:] if argv and argv[0] == "model" else argv))


if __name__ == "__main__":
    main()
