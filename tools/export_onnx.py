"""Export a model to ONNX with a dynamic batch axis and check it against PyTorch in onnxruntime.

    python tools/export_onnx.py biformer_small --out biformer_small.onnx
    python tools/export_onnx.py biformer_tiny --size 224 224 --check-size 448 448 --opset 18
    python tools/export_onnx.py biformer_tiny --checkpoint biformer_tiny_in1k.pth
    python tools/export_onnx.py davit_tiny --pretrained --dynamic-size --check-size 320 256
    python tools/export_onnx.py resnet50 --exporter dynamo --model-kwargs num_classes=10

The model is randomly initialised unless ``--pretrained`` (its published weights, fetched and verified by
visionattn's loader) or ``--checkpoint PATH`` (an official checkpoint or one in visionattn's layout, mapped by
the family's converter; ``--sha256`` verifies it) is given. ``--check-size H W`` exports a second file
``<out stem>_<H>x<W>.onnx`` at that input size (spatial sizes are fixed per graph) and checks it the same way;
with ``--dynamic-size`` height and width are dynamic axes of the one file, which is checked at each
``--check-size`` (default: a second size the family allows). Exit status 1 when a check fails or the weights
cannot be loaded.
"""

from __future__ import annotations

import argparse
import sys

from visionattn.cli import add_model_kwargs_argument, parse_model_kwargs
from visionattn.export import EXPORTERS, OnnxMismatchError, export_onnx, find_expand_fed_gathers
from visionattn.pretrained import CheckpointError


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
        help="also check at this input size (repeatable): a file of its own, or the same file with --dynamic-size",
    )
    p.add_argument("--dynamic-size", action="store_true", help="make height and width dynamic axes too")
    p.add_argument("--in-chans", type=int, default=3)
    p.add_argument("--batch", type=int, default=2, help="export batch (the batch axis stays dynamic)")
    p.add_argument("--check-batch", type=int, default=None, help="second batch size checked (default batch+1)")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--exporter", choices=EXPORTERS, default="legacy")
    p.add_argument("--static-batch", action="store_true", help="do not make the batch axis dynamic")
    p.add_argument("--atol", type=float, default=1e-4)
    p.add_argument("--rtol", type=float, default=0.0)
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.add_argument("--pretrained", action="store_true", help="load the model's published weights")
    p.add_argument(
        "--checkpoint", default=None, metavar="PATH", help="load weights from this file (implies --pretrained)"
    )
    p.add_argument("--sha256", default=None, help="expected sha256 of the weights file")
    add_model_kwargs_argument(p)
    args = p.parse_args(argv)
    try:
        model_kwargs = parse_model_kwargs(args.model_kwargs)
    except ValueError as e:
        p.error(str(e))

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
            dynamic_size=args.dynamic_size,
            exporter=args.exporter,
            model_kwargs=model_kwargs,
            pretrained=args.pretrained,
            checkpoint=args.checkpoint,
            sha256=args.sha256,
        )
    except OnnxMismatchError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"export_onnx: error: {e}", file=sys.stderr)
        return 1
    sample = None  # a graph with static height and width makes its own sample
    if report.dynamic_size:
        import numpy as np

        sample = np.random.default_rng(0).standard_normal((args.batch, args.in_chans, *args.size)).astype(np.float32)
    weights = (
        "checkpoint " + args.checkpoint
        if args.checkpoint
        else "published weights"
        if args.pretrained
        else "random init"
    )
    for path, secs in zip(report.paths, report.export_seconds):
        hits = find_expand_fed_gathers(path, sample=sample)
        note = f"; {len(hits)} Expand-fed gather(s): {hits[0]}" if hits else ""
        axes = "batch, height, width" if report.dynamic_size else "batch" if not args.static_batch else "none"
        print(
            f"wrote {path} ({weights}; {report.exporter} exporter, opset {report.opset}, dynamic axes: {axes}, "
            f"{secs:.1f} s){note}"
        )
    for c in report.checks:
        print(
            f"  onnxruntime vs torch: batch {c.batch}, input {c.input_size}: max abs err {c.max_abs_err:.2e} "
            f"(max |output| {c.max_ref_abs:.3g}) {'ok' if c.ok else 'FAIL'}"
        )
        for flip in c.routing_flips:
            print(f"    routing near-tie, sample redrawn: {flip}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
