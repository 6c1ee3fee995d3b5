#!/usr/bin/env python
"""Train an mmdet / mmseg config with mmengine's Runner.

    python tools/train.py configs/seg/upernet_biformer_s_160k_ade20k_512.py --work-dir work_dirs/x
    torchrun --nproc_per_node 2 tools/train.py CONFIG --launcher pytorch      # GPUs, or CPUs with gloo
    python tools/train.py CONFIG --resume                                      # continue from the last checkpoint
    python tools/train.py CONFIG --resume work_dirs/x/iter_8000.pth            # continue from this one

Importing visionattn.dense registers VisionAttnBackbone, so configs need no ``custom_imports``.
"""

from __future__ import annotations

import argparse
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from visionattn.dense.runner import DictAction

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="config file")
    p.add_argument("--work-dir", help="where logs and checkpoints go (default work_dirs/<config name>)")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="resume training: alone, from the work dir's last checkpoint; with a path, from that checkpoint",
    )
    p.add_argument("--amp", action="store_true", help="mixed precision (AmpOptimWrapper, dynamic loss scale; CUDA)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none", help="'pytorch' under torchrun")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    import torch

    import visionattn  # noqa: F401  (registers the models with timm)
    import visionattn.dense  # noqa: F401  (registers VisionAttnBackbone)
    from visionattn.dense.runner import build_runner, load_config, setup_launcher

    args = parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = load_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options)

    if args.amp:
        if not torch.cuda.is_available():
            raise SystemExit("--amp needs a CUDA device (mmengine's AmpOptimWrapper); drop --amp on CPU")
        optim = cfg.optim_wrapper
        if optim.get("type", "OptimWrapper") != "AmpOptimWrapper":
            optim.type = "AmpOptimWrapper"
            optim.loss_scale = "dynamic"

    if args.resume == "auto":
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not os.path.isfile(args.resume):
            raise SystemExit(f"--resume {args.resume}: no such checkpoint file")
        cfg.resume = True
        cfg.load_from = args.resume

    setup_launcher(cfg, args.launcher)
    runner = build_runner(cfg)
    runner.train()


if __name__ == "__main__":
    main()
