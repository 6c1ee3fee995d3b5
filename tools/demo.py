#!/usr/bin/env python
"""The embedded demo: train BiFormer-T from scratch on the synthetic shapes set, on CPU.

    python tools/demo.py                # semantic segmentation, then detection (about 10 min each on 2 cores)
    python tools/demo.py --only seg     # one of them
    python tools/demo.py --resume       # continue interrupted runs from their last checkpoints

Each run generates data/shapes if it is missing, logs progress every few iterations, validates at the
end and writes checkpoints under work_dirs/<config name>/. The closing table lists the metric reached.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {
    "seg": ("configs/seg/fpn_biformer_tiny_shapes.py", "mIoU"),
    "det": ("configs/det/retinanet_biformer_tiny_shapes.py", "coco/bbox_mAP"),
}


def _last_metric(work_dir: str, key: str) -> float | None:
    """The last value of ``key`` in the newest run's scalars.json of mmengine's LocalVisBackend."""
    logs = sorted(glob.glob(os.path.join(work_dir, "*", "vis_data", "scalars.json")), key=os.path.getmtime)
    for path in reversed(logs):
        value = None
        with open(path) as f:
            for line in f:
                record = json.loads(line)
                if key in record:
                    value = record[key]
        if value is not None:
            return float(value)
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=sorted(RUNS), help="run only this task")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoints")
    p.add_argument("--work-root", default="work_dirs", help="parent folder of the runs' work dirs")
    args = p.parse_args(argv)

    results = []
    for task, (config, key) in RUNS.items():
        if args.only and task != args.only:
            continue
        name = os.path.splitext(os.path.basename(config))[0]
        work_dir = os.path.join(args.work_root, name)
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), config, "--work-dir", work_dir]
        if args.resume:
            cmd.append("--resume")
        print("+", " ".join(cmd), flush=True)
        start = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        minutes = (time.time() - start) / 60
        results.append((task, config, key, _last_metric(os.path.join(ROOT, work_dir), key), minutes))

    print("\n| task | config | metric | value | minutes |\n|---|---|---|---|---|")
    for task, config, key, value, minutes in results:
        shown = "missing" if value is None else f"{value:.3f}"
        print(f"| {task} | {config} | {key} | {shown} | {minutes:.1f} |")
    if any(value is None for *_, value, _ in results):
        print("a run finished without its validation metric; see its log under", args.work_root)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
