"""Agent-Swin: official parity (classification logits, dense backbone maps), the converter, the block kinds of
``attn_type``, the any-size rule against independent references, and the official configurations."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.swin_transformer import SwinTransformerBlock

import visionattn  # noqa: F401  (registers the models)
from visionattn.layers.agent_attention import AgentAttention
from visionattn.models.agent_swin import AgentSwinBlock, checkpoint_filter_fn, parse_attn_type

FIXTURES = Path(__file__).resolve().parent / "fixtures"
# the reduced official model of the fixture (tests/fixtures/README.md, Agent-Swin)
REDUCED = dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), attn_type="AAMB1", num_classes=10)
DENSE = dict(agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7)), always_partition=True)

pytestmark = pytest.mark.usefixtures("one_thread")


def fixture_input(h: int, w: int) -> torch.Tensor:
    """The fixture's input: a fixed pattern of incommensurate frequencies (no RNG), (1, 3, h, w) float64."""
    i = torch.arange(h, dtype=torch.float64)[:, None]
    j = torch.arange(w, dtype=torch.float64)[None, :]
    chans = [
        torch.sin(0.9 * i + 2.3 * j + 1.7 * c) * torch.cos(1.3 * i - 0.7 * j + 0.5 * c)
        + 0.5 * torch.sin(0.031 * i * j + c)
        for c in range(3)
    ]
    return torch.stack(chans)[None]


@pytest.fixture(scope="module")
def official():
    weights = torch.load(FIXTURES / "agent_swin_reduced_official.pth", weights_only=True)
    outputs = torch.load(FIXTURES / "agent_swin_reduced_outputs.pt", weights_only=True)
    return {k: v.float() for k, v in weights["model"].items()}, outputs


