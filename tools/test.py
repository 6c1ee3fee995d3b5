#!/usr/bin/env python
"""Evaluate a checkpoint with an mmdet / mmseg config (mmengine's Runner.test).

python tools/test.py configs/seg/upernet_biformer_s_160k_ade20k_512.py work_dirs/x/iter_160000.pth
torchrun --nproc_per_node 2 tools/test.py CONFIG CHECKPOINT --launcher pytorch
"""

from __future__ import annotations

import argparse
import os


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from visionattn.dense.runner import DictAction

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="config file")
    p.add_argument("checkpoint", help="checkpoint file (an mmengine checkpoint of this config's model)")
    p.add_argument("--work-dir", help="where logs and metrics go (default work_dirs/<config name>)")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, help="override config entries, key=value")
    p.add_argument("--launcher", choices=["none", "pytorch"], default="none", help="'pytorch' under torchrun")
    p.add_argument("--local-rank", "--local_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    import visionattn  # noqa: F401  (registers the models with timm)
    import visionattn.dense  # noqa: F401  (registers VisionAttnBackbone)
    from visionattn.dense.runner import build_runner, load_config, setup_launcher

    args = parse_args(argv)
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not os.path.isfile(args.checkpoint):
        raise SystemExit(f"checkpoint {args.checkpoint!r} does not exist")
    cfg = load_config(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options)
    cfg.load_from = args.checkpoint
    cfg.resume = False
    setup_launcher(cfg, args.launcher)
    runner = build_runner(cfg)
    return runner.test()


if __name__ == "__main__":
    main()
