"""LITv2: official parity (fixtures), HiLo against naive loop references, the DTM's deformable conv, sizes, converter.

The naive references below recompute HiLo token by token from the layer's weights with explicit softmax loops:
``_naive_hilo(mask=True)`` follows the documented masked padding (real tokens only in every Hi-Fi window and every
Lo-Fi pooled key), ``mask=False`` the official dense code (zero tokens padded after the norm, attended and averaged
in). Neither uses the layer's window layout nor SDPA. The deformable conv is checked against mmcv's CPU op (an
independent implementation of the same sampling) where mmcv's compiled ops import.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torchvision

import visionattn
from visionattn.layers.deform import (
    DeformConv2dPack,
    DeformTokenMerge,
    deform_conv2d_gather,
    deform_conv2d_grid_sample,
)
from visionattn.layers.hilo import HiLo, hilo_heads, linear
from visionattn.models.litv2 import ALPHA_SWEEP, LITv2, checkpoint_filter_fn, dwconv_gelu, offset_paramwise_cfg

FIXTURES = Path(__file__).parent / "fixtures"
# the official configuration of the fixtures (tests/fixtures/README.md), in our constructor's terms
REDUCED = dict(embed_dim=8, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), mlp_ratio=2.0, num_classes=10)
FIXTURE_ALPHAS = {"": 0.9, "_alpha0": 0.0, "_alpha1": 1.0}
OFFICIAL_PARAMS = {  # built from the official code with its configs (README: 28M / 49M / 87M)
    "litv2_small": 27_844_000,
    "litv2_medium": 48_830_368,
    "litv2_base": 86_520_704,
    "litv2_base_384": 86_520_704,
}

pytestmark = pytest.mark.usefixtures("one_thread")


def _reduced(suffix: str = "", **kwargs) -> nn.Module:
    overlay = dict(file=str(FIXTURES / f"litv2_reduced{suffix}_official.pth"), num_classes=10)
    kw = dict(REDUCED, alpha=FIXTURE_ALPHAS[suffix])
    kw.update(kwargs)
    return timm.create_model("litv2_small", pretrained=True, pretrained_cfg_overlay=overlay, **kw).eval()


# ---------------------------------------------------------------------------------------------------------
# registry, sizes, official parity


def test_registered_names_and_aliases():
    assert set(visionattn.list_models("litv2")) == set(OFFICIAL_PARAMS)
    for alias, target in (("litv2_s", "litv2_small"), ("litv2_m", "litv2_medium"), ("litv2_b", "litv2_base")):
        assert visionattn.get_family(alias).name == "litv2"
        assert timm.create_model(alias, pretrained=False).pretrained_cfg["architecture"] == target


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_equals_official(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize("suffix", list(FIXTURE_ALPHAS))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_official_parity(suffix, dtype, tol):
    """Logits (and stage outputs) of the official model (float64 run) on the same weights and input."""
    ref = torch.load(FIXTURES / f"litv2_reduced{suffix}_outputs.pt", weights_only=True)
    model = _reduced(suffix).to(dtype)
    x = ref["input"].to(dtype)
    with torch.no_grad():
        final, stages = model.forward_intermediates(x)
        logits = model.forward_head(final)
    torch.testing.assert_close(logits.double(), ref["logits"], rtol=0, atol=tol)
    for i, stage in enumerate(stages):
        if f"stage{i}" in ref:
            torch.testing.assert_close(stage.double(), ref[f"stage{i}"], rtol=0, atol=tol)


def test_fixture_offsets_deform_the_sampling():
    """The fixture's DTM offsets are far from zero, so the parity above checks the deformable sampling."""
    model = _reduced()
    ref = torch.load(FIXTURES / "litv2_reduced_outputs.pt", weights_only=True)
    with torch.no_grad():
        x = model.stages[0](model.patch_embed(ref["input"].float()))
        offset = model.stages[1].downsample.dconv.conv_offset(x)
    assert offset.abs().mean() > 0.3


