"""The synthetic shapes dataset: generator, COCO / PNG consistency, mm datasets, and a short training run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from visionattn.dense import shapes
from visionattn.dense.shapes import CLASSES, ShapesSpec, ensure_shapes, generate_shapes, mask_to_rle, read_meta

SMALL = dict(num_train=24, num_val=6)


def _read(path: Path, color: bool = False) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img[..., ::-1] if color else img


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=[False, True], ids=["easy", "hard"])
def dataset(request, tmp_path_factory) -> tuple[Path, ShapesSpec]:
    spec = ShapesSpec.preset(hard=request.param, **SMALL)
    root = tmp_path_factory.mktemp("shapes") / ("hard" if request.param else "easy")
    return generate_shapes(root, spec), spec


def test_layout_and_meta(dataset):
    root, spec = dataset
    assert read_meta(root)["spec"]["img_size"] == spec.img_size == (256 if spec.hard else 64)
    for split in ("train", "val"):
        n = spec.num_images(split)
        for sub in ("images", "annotations/semantic", "annotations/instances"):
            assert sorted(p.name for p in (root / sub / split).iterdir()) == [f"{i:06d}.png" for i in range(n)]
        coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        assert [im["file_name"] for im in coco["images"]] == [f"{i:06d}.png" for i in range(n)]
        assert [c["name"] for c in coco["categories"]] == list(CLASSES)
        assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
        img = _read(root / "images" / split / "000000.png", color=True)
        assert img.shape == (spec.img_size, spec.img_size, 3) and img.dtype == np.uint8


def test_generation_is_deterministic(tmp_path):
    spec = ShapesSpec(num_train=5, num_val=2, seed=3)
    a = _files(generate_shapes(tmp_path / "a", spec))
    b = _files(generate_shapes(tmp_path / "b", spec))
    assert a == b
    c = _files(generate_shapes(tmp_path / "c", ShapesSpec(num_train=5, num_val=2, seed=4)))
    assert a.keys() == c.keys() and a["images/train/000000.png"] != c["images/train/000000.png"]
    # Each image has its own random stream: a longer split starts with the same images.
    d = _files(generate_shapes(tmp_path / "d", ShapesSpec(num_train=7, num_val=2, seed=3)))
    assert d["images/train/000004.png"] == a["images/train/000004.png"]
    assert d["images/val/000001.png"] == a["images/val/000001.png"]
    # The train and val splits never repeat an image.
    assert a["images/train/000000.png"] != a["images/val/000000.png"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_coco_boxes_areas_and_rle_match_instance_pngs(dataset, split):
    from pycocotools import mask as mask_utils

    root, spec = dataset
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    for image in coco["images"]:
        inst = _read(root / "annotations" / "instances" / split / image["file_name"])
        anns = by_image.get(image["id"], [])
        assert set(np.unique(inst).tolist()) == set(range(len(anns) + 1))
        for k, ann in enumerate(anns, start=1):
            mask = inst == k
            ys, xs = np.nonzero(mask)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == mask.sum() > 0
            assert ann["iscrowd"] == 0
            rle = mask_utils.frPyObjects(ann["segmentation"], image["height"], image["width"])
            np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
            assert mask_utils.area(rle) == ann["area"]


@pytest.mark.parametrize("split", ["train", "val"])
def test_semantic_map_matches_instances(dataset, split):
    root, spec = dataset
    coco = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
    for image in coco["images"]:
        name = image["file_name"]
        inst = _read(root / "annotations" / "instances" / split / name)
        sem = _read(root / "annotations" / "semantic" / split / name)
        expected = np.zeros_like(sem)
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        for k, ann in enumerate(anns, start=1):
            expected[inst == k] = ann["category_id"]
        np.testing.assert_array_equal(sem, expected)


def test_objects_per_image_within_spec(dataset):
    root, spec = dataset
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    counts = np.bincount([a["image_id"] for a in coco["annotations"]], minlength=spec.num_train)
    assert counts.max() <= spec.max_objects
    assert counts.min() >= 1


@pytest.mark.parametrize("spread", [30.0, 90.0])
def test_hue_spread_ties_colour_to_class(tmp_path, spread):
    spec = ShapesSpec(
        img_size=64, num_train=12, num_val=1, max_objects=3, min_size=12.0, max_size=24.0, hue_spread=spread
    )
    root = generate_shapes(tmp_path / "s", spec)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    checked = 0
    for image in coco["images"]:
        name = image["file_name"]
        bgr = cv2.imread(str(root / "images" / "train" / name))
        inst = _read(root / "annotations" / "instances" / "train" / name)
        hue = cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV_FULL)[..., 0].astype(float) * 360 / 256
        anns = [a for a in coco["annotations"] if a["image_id"] == image["id"]]
        for k, ann in enumerate(anns, start=1):
            pixels = hue[inst == k]
            if pixels.size < 20:
                continue
            # The class's own hue: circle 0, square 120, triangle 240 degrees; median over the shape's pixels
            # (edges blend with the background), circular distance, 8-bit hue quantisation tolerance.
            target = 120.0 * (ann["category_id"] - 1)
            angles = np.deg2rad(pixels)
            mean = np.rad2deg(np.arctan2(np.median(np.sin(angles)), np.median(np.cos(angles))))
            assert abs((mean - target + 180.0) % 360.0 - 180.0) <= spread + 4.0
            checked += 1
    assert checked >= 12


def test_class_balance(tmp_path):
    spec = ShapesSpec(num_train=300, num_val=1)
    root = generate_shapes(tmp_path / "s", spec)
    coco = json.loads((root / "annotations" / "instances_train.json").read_text())
    cats = np.array([a["category_id"] for a in coco["annotations"]])
    areas = np.array([a["area"] for a in coco["annotations"]], float)
    n = len(cats)
    assert n > 300
    for c in (1, 2, 3):
        # Classes are drawn uniformly: 4 binomial standard deviations around n / 3.
        assert abs((cats == c).sum() - n / 3) < 4 * math.sqrt(n * 2 / 9)
        # Shapes of equal size have equal area, so each class covers about a third of the foreground.
        assert 0.27 < areas[cats == c].sum() / areas.sum() < 0.40
    # The mean area matches the size distribution (easy set, no occlusion): E[size^2] for size ~ U(a, b).
    a, b = spec.min_size, spec.max_size
    assert abs(areas.mean() / ((b**3 - a**3) / (3 * (b - a))) - 1) < 0.05


def test_shape_masks_hand_checked():
    hw = (64, 64)
    # An axis-aligned square of side 20 centred on a pixel corner covers exactly 20 x 20 pixels.
    square = shapes._shape_mask(1, 32.0, 32.0, 20.0, 0.0, hw)
    expected = np.zeros(hw, bool)
    expected[22:42, 22:42] = True
    np.testing.assert_array_equal(square, expected)
    # A disc of area 400 (radius 11.28): 400 pixels up to the jagged boundary, symmetric about its centre.
    disc = shapes._shape_mask(0, 32.0, 32.0, 20.0, 1.0, hw)
    assert abs(disc.sum() - 400) < 12
    np.testing.assert_array_equal(disc, disc[::-1])
    np.testing.assert_array_equal(disc, disc.T)
    # A triangle of area 400 pointing up (apex at theta = -90 deg): rows widen downward, one vertex at the top.
    tri = shapes._shape_mask(2, 32.0, 32.0, 20.0, -math.pi / 2, hw)
    assert abs(tri.sum() - 400) < 12
    widths = tri.sum(axis=1)[tri.any(axis=1)]
    assert np.all(np.diff(widths) >= 0) and widths[0] <= 2 and widths[-1] > 25
    side = 20 * math.sqrt(4 / math.sqrt(3))
    ys = np.flatnonzero(tri.any(axis=1))
    assert abs((ys[-1] - ys[0] + 1) - side * math.sqrt(3) / 2) <= 1.5


def test_rle_round_trip():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for mask in (rng.random((7, 5)) > 0.5, np.ones((3, 4), bool), np.zeros((3, 4), bool)):
        rle = mask_to_rle(mask)
        assert sum(rle["counts"]) == mask.size
        decoded = mask_utils.decode(mask_utils.frPyObjects(rle, *mask.shape))
        np.testing.assert_array_equal(decoded.astype(bool), mask)


def test_spec_validation():
    with pytest.raises(ValueError, match="img_size"):
        ShapesSpec(img_size=16)
    with pytest.raises(ValueError, match="min_objects"):
        ShapesSpec(min_objects=5, max_objects=2)
    with pytest.raises(ValueError, match="size range"):
        ShapesSpec(min_size=10, max_size=80)
    with pytest.raises(TypeError, match="unknown settings"):
        ShapesSpec.preset(size=3)
    with pytest.raises(ValueError, match="split"):
        ShapesSpec().num_images("test")


def test_ensure_reuses_and_refuses_mismatch(tmp_path):
    spec = ShapesSpec(num_train=3, num_val=1)
    root = ensure_shapes(tmp_path / "s", spec)
    stamp = (root / "images/train/000000.png").stat().st_mtime_ns
    ensure_shapes(root, spec)
    assert (root / "images/train/000000.png").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="generated with"):
        ensure_shapes(root, ShapesSpec(num_train=4, num_val=1))
    with pytest.raises(FileExistsError):
        generate_shapes(root, spec)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    with pytest.raises(ValueError, match="no meta.json"):
        ensure_shapes(tmp_path / "other", spec)


def test_cli(tmp_path):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "tools" / "make_shapes.py"
    module_spec = importlib.util.spec_from_file_location("make_shapes", path)
    cli = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(cli)
    root = tmp_path / "cli"
    assert cli.main(["--root", str(root), "--num-train", "4", "--num-val", "2", "--max-size", "30", "--seed", "7"]) == 0
    written = read_meta(root)["spec"]
    assert (written["num_train"], written["num_val"], written["max_size"], written["seed"]) == (4, 2, 30.0, 7)
    assert written["min_size"] == ShapesSpec().min_size  # not given: the preset's value
    assert len(list((root / "images/train").iterdir())) == 4
    assert cli.main(["--root", str(root)]) == 1  # refuses to overwrite without --overwrite


# ----------------------------------------------------------------------------------------------- mm datasets


def _mm_or_skip(package: str):
    # The mm extra is optional: without it these datasets do not exist (CI installs it).
    return pytest.importorskip(package, reason=f"{package} is not installed (pip install visionattn[mm])")


def test_mmdet_dataset_through_pipeline(dataset):
    _mm_or_skip("mmdet")
    from mmdet.registry import DATASETS
    from mmengine.registry import DefaultScope

    root, spec = dataset
    shapes.register_mm_datasets(det=True, seg=False)
    pipeline = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", with_bbox=True, with_mask=True),
        dict(type="PackDetInputs"),
    ]
    with DefaultScope.overwrite_default_scope("mmdet"):
        ds = DATASETS.build(
            dict(
                type="ShapesCocoDataset",
                data_root=str(root),
                ann_file="annotations/instances_val.json",
                data_prefix=dict(img="images/val/"),
                pipeline=pipeline,
            )
        )
        assert ds.metainfo["classes"] == CLASSES
        assert len(ds) == spec.num_val
        coco = json.loads((root / "annotations" / "instances_val.json").read_text())
        for index in (0, len(ds) - 1):
            item = ds[index]
            sample = item["data_samples"]
            name = Path(sample.img_path).name
            image_id = next(im["id"] for im in coco["images"] if im["file_name"] == name)
            anns = [a for a in coco["annotations"] if a["image_id"] == image_id]
            # The image tensor is the PNG in BGR order, channels first.
            np.testing.assert_array_equal(item["inputs"].numpy().transpose(1, 2, 0), cv2.imread(str(sample.img_path)))
            xyxy = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)]
            np.testing.assert_allclose(sample.gt_instances.bboxes.tensor.numpy(), xyxy)
            np.testing.assert_array_equal(sample.gt_instances.labels.numpy(), [a["category_id"] - 1 for a in anns])
            inst = _read(root / "annotations" / "instances" / "val" / name)
            masks = sample.gt_instances.masks.to_ndarray().astype(bool)
            np.testing.assert_array_equal(masks, np.stack([inst == k for k in range(1, len(anns) + 1)]))


def test_mmseg_dataset_through_pipeline(dataset):
    _mm_or_skip("mmseg")
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    root, spec = dataset
    shapes.register_mm_datasets(det=False, seg=True)
    pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"), dict(type="PackSegInputs")]
    with DefaultScope.overwrite_default_scope("mmseg"):
        ds = DATASETS.build(
            dict(
                type="ShapesSegDataset",
                data_root=str(root),
                data_prefix=dict(img_path="images/train", seg_map_path="annotations/semantic/train"),
                pipeline=pipeline,
            )
        )
        assert ds.metainfo["classes"] == ("background", "circle", "square", "triangle")
        assert len(ds) == spec.num_train
        for index in (0, 5):
            item = ds[index]
            sample = item["data_samples"]
            name = Path(sample.img_path).name
            expected = _read(root / "annotations" / "semantic" / "train" / name)
            np.testing.assert_array_equal(sample.gt_sem_seg.data.numpy()[0], expected)
            np.testing.assert_array_equal(item["inputs"].numpy().transpose(1, 2, 0), cv2.imread(str(sample.img_path)))


def test_dataset_generates_missing_data(tmp_path):
    _mm_or_skip("mmseg")
    from mmengine.registry import DefaultScope
    from mmseg.registry import DATASETS

    shapes.register_mm_datasets(det=False, seg=True)
    cfg = dict(
        type="ShapesSegDataset",
        data_root=str(tmp_path / "gen"),
        generate=dict(num_train=3, num_val=2, seed=5),
        data_prefix=dict(img_path="images/val", seg_map_path="annotations/semantic/val"),
        pipeline=[],
    )
    with DefaultScope.overwrite_default_scope("mmseg"):
        ds = DATASETS.build(cfg)
        assert len(ds) == 2
        assert read_meta(tmp_path / "gen")["spec"]["seed"] == 5
        with pytest.raises(ValueError, match="generated with"):
            DATASETS.build({**cfg, "generate": dict(num_train=3, num_val=2, seed=6)})
        with pytest.raises(ValueError, match="needs data_root"):
            DATASETS.build({k: v for k, v in cfg.items() if k != "data_root"})


# ----------------------------------------------------------------------------------------------- training


def _tiny_run_cfg(work_dir: Path, data_root: Path, max_iters: int):
    from mmengine.config import Config

    cfg = Config.fromfile(str(Path(__file__).resolve().parents[1] / "configs/seg/fpn_biformer_tiny_shapes.py"))
    small = dict(cfg.shapes, num_train=16, num_val=4)
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = str(data_root)
        loader.dataset.generate = small
    cfg.train_dataloader.batch_size = 4
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=max_iters, val_interval=max_iters)
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False)]
    cfg.default_hooks.logger.interval = 1
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=max_iters)
    cfg.default_hooks.pop("visualization")
    cfg.work_dir = str(work_dir)
    return cfg


@pytest.mark.slow
def test_seg_config_trains_and_resumes(tmp_path):
    _mm_or_skip("mmseg")
    # this module imported shapes before mmseg: register as a config's custom_imports would on a fresh import
    shapes.register_mm_datasets(det=False, seg=True)
    from visionattn.dense.runner import build_runner

    data_root = tmp_path / "shapes"
    runner = build_runner(_tiny_run_cfg(tmp_path / "work", data_root, max_iters=12))
    runner.train()
    losses = runner.message_hub.get_scalar("train/loss").data[0]
    assert len(losses) == 12 and np.all(np.isfinite(losses))
    # Random init: cross-entropy starts near log(4) = 1.39 and falls as the background class is learned.
    assert losses[:3].mean() > 1.0
    assert losses[-3:].mean() < 0.75 * losses[:3].mean()
    assert (tmp_path / "work" / "iter_12.pth").is_file()
    # --resume: a longer schedule continues from iteration 12 instead of starting again.
    from mmengine.hooks import Hook

    seen: list[int] = []

    class RecordIters(Hook):
        def before_train_iter(self, runner, batch_idx, data_batch=None):
            seen.append(runner.iter)

    cfg = _tiny_run_cfg(tmp_path / "work", data_root, max_iters=14)
    cfg.resume = True
    resumed = build_runner(cfg)
    resumed.register_hook(RecordIters())
    resumed.train()
    assert seen == [12, 13]
