"""Dense prediction wiring for every registered model: VisionAttnBackbone, mmdet / mmseg models built on it,
every config, the tools.

Nothing here names a family: the tests read each family's record (smallest model, ``test_kwargs``, layout,
dense recipe, size rule) and run over ``visionattn.list_models()``, toys included. References: the model's own
``forward_intermediates`` (a different code path from the feature wrapper the adapter uses), the classification
model's ``feature_info``, the pyramid recomputed by hand with ``torch.nn.functional``, and checkpoints written
by the training tool itself. Parity with a family's official dense code lives in ``tests/test_dense_<family>.py``.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import LayerNorm2d

import visionattn
from visionattn.models import families, get_family

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402
from visionattn.dense.backbone import resolve_dense_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = families()
FAMILY_IDS = [f.name for f in FAMILIES]


def _plain(candidates: tuple[str, ...]) -> str:
    """The first of timm's test models that no registered family declares."""
    free = [m for m in candidates if m not in visionattn.list_models()]
    assert free, f"every one of {candidates} belongs to a family; add another plain timm model here"
    return free[0]


# plain timm models (no family): a pyramid with BatchNorm and five levels (strides 2 to 32), an isotropic ViT
PLAIN_PYRAMID = _plain(("test_efficientnet", "test_byobnet"))
PLAIN_ISOTROPIC = _plain(("test_vit", "test_vit2"))


pytestmark = pytest.mark.usefixtures("one_thread")


def _small(family) -> tuple[str, dict]:
    """The family's smallest model and the kwargs the heavy shared tests use."""
    return family.smallest, dict(family.test_kwargs)


def _input_hw(family, name: str, want: tuple[int, int] = (64, 96)) -> tuple[int, int]:
    """An input size the family accepts, near ``want`` (its fixed size for fixed-size families)."""
    if family.fixed_input_size:
        return tuple(timm.create_model(name, pretrained=False).pretrained_cfg["input_size"][1:])
    return tuple(family.fit_size(side) for side in want)


def _meta_info(name: str, **kwargs) -> list[dict]:
    with torch.device("meta"):
        return list(timm.create_model(name, **kwargs).feature_info)


def _expects_pyramid(family, info: list[dict]) -> bool:
    return family.layout == "isotropic" or len({f["reduction"] for f in info}) == 1


def _open_zero_gates(model: nn.Module) -> None:
    """Zero-initialised residual gates (a norm whose weight is all zeros: ResNet's zero_init_last, the last
    BatchNorm of a residual branch) block their branch's gradient by design; set them to one so that a gradient
    check sees every path."""
    with torch.no_grad():
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm) and weight is not None:
                if not weight.abs().sum() > 0:
                    weight.fill_(1.0)


def _copy_into_trunk(trunk: nn.Module, ref: nn.Module) -> None:
    """Copy ``ref``'s weights into the feature wrapper (which renames ``stages.0`` -> ``stages_0`` or nests the
    model under ``model.``); every trunk tensor must find its source."""
    ref_sd = ref.state_dict()
    new = {}
    for k in trunk.state_dict():
        src = k.removeprefix("model.")
        # the wrapper joins a flattened Sequential's name and its child's with "_": try each underscore
        cands = [src] + [src[:i] + "." + src[i + 1 :] for i, ch in enumerate(src.split(".")[0]) if ch == "_"]
        src = next((c for c in cands if c in ref_sd), src)
        new[k] = ref_sd[src]
    trunk.load_state_dict(new)


# ---------------------------------------------------------------------------------------------------------
# the adapter, for every registered model