def test_alpha_sweep_shapes_follow_alpha():
    """alpha 0 holds Hi-Fi weights only in stage 3, alpha 1 Lo-Fi only; stage 4 (window 1) is all Lo-Fi."""
    sd0 = torch.load(FIXTURES / "litv2_reduced_alpha0_official.pth", weights_only=True)["model"]
    sd1 = torch.load(FIXTURES / "litv2_reduced_alpha1_official.pth", weights_only=True)["model"]
    assert any(".attn.h_qkv." in k for k in sd0) and not any(k.startswith("layers.2") and ".l_q." in k for k in sd0)
    assert not any(".attn.h_qkv." in k for k in sd1)
    with pytest.raises(RuntimeError, match="size mismatch|Missing|Unexpected"):
        _reduced("_alpha0", alpha=0.9)


@pytest.mark.parametrize("tag,alpha", sorted(ALPHA_SWEEP.items()))
def test_alpha_sweep_tags_set_alpha(tag, alpha):
    model = timm.create_model(f"litv2_small.in1k_alpha_{tag}", pretrained=False, **dict(REDUCED, num_classes=1000))
    assert model.alpha == alpha
    assert model.pretrained_cfg["url"].endswith(f"/v1.1/alpha_{tag}.pth")
    low, high = hilo_heads(4, alpha, 2)
    assert (model.stages[2].blocks[0].attn.l_heads, model.stages[2].blocks[0].attn.h_heads) == (low, high)


def test_training_save_with_yacs_config_loads(tmp_path):
    """A Swin-style training save ({'model', 'optimizer', 'config' (a yacs CfgNode), ...}) loads without
    unpickling the config."""
    import sys
    import types

    sd = torch.load(FIXTURES / "litv2_reduced_official.pth", weights_only=True)["model"]
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
        cfg = CfgNode(MODEL=CfgNode(TYPE="litv2", LIT=CfgNode(ALPHA=0.9, LOCAL_WS=[0, 0, 2, 1])))
        path = tmp_path / "ckpt_epoch_299.pth"
        torch.save({"model": sd, "optimizer": {"state": {}}, "max_accuracy": 82.0, "epoch": 299, "config": cfg}, path)
    finally:
        sys.modules.clear()
        sys.modules.update(saved)
    assert "yacs.config" not in sys.modules
    model = timm.create_model(
        "litv2_small", pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=10), **REDUCED
    )
    assert "yacs.config" not in sys.modules
    ref = _reduced()
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref.state_dict()[k]), k


# ---------------------------------------------------------------------------------------------------------
# HiLo against a naive reference


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """One query (d,) against keys (n, d) / values (n, dv) with an explicit softmax."""
    logits = (k @ q) * scale
    w = torch.exp(logits - logits.max())
    return (w / w.sum()) @ v


def _naive_hilo(layer: HiLo, x: torch.Tensor, mask: bool) -> torch.Tensor:
    """(B, H, W, C) -> (B, H, W, C), token by token from the layer's weights."""
    b, h, w, c = x.shape
    ws, d, scale = layer.ws, layer.head_dim, layer.scale
    hp, wp = math.ceil(h / ws) * ws, math.ceil(w / ws) * ws
    xp = torch.zeros(b, hp, wp, c, dtype=x.dtype)
    xp[:, :h, :w] = x
    real = torch.zeros(hp, wp, dtype=torch.bool)
    real[:h, :w] = True
    out = torch.zeros(b, h, w, c, dtype=x.dtype)
    for bi in range(b):
        if layer.h_heads:
            qkv = layer.h_qkv(xp[bi])  # (hp, wp, 3 * h_dim)
            q, k, v = qkv.split(layer.h_dim, dim=-1)
            hifi = torch.zeros(h, w, layer.h_dim, dtype=x.dtype)
            for i in range(h):
                for j in range(w):
                    i0, j0 = i // ws * ws, j // ws * ws
                    keys = [(a, e) for a in range(i0, i0 + ws) for e in range(j0, j0 + ws) if real[a, e] or not mask]
                    kk = torch.stack([k[a, e] for a, e in keys])
                    vv = torch.stack([v[a, e] for a, e in keys])
                    for hd in range(layer.h_heads):
                        s = slice(hd * d, (hd + 1) * d)
                        hifi[i, j, s] = _attend(q[i, j, s], kk[:, s], vv[:, s], scale)
            out[bi, :, :, : layer.h_dim] = layer.h_proj(hifi)
        if layer.l_heads:
            if ws > 1:
                pooled = []
                for i0 in range(0, hp, ws):
                    for j0 in range(0, wp, ws):
                        cells = [
                            xp[bi, a, e]
                            for a in range(i0, i0 + ws)
                            for e in range(j0, j0 + ws)
                            if real[a, e] or not mask
                        ]
                        pooled.append(torch.stack(cells).mean(0))
                kv = layer.l_kv(torch.stack(pooled))
            else:
                kv = layer.l_kv(x[bi].reshape(h * w, c))
            k, v = kv.split(layer.l_dim, dim=-1)
            q = layer.l_q(x[bi])
            lofi = torch.zeros(h, w, layer.l_dim, dtype=x.dtype)
            for i in range(h):
                for j in range(w):
                    for hd in range(layer.l_heads):
                        s = slice(hd * d, (hd + 1) * d)
                        lofi[i, j, s] = _attend(q[i, j, s], k[:, s], v[:, s], scale)
            out[bi, :, :, layer.h_dim :] = layer.l_proj(lofi)
    return out


