"""Agent-DeiT: official parity (fixtures of the official code at its training size and, loaded by the official
fine-tuning loader, at a larger size), the converter's resizing rule against the per-forward rule, the block layout of
each variant, the gradients of the class-token model, padding, loading routes, ONNX export of every variant's layout.
"""

from __future__ import annotations

import math
import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Attention

import visionattn
from visionattn.models.agent_deit import AgentDeiT, GridAgentAttention, checkpoint_filter_fn

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "agent_deit_reduced_official.pth"
# the official configuration of the fixtures (tests/fixtures/README.md), in our constructor's terms
REDUCED = dict(img_size=64, embed_dim=24, depth=3, num_heads=3, agent_layer=2, agent_num=9, num_classes=10)
OFFICIAL_PARAMS = {  # the official classification models, built on the CPU (README: 6.0M / 22.7M / 87.2M / 23.1M)
    "agent_deit_tiny": 6_015_640,
    "agent_deit_small": 22_647_112,
    "agent_deit_base": 87_204_904,
    "agent_deit_small_448": 23_070_472,
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _reduced(path: Path = OFFICIAL, **kwargs) -> AgentDeiT:
    kw = dict(REDUCED, **kwargs)
    overlay = dict(file=str(path), num_classes=10)
    return timm.create_model("agent_deit_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()


@pytest.fixture(scope="module")
def outputs() -> dict:
    return torch.load(FIXTURES / "agent_deit_reduced_outputs.pt", weights_only=True)


# ---------------------------------------------------------------------------------------------------------
# registry, layout


def test_registered_names_and_aliases():
    assert set(visionattn.list_models("agent_deit")) == set(OFFICIAL_PARAMS)
    for alias, target in (("agent_deit_t", "agent_deit_tiny"), ("agent_deit_s", "agent_deit_small"),
                          ("agent_deit_b", "agent_deit_base")):  # fmt: skip
        assert visionattn.get_family(alias).name == "agent_deit"
        assert timm.create_model(alias, device="meta").pretrained_cfg["architecture"] == target


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_layout_and_param_count_equal_official(name):
    """Parameter counts of the official models; agent attention in the official blocks (all, or Agent-DeiT-B's first
    4), agents 49 / 81, bias grid = img_size / 16; the other blocks are timm's attention."""
    model = timm.create_model(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    agents, window = (81, 14) if name == "agent_deit_base" else (49, 28 if name.endswith("448") else 14)
    n_agent = 4 if name == "agent_deit_base" else 12
    for i, block in enumerate(model.blocks):
        if i < n_agent:
            assert isinstance(block.attn, GridAgentAttention)
            assert (block.attn.agent_num, block.attn.bias_size, block.attn.num_prefix_tokens) == (
                agents,
                (window,) * 2,
                1,
            )
        else:
            assert type(block.attn) is Attention
    assert model.pretrained_cfg["url"].startswith("https://cloud.tsinghua.edu.cn/f/")


# ---------------------------------------------------------------------------------------------------------
# official parity


def test_logits_equal_official_at_the_training_size(outputs):
    """The official model's fp64 logits and block outputs (tests/fixtures/README.md) at 64 px, its training size."""
    model = _reduced()
    blocks = []
    hooks = [b.register_forward_hook(lambda _m, _i, o: blocks.append(o)) for b in model.blocks]
    with torch.no_grad():
        logits = model(outputs["input"].float())
    for h in hooks:
        h.remove()
    torch.testing.assert_close(logits.double(), outputs["logits"], atol=1e-5, rtol=0)
    for i, b in enumerate(blocks):
        torch.testing.assert_close(b.double(), outputs[f"block{i}"], atol=1e-5, rtol=0)
    with torch.no_grad():
        logits64 = model.double()(outputs["input"].double())
    torch.testing.assert_close(logits64, outputs["logits"], atol=1e-10, rtol=0)


def test_logits_at_a_larger_size_equal_official_fine_tuning_loader(outputs):
    """At 96 px the 64 px model resizes its position table and biases per forward; the fixture is the official model
    built for 96 px with the same weights loaded by the official ``load_pretrained`` (bicubic position table, 1-D
    linear row / column biases). The converter applies the same rule to a model built for 96 px."""
    with torch.no_grad():
        per_forward = _reduced()(outputs["input_96"].float())
        converted = _reduced(img_size=96)
        assert converted.blocks[0].attn.bias_size == (6, 6)
        at_load = converted(outputs["input_96"].float())
    torch.testing.assert_close(per_forward.double(), outputs["logits_96"], atol=1e-5, rtol=0)
    torch.testing.assert_close(at_load.double(), outputs["logits_96"], atol=1e-5, rtol=0)


def test_non_square_grid_per_forward_equals_converted_at_load():
    """A non-square grid (5 x 3 patches: rows upsampled, columns downsampled from 4 x 4): the per-forward rule (the
    layer's bilinear resize of the summed row + column biases) equals the converter's 1-D linear interpolation of each
    bias to a model built for that grid (no resize in its forward)."""
    sd = torch.load(OFFICIAL, weights_only=True)
    native = _reduced()
    built = timm.create_model("agent_deit_tiny", **dict(REDUCED, img_size=(80, 48))).eval()
    converted = checkpoint_filter_fn({k: v.float() for k, v in sd["model"].items()}, built)
    assert converted["blocks.0.attn.ah_bias"].shape[3] == 5 and converted["blocks.0.attn.aw_bias"].shape[4] == 3
    built.load_state_dict(converted)
    x = torch.randn(2, 3, 80, 48)
    with torch.no_grad():
        torch.testing.assert_close(native(x), built(x), atol=1e-5, rtol=0)


def test_converter_one_dimensional_rule_by_hand():
    """ah_bias (1, heads, agents, h, 1) from 4 to 6 rows: F.interpolate's linear rule, corners not aligned."""
    model = timm.create_model("agent_deit_tiny", **dict(REDUCED, img_size=96))
    sd = {k: v.float() for k, v in torch.load(OFFICIAL, weights_only=True)["model"].items()}
    out = checkpoint_filter_fn({"model": sd}, model)
    old = sd["blocks.1.attn.ah_bias"][0, :, :, :, 0]  # (heads, agents, 4)
    # output row i samples input coordinate (i + 0.5) * 4 / 6 - 0.5, clamped to [0, 3]
    expect = torch.empty(*old.shape[:2], 6)
    for i in range(6):
        src = min(max((i + 0.5) * 4 / 6 - 0.5, 0.0), 3.0)
        lo = int(src)
        hi = min(lo + 1, 3)
        expect[..., i] = old[..., lo] * (1 - (src - lo)) + old[..., hi] * (src - lo)
    torch.testing.assert_close(out["blocks.1.attn.ah_bias"][0, :, :, :, 0], expect)
    assert out["blocks.2.attn.qkv.weight"] is sd["blocks.2.attn.qkv.weight"]  # the plain block: as is


def test_training_save_with_yacs_config_loads(tmp_path, outputs):
    """An official training save ({'model', 'optimizer', 'config' (a yacs CfgNode), ...}) loads without unpickling
    the config, and gives the official logits."""
    sd = torch.load(OFFICIAL, weights_only=True)["model"]
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    saved = dict(sys.modules)
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        cfg = CfgNode(MODEL=CfgNode(TYPE="agent_deit_tiny"))
        path = tmp_path / "ckpt_epoch_299.pth"
        torch.save({"model": sd, "optimizer": {"state": {}}, "max_accuracy": 74.9, "epoch": 299, "config": cfg}, path)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    model = _reduced(path)
    assert "yacs.config" not in sys.modules
    with torch.no_grad():
        logits = model(outputs["input"].float())
    torch.testing.assert_close(logits.double(), outputs["logits"], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------
# sizes, gradients


def test_padding_to_the_patch_multiple():
    """A side that is not a multiple of 16 is zero-padded on the right / bottom: 70 x 50 equals 80 x 64 with zeros."""
    model = _reduced()
    x = torch.randn(1, 3, 70, 50)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(F.pad(x, (0, 14, 0, 10))), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="at least 32"):
        model(torch.randn(1, 3, 31, 64))


def test_class_token_head_leaves_the_last_blocks_patch_parameters_without_gradient():
    """With the class-token head (the official one) nothing reads the last block's patch tokens: exactly its
    patch-only parameters (na / ha / wa biases, the depth-wise conv) get no gradient, as in the official model (why
    the record's test_kwargs average every token for the shared all-gradients test)."""
    model = timm.create_model("agent_deit_tiny", **dict(REDUCED, agent_layer=3)).train()
    model(torch.randn(2, 3, 64, 64)).square().sum().backward()
    zero = {n for n, p in model.named_parameters() if not p.grad.abs().sum() > 0}
    last = "blocks.2.attn."
    assert zero == {last + n for n in ("na_bias", "ha_bias", "wa_bias", "dwc.weight", "dwc.bias")}


@pytest.mark.parametrize("out_indices, frozen", [((0, 1), {"blocks.1.attn.ca_bias"}), ((1, 2), set())])
def test_features_only_freezes_only_the_dead_class_token_bias(out_indices, frozen):
    """features_only prunes the head: the last kept block's class-token output is read by nothing, so an agent
    block's ``ca_bias`` is frozen there (a plain last block has no class-token-only parameter); every other parameter
    gets a gradient from the maps."""
    model = timm.create_model("agent_deit_tiny", features_only=True, out_indices=out_indices, **REDUCED).train()
    maps = model(torch.randn(2, 3, 80, 48))
    assert [tuple(m.shape) for m in maps] == [(2, 24, 5, 3)] * 2
    sum(m.square().sum() for m in maps).backward()
    assert {n.split("model.", 1)[-1] for n, p in model.named_parameters() if not p.requires_grad} == frozen
    zero = [n for n, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not zero


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="agent_layer=13"):
        AgentDeiT(depth=12, agent_layer=13, device="meta")
    with pytest.raises(ValueError, match="dynamic_img_size"):
        AgentDeiT(dynamic_img_size=False, device="meta")
    with pytest.raises(ValueError, match="perfect square"):
        AgentDeiT(agent_num=50, embed_dim=24, num_heads=3, depth=1, device="meta")


# ---------------------------------------------------------------------------------------------------------
# dense: the Mask R-CNN config on the shapes set


@pytest.mark.slow
def test_mask_rcnn_shapes_config_trains_and_validates(tmp_path):
    """configs/det/mask_rcnn_agent_deit_tiny_shapes.py on a reduced Agent-DeiT-T: a few iterations on a small shapes
    set with finite box and mask losses that get gradients into the backbone, then COCO bbox and segm metrics."""
    pytest.importorskip("mmdet")
    import importlib

    from mmengine.config import Config
    from mmengine.hooks import Hook

    from visionattn.dense.runner import build_runner

    cfg = Config.fromfile(str(Path(__file__).parents[1] / "configs/det/mask_rcnn_agent_deit_tiny_shapes.py"))
    for module in cfg.custom_imports.imports:
        importlib.import_module(module)
    from visionattn.dense.shapes import register_mm_datasets

    register_mm_datasets(det=True, seg=False)
    cfg.model.backbone.model_kwargs = dict(embed_dim=48, depth=4)  # every block an agent block, 49 agents
    root = str(tmp_path / "shapes")
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        loader.dataset.data_root = root
        loader.dataset.generate = dict(cfg.shapes, num_train=8, num_val=4)
        loader.batch_size = 4
    cfg.val_evaluator.ann_file = root + "/annotations/instances_val.json"
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=3, val_interval=3)
    cfg.param_scheduler = [dict(type="ConstantLR", factor=1.0, by_epoch=False)]
    cfg.default_hooks.pop("visualization")
    cfg.default_hooks.logger.interval = 1
    cfg.visualizer.name = f"visualizer_{tmp_path.name}"
    cfg.work_dir = str(tmp_path / "work")

    first_agent = {}

    class Snapshot(Hook):  # after the weights are initialised, before the first step
        def before_train(self, runner):
            for name, p in runner.model.backbone.named_parameters():
                if ".blocks.0.attn." in name:
                    first_agent[name] = p.detach().clone()

    runner = build_runner(cfg)
    runner.register_hook(Snapshot())
    runner.train()
    for key in ("train/loss_mask", "train/loss_bbox", "train/loss_rpn_cls"):
        values = runner.message_hub.get_scalar(key).data[0]
        assert len(values) == 3 and all(math.isfinite(v) for v in values), key
    # the first block's agent biases and projections were trained (the gradient reached them through the pyramid)
    params = dict(runner.model.backbone.named_parameters())
    assert {n.split(".attn.")[1] for n in first_agent} >= {"an_bias", "ah_bias", "ac_bias", "qkv.weight", "dwc.weight"}
    moved = [n for n, p0 in first_agent.items() if not torch.equal(params[n].detach(), p0)]
    assert sorted(moved) == sorted(first_agent)
    metrics = runner.message_hub.get_scalar("val/coco/segm_mAP").data[0]
    assert len(metrics) == 1 and metrics[0] >= 0


# ---------------------------------------------------------------------------------------------------------
# ONNX: every variant's layout at its native size


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, kwargs, size, extra",
    [
        ("agent_deit_tiny", {}, 224, [(3, 200, 152)]),  # the full model, and a non-square size it pads
        ("agent_deit_small", dict(embed_dim=48), 224, []),  # 6 heads, 49 agents from 14 x 14
        ("agent_deit_base", dict(embed_dim=48), 224, []),  # 12 heads, 81 agents in 4 blocks, 8 plain blocks
        ("agent_deit_small_448", dict(embed_dim=48), 448, []),  # 28 x 28 grid, 49 agents
    ],
)
def test_every_variant_exports_at_its_native_size(tmp_path, name, kwargs, size, extra):
    """Each variant (full width for T; the others' layout, agent count and bias grid at width 48) exports to ONNX at
    its native size and matches onnxruntime within 1e-4 (batch 1 and 2)."""
    pytest.importorskip("onnxruntime")
    from visionattn.export import export_onnx

    report = export_onnx(
        name, tmp_path / "m.onnx", (3, size, size), batch=1, check_batch=2, extra_sizes=extra, model_kwargs=kwargs
    )
    assert [c.input_size for c in report.checks] == [s for s in [(3, size, size), *extra] for _ in (1, 2)]
    assert all(c.ok and c.max_abs_err <= 1e-4 for c in report.checks), [c.max_abs_err for c in report.checks]
