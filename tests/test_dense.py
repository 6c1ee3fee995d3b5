"""Dense prediction wiring: VisionAttnBackbone, mmdet / mmseg models built on it, every config, the tools.

References: the official BiFormer stage outputs (tests/fixtures/biformer_reduced_*), the model's own
``forward_intermediates`` (a different code path from the feature wrapper the adapter uses), the official
stage widths / strides, and checkpoints written by the training tool itself.
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

import visionattn

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
# biformer_tiny reduced as in tests/fixtures/README.md (official outputs exist for these weights)
REDUCED = dict(depths=(1, 1, 2, 1), embed_dims=(32, 64, 64, 64), num_classes=10)
TINY = dict(depths=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64), n_win=2)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pretrained(path: Path, **kwargs) -> VisionAttnBackbone:
    b = VisionAttnBackbone(
        "biformer_tiny",
        REDUCED | kwargs.pop("model_kwargs", {}),
        init_cfg=dict(type="Pretrained", checkpoint=str(path)),
        **kwargs,
    )
    b.init_weights()
    return b.eval()


# ---------------------------------------------------------------------------------------------------------
# the adapter


@pytest.mark.parametrize(
    "fixture, kwargs",
    [("biformer_reduced_outputs.pt", {}), ("biformer_reduced_autopad_outputs.pt", dict(mask_padding=False))],
)
def test_official_checkpoint_through_init_cfg_gives_official_stage_outputs(fixture, kwargs):
    ref = torch.load(FIXTURES / fixture, weights_only=True)
    b = _pretrained(FIXTURES / "biformer_reduced_official.pth", model_kwargs=kwargs, out_norm="none")
    with torch.no_grad():
        outs = b(ref["input"].float())
    assert len(outs) == 4
    for i, out in enumerate(outs):
        torch.testing.assert_close(out.double(), ref[f"stage{i}"], atol=2e-5, rtol=0)


def test_out_norm_ln2d_normalises_each_output_over_channels():
    ref = torch.load(FIXTURES / "biformer_reduced_outputs.pt", weights_only=True)
    b = _pretrained(FIXTURES / "biformer_reduced_official.pth", out_norm="ln2d")
    g = torch.Generator().manual_seed(0)
    for norm in b.out_norms:  # non-trivial affine parameters, so a missing or swapped norm shows
        norm.weight.data = 1 + 0.3 * torch.randn(norm.weight.shape, generator=g)
        norm.bias.data = 0.3 * torch.randn(norm.bias.shape, generator=g)
    with torch.no_grad():
        outs = b(ref["input"].float())
    for i, (out, norm) in enumerate(zip(outs, b.out_norms)):
        stage = ref[f"stage{i}"].permute(0, 2, 3, 1)
        expect = F.layer_norm(stage, stage.shape[-1:], norm.weight.double(), norm.bias.double(), eps=1e-6)
        torch.testing.assert_close(out.double(), expect.permute(0, 3, 1, 2), atol=1e-4, rtol=0)


def test_biformer_tiny_outputs_official_widths_and_strides():
    b = VisionAttnBackbone("biformer_tiny").eval()
    assert b.channels == [64, 128, 256, 512]  # official BiFormer-T widths
    assert b.strides == [4, 8, 16, 32]
    assert isinstance(b.out_norms[0], timm.layers.LayerNorm2d)
    with torch.no_grad():
        outs = b(torch.randn(1, 3, 224, 160))
    assert [tuple(o.shape) for o in outs] == [(1, c, 224 // s, 160 // s) for c, s in zip(b.channels, b.strides)]


@pytest.mark.parametrize("name", visionattn.list_models())
def test_every_registered_model_plugs_in(name):
    ref = timm.create_model(name)
    info = ref.feature_info
    n = len(info)
    h, w = ref.pretrained_cfg["input_size"][1:]
    b = VisionAttnBackbone(name, out_indices=tuple(range(n)), out_norm="none").eval()
    assert b.channels == [f["num_chs"] for f in info]
    assert b.strides == [f["reduction"] for f in info]
    ref_sd = ref.state_dict()
    for k, v in b.trunk.state_dict().items():  # the feature wrappers rename stages.0 -> stages_0 or nest in model.
        k = k.removeprefix("model.")
        k = k if k in ref_sd else k.replace("_", ".", 1)
        ref_sd[k].copy_(v)
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        outs = b(x)
        expect = ref.eval().forward_intermediates(x, intermediates_only=True)
    assert len(outs) == n
    for out, exp, c, s in zip(outs, expect, b.channels, b.strides):
        assert out.shape == (1, c, -(-h // s), -(-w // s))
        torch.testing.assert_close(out, exp)


def test_out_indices_subset():
    b = VisionAttnBackbone("biformer_tiny", TINY, out_indices=(1, 3)).eval()
    assert b.channels == [32, 64] and b.strides == [8, 32] and len(b.out_norms) == 2
    with torch.no_grad():
        outs = b(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 32, 8, 12), (2, 64, 2, 3)]


@pytest.mark.parametrize("frozen_stages, frozen_prefixes", [(0, ("stem.",)), (2, ("stem.", "stages_0.", "stages_1."))])
def test_frozen_stages(frozen_stages, frozen_prefixes):
    b = VisionAttnBackbone("biformer_tiny", TINY | dict(drop_path_rate=0.1), frozen_stages=frozen_stages)
    b.train()
    names = {n.removeprefix("trunk."): p for n, p in b.named_parameters()}
    frozen = {n for n in names if n.startswith(frozen_prefixes)}
    assert frozen and all(not names[n].requires_grad for n in frozen)
    assert all(p.requires_grad for n, p in names.items() if n not in frozen)
    for prefix in frozen_prefixes:  # frozen modules stay in eval mode (BN statistics, drop path)
        mod = b.trunk.get_submodule(prefix[:-1])
        assert not any(m.training for m in mod.modules())
    assert b.trunk.get_submodule(f"stages_{frozen_stages}").training
    sum(o.square().mean() for o in b(torch.randn(2, 3, 64, 64))).backward()
    assert all(names[n].grad is None for n in frozen)
    assert all(p.grad is not None for n, p in names.items() if n not in frozen)


def _bn_stats(b: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in b.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("norm_eval", [True, False])
def test_norm_eval(norm_eval):
    b = VisionAttnBackbone("biformer_tiny", TINY, norm_eval=norm_eval).train()
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
        VisionAttnBackbone("biformer_tiny", TINY, out_norm="bn")
    with pytest.raises(ValueError, match="frozen_stages=7"):
        VisionAttnBackbone("biformer_tiny", TINY, frozen_stages=7)
    with pytest.raises(ValueError, match="features_only"):
        VisionAttnBackbone("biformer_tiny", TINY | dict(features_only=True))


def test_prefixed_init_cfg_loads_backbone_from_a_full_checkpoint(tmp_path):
    src = VisionAttnBackbone("biformer_tiny", TINY)
    path = tmp_path / "det.pth"
    torch.save(
        {"state_dict": {f"backbone.{k}": v for k, v in src.state_dict().items()} | {"neck.w": torch.ones(1)}}, path
    )
    dst = VisionAttnBackbone(
        "biformer_tiny", TINY, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    )
    assert not torch.equal(dst.trunk.stem.conv1.weight, src.trunk.stem.conv1.weight)
    dst.init_weights()
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


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
# mmdet / mmseg models on the adapter


def _det_batch(with_mask: bool):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData

    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        img = torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8)
        s = DetDataSample(
            metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), scale_factor=(1.0, 1.0), pad_shape=(64, 64))
        )
        gt = InstanceData()
        gt.bboxes = torch.tensor([[8.0, 8.0, 40.0, 36.0], [30.0, 20.0, 60.0, 60.0]])
        gt.labels = torch.tensor([0, 2])
        if with_mask:
            masks = np.zeros((2, 64, 64), dtype=np.uint8)
            masks[0, 8:36, 8:40] = 1
            masks[1, 20:60, 30:60] = 1
            gt.masks = BitmapMasks(masks, 64, 64)
        s.gt_instances = gt
        inputs.append(img)
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


def _tiny_backbone(**kwargs) -> dict:
    return dict(type="VisionAttnBackbone", model_name="biformer_tiny", model_kwargs=TINY, **kwargs)


@pytest.mark.parametrize("detector", ["retinanet", "mask_rcnn"])
def test_mmdet_detector_loss_and_predict(detector):
    pytest.importorskip("mmdet")
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    init_default_scope("mmdet")
    base = "retinanet_fpn" if detector == "retinanet" else "mask_rcnn_fpn"
    cfg = Config.fromfile(str(ROOT / f"configs/_base_/models/{base}.py")).model
    cfg.backbone = _tiny_backbone(norm_eval=True)
    cfg.neck.in_channels = [32, 32, 64, 64]
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(_det_batch(with_mask=detector == "mask_rcnn"), training=True)
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
    assert model.backbone.trunk.stem.conv1.weight.grad.abs().sum() > 0
    assert model.backbone.out_norms[1].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        preds = model.test_step(_det_batch(with_mask=detector == "mask_rcnn"))
    assert len(preds) == 2
    for p in preds:
        boxes = p.pred_instances.bboxes
        assert boxes.shape[1] == 4 and len(boxes) <= 100
        assert (boxes >= 0).all() and (boxes <= 64).all()
        if detector == "mask_rcnn":
            assert p.pred_instances.masks.shape[1:] == (64, 64)


def _seg_batch():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(0)
    inputs, samples = [], []
    for _ in range(2):
        inputs.append(torch.randint(0, 256, (3, 64, 64), generator=g, dtype=torch.uint8))
        s = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64)))
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 64, 64), generator=g))
        samples.append(s)
    return dict(inputs=inputs, data_samples=samples)


@pytest.mark.parametrize("head", ["upernet", "fpn_seg"])
def test_mmseg_segmentor_loss_and_predict(head):
    pytest.importorskip("mmseg")
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(ROOT / f"configs/_base_/models/{head}.py"))
    from visionattn.dense.runner import cpu_safe_config

    cfg = cpu_safe_config(cfg).model
    cfg.backbone = _tiny_backbone()
    cfg.data_preprocessor.size = (64, 64)
    cfg.decode_head.num_classes = 3
    if head == "upernet":
        cfg.decode_head.in_channels = [32, 32, 64, 64]
        cfg.decode_head.channels = 32
        cfg.auxiliary_head.in_channels = 64
        cfg.auxiliary_head.num_classes = 3
    else:
        cfg.neck.in_channels = [32, 32, 64, 64]
    model = MODELS.build(cfg)
    model.init_weights()
    model.train()
    data = model.data_preprocessor(_seg_batch(), training=True)
    losses = model.loss(data["inputs"], data["data_samples"])
    assert "decode.loss_ce" in losses and (head != "upernet" or "aux.loss_ce" in losses)
    total = sum(v for k, v in losses.items() if "loss" in k)
    assert torch.isfinite(total) and total > 0
    total.backward()
    assert model.backbone.trunk.stem.conv1.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        preds = model.test_step(_seg_batch())
    assert [tuple(p.pred_sem_seg.data.shape) for p in preds] == [(1, 64, 64)] * 2
    assert all(int(p.pred_sem_seg.data.max()) < 3 for p in preds)


def test_segmentor_init_weights_loads_the_official_checkpoint_into_its_backbone():
    """The Runner calls model.init_weights(); mmengine passes it on to the backbone's init_cfg."""
    pytest.importorskip("mmseg")
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from visionattn.models.biformer import checkpoint_filter_fn

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(ROOT / "configs/_base_/models/fpn_seg.py")).model
    path = FIXTURES / "biformer_reduced_official.pth"
    cfg.backbone = dict(
        type="VisionAttnBackbone",
        model_name="biformer_tiny",
        model_kwargs=REDUCED,
        init_cfg=dict(type="Pretrained", checkpoint=str(path)),
    )
    cfg.neck.in_channels = [32, 64, 64, 64]
    cfg.decode_head.norm_cfg = dict(type="BN", requires_grad=True)
    model = MODELS.build(cfg)
    model.init_weights()
    official = torch.load(path, weights_only=True)
    converted = checkpoint_filter_fn(official, model.backbone.trunk)
    trunk = {k.replace("stages_", "stages."): v for k, v in model.backbone.trunk.state_dict().items()}
    assert set(trunk) <= set(converted)  # every trunk tensor comes from the file (its final norm / head are unused)
    for k, v in trunk.items():
        assert torch.equal(v, converted[k].to(v.dtype)), k


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
        batch = _det_batch(with_mask=False)
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


