"""Agent-PVT: official parity (fixtures), the any-size rule, the converter, the model's arguments.

References: ``tests/fixtures/agent_pvt_reduced_*`` hold a reduced Agent-PVT (both block kinds: agent attention in
stages 1, 3, 4, spatial-reduction attention in stage 2) with the outputs of the official classification model at its
native size and of the official dense backbone at a non-square size, with the official dense agent grids and with the
trained ones (tests/fixtures/README.md). The converter's resize of weights trained at another size is checked against
linear interpolation written out by hand.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import visionattn
from visionattn.models.agent_pvt import DENSE_AGENT_SHAPES, AgentPVT, checkpoint_filter_fn, resize_pos_embed

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "agent_pvt_reduced_official.pth"
# the official configuration of the fixture (tests/fixtures/README.md), in our constructor's terms
REDUCED = dict(img_size=112, embed_dims=(8, 16, 24, 32), num_heads=(1, 2, 3, 4), depths=(1, 1, 1, 1), attn_type="ABAA")

pytestmark = pytest.mark.usefixtures("one_thread")


def _outputs() -> dict:
    return torch.load(FIXTURES / "agent_pvt_reduced_outputs.pt", weights_only=True)


def _reduced(**kwargs) -> AgentPVT:
    """The fixture's model with the official weights, loaded through pretrained=True and a local file."""
    args = dict(REDUCED, **kwargs)
    model = timm.create_model(
        "agent_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(WEIGHTS), num_classes=10), **args
    )
    return model.eval()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
def test_matches_official_classification_model(dtype, tol):
    """Logits of the official classification model (float64 run) at its native size (112 for the fixture)."""
    ref = _outputs()
    model = _reduced().to(dtype)
    with torch.no_grad():
        logits = model(ref["input"].to(dtype))
    torch.testing.assert_close(logits.double(), ref["logits"], rtol=0, atol=tol)


@pytest.mark.parametrize("grids", ["dense", "trained"])
def test_matches_official_dense_backbone_at_a_non_square_size(grids):
    """The four stage maps of the official dense backbone on a 64x100 input (stage grids 16x25, 8x12, 4x6, 2x3: the
    position embeddings and the agent biases resized): with the official dense agent grids (12,12), (16,16), (28,28),
    (28,28) and with the trained ones (3,3), (4,4), (7,7), (7,7), which is the classification model at any size."""
    ref = _outputs()
    model = _reduced(agent_shapes=DENSE_AGENT_SHAPES if grids == "dense" else None)
    with torch.no_grad():
        outs = model.forward_intermediates(ref["dense_input"].float(), intermediates_only=True)
    assert [tuple(o.shape) for o in outs] == [(1, 8, 16, 25), (1, 16, 8, 12), (1, 24, 4, 6), (1, 32, 2, 3)]
    for i, o in enumerate(outs):
        torch.testing.assert_close(o, ref[f"{grids}_out{i}"], rtol=0, atol=1e-5, msg=f"stage {i}")


def test_agent_grid_changes_the_output():
    """The dense agent grids are not a no-op at that size: the two official runs differ, and so do ours."""
    ref = _outputs()
    assert (ref["dense_out3"] - ref["trained_out3"]).abs().max() > 1e-3


def test_training_save_with_yacs_config_loads(tmp_path):
    """An official training save ({'model', 'optimizer', 'config' (a yacs CfgNode), ...}) loads without unpickling
    the config, and gives the official logits."""
    sd = torch.load(WEIGHTS, weights_only=True)["model"]
    yacs, config = types.ModuleType("yacs"), types.ModuleType("yacs.config")

    class CfgNode(dict):  # yacs' CfgNode as pickle sees it: a dict subclass with two instance attributes
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.__dict__["__immutable__"] = False
            self.__dict__["__deprecated_keys__"] = set()

    CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
    config.CfgNode, yacs.config = CfgNode, config
    saved = dict(sys.modules)
    sys.modules.update({"yacs": yacs, "yacs.config": config})
    try:
        cfg = CfgNode(MODEL=CfgNode(TYPE="agent_pvt_tiny", AGENT=CfgNode(ATTN_TYPE="AAAA", NUM="9-16-49-49")))
        path = tmp_path / "max_acc.pth"
        torch.save({"model": sd, "optimizer": {}, "max_accuracy": 78.4, "epoch": 299, "config": cfg}, path)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    model = timm.create_model(
        "agent_pvt_tiny", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **REDUCED
    ).eval()
    assert "yacs.config" not in sys.modules
    ref = _outputs()
    with torch.no_grad():
        torch.testing.assert_close(model(ref["input"].float()).double(), ref["logits"], rtol=0, atol=1e-5)