def _hilo(alpha: float, ws: int, mask: bool = True, heads: int = 4, dim: int = 16) -> HiLo:
    torch.manual_seed(0)
    layer = HiLo(dim, num_heads=heads, window_size=ws, alpha=alpha, qkv_bias=True, mask_padding=mask).double()
    for p in layer.parameters():
        nn.init.normal_(p, std=0.3)
    return layer.eval()


@pytest.mark.parametrize("alpha", [0.0, 0.2, 0.4, 0.5, 0.7, 0.9, 1.0])
def test_hilo_every_alpha_matches_naive(alpha):
    layer = _hilo(alpha, ws=2)
    low, high = hilo_heads(4, alpha, 2)
    assert (layer.l_heads, layer.h_heads) == (low, high) == (int(4 * alpha), 4 - int(4 * alpha))
    x = torch.randn(2, 4, 6, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _naive_hilo(layer, x, mask=True), rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha,ws,hw", [(0.5, 2, (5, 7)), (0.9, 3, (4, 8)), (0.0, 4, (5, 3)), (1.0, 3, (7, 2))])
@pytest.mark.parametrize("mask", [True, False], ids=["masked", "official_dense"])
def test_hilo_padding_matches_naive(alpha, ws, hw, mask):
    layer = _hilo(alpha, ws, mask=mask)
    x = torch.randn(1, *hw, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _naive_hilo(layer, x, mask=mask), rtol=0, atol=1e-12)


def test_hilo_window_one_is_plain_attention():
    layer = _hilo(0.3, ws=1)
    assert (layer.l_heads, layer.h_heads) == (4, 0) and layer.h_qkv is None
    x = torch.randn(1, 3, 5, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _naive_hilo(layer, x, mask=True), rtol=0, atol=1e-12)


def test_hilo_gradients_reach_both_groups():
    layer = _hilo(0.5, ws=2).train()
    x = torch.randn(1, 5, 5, 16, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert x.grad[:, :5, :5].abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(alpha=1.5), "alpha=1.5"),
        (dict(alpha=-0.1), "alpha=-0.1"),
        (dict(window_size=0), "window_size=0"),
        (dict(num_heads=3), "num_heads=3"),
    ],
)
def test_hilo_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HiLo(16, **{"num_heads": 4, **kwargs})


# ---------------------------------------------------------------------------------------------------------
# deformable conv and DTM


