"""LITv2's dense-prediction parity: VisionAttnBackbone against the official mmdet-3 backbone and configs.

References: the official detection backbone (detection/mmdet/models/backbones/litv2.py at ziplab/LITv2@7501c86) run
on a reduced model with the classification fixture's weights and random per-output norms, on a 116x92 input whose
stage-3 map (7x5) pads its HiLo windows and whose DTM inputs have odd sides (tests/fixtures/README.md); and the
official dense configs at the same commit, whose values are written out below.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn

import visionattn

pytest.importorskip("mmengine")

from visionattn.dense import VisionAttnBackbone  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
REDUCED = dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.0, alpha=0.9, num_classes=10)

pytestmark = pytest.mark.usefixtures("one_thread")


def _official_backbone(**kwargs) -> tuple[VisionAttnBackbone, dict]:
    ref = torch.load(FIXTURES / "litv2_reduced_dense_outputs.pt", weights_only=True)
    b = VisionAttnBackbone(
        "litv2_small",
        REDUCED | kwargs.pop("model_kwargs", {}),
        init_cfg=dict(type="Pretrained", checkpoint=str(FIXTURES / "litv2_reduced_official.pth")),
        **kwargs,
    )
    b.init_weights()
    for i, norm in enumerate(b.out_norms):  # the official per-output norms norm{i}
        if f"norm{i}.weight" in ref["norms"]:
            norm.weight.data.copy_(ref["norms"][f"norm{i}.weight"].float())
            norm.bias.data.copy_(ref["norms"][f"norm{i}.bias"].float())
    return b.eval(), ref


def test_record_holds_the_official_dense_recipe():
    recipe = visionattn.get_family("litv2").dense
    assert recipe.out_norm == "ln2d" and recipe.out_norm_eps == 1e-5 and recipe.out_norm_levels == (1, 2, 3)
    assert recipe.model_kwargs["mask_padding"] is False
    b = VisionAttnBackbone("litv2_small", REDUCED)
    assert isinstance(b.out_norms[0], nn.Identity)
    assert all(n.eps == 1e-5 and n.weight.shape == (c,) for n, c in zip(b.out_norms[1:], b.channels[1:]))
    seg = VisionAttnBackbone("litv2_small", REDUCED, out_norm_levels=(0, 1, 2, 3))
    assert not any(isinstance(n, nn.Identity) for n in seg.out_norms)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_matches_official_detection_backbone(dtype, tol):
    """Four maps of the official backbone (float64 run): unmasked window padding, odd DTM inputs floored, norms on
    outputs 1-3 (fp32 tolerance: the official model's own fp32 run differs from its fp64 one by 1.2e-5)."""
    b, ref = _official_backbone()
    b = b.to(dtype)
    with torch.no_grad():
        outs = b(ref["input"].to(dtype))
    assert [tuple(o.shape) for o in outs] == [(1, 8, 29, 23), (1, 16, 14, 11), (1, 32, 7, 5), (1, 64, 3, 2)]
    for i, o in enumerate(outs):
        torch.testing.assert_close(o.double(), ref[f"out{i}"], rtol=0, atol=tol)


def test_masked_padding_differs_only_where_windows_are_padded():
    b, ref = _official_backbone(model_kwargs=dict(mask_padding=True))
    b = b.double()
    with torch.no_grad():
        outs = b(ref["input"].double())
    # stages 1-2 hold no attention: identical; stage 3 (7x5, 2x2 windows) pads, so masking changes it
    torch.testing.assert_close(outs[0], ref["out0"], rtol=0, atol=1e-10)
    torch.testing.assert_close(outs[1], ref["out1"], rtol=0, atol=1e-10)
    assert (outs[2] - ref["out2"]).abs().max() > 1e-4


def test_frozen_stages_freeze_patch_embed_and_stages():
    b = VisionAttnBackbone("litv2_small", REDUCED, frozen_stages=2)
    frozen = {n for n, p in b.trunk.named_parameters() if not p.requires_grad}
    assert any("patch_embed" in n for n in frozen) and any("stages_1.downsample.dconv" in n for n in frozen)
    assert not any("stages_2" in n or "stages_3" in n for n in frozen)


CONFIGS = {  # official values: (lr, drop path, window) per config
    "det/retinanet_litv2_s_1x_coco.py": (1e-4, 0.2, 2),
    "det/retinanet_litv2_s_ws4_1x_coco.py": (1e-4, 0.2, 4),
    "det/retinanet_litv2_m_1x_coco.py": (1e-4, 0.2, 2),
    "det/retinanet_litv2_m_ws4_1x_coco.py": (1e-4, 0.2, 4),
    "det/retinanet_litv2_b_1x_coco.py": (1e-4, 0.3, 2),
    "det/retinanet_litv2_b_ws4_1x_coco.py": (1e-4, 0.3, 4),
    "det/mask_rcnn_litv2_s_1x_coco.py": (2e-4, 0.2, 2),
    "det/mask_rcnn_litv2_s_ws4_1x_coco.py": (2e-4, 0.2, 4),
    "det/mask_rcnn_litv2_m_1x_coco.py": (2e-4, 0.2, 2),
    "det/mask_rcnn_litv2_m_ws4_1x_coco.py": (2e-4, 0.2, 4),
    "det/mask_rcnn_litv2_b_1x_coco.py": (2e-4, 0.3, 2),
    "det/mask_rcnn_litv2_b_ws4_1x_coco.py": (2e-4, 0.3, 4),
    "seg/fpn_litv2_s_80k_ade20k_512.py": (1e-4, 0.2, 2),
    "seg/fpn_litv2_m_80k_ade20k_512.py": (1e-4, 0.2, 2),
    "seg/fpn_litv2_b_80k_ade20k_512.py": (1e-4, 0.3, 2),
}


@pytest.mark.parametrize("path", sorted(CONFIGS))
def test_configs_state_the_official_recipe(path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / "configs" / path))
    lr, dpr, ws = CONFIGS[path]
    bb = cfg.model.backbone
    assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.optimizer.lr == lr
    assert cfg.optim_wrapper.optimizer.weight_decay == 1e-4
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys["conv_offset"]["lr_mult"] == 0.01
    assert bb.model_kwargs["drop_path_rate"] == dpr and bb.model_kwargs["mask_padding"] is False
    assert tuple(bb.model_kwargs.get("local_ws", (0, 0, 2, 1))) == (0, 0, ws, 1)
    size = path.split("litv2_")[1][0]
    assert bb.model_name == {"s": "litv2_small", "m": "litv2_medium", "b": "litv2_base"}[size]
    assert bb.init_cfg.checkpoint == f"checkpoints/litv2_{size}.pth"
    if path.startswith("seg/"):
        assert tuple(bb.out_norm_levels) == (0, 1, 2, 3)
        assert cfg.train_cfg.max_iters == 80000 and cfg.param_scheduler[0].type == "PolyLR"
        assert cfg.train_dataloader.batch_size == 2
    else:
        assert "out_norm_levels" not in bb  # the record's (1, 2, 3)
        assert cfg.train_cfg.max_epochs == 12 and cfg.optim_wrapper.type == "AmpOptimWrapper"


def test_config_optimizer_gives_offsets_a_hundredth_of_the_lr():
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    cfg = Config.fromfile(str(ROOT / "configs/det/retinanet_litv2_s_1x_coco.py"))
    backbone = VisionAttnBackbone("litv2_small", REDUCED)
    wrapper_cfg = {k: v for k, v in cfg.optim_wrapper.items() if k != "loss_scale"}
    wrapper = build_optim_wrapper(backbone, dict(wrapper_cfg, type="OptimWrapper"))  # AMP needs CUDA
    lrs = {id(p): (g["lr"], g["weight_decay"]) for g in wrapper.optimizer.param_groups for p in g["params"]}
    for name, p in backbone.named_parameters():
        lr, wd = lrs[id(p)]
        assert lr == pytest.approx(1e-6 if "conv_offset" in name else 1e-4), name
        assert wd == (0.0 if "norm" in name else pytest.approx(1e-4)), name
