"""Synthetic "shapes" dataset: the embedded demo for detection, instance and semantic segmentation.

Each image holds a few filled circles, squares and triangles of random size and rotation. The default (easy)
set is 64 px on a plain background, each class's hue drawn from a band around its own that overlaps its
neighbours' (colour narrows the class to two, the outline decides): sized so a small randomly initialised backbone
gets far above chance in a few CPU minutes. The hard set (``ShapesSpec.preset(hard=True)``) is 256 px with
textured background and shapes, distractor strokes, occlusion and colours independent of the class: only the
outline tells the class. Generation is deterministic in ``seed`` and takes seconds. Layout under ``root``::

    meta.json                                 generation settings (checked before reuse)
    images/{train,val}/000000.png             RGB images
    annotations/semantic/{train,val}/*.png    uint8 class map: 0 background, 1 circle, 2 square, 3 triangle
    annotations/instances/{train,val}/*.png   uint8 instance ids: 0 background, i = i-th annotation of the image
    annotations/instances_{train,val}.json    COCO: bbox [x, y, w, h], area = mask pixels, uncompressed RLE

Category ids in the COCO file equal the semantic label values. The mmdet (``ShapesCocoDataset``) and
mmseg (``ShapesSegDataset``) datasets are registered when this module is imported after mmdet / mmseg
(list ``mmdet.datasets`` / ``mmseg.datasets`` before this module in a config's ``custom_imports``), or by
calling :func:`register_mm_datasets`; importing this module alone needs neither.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

CLASSES: tuple[str, ...] = ("circle", "square", "triangle")
# Semantic-segmentation classes: label value i is SEG_CLASSES[i].
SEG_CLASSES: tuple[str, ...] = ("background",) + CLASSES
PALETTE: list[tuple[int, int, int]] = [(220, 20, 60), (0, 130, 200), (60, 180, 75)]
SEG_PALETTE: list[tuple[int, int, int]] = [(0, 0, 0)] + PALETTE
SPLITS: tuple[str, ...] = ("train", "val")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ShapesSpec:
    """What to generate; the defaults are the easy set the CPU demo configs train on (configs/*/*_shapes.py)."""

    img_size: int = 64
    num_train: int = 1000
    num_val: int = 100
    min_objects: int = 1
    max_objects: int = 3
    # Size of a shape = side of the square of equal area, so every class covers the same pixels on average.
    min_size: float = 12.0
    max_size: float = 24.0
    # Colour cue: None draws shape colours independently of the class; a number draws each class's hue
    # within that many degrees of its own (circle 0, square 120, triangle 240); above 60 the bands overlap,
    # so colour narrows the class down and the outline decides.
    hue_spread: float | None = 90.0
    # Hard set: textured background and shapes, noise, distractor strokes, shapes may occlude each other.
    hard: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        ints = {"img_size": 32, "num_train": 1, "num_val": 1, "min_objects": 0, "max_objects": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"ShapesSpec.{name}={value!r} is invalid; pass an int >= {low}")
        if self.min_objects > self.max_objects or self.max_objects > 255:
            raise ValueError(
                f"ShapesSpec objects range [{self.min_objects}, {self.max_objects}] is invalid; "
                "pass 0 <= min_objects <= max_objects <= 255"
            )
        if not 4 <= self.min_size <= self.max_size <= self.img_size / 2:
            raise ValueError(
                f"ShapesSpec size range [{self.min_size}, {self.max_size}] is invalid for img_size={self.img_size}; "
                f"pass 4 <= min_size <= max_size <= img_size / 2 = {self.img_size / 2}"
            )
        if self.hue_spread is not None and not 0 < self.hue_spread <= 180:
            raise ValueError(f"ShapesSpec.hue_spread={self.hue_spread!r} is invalid; pass None or a number in (0, 180]")

    @classmethod
    def preset(cls, hard: bool = False, **overrides: Any) -> ShapesSpec:
        """The easy (64 px, the defaults) or hard (256 px, textured, occluding, no colour cue) preset, with
        ``overrides`` applied."""
        base: dict[str, Any] = {}
        if hard:
            base = dict(
                img_size=256, min_objects=2, max_objects=8, min_size=16.0, max_size=64.0, hue_spread=None, hard=True
            )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"ShapesSpec.preset got unknown settings {sorted(unknown)}; allowed: {_field_names()}")
        base.update(overrides)
        return cls(**base)

    def num_images(self, split: str) -> int:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {SPLITS}")
        return self.num_train if split == "train" else self.num_val


def _field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(ShapesSpec)]


@dataclass
class ShapesSample:
    """One rendered image with its instances (in drawing order)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    instances: np.ndarray  # (H, W) uint8: 0 background, i -> labels[i - 1]
    labels: list[int]  # class index into CLASSES, per instance

    @property
    def semantic(self) -> np.ndarray:
        """(H, W) uint8 class map: 0 background, 1 + class index elsewhere."""
        lut = np.zeros(256, np.uint8)
        lut[1 : len(self.labels) + 1] = np.asarray(self.labels, np.uint8) + 1
        return lut[self.instances]


# ----------------------------------------------------------------------------------------------- rendering


def _circumradius(cls_idx: int, size: float) -> float:
    """Distance from centre to the farthest outline point of a shape of area ``size ** 2``."""
    if cls_idx == 0:
        return size / math.sqrt(math.pi)
    if cls_idx == 1:
        return size / math.sqrt(2.0)  # half the diagonal of a square of side `size`
    side = size * math.sqrt(4.0 / math.sqrt(3.0))  # equilateral triangle of area size**2
    return side / math.sqrt(3.0)


def _shape_vertices(cls_idx: int, cx: float, cy: float, size: float, theta: float) -> np.ndarray:
    """(V, 2) x, y vertices of the square (1) or triangle (2) of area ``size ** 2``, by increasing angle.

    At ``theta = 0`` the square's sides are axis-aligned and the triangle's apex points along +x.
    """
    count = {1: 4, 2: 3}[cls_idx]
    angles = theta + (np.pi / 4 if cls_idx == 1 else 0.0) + np.arange(count) * 2 * np.pi / count
    radius = _circumradius(cls_idx, size)
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _shape_mask(cls_idx: int, cx: float, cy: float, size: float, theta: float, hw: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: pixels whose centre lies inside the shape."""
    h, w = hw
    ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float64)[None, :] + 0.5
    if cls_idx == 0:
        return (xs - cx) ** 2 + (ys - cy) ** 2 <= _circumradius(0, size) ** 2
    verts = _shape_vertices(cls_idx, cx, cy, size, theta)
    inside = np.ones((h, w), bool)
    for (x0, y0), (x1, y1) in zip(verts, np.roll(verts, -1, axis=0)):
        # Vertices run with increasing angle, so the interior is on the same side of every edge.
        inside &= (x1 - x0) * (ys - y0) - (y1 - y0) * (xs - x0) >= 0
    return inside


def _extent(cls_idx: int, size: float) -> float:
    """Circumradius plus a pixel of slack: no pixel of the shape lies farther than this from its centre."""
    return _circumradius(cls_idx, size) + 1.0


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """(size, size) smooth random field in [0, 1]: a coarse grid bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1))
    t = np.linspace(0, cells, size, endpoint=False)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def _texture(rng: np.random.Generator, size: int, color: np.ndarray) -> np.ndarray:
    """(size, size, 3) float: ``color`` modulated by stripes and blotches."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    field = 0.5 * stripes + (_smooth_noise(rng, size, int(rng.integers(2, 6))) - 0.5)
    return color[None, None, :] + rng.uniform(20, 50) * field[..., None]


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    """One colour: hue in degrees, saturation and value in [0, 1] -> (3,) float RGB in [0, 255]."""
    k = (np.array([5.0, 3.0, 1.0]) + h / 60.0) % 6
    return 255.0 * v * (1 - s * np.clip(np.minimum(k, 4 - k), 0, 1))


def _shape_color(
    rng: np.random.Generator, cls_idx: int, hue_spread: float | None, background: np.ndarray, min_diff: float
) -> np.ndarray:
    """(3,) float RGB differing from ``background`` by ``min_diff`` on average per channel.

    ``hue_spread=None``: any colour. Otherwise the hue lies within ``hue_spread`` degrees of the class's own
    hue (0, 120, 240): a colour cue that, for spreads above 60, several classes share.
    """
    color = 255.0 - background  # fallback if sampling fails; practically unreachable
    for _ in range(100):
        if hue_spread is None:
            candidate = rng.integers(0, 256, 3).astype(np.float64)
        else:
            hue = 120.0 * cls_idx + rng.uniform(-hue_spread, hue_spread)
            candidate = _hsv_to_rgb(hue % 360.0, rng.uniform(0.6, 1.0), rng.uniform(0.6, 1.0))
        if np.abs(candidate - background).mean() >= min_diff:
            color = candidate
            break
    return color


def _draw_strokes(rng: np.random.Generator, image: np.ndarray, count: int) -> None:
    """Draw ``count`` thin straight lines of random colour in place: clutter that belongs to no class."""
    h, w, _ = image.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    for _ in range(count):
        x0, y0, x1, y1 = rng.uniform(0, w, 4)
        dx, dy = x1 - x0, y1 - y0
        length = math.hypot(dx, dy) + 1e-6
        t = np.clip(((xs - x0) * dx + (ys - y0) * dy) / length**2, 0, 1)
        dist = np.hypot(xs - x0 - t * dx, ys - y0 - t * dy)
        image[dist <= rng.uniform(0.6, 1.5)] = rng.integers(0, 256, 3)


def render_sample(spec: ShapesSpec, rng: np.random.Generator) -> ShapesSample:
    """Render one image of ``spec`` drawing all randomness from ``rng``."""
    size = spec.img_size
    hw = (size, size)
    background = rng.integers(0, 256, 3).astype(np.float64)
    if spec.hard:
        image = _texture(rng, size, background)
        # Distractor strokes lie behind the shapes, so the label maps stay exact.
        _draw_strokes(rng, image, int(rng.integers(2, 6)))
    else:
        image = np.broadcast_to(background, (size, size, 3)).copy()

    instances = np.zeros(hw, np.uint8)
    labels: list[int] = []
    for _ in range(int(rng.integers(spec.min_objects, spec.max_objects + 1))):
        # Class and size are drawn once and only the position is retried, so crowding never biases
        # the class or size distribution; a shape that finds no room is left out.
        cls_idx = int(rng.integers(len(CLASSES)))
        s = float(rng.uniform(spec.min_size, spec.max_size))
        theta = float(rng.uniform(0, 2 * np.pi))
        r = _extent(cls_idx, s)
        for _attempt in range(50):
            cx, cy = rng.uniform(r, size - r, 2)
            box = (cx - r, cy - r, cx + r, cy + r)
            if not spec.hard and (_shape_mask(cls_idx, cx, cy, s + 6, theta, hw) & (instances > 0)).any():
                continue  # easy set: shapes never touch (a 6 px larger copy must land on background only)
            mask = _shape_mask(cls_idx, cx, cy, s, theta, hw)
            new_instances = np.where(mask, len(labels) + 1, instances).astype(np.uint8)
            if spec.hard:
                # Hard set: shapes may occlude earlier ones, but each keeps at least half of its own pixels.
                before = np.bincount(instances.ravel(), minlength=len(labels) + 1)[1:]
                after = np.bincount(new_instances.ravel(), minlength=len(labels) + 2)[1 : len(labels) + 1]
                if np.any(after < 0.5 * before):
                    continue
            break
        else:
            continue
        color = _shape_color(rng, cls_idx, spec.hue_spread, background, 60.0)
        if spec.hard:
            x0, y0 = int(box[0]), int(box[1])
            patch = _texture(rng, int(math.ceil(2 * r)) + 2, color)
            ys, xs = np.nonzero(mask)
            image[ys, xs] = patch[ys - y0, xs - x0]
        else:
            image[mask] = color
        instances = new_instances
        labels.append(cls_idx)

    if spec.hard:
        image += rng.normal(0.0, 10.0, image.shape)
    else:
        image += rng.normal(0.0, 4.0, image.shape)
    return ShapesSample(np.clip(np.rint(image), 0, 255).astype(np.uint8), instances, labels)


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    # One independent stream per image: any image can be re-rendered alone and the splits never share one.
    return np.random.default_rng(np.random.SeedSequence([seed, SPLITS.index(split), index]))


def render_split(spec: ShapesSpec, split: str, index: int) -> ShapesSample:
    """Render image ``index`` of ``split`` exactly as :func:`generate_shapes` writes it."""
    if not 0 <= index < spec.num_images(split):
        raise ValueError(f"index={index} is outside split {split!r} of {spec.num_images(split)} images")
    return render_sample(spec, _sample_rng(spec.seed, split, index))


# ----------------------------------------------------------------------------------------------- COCO


def mask_to_rle(mask: np.ndarray) -> dict:
    """Uncompressed COCO RLE of a (H, W) bool mask: run lengths in column-major order, starting with zeros."""
    flat = np.asarray(mask, bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0] + counts
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _coco_annotations(sample: ShapesSample, image_id: int, first_ann_id: int) -> list[dict]:
    anns = []
    for i, cls_idx in enumerate(sample.labels):
        mask = sample.instances == i + 1
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        x0, y0 = int(cols[0]), int(rows[0])
        anns.append(
            {
                "id": first_ann_id + i,
                "image_id": image_id,
                "category_id": cls_idx + 1,
                "bbox": [x0, y0, int(cols[-1]) - x0 + 1, int(rows[-1]) - y0 + 1],
                "area": int(mask.sum()),
                "iscrowd": 0,
                "segmentation": mask_to_rle(mask),
            }
        )
    return anns


# ----------------------------------------------------------------------------------------------- writing


def _write_png(path: Path, array: np.ndarray) -> None:
    import cv2

    if array.ndim == 3:
        array = array[..., ::-1]  # OpenCV writes BGR
    if not cv2.imwrite(str(path), np.ascontiguousarray(array)):
        raise OSError(f"could not write {path}")


def _meta(spec: ShapesSpec) -> dict:
    return {"format_version": FORMAT_VERSION, "classes": list(CLASSES), "spec": dataclasses.asdict(spec)}


def generate_shapes(root: str | os.PathLike, spec: ShapesSpec | None = None, *, overwrite: bool = False) -> Path:
    """Write the dataset of ``spec`` (default: the easy preset) under ``root``; returns ``root``.

    The files are written to a temporary sibling folder and moved into place at the end, so an interrupted
    run never leaves a half-written dataset behind. ``overwrite=False`` refuses an existing ``root``.
    """
    spec = spec or ShapesSpec()
    root = Path(root)
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(CLASSES)]
        for split in SPLITS:
            dirs = {
                key: tmp / sub / split
                for key, sub in (("img", "images"), ("sem", "annotations/semantic"), ("ins", "annotations/instances"))
            }
            for d in dirs.values():
                d.mkdir(parents=True)
            images, annotations = [], []
            for index in range(spec.num_images(split)):
                sample = render_split(spec, split, index)
                name = f"{index:06d}.png"
                _write_png(dirs["img"] / name, sample.image)
                _write_png(dirs["sem"] / name, sample.semantic)
                _write_png(dirs["ins"] / name, sample.instances)
                images.append({"id": index, "file_name": name, "height": spec.img_size, "width": spec.img_size})
                annotations += _coco_annotations(sample, index, len(annotations) + 1)
            coco = {"images": images, "annotations": annotations, "categories": categories}
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
        (tmp / "meta.json").write_text(json.dumps(_meta(spec), indent=2))
        if root.exists():
            shutil.rmtree(root)
        tmp.rename(root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def read_meta(root: str | os.PathLike) -> dict | None:
    """The ``meta.json`` of a generated dataset, or None where ``root`` holds none."""
    path = Path(root) / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else None


def ensure_shapes(root: str | os.PathLike, spec: ShapesSpec | None = None) -> Path:
    """Generate the dataset under ``root`` unless it is there already with the same settings.

    Raises ValueError where ``root`` holds a dataset made with other settings (it is never deleted silently).
    In a distributed run only rank 0 writes; the other ranks wait for it.
    """
    spec = spec or ShapesSpec()
    root = Path(root)
    rank, barrier = _dist_rank_and_barrier()
    if rank == 0:
        meta = read_meta(root)
        if meta is None:
            if root.exists() and any(root.iterdir()):
                raise ValueError(f"{root} is not empty but holds no meta.json; remove it or choose another root")
            generate_shapes(root, spec, overwrite=True)
        elif meta != _meta(spec):
            raise ValueError(
                f"{root} holds a shapes dataset generated with {meta.get('spec')}, not the requested "
                f"{dataclasses.asdict(spec)}; delete it, pass another data_root, or regenerate it with "
                "tools/make_shapes.py --overwrite"
            )
    barrier()
    return root


def _dist_rank_and_barrier():
    if "mmengine" in sys.modules:
        from mmengine.dist import barrier, get_rank

        return get_rank(), barrier
    return 0, lambda: None


# ----------------------------------------------------------------------------------------------- mm datasets


def _spec_from(generate: bool | dict | None) -> ShapesSpec | None:
    if generate is None or generate is False:
        return None
    if generate is True:
        return ShapesSpec()
    if isinstance(generate, dict):
        return ShapesSpec.preset(**generate)
    raise TypeError(f"generate={generate!r} must be None, a bool or a dict of ShapesSpec settings (hard=..., ...)")


def _ensure_for_dataset(generate: bool | dict | None, data_root: str | None) -> None:
    spec = _spec_from(generate)
    if spec is None:
        return
    if not data_root:
        raise ValueError(f"generate={generate!r} needs data_root, the folder to write the dataset to")
    ensure_shapes(data_root, spec)


_REGISTERED: dict[str, type] = {}


def _register_det() -> type:
    from mmdet.datasets import CocoDataset
    from mmdet.registry import DATASETS

    class ShapesCocoDataset(CocoDataset):
        """COCO-format shapes dataset for mmdet; ``generate`` (a dict of ShapesSpec settings, True for the
        default set) writes the data under ``data_root`` first where it is missing."""

        METAINFO = {"classes": CLASSES, "palette": PALETTE}

        def __init__(self, *args: Any, generate: bool | dict | None = None, **kwargs: Any) -> None:
            _ensure_for_dataset(generate, kwargs.get("data_root"))
            super().__init__(*args, **kwargs)

    ShapesCocoDataset.__module__ = __name__
    DATASETS.register_module(module=ShapesCocoDataset, force=True)
    return ShapesCocoDataset


def _register_seg() -> type:
    from mmseg.datasets import BaseSegDataset
    from mmseg.registry import DATASETS

    class ShapesSegDataset(BaseSegDataset):
        """Semantic-segmentation shapes dataset for mmseg (label 0 is background and is scored);
        ``generate`` as in ShapesCocoDataset."""

        METAINFO = {"classes": SEG_CLASSES, "palette": SEG_PALETTE}

        def __init__(self, *args: Any, generate: bool | dict | None = None, **kwargs: Any) -> None:
            _ensure_for_dataset(generate, kwargs.get("data_root"))
            kwargs.setdefault("img_suffix", ".png")
            kwargs.setdefault("seg_map_suffix", ".png")
            kwargs.setdefault("reduce_zero_label", False)
            super().__init__(*args, **kwargs)

    ShapesSegDataset.__module__ = __name__
    DATASETS.register_module(module=ShapesSegDataset, force=True)
    return ShapesSegDataset


def register_mm_datasets(det: bool = True, seg: bool = True) -> dict[str, type]:
    """Register ShapesCocoDataset in mmdet's and ShapesSegDataset in mmseg's DATASETS; returns the classes."""
    wanted = {"ShapesCocoDataset": (det, _register_det, "mmdet"), "ShapesSegDataset": (seg, _register_seg, "mmseg")}
    for name, (want, register, package) in wanted.items():
        if want and name not in _REGISTERED:
            try:
                _REGISTERED[name] = register()
            except ImportError as err:
                raise ImportError(
                    f"{name} needs {package} ({err}); install it with `pip install visionattn[mm]`"
                ) from err
    return {name: cls for name, cls in _REGISTERED.items() if wanted[name][0]}


def __getattr__(name: str) -> type:
    # The dataset classes exist only once mmdet / mmseg can be imported: build them on first access.
    if name == "ShapesCocoDataset":
        return register_mm_datasets(det=True, seg=False)[name]
    if name == "ShapesSegDataset":
        return register_mm_datasets(det=False, seg=True)[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Registration on import where the frameworks are already loaded (mmengine's custom_imports imports
# mmdet.datasets / mmseg.datasets first), so configs need no extra step and a bare import stays light.
if "mmdet.datasets" in sys.modules:
    register_mm_datasets(det=True, seg=False)
if "mmseg.datasets" in sys.modules:
    register_mm_datasets(det=False, seg=True)