@pytest.mark.parametrize("name", visionattn.list_models())
def test_every_registered_model_plugs_in(name):
    """Built on the meta device (no memory, no init): levels, widths, strides, norm and kwargs as the record says."""
    family = get_family(name)
    with torch.device("meta"):
        b = VisionAttnBackbone(name)
    recipe = family.dense
    assert b.out_norm == recipe.out_norm
    assert {k: b.model_kwargs[k] for k in recipe.model_kwargs} == dict(recipe.model_kwargs)
    info = _meta_info(name, **b.model_kwargs)
    if _expects_pyramid(family, info):
        assert b.pyramid is not None
        assert b.strides == [4, 8, 16, 32] and b.channels == [256] * 4
        # the pyramid reads the trunk's last map, normed as the recipe says
        assert b.trunk_indices == (len(info) - 1,)
        trunk_channels = [info[-1]["num_chs"]]
    else:
        assert b.pyramid is None
        assert b.channels == [f["num_chs"] for f in info]
        assert b.strides == [f["reduction"] for f in info]
        trunk_channels = b.channels
    levels = recipe.out_norm_levels  # None: every level
    normed = [recipe.out_norm == "ln2d" and (levels is None or lvl in levels) for lvl in b.trunk_indices]
    assert [type(n) for n in b.out_norms] == [LayerNorm2d if on else nn.Identity for on in normed]
    ln = [(n, c) for n, c, on in zip(b.out_norms, trunk_channels, normed) if on]
    assert [n.normalized_shape[0] for n, _ in ln] == [c for _, c in ln]
    assert [n.eps for n, _ in ln] == [recipe.out_norm_eps] * len(ln)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_trunk_maps_match_forward_intermediates(family):
    """Without norm and pyramid the adapter returns exactly the model's own intermediates (NCHW)."""
    name, kwargs = _small(family)
    b = VisionAttnBackbone(name, kwargs, out_norm="none", pyramid=False).eval()
    ref = timm.create_model(name, **b.model_kwargs).eval()
    _copy_into_trunk(b.trunk, ref)
    info = ref.feature_info
    assert b.channels == [f["num_chs"] for f in info] and b.strides == [f["reduction"] for f in info]
    h, w = _input_hw(family, name)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        outs = b(x)
        expect = ref.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")
    assert len(outs) == len(expect) == len(info)
    for out, exp, c, s in zip(outs, expect, b.channels, b.strides):
        assert out.shape == (2, c, -(-h // s), -(-w // s))
        torch.testing.assert_close(out, exp)


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_recipe_defaults_forward_and_backward(family):
    """The family's dense recipe (and a pyramid for isotropic models): shapes, strides, a gradient for every
    trainable parameter (a model may create some with requires_grad=False: fixed tables, parts trained by another
    objective)."""
    name, kwargs = _small(family)
    b = VisionAttnBackbone(name, kwargs, pyramid_channels=32).train()
    _open_zero_gates(b)
    h, w = _input_hw(family, name)
    outs = b(torch.randn(2, 3, h, w))
    assert [tuple(o.shape) for o in outs] == [(2, c, -(-h // s), -(-w // s)) for c, s in zip(b.channels, b.strides)]
    if b.pyramid is not None:
        assert b.strides == [4, 8, 16, 32] and b.channels == [32] * 4
    sum(o.square().mean() for o in outs).backward()
    missing = [n for n, p in b.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_recipe_false_is_neutral(family):
    name, kwargs = _small(family)
    with torch.device("meta"):
        b = VisionAttnBackbone(name, kwargs, recipe=False)
    assert b.out_norm == "none" and b.model_kwargs == kwargs
    assert all(isinstance(n, nn.Identity) for n in b.out_norms)
    # explicit arguments win over the recipe
    assert resolve_dense_args(name, {"x": 1}, "none") == ({**family.dense.model_kwargs, "x": 1}, "none")


def test_plain_timm_models_get_neutral_defaults():
    b = VisionAttnBackbone(PLAIN_PYRAMID).eval()
    info = timm.create_model(PLAIN_PYRAMID).feature_info
    assert b.out_norm == "none" and b.model_kwargs == {} and b.pyramid is None
    assert b.strides == [f["reduction"] for f in info] == [2, 4, 8, 16, 32]  # every level by default
    assert b.channels == [f["num_chs"] for f in info]
    assert all(isinstance(n, nn.Identity) for n in b.out_norms)
    # an isotropic model no family declares gets the pyramid from its equal strides
    v = VisionAttnBackbone(PLAIN_ISOTROPIC, pyramid_channels=(8, 16, 24, 32)).eval()
    assert v.pyramid is not None and v.strides == [4, 8, 16, 32] and v.channels == [8, 16, 24, 32]
    with torch.no_grad():
        outs = v(torch.randn(1, 3, 160, 160))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 40, 40), (1, 16, 20, 20), (1, 24, 10, 10), (1, 32, 5, 5)]


# ---------------------------------------------------------------------------------------------------------
# the simple feature pyramid of isotropic models

ISOTROPIC = [f for f in FAMILIES if f.layout == "isotropic"]


def _ln2d(x: torch.Tensor, norm: nn.Module) -> torch.Tensor:
    return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], norm.weight, norm.bias, norm.eps).permute(0, 3, 1, 2)


def _level_by_hand(x: torch.Tensor, level: nn.Sequential, up: int, down: int) -> torch.Tensor:
    """ViTDet's recipe written out with torch.nn.functional, reading the weights by position."""
    mods = list(level)
    i = 0
    for step in range(up):
        if step > 0:
            x = F.gelu(_ln2d(x, mods[i]))
            i += 2
        x = F.conv_transpose2d(x, mods[i].weight, mods[i].bias, stride=2)
        i += 1
    if down:
        x = F.max_pool2d(x, down, down, ceil_mode=True)
        i += 1
    x = _ln2d(F.conv2d(x, mods[i].weight), mods[i + 1])
    return _ln2d(F.conv2d(x, mods[i + 2].weight, padding=1), mods[i + 3])


@pytest.mark.parametrize("family", ISOTROPIC, ids=[f.name for f in ISOTROPIC])
def test_pyramid_levels_computed_by_hand(family):
    name, kwargs = _small(family)
    b = VisionAttnBackbone(name, kwargs, pyramid_channels=(8, 16, 24, 32))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial norms, so a missing or swapped one shows
        for m in b.modules():
            if isinstance(m, LayerNorm2d):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
    b.eval()
    ref = timm.create_model(name, **b.model_kwargs).eval()
    _copy_into_trunk(b.trunk, ref)
    h, w = _input_hw(family, name)
    x = torch.randn(2, 3, h, w)
    with torch.no_grad():
        outs = b(x)
        last = ref.forward_intermediates(x, intermediates_only=True, output_fmt="NCHW")[-1]
        if family.dense.out_norm == "ln2d":
            last = _ln2d(last, b.out_norms[0])
        stride = ref.feature_info[-1]["reduction"]
        for out, level, s, c in zip(outs, b.pyramid.levels, (4, 8, 16, 32), (8, 16, 24, 32)):
            up = max(0, (stride // s).bit_length() - 1)
            down = s // stride if s > stride else 0
            expect = _level_by_hand(last, level, up, down)
            assert out.shape == (2, c, -(-h // s), -(-w // s))
            torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ISOTROPIC, ids=[f.name for f in ISOTROPIC])
def test_pyramid_out_indices_and_options(family):
    name, kwargs = _small(family)
    h, w = _input_hw(family, name)
    b = VisionAttnBackbone(name, kwargs, out_indices=(1, 3), pyramid_channels=(8, 16, 24, 32)).eval()
    assert b.strides == [8, 32] and b.channels == [16, 32] and len(b.pyramid.levels) == 2
    with torch.no_grad():
        outs = b(torch.randn(1, 3, h, w))
    assert [tuple(o.shape) for o in outs] == [(1, 16, -(-h // 8), -(-w // 8)), (1, 32, -(-h // 32), -(-w // 32))]
    # pyramid=False returns the trunk's own same-stride maps
    flat = VisionAttnBackbone(name, kwargs, pyramid=False)
    assert flat.pyramid is None and len(set(flat.strides)) == 1
    with pytest.raises(ValueError, match="pyramid_channels"):
        VisionAttnBackbone(name, kwargs, pyramid_channels=(8, 16))
    with pytest.raises(ValueError, match="power-of-two"):
        VisionAttnBackbone(name, kwargs, pyramid_strides=(4, 12))


# ---------------------------------------------------------------------------------------------------------
# adapter options


def test_out_indices():
    info = timm.create_model(PLAIN_PYRAMID).feature_info
    b = VisionAttnBackbone(PLAIN_PYRAMID, out_indices=(1, -1)).eval()
    assert b.out_indices == (1, 4)
    assert b.channels == [info[1]["num_chs"], info[4]["num_chs"]] and b.strides == [4, 32]
    with torch.no_grad():
        outs = b(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, b.channels[0], 16, 24), (2, b.channels[1], 2, 3)]
    with pytest.raises(ValueError, match=r"out_indices=\(0, 5\) is out of range"):
        VisionAttnBackbone(PLAIN_PYRAMID, out_indices=(0, 5))
    with pytest.raises(ValueError, match="increasing"):
        VisionAttnBackbone(PLAIN_PYRAMID, out_indices=(2, 1))
    with pytest.raises(TypeError, match="out_indices"):
        VisionAttnBackbone(PLAIN_PYRAMID, out_indices=("a",))


def _feature_params(b: VisionAttnBackbone, i: int) -> set[str]:
    """Names (as in ``b.named_parameters()``) of the parameters of trunk feature ``i``'s module."""
    module = b.trunk.feature_info.info[i]["module"]
    names = {module, module.replace(".", "_"), f"model.{module}"}
    return {f"trunk.{n}.{p}" for n in names if _has(b.trunk, n) for p, _ in b.trunk.get_submodule(n).named_parameters()}


def _has(m: nn.Module, name: str) -> bool:
    try:
        m.get_submodule(name)
        return True
    except AttributeError:
        return False


@pytest.mark.parametrize("frozen_stages", [0, 2])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_frozen_stages(family, frozen_stages):
    name, kwargs = _small(family)
    b = VisionAttnBackbone(name, kwargs, frozen_stages=frozen_stages, pyramid_channels=16)
    b.train()
    params = dict(b.named_parameters())
    first = next(iter(params))  # the stem's first parameter
    frozen = {n for i in range(frozen_stages) for n in _feature_params(b, i)} | {first}
    # parameters the model creates frozen (requires_grad=False by design) are neither frozen nor live here
    fresh = VisionAttnBackbone(name, kwargs, pyramid_channels=16)
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    live = set().union(*(_feature_params(b, i) for i in range(frozen_stages, b.num_features))) & trainable
    assert live and not frozen & live
    assert all(not params[n].requires_grad for n in frozen)
    assert all(params[n].requires_grad for n in live)
    for i in range(frozen_stages):  # frozen modules stay in eval mode (BN statistics, dropout, drop path)
        module = b.trunk.feature_info.info[i]["module"]
        mod = next(
            b.trunk.get_submodule(n) for n in (module, module.replace(".", "_"), f"model.{module}") if _has(b.trunk, n)
        )
        assert not any(m.training for m in mod.modules())
    h, w = _input_hw(family, name)
    sum(o.square().mean() for o in b(torch.randn(2, 3, h, w))).backward()
    assert all(params[n].grad is None for n in frozen)
    assert all(params[n].grad is not None for n in live)


def _bn_stats(b: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in b.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("norm_eval", [True, False])
def test_norm_eval(norm_eval):
    b = VisionAttnBackbone(PLAIN_PYRAMID, norm_eval=norm_eval).train()
    bns = [m for m in b.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.training is not norm_eval for m in bns)
    before = _bn_stats(b)
    b(torch.randn(2, 3, 64, 64))
    changed = [not torch.equal(x, y) for x, y in zip(before, _bn_stats(b))]
    assert all(changed) if not norm_eval else not any(changed)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="model_name='no_such_model'"):
        VisionAttnBackbone("no_such_model")
    with pytest.raises(ValueError, match="out_norm='bn'"):
        VisionAttnBackbone(PLAIN_PYRAMID, out_norm="bn")
    with pytest.raises(ValueError, match="frozen_stages=7"):
        VisionAttnBackbone(PLAIN_PYRAMID, frozen_stages=7)
    with pytest.raises(ValueError, match="features_only"):
        VisionAttnBackbone(PLAIN_PYRAMID, dict(features_only=True))
    with pytest.raises(TypeError, match="model_kwargs must be a dict"):
        VisionAttnBackbone(PLAIN_PYRAMID, [("a", 1)])


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_prefixed_init_cfg_loads_backbone_from_a_full_checkpoint(family, tmp_path):
    name, kwargs = _small(family)
    src = VisionAttnBackbone(name, kwargs, pyramid_channels=16)
    path = tmp_path / "det.pth"
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()} | {"neck.w": torch.ones(1)}
    torch.save({"state_dict": state}, path)
    dst = VisionAttnBackbone(
        name, kwargs, pyramid_channels=16, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    )
    first = next(k for k, v in src.state_dict().items() if v.is_floating_point() and v.numel() > 1)
    assert not torch.equal(dst.state_dict()[first], src.state_dict()[first])
    dst.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    with pytest.raises(ValueError, match="prefix='head.' matches no key"):
        VisionAttnBackbone(
            name, kwargs, pyramid_channels=16, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="head.")
        ).init_weights()


def test_registered_with_mmengine_mmdet_and_mmseg():
    from mmengine.registry import MODELS

    assert MODELS.get("VisionAttnBackbone") is VisionAttnBackbone
    for package in ("mmdet", "mmseg"):
        registry = pytest.importorskip(f"{package}.registry")
        assert registry.MODELS.get("VisionAttnBackbone") is VisionAttnBackbone


def _python(code: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT
    )


@pytest.mark.slow  # two fresh interpreters
def test_import_without_mmdet_and_mmseg_and_without_mmengine():
    # Entries of None in sys.modules make those imports fail, as if the packages were not installed.
    r = _python(
        "import sys; sys.modules.update(mmdet=None, mmseg=None)\n"
        "import visionattn.dense as d\n"
        "from mmengine.registry import MODELS\n"
        "assert MODELS.get('VisionAttnBackbone') is d.VisionAttnBackbone\n"
        "try:\n    d.require_mm('mmdet')\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "visionattn[mm]" in r.stdout and "tools/install_mmcv.py" in r.stdout
    r = _python(
        "import sys; sys.modules.update(mmengine=None)\n"
        "import visionattn.dense as d\n"
        "try:\n    d.VisionAttnBackbone\nexcept ImportError as e:\n    print('ERR', e)\n"
    )
    assert r.returncode == 0, r.stderr
    assert "ERR" in r.stdout and "visionattn[mm]" in r.stdout and "tools/install_mmcv.py" in r.stdout


# ---------------------------------------------------------------------------------------------------------
# mmdet / mmseg models on the adapter: each family's smallest model


def _det_batch(with_mask: bool, hw: tuple[int, int] = (64, 64)):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    h, w = hw
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        img = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        s = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), pad_shape=(h, w)))
        gt = InstanceData()
        gt.bboxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]])
        gt.labels = torch.tensor([0, 2])
        if with_mask:
            masks = np.zeros((2, h, w), dtype=np.uint8)
            masks[0, 8:36, 8:40] = 1
            masks[1, 20:60, 30:60] = 1
            gt.masks = BitmapMasks(masks, h, w)
        s.gt_instances = gt
        inputs.append(img)
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def _seg_batch(hw: tuple[int, int] = (64, 64)):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    h, w = hw
    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8))
        s = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, h, w), generator=g))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def _family_backbone(family, **kwargs) -> tuple[dict, VisionAttnBackbone, tuple[int, int]]:
    """A backbone config for the family's smallest model returning four levels (the first four of stride 4 or
    more, as the base configs' heads expect), the backbone it builds (on the meta device, for its widths and
    strides) and an input size the family accepts. A family whose record names its own neck
    (``DenseRecipe.neck``) returns every level: the neck builds the finer ones."""
    name, model_kwargs = _small(family)
    cfg = dict(type="VisionAttnBackbone", model_name=name, model_kwargs=model_kwargs, pyramid_channels=32, **kwargs)
    with torch.device("meta"):
        every = VisionAttnBackbone(**{k: v for k, v in cfg.items() if k != "type"})
    if family.dense.neck:
        cfg["out_indices"] = tuple(range(len(every.strides)))
    else:
        cfg["out_indices"] = tuple([i for i, s in enumerate(every.strides) if s >= 4][:4])
        assert len(cfg["out_indices"]) == 4, f"{name}: strides {every.strides} offer no four levels of stride >= 4"
    with torch.device("meta"):
        b = VisionAttnBackbone(**{k: v for k, v in cfg.items() if k != "type"})
    side = max(64, 2 * max(b.strides))
    return cfg, b, _input_hw(family, name, want=(side, side))


