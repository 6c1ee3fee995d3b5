"""tools/demo.py: the shapes demo on any registered model, the --quick schedule, and the floors that fail it.

References: the shapes demo configs themselves (a derived config differs from them only where the model or
the schedule asks), the widths and strides of the backbone the derived config builds, and the exit status
for metrics on either side of a floor.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

import visionattn
from visionattn.models import families

pytest.importorskip("mmengine")

from mmengine.config import Config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = families()
FAMILY_IDS = [f.name for f in FAMILIES]


def _demo():
    spec = importlib.util.spec_from_file_location("demo_tool", ROOT / "tools/demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo = _demo()


pytestmark = pytest.mark.usefixtures("one_thread")


def _derived(tmp_path: Path, task: str, *argv: str) -> tuple[Config, Config, str]:
    args = demo.parse_args([*argv, "--work-root", str(tmp_path)])
    path, work_dir = demo.build_run(task, args)
    stock = Config.fromfile(str(ROOT / demo.RUNS[task][0]), import_custom_modules=False)
    return Config.fromfile(str(ROOT / path), import_custom_modules=False), stock, work_dir


def test_stock_run_trains_the_demo_configs_as_they_are(tmp_path):
    for task, (config, _) in demo.RUNS.items():
        args = demo.parse_args(["--work-root", str(tmp_path)])
        path, work_dir = demo.build_run(task, args)
        assert path == config and work_dir == os.path.join(str(tmp_path), Path(config).stem)
    assert not list(tmp_path.iterdir())  # nothing derived


def test_quick_changes_only_the_schedule(tmp_path):
    for task in demo.RUNS:
        cfg, stock, work_dir = _derived(tmp_path, task, "--quick")
        n = demo.QUICK_ITERS
        assert work_dir.endswith("_quick") and cfg.train_cfg.max_iters == n == cfg.train_cfg.val_interval
        assert [s.get("end") for s in cfg.param_scheduler] == [stock.param_scheduler[0].end, n]
        assert cfg.model == stock.model and cfg.optim_wrapper == stock.optim_wrapper
        assert cfg.train_dataloader == stock.train_dataloader and cfg.val_evaluator == stock.val_evaluator


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("task", ["seg", "det"])
def test_model_swap_wires_levels_and_widths(tmp_path, family, task):
    from visionattn.dense import VisionAttnBackbone

    cfg, stock, _ = _derived(tmp_path, task, "--model", family.smallest, "--small")
    b = cfg.model.backbone
    expect = dict(family.test_kwargs)
    if family.smallest == demo.DEFAULT_MODEL:  # the demo config's own kwargs stay under the family's test kwargs
        expect = {**stock.model.backbone.model_kwargs, **expect}
    assert b.model_name == family.smallest and b.model_kwargs == expect
    with torch.device("meta"):
        built = VisionAttnBackbone(**{k: v for k, v in b.items() if k != "type"})
    assert list(cfg.model.neck.in_channels) == built.channels
    if family.dense.neck:  # the family's own neck on every level: finer levels come from the neck
        assert cfg.model.neck.type == family.dense.neck["type"] and built.strides[0] > 8
        if task == "seg":
            assert cfg.model.decode_head.feature_strides == [4, 8, 16, 32]
        else:
            assert cfg.model.bbox_head.anchor_generator.strides[:3] == [4, 8, 16]
    elif task == "seg":
        assert cfg.model.decode_head.feature_strides == built.strides == [4, 8, 16, 32]
    else:
        assert cfg.model.bbox_head.anchor_generator.strides == built.strides == [8, 16, 32]
    # everything but the model is the stock demo's
    for key in ("train_dataloader", "val_dataloader", "optim_wrapper", "param_scheduler", "train_cfg"):
        assert cfg[key] == stock[key], key


def test_default_model_kwargs_override_keeps_the_configs_own(tmp_path):
    cfg, stock, work_dir = _derived(tmp_path, "seg", "--model-kwargs", "drop_path_rate=0.1")
    assert cfg.model.backbone.model_kwargs == {**stock.model.backbone.model_kwargs, "drop_path_rate": 0.1}
    assert cfg.model.neck.in_channels == stock.model.neck.in_channels


def test_bad_model_and_small_without_family_are_refused(capsys):
    with pytest.raises(SystemExit):
        demo.parse_args(["--model", "no_such_model"])
    assert "visionattn.list_models()" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        demo.parse_args(["--model", "resnet18", "--small"])
    assert "--small needs a model of a visionattn family" in capsys.readouterr().err


@pytest.mark.parametrize(
    "quick, values, status",
    [
        (False, {"mIoU": 79.7, "coco/bbox_mAP": 0.764}, 0),
        (False, {"mIoU": 49.9, "coco/bbox_mAP": 0.764}, 1),  # seg below 50
        (False, {"mIoU": 79.7, "coco/bbox_mAP": 0.29}, 1),  # det below 0.3
        (False, {"mIoU": 79.7}, 1),  # det metric missing
        (True, {"mIoU": demo.QUICK_FLOORS["seg"], "coco/bbox_mAP": demo.QUICK_FLOORS["det"]}, 0),
        (True, {"mIoU": 22.7, "coco/bbox_mAP": 0.5}, 1),  # seg at chance
    ],
)
def test_exit_status_follows_the_floors(monkeypatch, tmp_path, capsys, quick, values, status):
    calls = []
    monkeypatch.setattr(demo.subprocess, "run", lambda cmd, **kw: calls.append(cmd))
    monkeypatch.setattr(demo, "_last_metric", lambda work_dir, key: values.get(key))
    argv = ["--work-root", str(tmp_path)] + (["--quick"] if quick else [])
    assert demo.main(argv) == status
    assert len(calls) == 2 and all(c[1].endswith("tools/train.py") for c in calls)
    out = capsys.readouterr().out
    assert ("FAILED" in out) is bool(status)
    assert demo.FLOORS == {"seg": 50.0, "det": 0.3}


ISOTROPIC = [f for f in FAMILIES if f.layout == "isotropic"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["seg", "det"])
@pytest.mark.parametrize("family", ISOTROPIC, ids=[f.name for f in ISOTROPIC])
def test_demo_config_trains_and_validates_an_isotropic_model(tmp_path, family, task):
    """The derived config on the toy isotropic family: a few iterations on a small shapes set, a metric."""
    pytest.importorskip("mmdet" if task == "det" else "mmseg")
    from visionattn.dense.runner import build_runner

    cfg, _, _ = _derived(tmp_path, task, "--model", family.smallest, "--small", "--quick")
    for module in cfg.custom_imports.imports:  # as tools/train.py would import them
        importlib.import_module(module)
    from visionattn.dense.shapes import register_mm_datasets

    register_mm_datasets(det=task == "det", seg=task == "seg")  # also when an earlier test imported the module
    small = dict(cfg.shapes, num_train=16, num_val=4)
    root = str(tmp_path / "shapes")
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = root
        loader.dataset.generate = small
        loader.batch_size = 4
    if task == "det":
        cfg.val_evaluator.ann_file = root + "/annotations/instances_val.json"
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=4, val_interval=4)
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False)]
    cfg.default_hooks.pop("visualization")
    # mmengine keeps one visualizer per name per process: a fresh name writes this run's scalars to its work dir
    cfg.visualizer.name = f"visualizer_{tmp_path.name}"
    cfg.work_dir = str(tmp_path / "work")
    runner = build_runner(cfg)
    runner.train()
    metric = demo._last_metric(str(tmp_path / "work"), demo.RUNS[task][1])
    assert metric is not None and metric >= 0
    assert runner.model.backbone.pyramid is not None
    assert visionattn.get_family(runner.model.backbone.model_name) is family
