"""Generate the synthetic shapes dataset (the embedded demo's data).

    python tools/make_shapes.py                      # the demo configs' 64 px set into data/shapes_demo
    python tools/make_shapes.py --hard               # 256 px textured set into data/shapes_hard
    python tools/make_shapes.py --num-train 200 --seed 1 --root /tmp/shapes --overwrite
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from visionattn.dense.shapes import ShapesSpec, generate_shapes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=None, help="output folder (data/shapes_demo, or data/shapes_hard)")
    parser.add_argument("--hard", action="store_true", help="256 px, textured, occluding shapes, distractor strokes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset under --root")
    for field in dataclasses.fields(ShapesSpec):
        if field.name != "hard":
            flag = "--" + field.name.replace("_", "-")
            # ShapesSpec's annotations are strings (postponed evaluation): map them to the parsers.
            kind = {"int": int, "float": float, "float | None": float}[str(field.type)]
            parser.add_argument(flag, type=kind, default=None, help=f"default: the preset's {field.name}")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(ShapesSpec)
                 if f.name != "hard" and getattr(args, f.name) is not None}
    spec = ShapesSpec.preset(hard=args.hard, **overrides)
    root = args.root or Path("data/shapes_hard" if args.hard else "data/shapes_demo")
    start = time.perf_counter()
    try:
        generate_shapes(root, spec, overwrite=args.overwrite)
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {spec.num_train} train + {spec.num_val} val images ({spec.img_size} px) to {root} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
