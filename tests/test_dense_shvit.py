"""SHViT's dense path: the official 3-stage backbone + EfficientViTFPN neck against outputs of the official code,
the official mmdet checkpoint layout, BatchNorm kept in eval, and the RetinaNet / Mask R-CNN configs' levels.

Reference: ``tests/fixtures/shvit_reduced_dense_*`` (official ``downstream/shvit.py`` ``Partial_ViT_Exp`` and
``downstream/efficientvit_fpn.py`` ``EfficientViTFPN`` run with random weights, see tests/fixtures/README.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

pytest.importorskip("mmcv")

from visionattn.dense import VisionAttnBackbone  # noqa: E402
from visionattn.dense.shvit_neck import EfficientViTFPN  # noqa: E402
from visionattn.models.shvit import convert_dense_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests/fixtures"
REDUCED = dict(embed_dim=(16, 24, 32), partial_dim=(8, 8, 12), depth=(1, 2, 2))
OFFICIAL_CLS = FIXTURES / "shvit_reduced_official.pth"
# the official necks of the fixture (out_channels reduced to 16)
NECKS = {
    "mask_rcnn": dict(num_extra_trans_convs=2),
    "retinanet": dict(num_extra_trans_convs=1, add_extra_convs="on_input"),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _detector_trunk(kind: str) -> nn.Module:
    model = nn.Module()
    model.backbone = VisionAttnBackbone("shvit_s1", REDUCED, norm_eval=True)
    model.neck = EfficientViTFPN([16, 24, 32], 16, num_outs=5, **NECKS[kind])
    return model


def _load_official(model: nn.Module, kind: str) -> None:
    state = torch.load(FIXTURES / "shvit_reduced_dense_official.pth", weights_only=True)["state_dict"]
    # the fixture holds both official necks; "neck." is the Mask R-CNN one, "retinanet_neck." the RetinaNet one
    keep = "neck." if kind == "mask_rcnn" else "retinanet_neck."
    state = {
        ("neck." + k[len(keep) :] if k.startswith(keep) else k): v
        for k, v in state.items()
        if k.startswith(("backbone.", keep))
    }
    converted = convert_dense_checkpoint({"state_dict": state})
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in converted.items()}, strict=True)


@pytest.mark.parametrize("kind", ["mask_rcnn", "retinanet"])
def test_backbone_and_neck_match_official(kind):
    """The official mmdet layout converts; the three backbone maps and the five neck levels match the official
    float64 run within 1e-5 in float32, in train mode too (the official backbone keeps its BatchNorm in eval)."""
    ref = torch.load(FIXTURES / "shvit_reduced_dense_outputs.pt", weights_only=True)
    x = ref["input"].float()
    model = _detector_trunk(kind)
    _load_official(model, kind)
    for mode in (False, True):
        model.train(mode)
        with torch.no_grad():
            feats = model.backbone(x)
            outs = model.neck(feats)
        assert len(feats) == 3 and len(outs) == 5
        for i, f in enumerate(feats):
            torch.testing.assert_close(f.double(), ref[f"backbone{i}"], atol=1e-5, rtol=0)
        for i, o in enumerate(outs):
            torch.testing.assert_close(o.double(), ref[f"{kind}{i}"], atol=1e-5, rtol=0)
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d))


def test_backbone_init_cfg_loads_an_official_classification_file():
    """init_cfg=dict(type='Pretrained', checkpoint=<official .pth>): the family converter maps the official layout,
    and the three maps are the official stage outputs."""
    kwargs = dict(REDUCED, num_classes=10)
    b = VisionAttnBackbone("shvit_s1", kwargs, init_cfg=dict(type="Pretrained", checkpoint=str(OFFICIAL_CLS)))
    b.init_weights()
    ref = torch.load(FIXTURES / "shvit_reduced_outputs.pt", weights_only=True)
    with torch.no_grad():
        feats = b.eval()(ref["input2"].float())
    for i, f in enumerate(feats):
        torch.testing.assert_close(f.double(), ref[f"stage{i}2"], atol=1e-5, rtol=0)


def test_neck_levels_and_errors():
    feats = [torch.randn(1, c, h, w) for c, (h, w) in zip((16, 24, 32), ((8, 6), (4, 3), (2, 2)))]
    plain = EfficientViTFPN([16, 24, 32], 8, num_outs=3)
    assert [tuple(o.shape[-2:]) for o in plain(feats)] == [(8, 6), (4, 3), (2, 2)]
    pooled = EfficientViTFPN([16, 24, 32], 8, num_outs=6, num_extra_trans_convs=2)  # one max-pooled level on top
    assert [tuple(o.shape[-2:]) for o in pooled(feats)] == [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2), (1, 1)]
    with pytest.raises(ValueError, match="num_extra_trans_convs=3"):
        EfficientViTFPN([16, 24, 32], 8, num_outs=5, num_extra_trans_convs=3)
    with pytest.raises(ValueError, match="add_extra_convs"):
        EfficientViTFPN([16, 24, 32], 8, num_outs=5, add_extra_convs="on_top")
    with pytest.raises(TypeError, match="in_channels"):
        EfficientViTFPN(16, 8, num_outs=5)
    with pytest.raises(ValueError, match="got 2 maps"):
        plain(feats[:2])


@pytest.mark.parametrize(
    "config, strides",
    [
        ("configs/det/retinanet_shvit_s4_1x_coco.py", [8, 16, 32, 64, 128]),
        ("configs/det/mask_rcnn_shvit_s4_1x_coco.py", [4, 8, 16, 32, 64]),
    ],
)
def test_config_levels_follow_the_official_recipe(config, strides):
    """The official leaves: SHViT-S4 (BatchNorm in eval), the official neck, anchors / RoI strides on its levels,
    the official AdamW; a train step on a small batch reaches the backbone."""
    pytest.importorskip("mmdet")
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    cfg = Config.fromfile(str(ROOT / config))
    init_default_scope("mmdet")
    assert cfg.model.backbone.model_name == "shvit_s4" and cfg.model.backbone.norm_eval is True
    assert cfg.model.neck.type == "EfficientViTFPN" and cfg.model.neck.in_channels == [224, 336, 448]
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ("AdamW", 0.0001, 0.05)
    head = cfg.model.get("bbox_head") or cfg.model.rpn_head
    assert list(head.anchor_generator.strides) == strides
    if "roi_head" in cfg.model:
        assert list(cfg.model.roi_head.bbox_roi_extractor.featmap_strides) == strides[:4]
    # the neck's levels at a 256 x 384 input: their strides are the anchors'
    neck = MODELS.build(cfg.model.neck)
    backbone = MODELS.build(cfg.model.backbone)
    with torch.no_grad():
        outs = neck(backbone(torch.randn(1, 3, 256, 384)))
    assert [256 // o.shape[-2] for o in outs] == strides and [384 // o.shape[-1] for o in outs] == strides
    backbone.train()
    assert not any(m.training for m in backbone.modules() if isinstance(m, nn.BatchNorm2d))
