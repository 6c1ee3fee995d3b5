"""Sparsifiner: official parity (logits and selected keys), the sparse path against dense masked attention at any
size, keep rate 1 against timm's plain ViT, the token-axis resampling rule, the converter, the Triton path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from visionattn.kernels import _dispatch, last_path

import visionattn
from visionattn.models.sparsifiner import MaskPredictor, checkpoint_filter_fn

pytestmark = pytest.mark.usefixtures("one_thread")
FIXTURES = Path(__file__).parent / "fixtures"
REDUCED = {  # the fixture models' widths (tests/fixtures/README.md)
    "sparsifiner_deit_small": ("deit", dict(embed_dim=64, depth=2, num_heads=2)),
    "sparsifiner_lvvit_small": ("lvvit", dict(embed_dim=32, depth=2, num_heads=2)),
}


def _official(name: str, **kwargs):
    short, widths = REDUCED[name]
    file = FIXTURES / f"sparsifiner_{short}_reduced_official.pth"
    overlay = dict(file=str(file), num_classes=10)
    model = visionattn.create_model(
        name, pretrained=True, num_classes=10, pretrained_cfg_overlay=overlay, **widths, **kwargs
    )
    return model.eval(), short


def _selected(model, x):
    """Per block, the sorted key positions each patch query attends to: (blocks, B, heads, N-1, budget)."""
    out = []
    t = model._pos_embed(model.patch_embed(x))
    for blk in model.blocks:
        out.append(blk.attn.select(blk.norm1(t)).sort(-1).values)
        t = blk(t)
    return torch.stack(out)


@pytest.fixture(scope="module")
def outputs():
    return torch.load(FIXTURES / "sparsifiner_reduced_outputs.pt", weights_only=True)


@pytest.mark.parametrize("name", list(REDUCED))
def test_official_parity(name, outputs):
    model, short = _official(name)
    x = outputs["input"].float()
    with torch.no_grad():
        logits = model(x)
        keys = _selected(model, x)
    torch.testing.assert_close(logits, outputs[f"{short}_logits"], rtol=0, atol=1e-5)
    assert torch.equal(keys, outputs[f"{short}_keys"].long())
    assert keys.shape[-1] == math.ceil(0.25 * 197) == 50


def _dense_masked_forward(model, x):
    """The official computation (dense attention, -inf outside the selected keys, class row unmasked), with our
    model's weights and selection: an independent check of the sparse path at any size."""
    t = model._pos_embed(model.patch_embed(x))
    for blk in model.blocks:
        attn = blk.attn
        y = blk.norm1(t)
        b, n, c = y.shape
        q, k, v = attn.qkv(y).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        index = attn.select(y)
        mask = torch.zeros(b, attn.num_heads, n, n, dtype=torch.bool)
        mask[:, :, 1:].scatter_(-1, index, True)
        mask[:, :, 0] = True
        logits = (q @ k.transpose(-1, -2) * attn.scale).masked_fill(~mask, float("-inf"))
        o = (logits.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
        t = t + blk.ls1(attn.proj(o))
        t = t + blk.ls2(blk.mlp(blk.norm2(t)))
    return model.forward_head(model.norm(t))


@pytest.mark.parametrize("name", list(REDUCED))
@pytest.mark.parametrize("hw", [(224, 224), (97, 150), (32, 48)])
def test_sparse_path_equals_dense_masked_attention(name, hw):
    model, _ = _official(name)
    x = torch.randn(2, 3, *hw, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model(x), _dense_masked_forward(model, x), rtol=0, atol=1e-5)


def test_keep_rate_one_is_plain_vit():
    """With every key kept the model is DeiT: same logits as timm's VisionTransformer with the same weights."""
    model, _ = _official("sparsifiner_deit_small", attn_keep_rate=1.0)
    vit = timm.create_model(
        "vit_small_patch16_224", num_classes=10, embed_dim=64, depth=2, num_heads=2, dynamic_img_size=True,
        dynamic_img_pad=True,
    ).eval()  # fmt: skip
    state = {k: v for k, v in model.state_dict().items() if ".mask_predictor." not in k}
    vit.load_state_dict(state)
    x = torch.randn(1, 3, 80, 112)
    with torch.no_grad():
        torch.testing.assert_close(model(x), vit(x), rtol=0, atol=1e-5)


def test_token_axis_resampling_rule():
    pred = MaskPredictor(head_dim=16, num_heads=2, grid_size=(4, 4), reduce_n_factor=2)
    assert pred.proj_n.shape == (17, 8)
    same = pred.token_params((4, 4))
    assert same[0] is pred.proj_n and same[1] is pred.proj_back_n  # the trained size: nothing resampled
    with torch.no_grad():
        pred.proj_n.copy_(torch.arange(8.0).expand(17, 8))  # every token row the same vector
        pred.proj_n[0] = -1.0
        pred.proj_back_n[1:] = torch.arange(16.0).view(16, 1)  # a 4x4 grid of values, one per patch
    pn, pb = pred.token_params((2, 3))
    assert pn.shape == pb.shape == (7, 8)
    assert torch.equal(pn[0], torch.full((8,), -1.0))  # the class row is kept
    assert torch.equal(pn[1:], torch.arange(8.0).expand(6, 8))  # a constant grid stays constant
    # bilinear, align_corners=False, 4 -> 2 rows: source rows 0.5 and 2.5; 4 -> 3 cols: 1/6, 1.5, 17/6 (clamped)
    grid = torch.arange(16.0).view(1, 1, 4, 4)
    expect = F.interpolate(grid, size=(2, 3), mode="bilinear", align_corners=False).flatten()
    assert torch.allclose(expect[:3], torch.tensor([2 + 1 / 6 * 1, 2 + 1.5, 2 + 17 / 6]))
    torch.testing.assert_close(pb[1:, 0], expect)


def test_budget_and_grid_follow_the_input():
    model = timm.create_model("sparsifiner_deit_small", embed_dim=64, depth=1, num_heads=2).eval()
    x = torch.randn(1, 3, 97, 150)  # padded to 112 x 160: a 7 x 10 grid, 71 tokens
    with torch.no_grad():
        model(x)
    attn = model.blocks[0].attn
    assert attn.grid == (7, 10) and attn.budget(71) == math.ceil(0.25 * 71) == 18
    with torch.no_grad():
        keys = attn.select(model.blocks[0].norm1(model._pos_embed(model.patch_embed(x))))
    assert keys.shape == (1, 2, 70, 18)
    assert len(set(keys[0, 0, 5].tolist())) == 18  # distinct keys


def test_converter_loads_the_backbone_checkpoints_the_recipe_starts_from():
    """DeiT-S / LV-ViT-S checkpoints have no predictor: it keeps the model's values; a position table of another
    grid is resampled."""
    model = timm.create_model("sparsifiner_deit_small", embed_dim=64, depth=1, num_heads=2, num_classes=10)
    deit = timm.create_model("vit_small_patch16_224", embed_dim=64, depth=1, num_heads=2, num_classes=10, img_size=384)
    converted = checkpoint_filter_fn({"model": deit.state_dict()}, model)
    assert converted["pos_embed"].shape == model.pos_embed.shape == (1, 197, 64)
    for key, value in model.state_dict().items():
        if ".mask_predictor." in key:
            assert torch.equal(converted[key], value)
    missing, unexpected = model.load_state_dict(converted)
    assert not missing and not unexpected
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, deit.blocks[0].attn.qkv.weight)