def _dcn_case(seed: int, h: int, w: int, k: int, s: int, p: int, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    x = torch.randn(2, 5, h, w, generator=g, dtype=dtype)
    off = 2.5 * torch.randn(2, 2 * k * k, ho, wo, generator=g, dtype=dtype)  # many samples leave the map
    weight = torch.randn(4, 5, k, k, generator=g, dtype=dtype)
    bias = torch.randn(4, generator=g, dtype=dtype)
    return x, off, weight, bias


@pytest.mark.parametrize("h,w,k,s,p", [(8, 8, 2, 2, 0), (7, 5, 3, 1, 1), (9, 6, 2, 2, 0), (1, 1, 2, 2, 1)])
def test_grid_sample_form_equals_torchvision(h, w, k, s, p):
    x, off, weight, bias = _dcn_case(h * 31 + w, h, w, k, s, p)
    ref = torchvision.ops.deform_conv2d(x, off, weight, bias, stride=s, padding=p)
    out = deform_conv2d_grid_sample(x, off, weight, bias, (s, s), (p, p))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    x32, off32, w32, b32 = (t.float() for t in (x, off, weight, bias))
    out32 = deform_conv2d_grid_sample(x32, off32, w32, b32, (s, s), (p, p))
    torch.testing.assert_close(out32.double(), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("h,w,k,s,p", [(8, 8, 2, 2, 0), (7, 5, 3, 1, 1), (9, 6, 2, 2, 0), (1, 1, 2, 2, 1)])
def test_gather_form_equals_torchvision_forward_and_backward(h, w, k, s, p):
    x, off, weight, bias = _dcn_case(h * 37 + w, h, w, k, s, p)
    grad_out = torch.randn(2, 4, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1, dtype=torch.float64)
    results = []
    for use_gather in (False, True):
        leaves = [t.clone().requires_grad_(True) for t in (x, off, weight, bias)]
        if use_gather:
            nhwc = leaves[0].permute(0, 2, 3, 1)
            out = deform_conv2d_gather(nhwc, *leaves[1:], (s, s), (p, p)).permute(0, 3, 1, 2)
        else:
            out = torchvision.ops.deform_conv2d(*leaves[:2], leaves[2], leaves[3], stride=s, padding=p)
        (out * grad_out).sum().backward()
        results.append([out.detach()] + [t.grad for t in leaves])
    for ours, ref in zip(results[1], results[0]):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    x32, off32, w32, b32 = (t.float() for t in (x, off, weight, bias))
    with torch.no_grad():  # the in-place accumulation without autograd
        out32 = deform_conv2d_gather(x32.permute(0, 2, 3, 1), off32, w32, b32, (s, s), (p, p)).permute(0, 3, 1, 2)
    torch.testing.assert_close(out32.double(), results[0][0], rtol=0, atol=1e-5)


def test_linear_equals_f_linear_with_residual_and_gradients():
    """The oneDNN inner product (float32 CPU) with the bias and a residual fused: values and all gradients."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 24)[:, :, 1:]  # a strided input
    weight, bias, res = torch.randn(40, 24) * 0.2, torch.randn(40), torch.randn(2, 5, 6, 40)
    with torch.no_grad():
        torch.testing.assert_close(linear(x, weight, bias), nn.functional.linear(x, weight, bias), rtol=0, atol=1e-6)
        torch.testing.assert_close(linear(x, weight, None, res), res + x @ weight.t(), rtol=0, atol=1e-5)
    grads = []
    for fn in (lambda *t: linear(*t), lambda a, w_, b_, r: r + nn.functional.linear(a, w_, b_)):
        leaves = [t.clone().requires_grad_(True) for t in (x, weight, bias, res)]
        out = fn(*leaves)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append([out.detach()] + [t.grad for t in leaves])
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_flop_counter_and_autocast_see_plain_ops():
    """Under a dispatch mode (FlopCounterMode) or CPU autocast, linear and dwconv_gelu run aten's ops."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        linear(torch.randn(5, 8), torch.randn(3, 8), torch.randn(3), torch.randn(5, 3))
        dwconv_gelu(torch.randn(1, 4, 6, 6), torch.randn(4, 1, 3, 3), torch.randn(4))
    assert counter.get_total_flops() == 2 * 5 * 8 * 3 + 2 * 4 * 36 * 9
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast's casts apply as to F.linear
        assert linear(torch.randn(5, 8), torch.randn(3, 8)).dtype == torch.bfloat16


def test_dwconv_gelu_equals_conv_then_gelu():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=16)
    x = torch.randn(2, 9, 7, 16).permute(0, 3, 1, 2)  # the MLP's channels-last layout
    with torch.no_grad():
        ref = nn.functional.gelu(conv(x))
        torch.testing.assert_close(dwconv_gelu(x, conv.weight, conv.bias), ref, rtol=0, atol=1e-6)
        torch.testing.assert_close(dwconv_gelu(x.contiguous(), conv.weight, conv.bias), ref, rtol=0, atol=1e-6)
    xg = x.detach().clone().requires_grad_(True)
    dwconv_gelu(xg, conv.weight, conv.bias).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    nn.functional.gelu(conv(xr)).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=0, atol=1e-6)


