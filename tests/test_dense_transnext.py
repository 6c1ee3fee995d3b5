"""TransNeXt's dense recipes: the DINO / Mask2Former per-parameter optimizer rules and the position-bias mode of the
dense configs.

The expected rules are those of the official configs (detection/dino/configs/dino-*_transnext_*-12e_coco.py,
segmentation/mask2former/configs/mask2former_transnext_*_160k_ade20k-512x512.py at DaiShiResearch/TransNeXt@c8a9974)
as mmengine applies them to the official parameter names, written out here in words: the backbone at 0.1x lr, no
weight decay on its biases, LayerNorms, query_embedding, relative_pos_bias_local, cpb and temperature, decay on its
other weights (learnable_tokens / learnable_bias included); the official keys name patch_embed1-3 and norm1-3 only,
so the last stage's downsampling and output norm keep the full lr. That the full configs build and predict is
tested for every config in tests/test_dense.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch.nn as nn

pytest.importorskip("mmengine")

from visionattn.layers.aggregated_attention import AggregatedAttention, CosineAttention  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# transnext_micro with one block per stage keeps every parameter kind (aggregated attention in stages 1-3,
# cosine attention in 4) at a fraction of the build cost
SMALL = dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), num_heads=(2, 4, 4, 8), mlp_ratios=2)
NO_DECAY = ("query_embedding", "relative_pos_bias_local", "cpb", "temperature")

pytestmark = pytest.mark.usefixtures("one_thread")


def _build(config: str, **backbone_kwargs) -> tuple[nn.Module, object]:
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope

    from visionattn.dense.runner import cpu_safe_config

    cfg = cpu_safe_config(Config.fromfile(str(ROOT / "configs" / config)))
    pytest.importorskip(cfg.default_scope)
    init_default_scope(cfg.default_scope)
    cfg.model.backbone.model_name = "transnext_micro"
    cfg.model.backbone.model_kwargs.update(SMALL, **backbone_kwargs)
    widths = list(SMALL["embed_dims"])
    if "neck" in cfg.model:
        cfg.model.neck.in_channels = widths[-len(cfg.model.neck.in_channels) :]
    else:
        cfg.model.decode_head.in_channels = widths
    return MODELS.build(cfg.model), cfg


def _groups(model: nn.Module, optim_wrapper: dict) -> dict[str, tuple[float, float]]:
    """(lr, weight decay) of every parameter, by name, as mmengine's optimizer constructor assigns them."""
    from mmengine.optim import build_optim_wrapper

    wrapper = build_optim_wrapper(model, optim_wrapper)
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in wrapper.optimizer.param_groups:
        for p in group["params"]:
            out[names[id(p)]] = (group["lr"], group["weight_decay"])
    assert len(out) == len(names)
    return out


@pytest.mark.parametrize(
    "config", ["det/dino_4scale_transnext_t_12e_coco.py", "seg/mask2former_transnext_t_160k_ade20k_512.py"]
)
def test_official_per_parameter_rules(config):
    model, cfg = _build(config)
    lr, wd = cfg.optim_wrapper.optimizer.lr, cfg.optim_wrapper.optimizer.weight_decay
    assert (lr, wd) == (1e-4, 0.05)
    groups = _groups(model, cfg.optim_wrapper)
    backbone = {n: g for n, g in groups.items() if n.startswith("backbone.")}
    assert len(backbone) == sum(1 for _ in model.backbone.parameters())
    for name, (got_lr, got_wd) in backbone.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        last_stage_top = ".stages_3.downsample." in name or ".stages_3.norm." in name
        assert got_lr == pytest.approx(lr if last_stage_top else 0.1 * lr), name
        no_decay = name.endswith(".bias") or isinstance(module, nn.LayerNorm) or any(k in name for k in NO_DECAY)
        assert got_wd == (0.0 if no_decay else pytest.approx(wd)), name
    assert backbone["backbone.trunk.stages_0.blocks.0.attn.learnable_bias"][1] == pytest.approx(wd)
    # the TransNeXt keys touch no head parameter: the head is as mmengine's defaults (and the Mask2Former keys) set it
    cfg.optim_wrapper.paramwise_cfg.custom_keys = {
        k: v for k, v in cfg.optim_wrapper.paramwise_cfg.custom_keys.items() if k.startswith("decode_head.")
    }
    heads = _groups(model, cfg.optim_wrapper)
    assert {n: g for n, g in groups.items() if n not in backbone} == {
        n: g for n, g in heads.items() if n not in backbone
    }
    if config.startswith("seg/"):
        assert heads["decode_head.query_embed.weight"] == (lr, 0.0)
        assert heads["decode_head.transformer_decoder.layers.0.ffn.layers.0.0.weight"] == (lr, wd)


