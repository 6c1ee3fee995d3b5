"""Convert an official checkpoint to visionattn's layout.

    python tools/convert_checkpoint.py biformer_tiny biformer_tiny_in1k.pth biformer_tiny.safetensors
    python tools/convert_checkpoint.py biformer_tiny ft.pth ft.safetensors --model-kwargs num_classes=10

The output (.safetensors, or torch.save for any other suffix) loads strictly into
``timm.create_model(MODEL, **kwargs)`` (``--model-kwargs KEY=VALUE ...``, the arguments the checkpoint was
trained with); its sha256 is printed and written to ``OUT.sha256``. Load it with
``timm.create_model(MODEL, pretrained=True, pretrained_cfg_overlay=dict(file=OUT, sha256=...))``.
"""

from __future__ import annotations

import argparse
import sys

import visionattn  # noqa: F401  (registers the models with timm)
from visionattn.cli import add_model_kwargs_argument, parse_model_kwargs
from visionattn.pretrained import CheckpointError, convert_checkpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="registered model name, e.g. biformer_tiny (see visionattn.list_models())")
    parser.add_argument("src", help="official checkpoint (.pth/.pt/.bin read with weights_only=True, or .safetensors)")
    parser.add_argument("dst", help="output file; .safetensors writes safetensors, anything else torch.save")
    add_model_kwargs_argument(parser)
    parser.add_argument("--sha256", default=None, help="expected sha256 of SRC (checked before reading it)")
    parser.add_argument(
        "--hash-name", action="store_true", help="rename OUT to <stem>-<sha256[:8]><ext> (checked when loaded)"
    )
    args = parser.parse_args(argv)
    try:
        model_kwargs = parse_model_kwargs(args.model_kwargs)
    except ValueError as err:
        parser.error(str(err))
    try:
        path, digest = convert_checkpoint(
            args.model, args.src, args.dst, model_kwargs=model_kwargs, sha256=args.sha256, hash_name=args.hash_name
        )
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"convert_checkpoint: error: {err}", file=sys.stderr)
        return 1
    print(f"{digest}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
