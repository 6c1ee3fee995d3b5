"""Agent-CSwin: official parity (fixture), the converter, the stripe attention against a naive loop reference at
any size, the architecture of every variant against the official configs.

``_naive_stripes`` recomputes CSWin's cross-shaped attention stripe by stripe from the layer's weights, without
padding: each stripe is cut from the map as it is (the last one narrower), attended with an explicit softmax per
head and given its LePE by a 3x3 depth-wise conv of that stripe alone. It uses neither the layer's window layout
nor its mask nor SDPA.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

import visionattn
from visionattn.layers.agent_attention import AgentAttention
from visionattn.models.agent_cswin import (
    AgentBlock,
    AgentCSWin,
    CrossStripeAttention,
    StripeBlock,
    block_types,
    checkpoint_filter_fn,
)

FIXTURES = Path(__file__).parent / "fixtures"
# the official configuration of the fixture (tests/fixtures/README.md), in our constructor's terms
REDUCED = dict(
    img_size=128,
    embed_dim=8,
    depths=(1, 2, 1, 1),
    num_heads=(1, 2, 4, 8),
    mlp_ratio=2.0,
    split_size=(1, 2, 4, 4),
    attn_type="AMBB1",
    num_classes=10,
)
OFFICIAL_PARAMS = {  # the official models built on the CPU with their cfgs (README: 21M / 33M / 73M / 73M)
    "agent_cswin_tiny": 20_458_672,
    "agent_cswin_small": 32_814_100,
    "agent_cswin_base": 73_249_696,
    "agent_cswin_base_384": 73_328_416,
}
# official cfgs / constructors: depths, embed_dim, heads, stripes, training size, drop path of the training recipe
OFFICIAL_CFG = {
    "agent_cswin_tiny": ((2, 4, 18, 1), 64, (2, 4, 8, 16), (1, 2, 7, 7), 224),
    "agent_cswin_small": ((3, 6, 29, 2), 64, (2, 4, 8, 16), (1, 2, 7, 7), 224),
    "agent_cswin_base": ((3, 6, 29, 2), 96, (4, 8, 16, 32), (1, 2, 7, 7), 224),
    "agent_cswin_base_384": ((3, 6, 29, 2), 96, (4, 8, 16, 32), (1, 2, 12, 12), 384),
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _reduced(**kwargs) -> nn.Module:
    overlay = dict(file=str(FIXTURES / "agent_cswin_reduced_official.pth"), num_classes=10)
    kw = dict(REDUCED, **kwargs)
    return timm.create_model("agent_cswin_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()


# ---------------------------------------------------------------------------------------------------------
# registry, sizes, official parity


def test_registered_names_and_aliases():
    assert set(visionattn.list_models("agent_cswin")) == set(OFFICIAL_PARAMS)
    for alias, target in (
        ("agent_cswin_t", "agent_cswin_tiny"),
        ("agent_cswin_s", "agent_cswin_small"),
        ("agent_cswin_b", "agent_cswin_base"),
    ):
        assert visionattn.get_family(alias).name == "agent_cswin"
        assert _meta(alias).pretrained_cfg["architecture"] == target


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_equals_official(name):
    assert sum(p.numel() for p in _meta(name).parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("name", sorted(OFFICIAL_CFG))
def test_architecture_matches_official_config(name):
    depths, dim, heads, stripes, size = OFFICIAL_CFG[name]
    model = _meta(name)
    assert model.pretrained_cfg["input_size"] == (3, size, size)
    assert model.pretrained_cfg["url"].startswith("https://cloud.tsinghua.edu.cn/f/")
    grid = size // 4
    for i, stage in enumerate(model.stages):
        assert len(stage.blocks) == depths[i]
        for block in stage.blocks:
            assert block.norm1.eps == block.norm2.eps == 1e-5
            assert block.mlp.fc1.out_features == 4 * dim * 2**i
            if i < 2:  # AABB: global agent attention, biases at the stage grid (the official la_split)
                assert isinstance(block, AgentBlock)
                assert block.attn.num_heads == heads[i] and block.attn.agent_num == (9, 16)[i]
                assert block.attn.bias_size == (grid >> i, grid >> i) and block.attn.qkv.bias is not None
            else:
                assert isinstance(block, StripeBlock)
                assert block.attn.num_heads == heads[i] and block.attn.split_size == stripes[i]
                assert block.attn.branches == (2 if i == 2 else 1)
                assert block.attn.lepe[0].in_channels == dim * 2**i // block.attn.branches
    assert (
        model.stem.conv.kernel_size == (7, 7) and model.stem.conv.stride == (4, 4) and model.stem.conv.padding == (2, 2)
    )
    assert model.norm.eps == 1e-5 and model.num_features == dim * 8


def test_block_types_follow_the_official_attn_type_rule():
    assert block_types("AABB", (2, 1, 1, 1)) == [["A", "A"], ["A"], ["B"], ["B"]]
    assert block_types("AAMB2", (1, 1, 4, 1)) == [["A"], ["A"], ["A", "A", "B", "B"], ["B"]]
    model = AgentCSWin(embed_dim=8, depths=(1, 2, 1, 1), num_heads=(1, 2, 4, 8), attn_type="AMBB1", num_classes=0)
    assert [type(b) for b in model.stages[1].blocks] == [AgentBlock, StripeBlock]


def test_drop_path_linear_over_all_blocks():
    model = _meta("agent_cswin_tiny", drop_path_rate=0.2)
    rates = [
        b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for s in model.stages for b in s.blocks
    ]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.2, 25))


def test_official_parity_at_the_native_size():
    model = _reduced()
    ref = torch.load(FIXTURES / "agent_cswin_reduced_outputs.pt", weights_only=True)
    x = ref["input"].float()
    with torch.no_grad():
        logits = model(x)
        stages = model.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-5)
    for i, stage in enumerate(stages):
        torch.testing.assert_close(stage, ref[f"stage{i}"], rtol=0, atol=1e-5)


def test_fixture_exercises_every_block_kind():
    """The reduced model holds A blocks (pooling 32 -> 3, not a divisor), two-branch stripes (stages 2-3) and the
    global branch (stage 4), and its agent biases are far from zero, so the parity above checks all of them."""
    model = _reduced()
    kinds = [(type(b).__name__, getattr(b.attn, "branches", 0)) for s in model.stages for b in s.blocks]
    assert kinds == [("AgentBlock", 0), ("AgentBlock", 0), ("StripeBlock", 2), ("StripeBlock", 2), ("StripeBlock", 1)]
    assert model.stages[0].blocks[0].attn.an_bias.abs().mean() > 0.2


# ---------------------------------------------------------------------------------------------------------
# converter and loading


def test_converter_key_mapping():
    sd = torch.load(FIXTURES / "agent_cswin_reduced_official.pth", weights_only=True)
    model = AgentCSWin(**REDUCED)
    out = checkpoint_filter_fn(sd, model)
    assert set(out) == set(model.state_dict())
    official = sd["model"]
    pairs = {
        "stage1_conv_embed.0.weight": "stem.conv.weight",
        "stage1_conv_embed.2.bias": "stem.norm.bias",
        "merge2.conv.weight": "stages.2.downsample.conv.weight",
        "stage1.0.qkv.weight": "stages.0.blocks.0.attn.qkv.weight",
        "stage1.0.proj.bias": "stages.0.blocks.0.attn.proj.bias",
        "stage1.0.attns.0.get_v.weight": "stages.0.blocks.0.attn.dwc.weight",
        "stage2.0.attns.0.wa_bias": "stages.1.blocks.0.attn.wa_bias",
        "stage2.1.attns.1.get_v.weight": "stages.1.blocks.1.attn.lepe.1.weight",
        "stage4.0.attns.0.get_v.bias": "stages.3.blocks.0.attn.lepe.0.bias",
        "head.weight": "head.fc.weight",
    }
    for src, dst in pairs.items():
        assert torch.equal(out[dst], official[src]), (src, dst)
    # an already converted state_dict (and a DataParallel prefix) passes through
    assert checkpoint_filter_fn(out, model) == out
    prefixed = {"module." + k: v for k, v in official.items()}
    assert set(checkpoint_filter_fn({"state_dict": prefixed}, model)) == set(out)


def test_training_save_with_yacs_config_loads(tmp_path):
    """An official training save ({'model', 'optimizer', 'config' (a yacs CfgNode), ...}) loads without unpickling
    the config."""
    import sys
    import types

    sd = torch.load(FIXTURES / "agent_cswin_reduced_official.pth", weights_only=True)["model"]
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):
        pass

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    saved = dict(sys.modules)
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        cfg = CfgNode(MODEL=CfgNode(TYPE="Agent_CSWin_64_24181_tiny_224", AGENT=CfgNode(ATTN_TYPE="AABB")))
        path = tmp_path / "ckpt_epoch_299.pth"
        torch.save({"model": sd, "optimizer": {"state": {}}, "max_accuracy": 83.1, "epoch": 299, "config": cfg}, path)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    overlay = dict(file=str(path), num_classes=10)
    model = timm.create_model("agent_cswin_tiny", pretrained=True, pretrained_cfg_overlay=overlay, **REDUCED)
    assert "yacs.config" not in sys.modules
    ref = _reduced()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------------------
# the stripe attention at any size against a naive reference


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n, d) queries against (m, d) keys / values, explicit softmax."""
    logits = (q @ k.T) * q.shape[-1] ** -0.5
    w = torch.exp(logits - logits.amax(-1, keepdim=True))
    return (w / w.sum(-1, keepdim=True)) @ v


