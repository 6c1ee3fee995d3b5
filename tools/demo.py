#!/usr/bin/env python
"""The embedded demo: train a backbone from scratch on the synthetic shapes set, on CPU (default BiFormer-T).

    python tools/demo.py                        # segmentation, then detection (about 10 min each on 2 cores)
    python tools/demo.py --only seg             # one of them
    python tools/demo.py --resume               # continue interrupted runs from their last checkpoints
    python tools/demo.py --model davit_tiny     # any registered model (visionattn.list_models(), or a timm name)
    python tools/demo.py --model NAME --small   # the family's small test configuration (Family.test_kwargs)
    python tools/demo.py --model NAME --model-kwargs drop_path_rate=0.1
    python tools/demo.py --quick                # a short schedule on the same code path (CI)

Each run generates data/shapes_demo if it is missing, logs progress every 10 iterations, validates and writes
checkpoints under work_dirs/<run name>/. With the default model and schedule it trains the configs
configs/seg/fpn_biformer_tiny_shapes.py and configs/det/retinanet_biformer_tiny_shapes.py as they are; another
model or --quick writes the derived config (the same config with the backbone, the widths the neck reads and
the schedule swapped) into the work dir and trains that. The closing table lists the metric each run reached;
the exit status is non-zero when a metric is missing or below its floor (FLOORS, QUICK_FLOORS).
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
DEFAULT_MODEL = "biformer_tiny"
RUNS = {
    "seg": ("configs/seg/fpn_biformer_tiny_shapes.py", "mIoU"),
    "det": ("configs/det/retinanet_biformer_tiny_shapes.py", "coco/bbox_mAP"),
}
# A run that ends below its floor fails the demo. Chance levels: seg mIoU ~22 (everything background), det ~0.
FLOORS = {"seg": 50.0, "det": 0.3}
# --quick: QUICK_ITERS iterations per task (the same warm-up and cosine decay, compressed). BiFormer-T reached
# mIoU 52.1 and bbox mAP 0.416 that way (6.4 min wall for both on 2 busy CPU cores); the floors sit below that
# and far above chance.
QUICK_ITERS = 250
QUICK_FLOORS = {"seg": 40.0, "det": 0.2}
# channels of the pyramid the adapter builds for isotropic models (the demo's necks are this narrow too)
PYRAMID_CHANNELS = {"seg": 64, "det": 96}


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


def _input_side(model_name: str, side: int) -> int:
    """``side`` if the model takes ``side`` x ``side`` inputs, else the nearest size its family accepts."""
    import timm

    from visionattn.models import get_family

    try:
        family = get_family(model_name)
    except KeyError:
        return side
    if family.fixed_input_size:
        return int(timm.create_model(model_name, pretrained=False).pretrained_cfg["input_size"][-1])
    return family.fit_size(side)


def _resize_pipelines(cfg, task: str, side: int) -> None:
    """Feed ``side`` x ``side`` images to a model that does not take the set's 64 px (labels resized alike in
    training; predictions are scored at the original size)."""
    resize = dict(type="Resize", scale=(side, side), keep_ratio=False)
    if task == "det":
        for pipeline in (cfg.train_dataloader.dataset.pipeline, cfg.val_dataloader.dataset.pipeline):
            for step in pipeline:
                if step["type"] == "Resize":
                    step.update(resize)
        return
    cfg.model.data_preprocessor.size = (side, side)
    train = cfg.train_dataloader.dataset.pipeline
    train.insert(next(i for i, s in enumerate(train) if s["type"] == "LoadAnnotations") + 1, resize)
    test = cfg.val_dataloader.dataset.pipeline
    test.insert(next(i for i, s in enumerate(test) if s["type"] == "LoadAnnotations"), resize)


def swap_backbone(cfg, task: str, model_name: str, model_kwargs: dict) -> None:
    """Put ``model_name`` into a shapes demo config (in place): the backbone, the levels and widths the neck and
    head read, the input size the model's family needs. The family's dense recipe applies as in any config."""
    import torch

    from visionattn.dense import VisionAttnBackbone
    from visionattn.dense.backbone import dense_recipe

    spec = dict(model_name=model_name, model_kwargs=model_kwargs, pyramid_channels=PYRAMID_CHANNELS[task])
    with torch.device("meta"):  # widths and strides without building weights
        levels = VisionAttnBackbone(**spec)
    side = _input_side(model_name, int(cfg.img_size))
    recipe = dense_recipe(model_name)
    if recipe is not None and recipe.neck:
        _swap_in_recipe_neck(cfg, task, spec, levels, dict(recipe.neck), side)
    else:
        _swap_fpn_levels(cfg, task, spec, levels, model_name)
    if side != int(cfg.img_size):
        _resize_pipelines(cfg, task, side)


def _swap_in_recipe_neck(cfg, task: str, spec: dict, levels, neck: dict, side: int) -> None:
    """The family's own neck (``DenseRecipe.neck``) in place of FPN, on every backbone level, five outputs; the
    heads read the strides measured by running the neck on zero maps of the backbone's shapes."""
    import torch
    from mmengine.registry import MODELS

    neck.update(in_channels=list(levels.channels), out_channels=cfg.model.neck.out_channels, num_outs=5)
    neck["start_level"] = 0
    with torch.no_grad():
        outs = MODELS.build(neck)(
            [torch.zeros(1, c, -(-side // s), -(-side // s)) for c, s in zip(levels.channels, levels.strides)]
        )
    strides = [side // o.shape[-2] for o in outs]
    cfg.model.backbone = dict(type="VisionAttnBackbone", **spec)
    cfg.model.neck = neck
    if task == "seg":  # Semantic FPN on up to four levels of stride >= 4
        keep = [i for i, s in enumerate(strides) if s >= 4][:4]
        head = cfg.model.decode_head
        head.in_index = keep
        head.in_channels = [neck["out_channels"]] * len(keep)
        head.feature_strides = [strides[i] for i in keep]
    else:
        cfg.model.bbox_head.anchor_generator.strides = strides


def _swap_fpn_levels(cfg, task: str, spec: dict, levels, model_name: str) -> None:
    """The config's FPN on the backbone levels its heads can use; their widths and strides."""
    # Semantic FPN on up to four levels of stride >= 4; RetinaNet on up to three of stride >= 8 (12-36 px shapes)
    finest, count = (4, 4) if task == "seg" else (8, 3)
    indices = [i for i, s in enumerate(levels.strides) if s >= finest][:count]
    if not indices:
        raise ValueError(f"{model_name} has no feature map of stride >= {finest} (strides {levels.strides})")
    channels = [levels.channels[i] for i in indices]
    strides = [levels.strides[i] for i in indices]
    cfg.model.backbone = dict(type="VisionAttnBackbone", out_indices=tuple(indices), **spec)
    cfg.model.neck.in_channels = channels
    cfg.model.neck.num_outs = len(channels)
    if task == "seg":
        head = cfg.model.decode_head
        head.in_index = list(range(len(channels)))
        head.in_channels = [cfg.model.neck.out_channels] * len(channels)
        head.feature_strides = strides
    else:
        cfg.model.neck.start_level = 0
        cfg.model.bbox_head.anchor_generator.strides = strides


def shorten(cfg, iters: int) -> None:
    """The same recipe over ``iters`` iterations: warm-up, cosine decay to the end, one validation at the end."""
    cfg.train_cfg.max_iters = iters
    cfg.train_cfg.val_interval = iters
    for sched in cfg.param_scheduler:
        if sched.get("end") == cfg.max_iters:
            sched["end"] = iters
    cfg.max_iters = iters
    cfg.default_hooks.checkpoint.interval = min(cfg.default_hooks.checkpoint.interval, iters)


def build_run(task: str, args: argparse.Namespace) -> tuple[str, str]:
    """(config path to train, work dir) for ``task``; writes a derived config when the run is not the stock one."""
    config, _ = RUNS[task]
    model_kwargs = dict(args.model_kwargs_parsed)
    if args.small:
        from visionattn.models import get_family

        model_kwargs = {**get_family(args.model).test_kwargs, **model_kwargs}
    stock = args.model == DEFAULT_MODEL and not model_kwargs and not args.quick
    name = os.path.splitext(os.path.basename(config))[0]
    if stock:
        return config, os.path.join(args.work_root, name)
    from mmengine.config import Config

    cfg = Config.fromfile(os.path.join(ROOT, config), import_custom_modules=False)
    if args.model != DEFAULT_MODEL or model_kwargs:
        if args.model == DEFAULT_MODEL:  # keep the config's own kwargs (n_win for 64 px) under the user's
            model_kwargs = {**cfg.model.backbone.model_kwargs, **model_kwargs}
        swap_backbone(cfg, task, args.model, model_kwargs)
        name = f"{task}_{args.model}{'_small' if args.small else ''}_shapes"
    if args.quick:
        shorten(cfg, QUICK_ITERS)
        name += "_quick"
    work_dir = os.path.join(args.work_root, name)
    os.makedirs(os.path.join(ROOT, work_dir), exist_ok=True)
    path = os.path.join(work_dir, f"{name}.py")
    cfg.dump(os.path.join(ROOT, path))
    return path, work_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from visionattn.cli import add_model_kwargs_argument, parse_model_kwargs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"registered model name (default {DEFAULT_MODEL})")
    add_model_kwargs_argument(p)
    p.add_argument("--small", action="store_true", help="use the family's test_kwargs (a small model)")
    p.add_argument("--only", choices=sorted(RUNS), help="run only this task")
    p.add_argument("--quick", action="store_true", help=f"{QUICK_ITERS} iterations per task, floors {QUICK_FLOORS}")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoints")
    p.add_argument("--work-root", default="work_dirs", help="parent folder of the runs' work dirs")
    args = p.parse_args(argv)
    args.model_kwargs_parsed = parse_model_kwargs(args.model_kwargs)
    import timm

    import visionattn  # noqa: F401  (registers the models with timm)

    if not timm.is_model(args.model):
        p.error(f"--model {args.model!r} is not a registered model; pick one of visionattn.list_models()")
    if args.small:
        from visionattn.models import get_family

        try:
            get_family(args.model)
        except KeyError:
            p.error(f"--small needs a model of a visionattn family (Family.test_kwargs); {args.model!r} is not one")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    floors = QUICK_FLOORS if args.quick else FLOORS
    results = []
    for task, (_, key) in RUNS.items():
        if args.only and task != args.only:
            continue
        config, work_dir = build_run(task, args)
        cmd = [sys.executable, os.path.join(ROOT, "tools", "train.py"), config, "--work-dir", work_dir]
        if args.resume:
            cmd.append("--resume")
        print("+", " ".join(cmd), flush=True)
        start = time.time()
        subprocess.run(cmd, cwd=ROOT, check=True)
        minutes = (time.time() - start) / 60
        results.append((task, config, key, _last_metric(os.path.join(ROOT, work_dir), key), floors[task], minutes))

    print(f"\nmodel {args.model}{' (quick schedule)' if args.quick else ''}")
    print("| task | config | metric | value | floor | minutes |\n|---|---|---|---|---|---|")
    failed = []
    for task, config, key, value, floor, minutes in results:
        shown = "missing" if value is None else f"{value:.3f}"
        print(f"| {task} | {config} | {key} | {shown} | {floor} | {minutes:.1f} |")
        if value is None:
            failed.append(f"{task}: the run finished without its validation metric {key}")
        elif value < floor:
            failed.append(f"{task}: {key} {value:.3f} is below the floor {floor}")
    for line in failed:
        print("FAILED", line, f"(logs under {args.work_root})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
