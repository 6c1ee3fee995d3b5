"""BiFormer's dense-prediction parity: VisionAttnBackbone against the official code's outputs and configs.

References: the official BiFormer stage outputs of a reduced model (tests/fixtures/biformer_reduced_*, made by
running rayleizhu/BiFormer@1697bbb; see tests/fixtures/README.md), and the official dense configs
(object_detection/configs/coco/*, semantic_segmentation/configs/ade20k/* at the same commit), whose values are
written out below. The family-independent adapter tests are in tests/test_dense.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402
from visionattn.dense.backbone import resolve_dense_args  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
OFFICIAL = FIXTURES / "biformer_reduced_official.pth"
# biformer_tiny reduced as in tests/fixtures/README.md (official outputs exist for these weights); n_win 7 as the
# official classification model the fixture ran (the dense recipe's n_win 16 would be another model)
REDUCED = dict(depths=(1, 1, 2, 1), embed_dims=(32, 64, 64, 64), num_classes=10, n_win=7)


pytestmark = pytest.mark.usefixtures("one_thread")


def _pretrained(**kwargs) -> VisionAttnBackbone:
    b = VisionAttnBackbone(
        "biformer_tiny",
        REDUCED | kwargs.pop("model_kwargs", {}),
        init_cfg=dict(type="Pretrained", checkpoint=str(OFFICIAL)),
        **kwargs,
    )
    b.init_weights()
    return b.eval()


def test_record_holds_the_official_dense_recipe():
    """BiFormer_mm (object_detection/models_mm/biformer_mm.py): a LayerNorm2d on each of the four outputs, not
    fed forward; 16 regions per side for COCO."""
    recipe = visionattn.get_family("biformer").dense
    assert recipe.out_norm == "ln2d" and recipe.model_kwargs["n_win"] == 16
    b = VisionAttnBackbone("biformer_tiny").eval()
    assert b.model_kwargs["n_win"] == 16 and b.out_norm == "ln2d"
    assert b.channels == [64, 128, 256, 512]  # official BiFormer-T widths
    assert b.strides == [4, 8, 16, 32]
    assert all(isinstance(n, timm.layers.LayerNorm2d) for n in b.out_norms) and len(b.out_norms) == 4
    with torch.no_grad():
        outs = b(torch.randn(1, 3, 224, 160))
    assert [tuple(o.shape) for o in outs] == [(1, c, 224 // s, 160 // s) for c, s in zip(b.channels, b.strides)]


@pytest.mark.parametrize(
    "fixture, kwargs",
    [("biformer_reduced_outputs.pt", {}), ("biformer_reduced_autopad_outputs.pt", dict(mask_padding=False))],
)
def test_official_checkpoint_through_init_cfg_gives_official_stage_outputs(fixture, kwargs):
    ref = torch.load(FIXTURES / fixture, weights_only=True)
    b = _pretrained(model_kwargs=kwargs, out_norm="none")
    with torch.no_grad():
        outs = b(ref["input"].float())
    assert len(outs) == 4
    for i, out in enumerate(outs):
        torch.testing.assert_close(out.double(), ref[f"stage{i}"], atol=2e-5, rtol=0)


def test_out_norm_ln2d_normalises_each_output_over_channels():
    ref = torch.load(FIXTURES / "biformer_reduced_outputs.pt", weights_only=True)
    b = _pretrained()  # the recipe's out_norm
    assert b.out_norm == "ln2d"
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


def test_segmentor_init_weights_loads_the_official_checkpoint_into_its_backbone():
    """The Runner calls model.init_weights(); mmengine passes it on to the backbone's init_cfg. The segmentor's
    backbone then computes the official model's stage outputs (the fixture), so every tensor came from the file."""
    pytest.importorskip("mmseg")
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(ROOT / "configs/_base_/models/fpn_seg.py")).model
    cfg.backbone = dict(
        type="VisionAttnBackbone",
        model_name="biformer_tiny",
        model_kwargs=REDUCED,
        out_norm="none",
        init_cfg=dict(type="Pretrained", checkpoint=str(OFFICIAL)),
    )
    cfg.neck.in_channels = [32, 64, 64, 64]
    cfg.decode_head.norm_cfg = dict(type="BN", requires_grad=True)
    model = MODELS.build(cfg)
    ref = torch.load(FIXTURES / "biformer_reduced_outputs.pt", weights_only=True)
    x = ref["input"].float()
    with torch.no_grad():
        before = model.backbone.eval()(x)
    assert (before[0].double() - ref["stage0"]).abs().max() > 1e-2  # random init is far from the official model
    model.init_weights()
    with torch.no_grad():
        outs = model.backbone.eval()(x)
    for i, out in enumerate(outs):
        torch.testing.assert_close(out.double(), ref[f"stage{i}"], atol=2e-5, rtol=0)


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
    widths = {"biformer_small": [64, 128, 256, 512], "biformer_base": [96, 192, 384, 768]}
    for name, (model, n_win, dpr, lr, wd, bs) in expect.items():
        cfg = load(name)
        b = cfg.model.backbone
        # what the adapter builds from the config (the recipe fills in what the config leaves open)
        kwargs, out_norm = resolve_dense_args(b.model_name, b.get("model_kwargs"), b.get("out_norm"))
        assert (b.model_name, kwargs["n_win"], kwargs["drop_path_rate"]) == (model, n_win, dpr), name
        assert out_norm == "ln2d" and kwargs["mask_padding"] is False, name
        assert b.get("out_indices") in (None, (0, 1, 2, 3), [0, 1, 2, 3]), name
        assert b.norm_eval is name.startswith("det/"), name
        assert b.init_cfg.checkpoint == f"checkpoints/{model}_in1k.pth", name
        head = cfg.model.get("neck") or cfg.model.decode_head
        assert list(head.in_channels) == widths[model], name
        if "upernet" in name:
            assert cfg.model.auxiliary_head.in_channels == widths[model][2], name
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