def test_converter_layouts():
    """Official classification keys, a detector's state_dict (``backbone.`` prefix, neck / head keys) and our own
    layout all give the same state_dict; agent blocks get q and kv fused, the spatial-reduction block keeps them."""
    official = torch.load(WEIGHTS, weights_only=True)
    model = AgentPVT(num_classes=10, **REDUCED)
    ours = checkpoint_filter_fn(official, model)
    assert set(ours) == set(model.state_dict())
    sd = official["model"]
    fused = torch.cat([sd["block1.0.attn.q.weight"], sd["block1.0.attn.kv.weight"]])
    torch.testing.assert_close(ours["stages.0.blocks.0.attn.qkv.weight"], fused)
    assert "stages.1.blocks.0.attn.q.weight" in ours and "stages.1.blocks.0.attn.kv.bias" in ours
    detector = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("head.")}
    detector["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    from_det = checkpoint_filter_fn({"state_dict": detector, "meta": {}}, model)
    assert set(from_det) == set(ours) - {"head.fc.weight", "head.fc.bias"}
    assert all(torch.equal(from_det[k], ours[k]) for k in from_det)
    again = checkpoint_filter_fn(ours, model)
    assert all(torch.equal(again[k], ours[k]) for k in ours)


def _linear_resize(t: torch.Tensor, size: int) -> torch.Tensor:
    """(..., n) -> (..., size): linear interpolation, sample i at source position (i + 0.5) * n / size - 0.5,
    clamped to the ends (corners not aligned), written out."""
    n = t.shape[-1]
    out = []
    for i in range(size):
        src = min(max((i + 0.5) * n / size - 0.5, 0.0), n - 1)
        lo = int(src)
        hi = min(lo + 1, n - 1)
        frac = src - lo
        out.append(t[..., lo] * (1 - frac) + t[..., hi] * frac)
    return torch.stack(out, dim=-1)


def test_converter_resizes_weights_trained_at_another_size():
    """Weights trained at 112 into a 128 model (the official fine-tuning rule): row / column agent biases linear,
    position embeddings bicubic; the model loads them strictly."""
    official = torch.load(WEIGHTS, weights_only=True)
    sd = {k: v.double() if v.is_floating_point() else v for k, v in official["model"].items()}
    model = AgentPVT(num_classes=10, **dict(REDUCED, img_size=128)).double()
    out = checkpoint_filter_fn({"model": sd}, model)
    model.load_state_dict(out, strict=True)
    ah = sd["block1.0.attn.ah_bias"]  # (1, heads, agents, 28, 1) -> 32 rows
    torch.testing.assert_close(
        out["stages.0.blocks.0.attn.ah_bias"], _linear_resize(ah[..., 0], 32)[..., None], rtol=0, atol=1e-12
    )
    wa = sd["block4.0.attn.wa_bias"]  # (1, heads, 1, 3, agents) -> 4 columns
    torch.testing.assert_close(
        out["stages.3.blocks.0.attn.wa_bias"],
        _linear_resize(wa.transpose(-1, -2), 4).transpose(-1, -2),
        rtol=0,
        atol=1e-12,
    )
    pos = sd["pos_embed2"].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(pos, size=(16, 16), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    torch.testing.assert_close(out["stages.1.pos_embed"], expected, rtol=0, atol=1e-12)


def test_resize_pos_embed_is_the_identity_at_the_training_grid_and_bilinear_elsewhere():
    pos = torch.randn(1, 4 * 6, 3, dtype=torch.float64)
    assert torch.equal(resize_pos_embed(pos, (4, 6), (4, 6)), pos)
    out = resize_pos_embed(pos, (4, 6), (4, 12))
    grid = pos.reshape(4, 6, 3)
    # doubling the width, corners not aligned: output column j samples source column (j + 0.5) / 2 - 0.5
    expected = _linear_resize(grid.permute(0, 2, 1), 12).permute(0, 2, 1)
    torch.testing.assert_close(out.reshape(4, 12, 3), expected, rtol=0, atol=1e-12)


def test_record_and_official_configuration():
    family = visionattn.get_family("agent_pvt")
    assert family.dense.out_norm == "none"
    assert family.dense.model_kwargs["agent_shapes"] == ((12, 12), (16, 16), (28, 28), (28, 28))
    assert visionattn.get_family("agent_pvt_l").name == "agent_pvt"
    with torch.device("meta"):
        model = timm.create_model("agent_pvt_medium_256")
    assert model.stages[0].grid_size == (64, 64) and model.stages[3].grid_size == (8, 8)
    attn = model.stages[2].blocks[0].attn
    assert (attn.agent_num, attn.num_heads, attn.bias_size) == (49, 5, (16, 16))
    assert [len(s.blocks) for s in model.stages] == [3, 4, 18, 3]
    assert model.stages[0].blocks[0].norm1.eps == 1e-6 and model.patch_embed.norm.eps == 1e-5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(attn_type="AAAC"), r"attn_type='AAAC'.*'A'.*'B'"),
        (dict(attn_type="AAA"), r"attn_type='AAA'.*4 letters"),
        (dict(agent_num=(9, 16, 48, 49)), r"agent_num\[2\]=48 must be a perfect square"),
        (dict(agent_shapes=((12, 12),)), r"agent_shapes=.*4 entries"),
        (dict(num_heads=(1, 2, 7, 8)), r"num_heads\[2\]=7 must divide embed_dims\[2\]=320"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        with torch.device("meta"):
            AgentPVT(**kwargs)


def test_group_matcher_orders_layer_decay_by_depth():
    """timm's layer-wise lr decay over group_matcher: every parameter in one group, the stem lowest, each stage's
    patch / position embedding with its first block (timm's convention for downsampling), later blocks higher, the
    head at 1."""
    from timm.optim import param_groups_layer_decay

    model = AgentPVT(**dict(REDUCED, depths=(1, 2, 1, 1)))
    groups = param_groups_layer_decay(model, layer_decay=0.5)
    names = {id(p): n for n, p in model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert set(scale) == set(names.values())
    assert scale["patch_embed.proj.weight"] == min(scale.values()) < scale["stages.0.pos_embed"]
    assert scale["head.fc.weight"] == 1.0
    assert (
        scale["stages.1.pos_embed"]
        == scale["stages.1.patch_embed.proj.weight"]
        == scale["stages.1.blocks.0.norm1.weight"]
    )
    assert scale["stages.1.blocks.0.norm1.weight"] < scale["stages.1.blocks.1.mlp.fc2.weight"]
    assert scale["stages.1.blocks.1.mlp.fc2.weight"] < scale["stages.2.patch_embed.proj.weight"]


def test_onnx_graph_exported_at_the_training_size_holds_at_other_sizes(tmp_path):
    """A graph with dynamic height / width traced at the training size keeps the position-embedding and bias resizes
    (identities there): onnxruntime matches PyTorch at 112 and at two other sizes."""
    pytest.importorskip("onnxruntime")
    from visionattn.export import export_onnx

    model = _reduced()
    report = export_onnx(
        model, tmp_path / "m.onnx", (3, 112, 112), dynamic_size=True, extra_sizes=[(3, 96, 80), (3, 64, 100)]
    )
    assert len(report.paths) == 1
    assert [c.input_size for c in report.checks][-1] == (3, 64, 100) and all(c.ok for c in report.checks)
