"""Agent-PVT's dense prediction: VisionAttnBackbone against the official dense backbone, and the official configs.

References: the official detection backbone (``AgentPVT`` in downstream/detection/mmdet/models/backbones/agent_pvt.py
at LeapLabTHU/Agent-Attention@207ce3e) run on the reduced fixture model with its classification weights, the official
dense agent grids and a non-square input (tests/fixtures/README.md); and the official dense configs at the same
commit (downstream/detection/configs/agent_pvt/*, downstream/segmentation/configs/agent_pvt/*), whose values are
written out below.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
REDUCED = dict(img_size=112, embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), attn_type="ABAA")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_backbone_matches_official_dense_backbone():
    """The record's recipe (raw stage outputs, agent grids (12,12), (16,16), (28,28), (28,28)) and the classification
    checkpoint loaded through init_cfg: the official dense backbone's four maps on a 64x100 input."""
    ref = torch.load(FIXTURES / "agent_pvt_reduced_outputs.pt", weights_only=True)
    b = VisionAttnBackbone(
        "agent_pvt_tiny",
        dict(REDUCED),
        init_cfg=dict(type="Pretrained", checkpoint=str(FIXTURES / "agent_pvt_reduced_official.pth")),
    )
    b.init_weights()
    b.eval()
    assert b.model_kwargs["agent_shapes"] == ((12, 12), (16, 16), (28, 28), (28, 28))
    with torch.no_grad():
        outs = b(ref["dense_input"].float())
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 25), (1, 16, 8, 12), (1, 24, 4, 6), (1, 32, 2, 3)]
    for i, o in enumerate(outs):
        torch.testing.assert_close(o, ref[f"dense_out{i}"], rtol=0, atol=1e-5, msg=f"output {i}")


# official values: (drop path of the Mask R-CNN, RetinaNet, Semantic FPN configs)
OFFICIAL_DPR = {"t": (0.1, 0.1, 0.1), "s": (0.2, 0.1, 0.1), "m": (0.1, 0.2, 0.2), "l": (0.2, 0.3, 0.1)}
SIZES = {"t": "tiny", "s": "small", "m": "medium", "l": "large"}


def _optimizer(cfg) -> dict:
    opt = dict(cfg.optim_wrapper.optimizer)
    return {k: opt[k] for k in ("type", "lr", "weight_decay")}


@pytest.mark.parametrize("size", list(SIZES))
def test_configs_hold_the_official_hyper_parameters(size):
    from mmengine.config import Config

    mrcnn = Config.fromfile(str(ROOT / f"configs/det/mask_rcnn_agent_pvt_{size}_1x_coco.py"))
    retina = Config.fromfile(str(ROOT / f"configs/det/retinanet_agent_pvt_{size}_1x_coco.py"))
    fpn = Config.fromfile(str(ROOT / f"configs/seg/fpn_agent_pvt_{size}_40k_ade20k_512.py"))
    for cfg, dpr in zip((mrcnn, retina, fpn), OFFICIAL_DPR[size]):
        backbone = cfg.model.backbone
        assert backbone.model_name == f"agent_pvt_{SIZES[size]}"
        assert backbone.model_kwargs == dict(drop_path_rate=dpr)
        assert backbone.init_cfg.checkpoint.endswith(f"agent_pvt_{size}_max_acc.pth")
        assert list(cfg.model.neck.in_channels) == [64, 128, 320, 512]
    assert mrcnn.model.type == "MaskRCNN" and retina.model.type == "RetinaNet"
    assert _optimizer(mrcnn) == dict(type="AdamW", lr=2e-4, weight_decay=1e-4)
    assert _optimizer(retina) == dict(type="AdamW", lr=1e-4, weight_decay=1e-4)
    for det in (mrcnn, retina):  # mmdet 2's schedule_1x: 12 epochs, steps at 8 and 11, 500 warm-up iterations
        assert det.train_cfg.max_epochs == 12
        warmup, steps = det.param_scheduler
        assert (warmup.type, warmup.end, warmup.start_factor) == ("LinearLR", 500, 0.001)
        assert (steps.type, list(steps.milestones)) == ("MultiStepLR", [8, 11])
    assert fpn.model.decode_head.type == "FPNHead" and fpn.model.decode_head.num_classes == 150
    assert _optimizer(fpn) == dict(type="AdamW", lr=2e-4, weight_decay=1e-4)
    assert fpn.train_cfg.max_iters == 40000 and fpn.train_dataloader.batch_size == 2
    (poly,) = fpn.param_scheduler
    assert (poly.type, poly.power, poly.eta_min, poly.end) == ("PolyLR", 0.9, 0.0, 40000)