def test_official_hyper_parameters_in_configs():
    """The values of BiFormer's official configs (rayleizhu/BiFormer@1697bbb), as listed there."""
    from mmengine.config import Config

    def load(name):
        return Config.fromfile(str(ROOT / "configs" / name))

    expect = {  # config: (model, n_win, drop_path, lr, weight_decay, images per GPU)
        "det/retinanet_biformer_s_1x_coco.py": ("biformer_small", 16, 0.2, 1e-4, 1e-4, 2),
        "det/retinanet_biformer_b_1x_coco.py": ("biformer_base", 16, 0.3, 1e-4, 1e-4, 2),
        "det/mask_rcnn_biformer_s_1x_coco.py": ("biformer_small", 16, 0.2, 1e-4, 0.05, 2),
        "det/mask_rcnn_biformer_b_1x_coco.py": ("biformer_base", 16, 0.3, 1e-4, 0.05, 2),
        "seg/upernet_biformer_s_160k_ade20k_512.py": ("biformer_small", 8, 0.3, 6e-5, 0.01, 2),
        "seg/upernet_biformer_b_160k_ade20k_512.py": ("biformer_base", 8, 0.4, 6e-5, 0.01, 2),
        "seg/fpn_biformer_s_80k_ade20k_512.py": ("biformer_small", 8, 0.15, 2e-4, 1e-4, 4),
        "seg/fpn_biformer_b_80k_ade20k_512.py": ("biformer_base", 8, 0.3, 2e-4, 1e-4, 4),
    }
    for name, (model, n_win, dpr, lr, wd, bs) in expect.items():
        cfg = load(name)
        b = cfg.model.backbone
        assert (b.model_name, b.model_kwargs.n_win, b.model_kwargs.drop_path_rate) == (model, n_win, dpr), name
        assert b.out_norm == "ln2d" and b.model_kwargs.mask_padding is False, name
        assert b.norm_eval is name.startswith("det/"), name
        opt = cfg.optim_wrapper
        assert (opt.optimizer.type, opt.optimizer.lr, opt.optimizer.weight_decay) == ("AdamW", lr, wd), name
        assert opt.type == "AmpOptimWrapper" and opt.loss_scale == 512.0, name
        assert cfg.train_dataloader.batch_size == bs, name
        if name.startswith("det/"):
            assert cfg.train_cfg.max_epochs == 12 and cfg.param_scheduler[1].milestones == [8, 11], name
        else:
            iters = 160000 if "160k" in name else 80000
            assert cfg.train_cfg.max_iters == iters and cfg.param_scheduler[-1].end == iters, name
            assert cfg.sync_bn == "torch", name
    assert load("det/mask_rcnn_biformer_s_1x_coco.py").optim_wrapper.paramwise_cfg.custom_keys.norm.decay_mult == 0
    assert load("det/retinanet_biformer_s_1x_coco.py").model.neck.start_level == 1


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