def _naive_stripes(layer: CrossStripeAttention, x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, C) -> (B, H, W, C): each stripe cut as it is (the last one narrower), no padding."""
    b, h, w, c = x.shape
    qkv = layer.qkv(x)
    q_all, k_all, v_all = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    width = c // layer.branches
    heads = layer.num_heads // layer.branches
    d = width // heads
    out = torch.zeros(b, h, w, c, dtype=x.dtype)
    s = layer.split_size
    for br, conv in enumerate(layer.lepe):
        ch = slice(br * width, (br + 1) * width)
        if layer.branches == 1:
            windows = [(slice(0, h), slice(0, w))]
        elif br == 0:  # vertical stripes: all rows, s columns
            windows = [(slice(0, h), slice(j, min(j + s, w))) for j in range(0, w, s)]
        else:
            windows = [(slice(i, min(i + s, h)), slice(0, w)) for i in range(0, h, s)]
        for bi in range(b):
            for rs, cs in windows:
                q, k, v = (t[bi, rs, cs, ch] for t in (q_all, k_all, v_all))  # (wh, ww, width)
                wh, ww = q.shape[:2]
                lepe = F.conv2d(v.permute(2, 0, 1)[None], conv.weight, conv.bias, padding=1, groups=width)[0]
                for hd in range(heads):
                    hs = slice(hd * d, (hd + 1) * d)
                    o = _attend(q[..., hs].reshape(-1, d), k[..., hs].reshape(-1, d), v[..., hs].reshape(-1, d))
                    out[bi, rs, cs, br * width + hd * d : br * width + (hd + 1) * d] = o.reshape(wh, ww, d)
                out[bi, rs, cs, ch] += lepe.permute(1, 2, 0)
    return layer.proj(out)


@pytest.mark.parametrize(
    "size,split,branches",
    [((8, 8), 4, 2), ((11, 9), 4, 2), ((5, 13), 7, 2), ((3, 2), 7, 2), ((6, 7), 7, 1), ((1, 1), 2, 2)],
)
def test_stripe_attention_matches_naive_reference(size, split, branches):
    torch.manual_seed(0)
    layer = CrossStripeAttention(16, 4, split_size=split, branches=branches).double().eval()
    for conv in layer.lepe:
        nn.init.normal_(conv.weight, std=0.3)
        nn.init.normal_(conv.bias, std=0.3)
    x = torch.randn(2, *size, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _naive_stripes(layer, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("hw", [(32, 32), (100, 76), (61, 37)])
def test_model_any_size(hw):
    torch.manual_seed(0)
    model = AgentCSWin(**REDUCED).eval()
    with torch.no_grad():
        feats = model.forward_intermediates(torch.randn(1, 3, *hw), intermediates_only=True)
    h, w = (hw[0] - 3) // 4 + 1, (hw[1] - 3) // 4 + 1
    for f in feats:
        assert f.shape[-2:] == (h, w) and torch.isfinite(f).all()
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1


def test_agent_shapes_reach_the_agent_blocks():
    model = _meta("agent_cswin_tiny", agent_shapes=((9, 9), (12, 12), (14, 14), (7, 7)))
    layers = [b.attn for s in model.stages for b in s.blocks if isinstance(b.attn, AgentAttention)]
    assert {layer.agent_shape for layer in layers[:2]} == {(9, 9)} and layers[-1].agent_shape == (12, 12)


def test_dense_recipe_is_cswin_segmentation_norms():
    recipe = visionattn.get_family("agent_cswin_tiny").dense
    assert recipe.out_norm == "ln2d" and recipe.out_norm_eps == 1e-5 and not recipe.model_kwargs


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="attn_type"):
        AgentCSWin(attn_type="AAXB")
    with pytest.raises(ValueError, match="attn_type"):
        AgentCSWin(attn_type="AAMB")
    with pytest.raises(ValueError, match="split_size"):
        CrossStripeAttention(16, 4, split_size=0)
    with pytest.raises(ValueError, match="branches"):
        CrossStripeAttention(16, 4, branches=3)
    with pytest.raises(ValueError, match="depths"):
        AgentCSWin(depths=(1, 1, 1))
    with pytest.raises(ValueError, match="img_size"):
        AgentCSWin(img_size=16)
    with pytest.raises(ValueError, match=r"input 31x64"):
        AgentCSWin(**REDUCED)(torch.randn(1, 3, 31, 64))


def test_dense_backbone_norms_each_stage_output():
    """Through the shared adapter: the four stage maps of the classification model, each LayerNorm-ed over channels
    (eps 1e-5, CSWin's segmentation backbone), at a non-square size."""
    pytest.importorskip("mmengine")
    from visionattn.dense.backbone import VisionAttnBackbone

    kwargs = {k: v for k, v in REDUCED.items() if k != "num_classes"}
    backbone = VisionAttnBackbone("agent_cswin_tiny", model_kwargs=kwargs).eval()
    model = AgentCSWin(**kwargs, num_classes=0).eval()
    # the trunk is timm's FeatureListNet, whose flattened stages are named stages_{i}
    trunk = {k.replace("stages_", "stages.", 1): v for k, v in backbone.trunk.state_dict().items()}
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    assert sorted(missing) == ["norm.bias", "norm.weight"] and not unexpected  # the final norm is not a trunk part
    x = torch.randn(1, 3, 100, 76)
    with torch.no_grad():
        outs = backbone(x)
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert len(outs) == 4
    for out, ref in zip(outs, maps):
        ref = F.layer_norm(ref.permute(0, 2, 3, 1), ref.shape[1:2], eps=1e-5).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
