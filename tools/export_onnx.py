"""Export a model to ONNX with a dynamic batch axis and check it against PyTorch in onnxruntime.

    python tools/export_onnx.py biformer_small --out biformer_small.onnx
    python tools/export_onnx.py biformer_tiny --size 224 224 --check-size 448 448 --opset 18
    python tools/export_onnx.py resnet50 --exporter dynamo --kwargs num_classes=10

``--check-size H W`` exports a second file ``<out stem>_<H>x<W>.onnx`` at that input size (spatial sizes are
fixed per graph) and checks it the same way. Exit status 1 when a check exceeds the tolerance.
"""

from __future__ import annotations

import argparse
import ast
import sys

from visionattn.export import EXPORTERS, OnnxMismatchError, export_onnx, find_expand_fed_gathers


def _kwargs(items: list[str]) -> dict:
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--kwargs item {item!r} is not key=value")
        try:
            out[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a visionattn or timm model name")
    p.add_argument("--out", default=None, help="output path (default <model>.onnx)")
    p.add_argument("--size", type=int, nargs=2, default=(224, 224), metavar=("H", "W"), help="export input size")
    p.add_argument(
        "--check-size",
        type=int,
        nargs=2,
        action="append",
        default=[],
        metavar=("H", "W"),
        help="also export and check at this input size (repeatable)",
    )
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--batch", type=int, default=2, help="export batch (the batch axis stays dynamic)")
    p.add_argument("--check-batch", type=int, default=None, help="second batch size checked (default batch+1)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--exporter", choices=EXPORTERS, default="legacy")
    p.add_argument("--static-batch", action="store_true", help="do not make the batch axis dynamic")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=0.0)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--kwargs", nargs="*", default=[], help="model kwargs as key=value (Python literals)")
    args = p.parse_args(argv)

    try:
        report = export_onnx(
            args.model,
            args.out or f"{args.model}.onnx",
            input_size=(args.in_chans, *args.size),
            batch=args.batch,
            opset=args.opset,
            dynamic_batch=not args.static_batch,
            check=not args.no_check,
            atol=args.atol,
            rtol=args.rtol,
            check_batch=args.check_batch,
            extra_sizes=[(args.in_chans, h, w) for h, w in args.check_size],
            exporter=args.exporter,
            model_kwargs=_kwargs(args.kwargs),
        )
    except OnnxMismatchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    for path, secs in zip(report.paths, report.export_seconds):
        hits = find_expand_fed_gathers(path)
        note = f"; {len(hits)} Expand-fed gather(s): {hits[0]}" if hits else ""
        print(f"wrote {path} ({report.exporter} exporter, opset {report.opset}, {secs:.1f} s){note}")
    for c in report.checks:
        print(
            f"  onnxruntime vs torch: batch {c.batch}, input {c.input_size}: max abs err {c.max_abs_err:.2e} "
            f"(max |output| {c.max_ref_abs:.3g}) {'ok' if c.ok else 'FAIL'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