def test_aux_head_and_reset_classifier():
    model = timm.create_model("sparsifiner_lvvit_small", embed_dim=32, depth=1, num_heads=2, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = model.forward_features(x)
        expect = model.head(tokens[:, 0]) + 0.5 * model.aux_head(tokens[:, 1:]).max(1).values
        torch.testing.assert_close(model(x), expect)
    model.reset_classifier(3)
    assert model.head.out_features == model.aux_head.out_features == 3
    model.reset_classifier(0)
    assert model.aux_head is None and model(x).shape == (2, 32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(attn_keep_rate=0.0), r"attn_keep_rate=0.0 must be in \(0, 1\]"),
        (dict(coef_topk=99), r"coef_topk=99 must be in \[1, 32\]"),
        (dict(class_token=False), "Sparsifiner fixes class_token"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        timm.create_model("sparsifiner_deit_small", embed_dim=64, depth=1, num_heads=2, **kwargs)


def test_too_small_input_says_so():
    model = timm.create_model("sparsifiner_deit_small", embed_dim=64, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="31"):
        model(torch.randn(1, 3, 31, 64))


@pytest.mark.skipif(_dispatch.triton_device() is None, reason="no Triton device (GPU or TRITON_INTERPRET=1)")
def test_triton_path_equals_reference_path(monkeypatch):
    device = _dispatch.triton_device()
    model, _ = _official("sparsifiner_deit_small")
    model = model.to(device)
    x = torch.randn(1, 3, 64, 80, device=device)
    monkeypatch.setenv(_dispatch.ENV_VAR, "reference")
    with torch.no_grad():
        ref = model(x)
    monkeypatch.setenv(_dispatch.ENV_VAR, "triton")
    with torch.no_grad():
        out = model(x)
    assert last_path("sparse_attn") == "triton"
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_predictor_trains_only_through_the_reconstruction_objective():
    model = timm.create_model("sparsifiner_deit_small", embed_dim=32, depth=2, num_heads=2, num_classes=3)
    predictor = [n for n, p in model.named_parameters() if ".mask_predictor." in n]
    assert predictor and not any(p.requires_grad for n, p in model.named_parameters() if n in predictor)
    model.set_predictor_trainable(True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    params = [p for n, p in model.named_parameters() if n in predictor]
    opt = torch.optim.Adam(params, lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model.attention_reconstruction_loss(x)
        opt.zero_grad()
        loss.backward()
        losses.append(loss.item())
        opt.step()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad == set(predictor)  # the target is detached: the backbone is not moved by this loss
    assert losses[-1] < 0.5 * losses[0]


def test_onnx_graph_selects_with_topk_and_builds_no_dense_mask(tmp_path):
    """The exported graph selects keys with TopK and reads them with Gather: no ScatterElements (the official
    dense mask), and it matches onnxruntime at 224 and a second size (export.check_onnx)."""
    import onnx

    from visionattn.export import export_onnx

    model, _ = _official("sparsifiner_deit_small")
    report = export_onnx(model, tmp_path / "s.onnx", (3, 224, 224), extra_sizes=[(3, 96, 160)])
    assert len(report.checks) == 4 and all(c.ok for c in report.checks)
    for path in report.paths:
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert "TopK" in ops and "Gather" in ops
        assert not ops & {"ScatterElements", "ScatterND", "Scatter"}, ops


def test_official_training_save_loads(tmp_path):
    """An official training save: the weights under 'model' beside the optimizer state, the epoch and the
    argparse Namespace of the run (utils.save_model); only the weights are taken, safely."""
    import argparse

    state = torch.load(FIXTURES / "sparsifiner_deit_reduced_official.pth", weights_only=True)["model"]
    save = {
        "model": state,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
        "epoch": 49,
        "scaler": {"scale": 65536.0},
        "args": argparse.Namespace(model="sparsifiner", output_dir="out"),
    }
    path = tmp_path / "checkpoint-49.pth"
    torch.save(save, path)
    model = visionattn.create_model(
        "sparsifiner_deit_small", pretrained=True, num_classes=10, embed_dim=64, depth=2, num_heads=2,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=10),
    )  # fmt: skip
    for key, value in state.items():
        torch.testing.assert_close(model.state_dict()[key], value.to(model.state_dict()[key].dtype))