def _reduced(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("agent_swin_tiny", **REDUCED, **kwargs).eval()


def test_official_logits(official):
    """Converted official weights -> our model -> the official classification model's logits at 224 (fp32)."""
    weights, outputs = official
    model = _reduced()
    state = checkpoint_filter_fn({"model": weights}, model)
    assert not [k for k in state if k.startswith(("norm0", "norm1", "norm2", "norm3"))]
    model.load_state_dict(state, strict=True)
    x = fixture_input(224, 224).float()
    with torch.no_grad():
        logits = model(x)
        pooled = model.forward_head(model.forward_features(x), pre_logits=True)
    torch.testing.assert_close(logits.double(), outputs["logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled.double(), outputs["pooled"], rtol=0, atol=1e-5)


def test_official_dense_maps_non_square(official):
    """The official dense backbone (agent grids 9-12-14-7, B windows never clamped, LayerNorm per output) at
    224x448 on the same weights: our model with the dense recipe's arguments plus the output norms."""
    weights, outputs = official
    model = _reduced(**DENSE)
    model.load_state_dict(checkpoint_filter_fn(weights, model), strict=True)
    x = fixture_input(224, 224).float()
    x = torch.cat([x, x.flip(-1)], dim=-1)
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    for i, m in enumerate(maps):
        w, b = weights[f"norm{i}.weight"], weights[f"norm{i}.bias"]
        y = F.layer_norm(m.permute(0, 2, 3, 1), (m.shape[1],), w, b, eps=1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(y[:, :, ::2, ::2], outputs[f"dense_stage{i}"], rtol=0, atol=1e-5, msg=f"map {i}")


def test_converter_layout_and_buffers(official):
    """Official keys -> ours: downsample moves to the next stage, head -> head.fc, rebuilt buffers and the dense
    norms dropped, ``module.`` prefixes stripped; our own layout passes through."""
    weights, _ = official
    model = _reduced()
    src = {"module." + k: v for k, v in weights.items()}
    src["module.layers.2.blocks.1.attn_mask"] = torch.zeros(4, 49, 49)
    src["module.layers.2.blocks.1.attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
    out = checkpoint_filter_fn({"model": src, "epoch": 3}, model)
    assert "layers.1.downsample.reduction.weight" in out and "layers.0.downsample.reduction.weight" not in out
    torch.testing.assert_close(out["layers.3.downsample.norm.weight"], weights["layers.2.downsample.norm.weight"])
    torch.testing.assert_close(out["head.fc.weight"], weights["head.weight"])
    assert set(out) == set(model.state_dict())
    again = checkpoint_filter_fn(model.state_dict(), model)
    assert again.keys() == model.state_dict().keys()


def test_converter_resizes_to_another_training_size(official):
    """A 224 checkpoint into a 288 model (the official fine-tuning route): the row / column agent biases are
    resized linearly along their spatial axis, and the result equals that interpolation."""
    weights, _ = official
    model = _reduced(img_size=288)
    state = checkpoint_filter_fn(weights, model)
    model.load_state_dict(state, strict=True)
    src = weights["layers.0.blocks.0.attn.ah_bias"]  # (1, heads, agents, 56, 1) -> 72 rows
    expect = F.interpolate(src[..., 0].reshape(-1, 1, 56), size=72, mode="linear", align_corners=False)
    torch.testing.assert_close(state["layers.0.blocks.0.attn.ah_bias"], expect.reshape(1, 1, 9, 72, 1))
    src = weights["layers.0.blocks.0.attn.wa_bias"]  # (1, heads, 1, 56, agents)
    expect = F.interpolate(src[0, :, 0].transpose(1, 2).reshape(-1, 1, 56), size=72, mode="linear")
    got = state["layers.0.blocks.0.attn.wa_bias"][0, :, 0].transpose(1, 2).reshape(-1, 1, 72)
    torch.testing.assert_close(got, expect)


@pytest.mark.parametrize(
    "attn_type, depths, expect",
    [
        ("AAAB", (2, 2, 6, 2), [["A"] * 2, ["A"] * 2, ["A"] * 6, ["B"] * 2]),
        ("AABB", (2, 2, 18, 2), [["A"] * 2, ["A"] * 2, ["B"] * 18, ["B"] * 2]),
        ("AAMB2", (2, 2, 18, 2), [["A"] * 2, ["A"] * 2, ["A"] * 2 + ["B"] * 16, ["B"] * 2]),
    ],
)
def test_attn_type_block_kinds(attn_type, depths, expect):
    assert parse_attn_type(attn_type, depths) == expect


@pytest.mark.parametrize("bad", ["AAA", "AAXB", "AAMB", "AAAB2", "AAMBx"])
def test_attn_type_errors(bad):
    with pytest.raises(ValueError, match="attn_type"):
        parse_attn_type(bad, (2, 2, 6, 2))


@pytest.mark.parametrize(
    "name, window, img, kinds3, dpr",
    [
        ("agent_swin_tiny", 7, 224, "AAA", 0.2),
        ("agent_swin_small", 7, 224, "BBB", 0.3),
        ("agent_swin_base", 7, 224, "AAB", 0.5),
        ("agent_swin_small_288", 9, 288, "BBB", 0.3),
        ("agent_swin_base_384", 12, 384, "AAB", 0.5),
    ],
)
def test_official_configuration(name, window, img, kinds3, dpr):
    """Blocks, windows, shifts, bias grids and drop path of each variant, as the official cfgs/agent_swin_*.yaml
    build them (B window max(7, WINDOW_SIZE // 8), clamped without shift where the stage grid is not larger)."""
    with torch.device("meta"):
        model = timm.create_model(name)
    grids = [img // 4 // 2**i for i in range(4)]
    for stage, grid in zip(model.layers, grids):
        for i, block in enumerate(stage.blocks):
            if isinstance(block, AgentSwinBlock):
                assert block.attn.bias_size == (grid, grid)
                assert block.attn.agent_shape == (block.attn.pool_size,) * 2
            else:
                assert isinstance(block, SwinTransformerBlock)
                win = min(window, grid)
                shift = 0 if (i % 2 == 0 or grid <= window) else window // 2
                assert block.window_size == (win, win) and block.shift_size == (shift, shift)
    third = model.layers[2].blocks
    got = "".join("A" if isinstance(b, AgentSwinBlock) else "B" for b in third[:3])
    assert got == kinds3
    agents = [s.blocks[0].attn.agent_num for s in model.layers if isinstance(s.blocks[0], AgentSwinBlock)]
    assert agents == [9, 16, 49][: len(agents)]
    rates = [m.drop_prob for m in model.modules() if hasattr(m, "drop_prob")]
    assert max(rates) == pytest.approx(dpr)


def test_agent_block_is_global_attention_on_the_actual_grid():
    """An A block at a size off its training grid equals the layer applied to the whole unpadded map (the
    layer's own resizing rule), inside the pre-norm residual block."""
    torch.manual_seed(0)
    block = AgentSwinBlock(16, num_heads=2, agent_num=9, bias_size=(14, 14)).eval()
    x = torch.randn(2, 9, 13, 16)
    with torch.no_grad():
        out = block(x)
        flat = x.reshape(2, 9 * 13, 16)
        ref = flat + block.attn(block.norm1(flat), (9, 13))
        ref = (ref + block.mlp(block.norm2(ref))).reshape(2, 9, 13, 16)
    torch.testing.assert_close(out, ref)
    assert isinstance(block.attn, AgentAttention)


def test_any_size_padding_is_right_bottom():
    """A non-multiple input: the patch embedding zero-pads right / bottom (so the top-left 4x4 patches see the
    same pixels as in the padded image run directly)."""
    model = _reduced()
    x = torch.randn(1, 3, 65, 97)
    padded = F.pad(x, (0, 3, 0, 3))
    with torch.no_grad():
        torch.testing.assert_close(model.patch_embed(x), model.patch_embed(padded))
        assert model.patch_embed(x).shape[-2:] == (17, 25)


def test_size_error_names_the_size():
    model = _reduced()
    with pytest.raises(ValueError, match=r"31x40.*resize or pad"):
        model(torch.randn(1, 3, 31, 40))


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="agent_num"):
        timm.create_model("agent_swin_tiny", agent_num=(9, 16, 49), device="meta")
    with pytest.raises(ValueError, match="agent_shapes"):
        timm.create_model("agent_swin_tiny", agent_shapes=((9, 9),), device="meta")
    with pytest.raises(ValueError, match="window_size"):
        timm.create_model("agent_swin_tiny", window_size=0, device="meta")


@pytest.mark.parametrize("hw", [(56, 56), (21, 35), (14, 28)])
def test_shift_mask_equals_timm(hw):
    """Our leaf-function shift mask equals timm's ``get_attn_mask`` (the reference) on padded maps."""
    from visionattn.models.agent_swin import shifted_window_mask

    block = SwinTransformerBlock(8, input_resolution=(56, 56), num_heads=1, window_size=7, shift_size=3)
    x = torch.zeros(1, *hw, 8)
    torch.testing.assert_close(shifted_window_mask(x, (7, 7), (3, 3)), block.get_attn_mask(x), rtol=0, atol=0)


def test_b_blocks_at_another_size_follow_timm():
    """A B block at a size that needs padding computes timm's own block (same weights, timm's dynamic mask)."""
    torch.manual_seed(0)
    model = _reduced()
    ours = model.layers[2].blocks[1]  # shifted B block of stage 3
    ref = SwinTransformerBlock(
        32, input_resolution=(14, 14), num_heads=2, window_size=7, shift_size=3, dynamic_mask=True
    ).eval()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 9, 12, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))


def test_training_save_with_yacs_config_loads_through_pretrained(tmp_path, official):
    """The official release format ({'model', 'optimizer', 'lr_scheduler', 'max_accuracy', 'epoch', 'config'}, the
    config a pickled yacs CfgNode) through ``pretrained=True`` and a local file: nothing unpickled beyond tensors and
    the config as a plain dict, keys converted, the official logits reproduced."""
    import sys
    import types

    weights, outputs = official
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__["__immutable__"] = False
            self.__dict__["__deprecated_keys__"] = set()

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    saved = dict(sys.modules)
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        cfg = CfgNode(MODEL=CfgNode(TYPE="agent_swin", AGENT=CfgNode(ATTN_TYPE="AAMB1", NUM="9-16-49-49")))
        save = {"model": weights, "optimizer": {"state": {}}, "lr_scheduler": {}, "max_accuracy": 82.6}
        path = tmp_path / "agent_swin_t_max_acc.pth"
        torch.save({**save, "epoch": 299, "config": cfg}, path)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    assert "yacs.config" not in sys.modules
    kwargs = {k: v for k, v in REDUCED.items() if k != "num_classes"}
    model = timm.create_model(
        "agent_swin_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **kwargs
    ).eval()
    assert "yacs.config" not in sys.modules
    with torch.no_grad():
        logits = model(fixture_input(224, 224).float())
    torch.testing.assert_close(logits.double(), outputs["logits"], rtol=0, atol=1e-5)