def test_mlp_image_by_image_equals_whole_batch(monkeypatch):
    """Without autograd a large MLP runs image by image (forced here with a threshold of 0): same output."""
    import visionattn.models.litv2 as litv2_module

    torch.manual_seed(0)
    model = LITv2(**dict(REDUCED, alpha=0.5)).eval()
    x = torch.randn(3, 3, 64, 48)
    ref = model(x)  # autograd on: never split
    monkeypatch.setattr(litv2_module, "MLP_CHUNK_NUMEL", 0)
    mlp = model.stages[0].blocks[0].mlp
    calls = []
    monkeypatch.setattr(mlp, "_mlp", lambda *a, f=mlp._mlp: calls.append(a[0].shape[0]) or f(*a))
    with torch.no_grad():
        out = model(x)
    assert calls == [1, 1, 1]
    torch.testing.assert_close(out, ref.detach(), rtol=0, atol=1e-5)


def test_torchvision_layout_matches_mmcv():
    """mmcv's CPU deformable conv (the layout of the official DCN: channel 2k = dy, 2k + 1 = dx) agrees."""
    mmcv_ops = pytest.importorskip("mmcv.ops", reason="mmcv with compiled ops (tools/install_mmcv.py)")
    x, off, weight, _ = _dcn_case(3, 9, 6, 2, 2, 0, dtype=torch.float32)
    ref = mmcv_ops.deform_conv2d(x, off, weight, 2, 0, 1, 1, 1, False, 1)
    out = torchvision.ops.deform_conv2d(x, off, weight, stride=2)
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


def test_dtm_forward_backward_all_paths_agree():
    torch.manual_seed(0)
    tv = DeformTokenMerge(6, 12, impl="torchvision").double().train()
    nn.init.normal_(tv.dconv.conv_offset.weight, std=0.5)
    gs = DeformTokenMerge(6, 12, impl="grid_sample").double().train()
    gs.load_state_dict(tv.state_dict())
    ga = DeformTokenMerge(6, 12, impl="gather").double().train()
    ga.load_state_dict(tv.state_dict())
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    outs, grads = [], []
    for m in (tv, gs, ga):
        xi = x.clone().requires_grad_(True)
        y = m(xi)
        assert y.shape == (2, 12, 4, 3)  # odd last row / column dropped
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        outs.append(y.detach())
        grads.append([xi.grad] + [p.grad.clone() for p in m.parameters()])
        m.zero_grad()
    for i in (1, 2):
        torch.testing.assert_close(outs[i], outs[0], rtol=0, atol=1e-12)
        for a, b in zip(grads[i], grads[0]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-9)
    assert grads[0][0].abs().sum() > 0 and tv.dconv.conv_offset.weight.grad is None  # zeroed above
    assert all(g.abs().sum() > 0 for g in grads[0])  # offsets, conv, BN all learn


def test_deform_conv_gradcheck():
    torch.manual_seed(0)
    m = DeformConv2dPack(3, 4, kernel_size=2, stride=2).double()
    nn.init.normal_(m.conv_offset.weight, std=0.3)
    x = torch.randn(1, 3, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-5)


def test_nan_offsets_do_not_crash_and_bfloat16_runs_in_float32():
    torch.manual_seed(0)
    m = DeformTokenMerge(4, 8).eval()
    x = torch.randn(1, 4, 8, 8)
    x[0, 0, 3, 3] = float("nan")
    with torch.no_grad():
        y = m(x)
        assert y.shape == (1, 8, 4, 4) and torch.isnan(y).any()
        ref = m(x.nan_to_num())
        yb = m.to(torch.bfloat16)(x.nan_to_num().bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), ref, rtol=0.05, atol=0.05)


# ---------------------------------------------------------------------------------------------------------
# the model at any size