def _tiny_seg_setup(tmp: Path, max_iters: int, interrupt_at: int = 0) -> Path:
    """A 6-image, 3-class segmentation set and a config training a tiny BiFormer with an FCN head on it."""
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
                backbone=dict(type='VisionAttnBackbone', model_name='biformer_tiny',
                              model_kwargs=dict(depths=(1, 1, 1, 1), embed_dims=(32, 32, 64, 64), n_win=2),
                              out_indices=(3,)),
                decode_head=dict(type='FCNHead', in_channels=64, in_index=0, channels=32, num_convs=1,
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
    bn = "backbone.trunk.stem.norm1.running_mean"
    assert not torch.equal(ends[0]["state"][bn], ends[1]["state"][bn])
    assert not torch.equal(
        starts[0]["state"]["backbone.trunk.stem.conv1.weight"], ends[0]["state"]["backbone.trunk.stem.conv1.weight"]
    )
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
    assert torch.equal(
        start["state"]["backbone.trunk.stem.conv1.weight"], ckpt["state_dict"]["backbone.trunk.stem.conv1.weight"]
    )
    assert torch.load(other / "iter_3.pth")["meta"]["iter"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is about CPU-only machines")
def test_train_amp_flag_without_cuda_says_what_to_do():
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_tool", ROOT / "tools/train.py")
    train_tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_tool)
    with pytest.raises(SystemExit, match="--amp needs a CUDA device"):
        train_tool.main([str(ROOT / "configs/seg/fpn_biformer_s_80k_ade20k_512.py"), "--amp"])