def _recipe_neck(family, b: VisionAttnBackbone, base_neck: dict, hw: tuple[int, int], registry) -> tuple[dict, list]:
    """The family's own neck (``DenseRecipe.neck``) in place of the base config's FPN: on every backbone level,
    five outputs of the base config's width (extra convolutions as the base config says), and its output strides,
    measured by running it on zero maps of the backbone's shapes at ``hw``."""
    cfg = dict(family.dense.neck, in_channels=b.channels, out_channels=base_neck["out_channels"], num_outs=5)
    cfg["start_level"] = 0
    if base_neck.get("add_extra_convs"):
        cfg["add_extra_convs"] = base_neck["add_extra_convs"]
    neck = registry.build(cfg)
    h, w = hw
    with torch.no_grad():
        outs = neck([torch.zeros(1, c, -(-h // s), -(-w // s)) for c, s in zip(b.channels, b.strides)])
    strides = [h // o.shape[-2] for o in outs]
    assert strides == sorted(set(strides)) and [w // o.shape[-1] for o in outs] == strides, (h, w, strides)
    return cfg, strides


def _grads_reach_the_backbone(backbone: VisionAttnBackbone, first_level: int = 0) -> None:
    """The trunk, and the output norms / pyramid levels from ``first_level`` on (those the neck reads), train."""
    first = next(p for p in backbone.trunk.parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0
    norms = list(backbone.out_norms) if backbone.pyramid is not None else list(backbone.out_norms)[first_level:]
    for norm in norms:
        if isinstance(norm, LayerNorm2d):
            assert norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0
    if backbone.pyramid is not None:
        for level in list(backbone.pyramid.levels)[first_level:]:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in level.parameters())


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_mmdet_detector_loss_and_predict(family, detector):
    pytest.importorskip("mmdet")
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    base = "retinanet_fpn" if detector == "retinanet" else "mask_rcnn_fpn"
    cfg = Config.fromfile(str(ROOT / f"configs/_base_/models/{base}.py")).model
    cfg.backbone, b, hw = _family_backbone(family, norm_eval=True)
    # anchors and RoI strides follow the levels (the base configs' are those of strides 4/8/16/32)
    if family.dense.neck:  # the family's neck gives five levels: anchors on all of them, RoIs on the finest four
        cfg.neck, levels = _recipe_neck(family, b, cfg.neck, hw, MODELS)
    else:
        cfg.neck.in_channels = b.channels
        s = b.strides
        # RetinaNet: FPN from level 1, two extra stride-2 levels; Mask R-CNN: every level plus one max-pooled
        levels = [*s[1:], 2 * s[-1], 4 * s[-1]] if detector == "retinanet" else [*s, 2 * s[-1]]
    if detector == "retinanet":
        cfg.bbox_head.anchor_generator.strides = levels
    else:
        cfg.rpn_head.anchor_generator.strides = levels
        cfg.roi_head.bbox_roi_extractor.featmap_strides = levels[:4]
        cfg.roi_head.mask_roi_extractor.featmap_strides = levels[:4]
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    with_mask = detector == "mask_rcnn"
    data = model.data_preprocessor(_det_batch(with_mask, hw), training=True)
    losses = model.loss(data["inputs"], data["data_samples"])
    expected = (
        {"loss_cls", "loss_bbox"}
        if detector == "retinanet"
        else {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask", "acc"}
    )
    assert expected <= set(losses)
    total = sum(v if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total) and total > 0
    total.backward()
    _grads_reach_the_backbone(model.backbone, first_level=cfg.neck.get("start_level", 0))

    model.eval()
    with torch.no_grad():
        preds = model.test_step(_det_batch(with_mask, hw))
    assert len(preds) == 2
    for p in preds:
        boxes = p.pred_instances.bboxes
        assert boxes.shape[1] == 4 and len(boxes) <= 100
        assert (boxes >= 0).all() and (boxes[:, 0::2] <= hw[1]).all() and (boxes[:, 1::2] <= hw[0]).all()
        if with_mask:
            assert p.pred_instances.masks.shape[1:] == hw


@pytest.mark.parametrize("head", ["upernet", "fpn_seg"])
@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
def test_mmseg_segmentor_loss_and_predict(family, head):
    pytest.importorskip("mmseg")
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from visionattn.dense.runner import cpu_safe_config

    init_default_scope("mmseg")
    cfg = cpu_safe_config(Config.fromfile(str(ROOT / f"configs/_base_/models/{head}.py"))).model
    cfg.backbone, b, hw = _family_backbone(family)
    cfg.data_preprocessor.size = hw
    cfg.decode_head.num_classes = 3
    widths, strides = b.channels, b.strides
    if family.dense.neck:  # the family's neck (before UPerNet too): its finest four levels feed the heads
        cfg.neck, s = _recipe_neck(family, b, cfg.get("neck") or dict(out_channels=32), hw, MODELS)
        widths, strides = [cfg.neck["out_channels"]] * 4, s[:4]
    elif head != "upernet":
        cfg.neck.in_channels = b.channels
    if head == "upernet":
        cfg.decode_head.in_channels = widths
        cfg.decode_head.channels = 32
        cfg.auxiliary_head.in_channels = widths[2]
        cfg.auxiliary_head.num_classes = 3
    else:
        cfg.decode_head.feature_strides = strides
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(_seg_batch(hw), training=True)
    losses = model.loss(data["inputs"], data["data_samples"])
    assert "decode.loss_ce" in losses and (head != "upernet" or "aux.loss_ce" in losses)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total) and total > 0
    total.backward()
    _grads_reach_the_backbone(model.backbone)

    model.eval()
    with torch.no_grad():
        preds = model.test_step(_seg_batch(hw))
    assert [tuple(p.pred_sem_seg.data.shape) for p in preds] == [(1, *hw)] * 2
    assert all(int(p.pred_sem_seg.data.max()) < 3 for p in preds)


# ---------------------------------------------------------------------------------------------------------
# every config builds and runs a tiny forward

CONFIGS = sorted(glob.glob(str(ROOT / "configs/det/*.py")) + glob.glob(str(ROOT / "configs/seg/*.py")))


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT / "configs") for p in CONFIGS])
def test_config_builds_and_predicts(path):
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from visionattn.dense.runner import cpu_safe_config

    cfg = cpu_safe_config(Config.fromfile(path))
    scope = cfg.default_scope
    pytest.importorskip(scope)
    init_default_scope(scope)
    model = MODELS.build(cfg.model).eval()  # random init: init_weights (the checkpoint) is not called
    backbone = model.backbone
    assert isinstance(backbone, VisionAttnBackbone)
    assert timm.is_model(backbone.model_name)
    if scope == "mmdet":
        # a two-stage DETR (DINO) proposes num_queries boxes out of the encoder's tokens: 256 px give 4 scales
        # of strides 8-64 1,360 tokens (64 px: 85), enough for DINO's 900
        side = 256 if cfg.model.get("as_two_stage") else 64
        batch = _det_batch(with_mask=False, hw=(side, side))
        for s in batch["data_samples"]:
            del s.gt_instances
    else:
        batch = _seg_batch()
    with torch.no_grad():
        preds = model.test_step(batch)
    assert len(preds) == 2
    if scope == "mmseg":
        assert preds[0].pred_sem_seg.data.shape[-2:] == (64, 64)
    else:
        assert preds[0].pred_instances.bboxes.shape[1] == 4
    # the widths the config gives the neck (or the first decode head without one) are the backbone's
    head = getattr(model, "neck", None) or getattr(model, "decode_head", None)
    widths = list(getattr(head, "in_channels", None) or [])
    if widths:
        assert widths == backbone.channels[-len(widths) :]


BACKBONE_CONFIGS = sorted(glob.glob(str(ROOT / "configs/_base_/backbones/*.py")))


@pytest.mark.parametrize("path", BACKBONE_CONFIGS, ids=[os.path.basename(p) for p in BACKBONE_CONFIGS])
def test_backbone_configs_state_the_backbones_widths(path):
    from mmengine.config import Config

    cfg = Config.fromfile(path)
    assert "model" not in cfg  # a backbone file names the backbone only; the model comes from models/
    spec = dict(cfg.backbone)
    assert spec.pop("type") == "VisionAttnBackbone" and spec["model_name"] in visionattn.list_models()
    with torch.device("meta"):
        b = VisionAttnBackbone(**spec)
    assert b.channels == list(cfg.backbone_channels)


def test_base_model_configs_name_no_model():
    names = visionattn.list_models(aliases=True) + [f.name for f in FAMILIES]
    for path in sorted(glob.glob(str(ROOT / "configs/_base_/models/*.py"))):
        text = Path(path).read_text().lower()
        assert "model_name" not in text, path
        assert not [n for n in names if re.search(rf"\b{n}", text)], path


# ---------------------------------------------------------------------------------------------------------
# tools/train.py: torchrun on CPU, interruption and resume

HOOKS = '''
import json, os
import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RecordStateHook(Hook):
    """Save the iteration and the weights the run starts from, and the weights it ends with (per rank)."""

    def before_train(self, runner):
        rank = int(os.environ.get("RANK", 0))
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        opt = runner.optim_wrapper.optimizer
        steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
        torch.save(dict(iter=runner.iter, state=model.state_dict(), steps=steps),
                   os.path.join(runner.work_dir, f"start_rank{rank}.pt"))

    def after_train(self, runner):
        rank = int(os.environ.get("RANK", 0))
        model = runner.model.module if hasattr(runner.model, "module") else runner.model
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        params = [n for n, _ in model.named_parameters()]
        torch.save(dict(iter=runner.iter, state=model.state_dict(), params=params, world=world),
                   os.path.join(runner.work_dir, f"end_rank{rank}.pt"))


@HOOKS.register_module()
class InterruptHook(Hook):
    """Kill the process after iteration ``at`` (1-based), as a crash or a pre-empted job would."""

    priority = "LOWEST"

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.at and runner.iter + 1 == self.at:
            os._exit(3)
'''


# the tools run in fresh interpreters, where only the package's own families are registered: the first of them
TOOL_FAMILY = FAMILIES[0]


def _tiny_seg_setup(tmp: Path, max_iters: int, interrupt_at: int = 0) -> Path:
    """A 6-image, 3-class segmentation set and a config training a small model with an FCN head on its last map."""
    import cv2

    g = np.random.default_rng(0)
    for split in ("img", "ann"):
        (tmp / "data" / split).mkdir(parents=True, exist_ok=True)
    for i in range(6):
        ann = np.zeros((64, 64), np.uint8)
        y, x = g.integers(4, 36, size=2)
        ann[y : y + 24, x : x + 24] = 1 + i % 2
        img = (g.integers(0, 40, (64, 64, 3)) + ann[..., None] * 100).astype(np.uint8)
        cv2.imwrite(str(tmp / "data" / "img" / f"{i}.png"), img)
        cv2.imwrite(str(tmp / "data" / "ann" / f"{i}.png"), ann)
    (tmp / "test_dense_hooks.py").write_text(HOOKS)
    name, kwargs = _small(TOOL_FAMILY)
    with torch.device("meta"):
        width = VisionAttnBackbone(name, kwargs, out_indices=(-1,), pyramid_channels=32).channels[0]
    cfg = tmp / "tiny_seg.py"
    cfg.write_text(
        textwrap.dedent(
            f"""
            default_scope = 'mmseg'
            custom_imports = dict(imports=['visionattn.dense', 'test_dense_hooks'], allow_failed_imports=False)
            norm_cfg = dict(type='SyncBN', requires_grad=True)
            model = dict(
                type='EncoderDecoder',
                data_preprocessor=dict(type='SegDataPreProcessor', mean=[100.0] * 3, std=[60.0] * 3,
                                       bgr_to_rgb=True, pad_val=0, seg_pad_val=255, size=(64, 64)),
                backbone=dict(type='VisionAttnBackbone', model_name={name!r}, model_kwargs={kwargs!r},
                              out_indices=(-1,), pyramid_channels=32),
                decode_head=dict(type='FCNHead', in_channels={width}, in_index=0, channels=32, num_convs=1,
                                 num_classes=3, norm_cfg=norm_cfg, align_corners=False,
                                 loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)),
                train_cfg=dict(), test_cfg=dict(mode='whole'))
            sync_bn = 'torch'
            pipeline = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'), dict(type='PackSegInputs')]
            train_dataloader = dict(
                batch_size=2, num_workers=0,
                sampler=dict(type='InfiniteSampler', shuffle=True),
                dataset=dict(type='BaseSegDataset', data_root='{tmp / "data"}',
                             data_prefix=dict(img_path='img', seg_map_path='ann'),
                             img_suffix='.png', seg_map_suffix='.png',
                             metainfo=dict(classes=('bg', 'a', 'b'), palette=[[0, 0, 0], [255, 0, 0], [0, 255, 0]]),
                             pipeline=pipeline))
            test_dataloader = dict(
                batch_size=1, num_workers=0, sampler=dict(type='DefaultSampler', shuffle=False),
                dataset=train_dataloader['dataset'])
            test_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
            test_cfg = dict(type='TestLoop')
            train_cfg = dict(type='IterBasedTrainLoop', max_iters={max_iters})
            optim_wrapper = dict(type='AmpOptimWrapper', loss_scale=512.0,
                                 optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.01))
            default_hooks = dict(
                logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
                checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=2))
            custom_hooks = [dict(type='RecordStateHook'), dict(type='InterruptHook', at={interrupt_at})]
            log_processor = dict(by_epoch=False)
            env_cfg = dict(dist_cfg=dict(backend='gloo'))
            randomness = dict(seed=0)
            """
        )
    )
    return cfg


def _run(cmd: list[str], tmp: Path, timeout: int = 150) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{tmp}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def _miou_by_hand(cfg_path: Path, state: dict, data: Path) -> float:
    """mIoU (%) over the tiny set, predicting image by image with the weights in ``state``."""
    import cv2
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(cfg_path), import_custom_modules=False)
    cfg.model.decode_head.norm_cfg = dict(type="BN", requires_grad=True)
    model = MODELS.build(cfg.model)
    model.load_state_dict(state)
    model.eval()
    inter, union = np.zeros(3), np.zeros(3)
    for img_path in sorted((data / "img").glob("*.png")):
        img = torch.from_numpy(cv2.imread(str(img_path))).permute(2, 0, 1)
        gt = cv2.imread(str(data / "ann" / img_path.name), cv2.IMREAD_UNCHANGED)
        sample = SegDataSample(metainfo=dict(img_shape=gt.shape, ori_shape=gt.shape))
        with torch.no_grad():
            pred = model.test_step(dict(inputs=[img], data_samples=[sample]))[0].pred_sem_seg.data[0].numpy()
        for c in range(3):
            inter[c] += np.sum((pred == c) & (gt == c))
            union[c] += np.sum((pred == c) | (gt == c))
    with np.errstate(invalid="ignore"):
        return float(np.nanmean(inter / union) * 100)


def _first_backbone_weight(state: dict) -> str:
    return next(k for k in state if k.startswith("backbone.trunk.") and k.endswith("weight"))


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    pytest.importorskip("mmseg")
    cfg = _tiny_seg_setup(tmp_path, max_iters=2)
    work = tmp_path / "work"
    r = _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            str(ROOT / "tools/train.py"),
            str(cfg),
            "--work-dir",
            str(work),
            "--launcher",
            "pytorch",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ends = [torch.load(work / f"end_rank{i}.pt", weights_only=True) for i in range(2)]
    starts = [torch.load(work / f"start_rank{i}.pt", weights_only=True) for i in range(2)]
    assert [e["world"] for e in ends] == [2, 2] and [e["iter"] for e in ends] == [2, 2]
    for k in ends[0]["params"]:
        # DDP averages the gradients of both ranks' batches: the replicas stay identical
        torch.testing.assert_close(ends[0]["state"][k], ends[1]["state"][k], msg=k)
    # while each rank saw its own shard of the data (BN statistics are not synchronised on CPU)
    bn = "decode_head.convs.0.bn.running_mean"
    assert not torch.equal(ends[0]["state"][bn], ends[1]["state"][bn])
    first = _first_backbone_weight(ends[0]["state"])
    assert not torch.equal(starts[0]["state"][first], ends[0]["state"][first])
    assert (work / "iter_2.pth").is_file()


@pytest.mark.slow
def test_interrupted_run_resumes_from_last_checkpoint(tmp_path):
    pytest.importorskip("mmseg")
    work = tmp_path / "work"
    cfg = _tiny_seg_setup(tmp_path, max_iters=4, interrupt_at=3)
    train = [sys.executable, str(ROOT / "tools/train.py"), str(cfg), "--work-dir", str(work)]
    r = _run(train, tmp_path)
    assert r.returncode == 3, r.stdout[-3000:] + r.stderr[-3000:]  # killed during iteration 3
    assert (work / "iter_2.pth").is_file() and not (work / "iter_4.pth").exists()

    cfg = _tiny_seg_setup(tmp_path, max_iters=4, interrupt_at=0)
    r = _run([*train, "--resume"], tmp_path)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    start = torch.load(work / "start_rank0.pt", weights_only=True)
    from visionattn.dense.runner import allow_mmengine_checkpoints

    allow_mmengine_checkpoints()
    ckpt = torch.load(work / "iter_2.pth")  # weights_only (the default): works through the allow-list
    assert start["iter"] == 2 == ckpt["meta"]["iter"]
    assert start["state"].keys() == ckpt["state_dict"].keys()
    for k, v in ckpt["state_dict"].items():
        assert torch.equal(start["state"][k], v), k
    assert start["steps"] and all(s == 2 for s in start["steps"])  # AdamW moments resumed at step 2
    log = r.stdout + r.stderr
    assert "Iter(train) [3/4]" in log and "Iter(train) [4/4]" in log and "Iter(train) [1/4]" not in log
    end = torch.load(work / "iter_4.pth")
    assert end["meta"]["iter"] == 4
    assert tuple(end["meta"]["dataset_meta"]["classes"]) == ("bg", "a", "b")

    # tools/test.py evaluates the checkpoint: the same mIoU as computed here from its weights
    r = _run(
        [
            sys.executable,
            str(ROOT / "tools/test.py"),
            str(cfg),
            str(work / "iter_4.pth"),
            "--work-dir",
            str(tmp_path / "test"),
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reported = float(re.findall(r"mIoU: ([0-9.]+)", r.stdout + r.stderr)[-1])
    assert reported == pytest.approx(_miou_by_hand(cfg, end["state_dict"], tmp_path / "data"), abs=0.011)

    # an explicit checkpoint path resumes from that checkpoint, into another work dir
    other = tmp_path / "other"
    r = _run(
        [
            sys.executable,
            str(ROOT / "tools/train.py"),
            str(cfg),
            "--work-dir",
            str(other),
            "--resume",
            str(work / "iter_2.pth"),
            "--cfg-options",
            "train_cfg.max_iters=3",
        ],
        tmp_path,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    start = torch.load(other / "start_rank0.pt", weights_only=True)
    assert start["iter"] == 2
    first = _first_backbone_weight(ckpt["state_dict"])
    assert torch.equal(start["state"][first], ckpt["state_dict"][first])
    assert torch.load(other / "iter_3.pth")["meta"]["iter"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is about CPU-only machines")
def test_train_amp_flag_without_cuda_says_what_to_do():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools/train.py")
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    with pytest.raises(SystemExit, match="--amp needs a CUDA device"):
        train_tool.main([CONFIGS[0], "--amp"])