@pytest.mark.parametrize(
    "config, size",
    [
        ("det/mask_rcnn_transnext_t_1x_coco.py", 800),
        ("det/dino_5scale_transnext_t_12e_coco.py", 800),
        ("seg/upernet_transnext_t_160k_ade20k_512.py", 512),
        ("seg/mask2former_transnext_t_160k_ade20k_512.py", 512),
    ],
)
def test_dense_configs_interpolate_the_position_bias_as_officially(config, size):
    """Every official TransNeXt dense config builds its backbone with is_extrapolation=False at img_size 800
    (COCO) / 512 (ADE20K): each stage's layers compute their bias on that input's grid."""
    model, cfg = _build(config)
    assert cfg.model.backbone.model_kwargs["pos_bias"] == "interpolation"
    layers = [m for m in model.backbone.modules() if isinstance(m, (AggregatedAttention, CosineAttention))]
    assert len(layers) == 4
    assert [m.pos_bias_size for m in layers] == [(size // 2 ** (i + 2),) * 2 for i in range(4)]


@pytest.mark.parametrize(
    "config, drop_path, out_indices",
    [
        ("det/dino_4scale_transnext_t_12e_coco.py", 0.3, (1, 2, 3)),
        ("det/dino_5scale_transnext_s_12e_coco.py", 0.5, (0, 1, 2, 3)),
        ("det/dino_5scale_transnext_b_12e_coco.py", 0.6, (0, 1, 2, 3)),
        ("seg/mask2former_transnext_b_160k_ade20k_512.py", 0.6, None),
    ],
)
def test_official_recipe_values(config, drop_path, out_indices):
    """Values copied from the official configs and their mmdet / mmseg base configs."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / "configs" / config))
    assert cfg.model.backbone.model_kwargs["drop_path_rate"] == drop_path
    if config.startswith("det/"):
        levels = len(out_indices) + 1  # ChannelMapper adds one level after the last map
        assert cfg.model.backbone.out_indices == out_indices and cfg.model.num_feature_levels == levels
        assert cfg.model.neck.num_outs == levels
        assert cfg.model.encoder.layer_cfg.self_attn_cfg.num_levels == levels
        assert cfg.model.decoder.layer_cfg.cross_attn_cfg.num_levels == levels
        assert cfg.optim_wrapper.clip_grad.max_norm == 0.1 and cfg.optim_wrapper.accumulative_counts == 2
        assert cfg.train_dataloader.batch_size == 1 and cfg.train_cfg.max_epochs == 12
        assert cfg.param_scheduler[0].milestones == [11]
    else:
        assert "out_indices" not in cfg.model.backbone
        assert cfg.optim_wrapper.clip_grad.max_norm == 0.01 and cfg.optim_wrapper.optimizer.eps == 1e-8
        assert cfg.train_dataloader.batch_size == 2 and cfg.train_cfg.max_iters == 160000
        assert cfg.param_scheduler[0].type == "PolyLR" and cfg.param_scheduler[0].power == 0.9
    assert cfg.optim_wrapper.paramwise_cfg.bias_decay_mult == 0.0
    assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0.0
    assert cfg.optim_wrapper.paramwise_cfg.flat_decay_mult == 0.0
    assert cfg.optim_wrapper.type == "OptimWrapper"  # fp32, as the official runs (their fp16 key is mmdet 2.x's)
