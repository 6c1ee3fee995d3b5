"""Agent-Swin's dense-prediction parity: VisionAttnBackbone against the official mmdet backbone and configs.

References: the official detection backbone (downstream/detection/mmdet/models/backbones/agent_swin.py at
LeapLabTHU/Agent-Attention) run on the reduced classification fixture's weights plus per-output norms, with its
dense agent grids 9-12-14-7, on a 224x448 input (tests/fixtures/README.md, Agent-Swin); and the official dense
configs (downstream/{detection,segmentation}/configs/agent_swin/), whose values are written out below.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_agent_swin import REDUCED, fixture_input  # tests/ is on sys.path (see conftest.py)

import visionattn

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TRUNK = {k: v for k, v in REDUCED.items() if k != "num_classes"}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_record_holds_the_official_dense_recipe():
    recipe = visionattn.get_family("agent_swin").dense
    assert recipe.out_norm == "ln2d" and recipe.out_norm_eps == 1e-5 and recipe.out_norm_levels is None
    assert recipe.model_kwargs["agent_shapes"] == ((9, 9), (12, 12), (14, 14), (7, 7))
    assert recipe.model_kwargs["always_partition"] is True


def test_matches_official_detection_backbone_non_square():
    """The four normed maps of the official dense backbone (float64 run, every other row / column kept) at
    224x448: the checkpoint in the official layout loads through init_cfg, the norms are the official norm0..3."""
    ref = torch.load(FIXTURES / "agent_swin_reduced_outputs.pt", weights_only=True)
    weights = torch.load(FIXTURES / "agent_swin_reduced_official.pth", weights_only=True)["model"]
    b = VisionAttnBackbone(
        "agent_swin_tiny",
        dict(TRUNK),
        init_cfg=dict(type="Pretrained", checkpoint=str(FIXTURES / "agent_swin_reduced_official.pth")),
    )
    b.init_weights()
    for i, norm in enumerate(b.out_norms):
        norm.weight.data.copy_(weights[f"norm{i}.weight"].float())
        norm.bias.data.copy_(weights[f"norm{i}.bias"].float())
    b.eval()
    x = fixture_input(224, 224).float()
    with torch.no_grad():
        outs = b(torch.cat([x, x.flip(-1)], dim=-1))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 56, 112), (1, 16, 28, 56), (1, 32, 14, 28), (1, 64, 7, 14)]
    for i, o in enumerate(outs):
        torch.testing.assert_close(o[:, :, ::2, ::2], ref[f"dense_stage{i}"], rtol=0, atol=1e-5, msg=f"map {i}")


def _cfg(path: str):
    from mmengine.config import Config

    return Config.fromfile(str(ROOT / "configs" / path))


_NO_DECAY = {"absolute_pos_embed", "relative_position_bias_table", "norm"}
_NO_DECAY |= {"an_bias", "na_bias", "ah_bias", "aw_bias", "ha_bias", "wa_bias"}


@pytest.mark.parametrize(
    "path, model, dpr, lr, wd, epochs, milestones, agents",
    [
        ("det/mask_rcnn_agent_swin_t_1x_coco.py", "agent_swin_tiny", 0.1, 1e-4, 0.05, 12, [8, 11], None),
        ("det/mask_rcnn_agent_swin_s_1x_coco.py", "agent_swin_small", 0.1, 1e-4, 0.05, 12, [8, 11], None),
        ("det/cascade_mask_rcnn_agent_swin_t_3x_coco.py", "agent_swin_tiny", 0.1, 1e-4, 0.05, 36, [27, 33], None),
        ("seg/upernet_agent_swin_t_160k_ade20k_512.py", "agent_swin_tiny", 0.3, 6e-5, 0.01, None, None, None),
        (
            "seg/upernet_agent_swin_s_160k_ade20k_512.py",
            "agent_swin_small",
            0.3,
            6e-5,
            0.01,
            None,
            None,
            ((9, 9), (12, 12), (7, 7), (7, 7)),
        ),
        ("seg/upernet_agent_swin_b_160k_ade20k_512.py", "agent_swin_base", 0.5, 6e-5, 0.01, None, None, None),
    ],
)
def test_configs_hold_the_official_values(path, model, dpr, lr, wd, epochs, milestones, agents):
    cfg = _cfg(path)
    backbone = cfg.model.backbone
    assert backbone.model_name == model
    assert backbone.model_kwargs["drop_path_rate"] == dpr
    assert backbone.model_kwargs.get("agent_shapes") == agents
    assert backbone.init_cfg.checkpoint == f"checkpoints/{model}_in1k.pth"
    opt = cfg.optim_wrapper
    assert opt.type == "OptimWrapper" and opt.optimizer.type == "AdamW"
    assert (opt.optimizer.lr, opt.optimizer.weight_decay) == (lr, wd)
    assert {k for k, v in opt.paramwise_cfg.custom_keys.items() if v == dict(decay_mult=0.0)} == _NO_DECAY
    if epochs is not None:
        assert cfg.train_cfg.max_epochs == epochs
        assert cfg.param_scheduler[-1].milestones == milestones
        assert cfg.train_dataloader.batch_size == 2
    else:
        assert cfg.train_cfg.max_iters == 160000 and cfg.train_dataloader.batch_size == 2
        assert cfg.model.decode_head.num_classes == 150


def test_cascade_heads_are_the_swin_recipe():
    model = _cfg("det/cascade_mask_rcnn_agent_swin_t_3x_coco.py").model
    assert model.type == "CascadeRCNN" and model.roi_head.type == "CascadeRoIHead"
    heads = model.roi_head.bbox_head
    assert [h.bbox_coder.target_stds for h in heads] == [
        [0.1, 0.1, 0.2, 0.2],
        [0.05, 0.05, 0.1, 0.1],
        [0.033, 0.033, 0.067, 0.067],
    ]
    for h in heads:
        assert (h.type, h.num_shared_convs, h.num_shared_fcs) == ("ConvFCBBoxHead", 4, 1)
        assert h.loss_bbox == dict(type="GIoULoss", loss_weight=10.0) and h.reg_decoded_bbox
        assert h.norm_cfg.type == "SyncBN"
    assert [s.assigner.pos_iou_thr for s in model.train_cfg.rcnn] == [0.5, 0.6, 0.7]


def test_official_dense_checkpoint_converts_and_matches():
    """An official mmdet 2.x checkpoint ({'state_dict': backbone.* in the official layout + backbone.norm{i}, neck
    and head keys}) -> convert_dense_checkpoint -> a strict load into VisionAttnBackbone -> the official dense maps."""
    from visionattn.models.agent_swin import convert_dense_checkpoint

    ref = torch.load(FIXTURES / "agent_swin_reduced_outputs.pt", weights_only=True)
    weights = torch.load(FIXTURES / "agent_swin_reduced_official.pth", weights_only=True)["model"]
    state = {"backbone." + k: v.float() for k, v in weights.items() if not k.startswith(("head.", "norm."))}
    neck = torch.randn(256, 8, 1, 1)
    state["neck.lateral_convs.0.conv.weight"] = neck
    converted = convert_dense_checkpoint({"state_dict": state, "meta": {"epoch": 12}})
    assert converted["neck.lateral_convs.0.conv.weight"] is neck
    b = VisionAttnBackbone("agent_swin_tiny", dict(TRUNK))
    own = {k[len("backbone.") :]: v for k, v in converted.items() if k.startswith("backbone.")}
    b.load_state_dict(own, strict=True)
    b.eval()
    x = fixture_input(224, 224).float()
    with torch.no_grad():
        outs = b(torch.cat([x, x.flip(-1)], dim=-1))
    for i, o in enumerate(outs):
        torch.testing.assert_close(o[:, :, ::2, ::2], ref[f"dense_stage{i}"], rtol=0, atol=1e-5, msg=f"map {i}")
    with pytest.raises(ValueError, match="already in visionattn's layout"):
        convert_dense_checkpoint(converted)
    with pytest.raises(ValueError, match="prefix"):
        convert_dense_checkpoint({"state_dict": {"neck.x": neck}})