@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (65, 97), (50, 36)])
def test_any_size_equals_explicit_padding_rule(hw):
    """The size rule step by step: zero-pad the image to a multiple of 4, then the DTMs floor odd sides."""
    torch.manual_seed(0)
    model = LITv2(**dict(REDUCED, alpha=0.5)).eval()
    x = torch.randn(1, 3, *hw)
    h4, w4 = math.ceil(hw[0] / 4) * 4, math.ceil(hw[1] / 4) * 4
    padded = torch.zeros(1, 3, h4, w4)
    padded[..., : hw[0], : hw[1]] = x
    with torch.no_grad():
        out = model.forward_intermediates(x, intermediates_only=True)
        ref = model.forward_intermediates(padded, intermediates_only=True)
    side_h, side_w = h4 // 4, w4 // 4
    for i, (a, b) in enumerate(zip(out, ref)):
        assert a.shape[-2:] == (side_h, side_w), i
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        side_h, side_w = side_h // 2, side_w // 2


def test_mask_padding_flag_is_exact_without_padding():
    torch.manual_seed(0)
    masked = LITv2(**REDUCED).eval()
    official = LITv2(**dict(REDUCED, mask_padding=False)).eval()
    official.load_state_dict(masked.state_dict())
    with torch.no_grad():
        x = torch.randn(1, 3, 64, 64)
        assert torch.equal(masked(x), official(x))
        y = torch.randn(1, 3, 88, 88)  # stage 3 is 5x5: its 2x2 windows are padded
        assert not torch.allclose(masked(y), official(y))


def test_below_32_px_is_refused():
    model = LITv2(**REDUCED).eval()
    with pytest.raises(ValueError, match="31x40.*resize or pad it to 32x40"):
        model(torch.randn(1, 3, 31, 40))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(local_ws=(0, 0, -1, 1)), "local_ws"),
        (dict(num_heads=(1, 2, 3, 8)), "num_heads"),
        (dict(depths=(1, 1, 1)), "depths"),
        (dict(alpha=2.0), "alpha=2.0"),
        (dict(dtm_impl="cuda"), "impl='cuda'"),
    ],
)
def test_model_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LITv2(**{**REDUCED, **kwargs})


# ---------------------------------------------------------------------------------------------------------
# converter, optimizer recipe


def test_converter_maps_official_keys_and_is_idempotent():
    official = torch.load(FIXTURES / "litv2_reduced_official.pth", weights_only=True)
    model = LITv2(**dict(REDUCED, alpha=0.9))
    ours = checkpoint_filter_fn(official, model)
    assert set(ours) == set(model.state_dict())
    assert "stages.1.downsample.dconv.conv_offset.weight" in ours and "stages.3.downsample.norm.running_var" in ours
    assert torch.equal(
        ours["stages.1.downsample.norm.weight"], official["model"]["layers.0.downsample.norm_layer.weight"]
    )
    assert checkpoint_filter_fn(ours, model) == ours
    # dense-backbone saves: prefixed keys and per-output norms are accepted
    dense = {f"backbone.{k}": v for k, v in official["model"].items() if not k.startswith(("head.", "norm."))}
    dense["backbone.norm1.weight"] = torch.ones(16)
    converted = checkpoint_filter_fn({"state_dict": dense}, model)
    assert set(converted) == {k for k in ours if not k.startswith(("head.", "norm."))}


def test_offset_lr_multiplier_reaches_only_offset_convs():
    from mmengine.optim import build_optim_wrapper

    model = LITv2(**REDUCED)
    cfg = dict(
        type="OptimWrapper",
        optimizer=dict(type="AdamW", lr=1e-4, weight_decay=0.05),
        paramwise_cfg=offset_paramwise_cfg(),
    )
    wrapper = build_optim_wrapper(model, cfg)
    lrs = {id(p): g["lr"] for g in wrapper.optimizer.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lrs[id(p)] == pytest.approx(1e-6 if ".conv_offset." in name else 1e-4), name


def test_dtm_exports_to_onnx_as_grid_sample(tmp_path):
    """torchvision exports no DeformConv (and ONNX's is opset 19): the export path is one GridSample, and
    onnxruntime's result equals torchvision's deformable conv."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    m = DeformTokenMerge(6, 12).eval()
    nn.init.normal_(m.dconv.conv_offset.weight, std=0.5)
    x = torch.randn(2, 6, 10, 14)
    path = tmp_path / "dtm.onnx"
    torch.onnx.export(m, (x,), str(path), opset_version=18, dynamo=False, input_names=["x"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "GridSample" in ops and not any("Deform" in op for op in ops)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        ref = m(x)
    torch.testing.assert_close(torch.from_numpy(out), ref, rtol=0, atol=1e-5)
