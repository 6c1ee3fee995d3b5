"""BiFormer: parameter counts, the routing layer against naive loop references, any-size inputs, the converter.

The naive references below recompute bi-level routing attention token by token from the layer's weights:
``_naive_official`` follows the official legacy computation (zero-pad the input before the qkv projection,
region means over all tokens, no mask, scale qk_dim ** -0.5); ``_naive_masked`` the documented masked
semantics (real tokens only everywhere). Neither uses the layer's region layout nor the kernel.
"""

from __future__ import annotations

import math
import re

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath
from visionattn.kernels import HAS_TRITON, last_path

import visionattn
from visionattn.layers import routing
from visionattn.layers.routing import BiLevelRoutingAttention
from visionattn.models.biformer import AttentionLePE, BiFormer, checkpoint_filter_fn

OFFICIAL_PARAMS = {  # README of rayleizhu/BiFormer, millions
    "biformer_tiny": 13.1,
    "biformer_small": 25.5,
    "biformer_base": 56.8,
    "biformer_stl": 28.4,
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


# ---------------------------------------------------------------------------------------------------------
# registry and sizes


def test_registered_names_and_aliases():
    assert set(visionattn.list_models("biformer")) == set(OFFICIAL_PARAMS)
    assert {"biformer_t", "biformer_s", "biformer_b"} <= set(visionattn.list_models(aliases=True))
    for name in [*OFFICIAL_PARAMS, "biformer_t", "biformer_s", "biformer_b"]:
        assert name in timm.list_models("biformer*")


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_param_count_matches_official(name):
    n = sum(p.numel() for p in _meta(name).parameters()) / 1e6
    # the README claims 0.35 %: BiFormer-T is the farthest, 13.14M against the official 13.1M
    assert abs(n / OFFICIAL_PARAMS[name] - 1) < 0.0035, f"{name}: {n:.3f}M vs official {OFFICIAL_PARAMS[name]}M"


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_architecture_details(name):
    model = _meta(name)
    stl = name == "biformer_stl"
    assert model.feature_info.__len__() == 4 and [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    blocks = [b for s in model.stages for b in s.blocks]
    for stage_idx, stage in enumerate(model.stages):
        for block in stage.blocks:
            assert block.norm1.eps == block.norm2.eps == 1e-6
            assert (block.cpe is None) == stl
            dim = model.embed_dims[stage_idx]
            if stage_idx < 3:
                assert isinstance(block.attn, BiLevelRoutingAttention)
                assert block.attn.num_heads == dim // 32 and block.attn.topk == (1, 4, 16)[stage_idx]
                assert block.attn.n_win == 7 and block.attn.lepe.kernel_size == (5, 5)
                assert block.attn.scale == dim**-0.5  # the full-width scale of the official code
            else:
                assert isinstance(block.attn, AttentionLePE) and block.attn.num_heads == 8
                assert block.attn.qkv.bias is None
            assert block.mlp.fc1.out_features == (4 if stl else 3) * dim
    assert len(blocks) == sum({"biformer_tiny": (2, 2, 8, 2), "biformer_stl": (2, 2, 6, 2)}.get(name, (4, 4, 18, 4)))
    assert isinstance(model.norm, nn.BatchNorm2d)
    assert model.pretrained_cfg["license"] == "mit" and model.pretrained_cfg["paper_ids"] == "arXiv:2303.08810"
    assert model.pretrained_cfg["url"].startswith("https://api.onedrive.com/v1.0/shares/s!AkBbczdRlZvCh")


def test_drop_path_linear_over_all_blocks():
    model = _meta("biformer_tiny", drop_path_rate=0.3)
    rates = [
        b.drop_path1.drop_prob if isinstance(b.drop_path1, DropPath) else 0.0 for s in model.stages for b in s.blocks
    ]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 14))
    assert model.stages[0].blocks[0].drop_path1.__class__ is nn.Identity  # rate 0 at the first block


def test_n_win_kwarg_reaches_every_routing_layer():
    model = _meta("biformer_small", n_win=16)
    layers = [m for m in model.modules() if isinstance(m, BiLevelRoutingAttention)]
    assert layers and all(m.n_win == 16 for m in layers)
    model = _meta("biformer_small", n_win=(8, 4, 2, 1))
    assert [m.n_win for m in model.stages[2].blocks[0].modules() if isinstance(m, BiLevelRoutingAttention)] == [2]


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="n_win"):
        BiLevelRoutingAttention(64, num_heads=2, n_win=0)
    with pytest.raises(ValueError, match="topk"):
        BiLevelRoutingAttention(64, num_heads=2, topk=0)
    with pytest.raises(ValueError, match="num_heads"):
        BiLevelRoutingAttention(64, num_heads=3)
    with pytest.raises(ValueError, match="topk"):
        BiFormer(topks=(1, 4, 16, -1))
    with pytest.raises(ValueError, match="stem_type"):
        BiFormer(stem_type="overlap")
    with pytest.raises(ValueError, match=r"\(B, H, W, C=64\)"):
        BiLevelRoutingAttention(64, num_heads=2)(torch.randn(1, 64, 8, 8))


# ---------------------------------------------------------------------------------------------------------
# naive references


def _qkv(layer: BiLevelRoutingAttention, x: torch.Tensor):
    y = x @ layer.qkv.weight.T + layer.qkv.bias
    c = layer.qk_dim
    return y[..., :c], y[..., c : 2 * c], y[..., 2 * c :]


def _lepe(layer, v):
    conv = layer.lepe
    out = F.conv2d(v.permute(0, 3, 1, 2), conv.weight, conv.bias, padding=conv.padding, groups=conv.groups)
    return out.permute(0, 2, 3, 1)


def _attend(layer, q, k, v):
    """One query set against one key set, per head: q (Nq, qk), k (Nk, qk), v (Nk, C) -> (Nq, C)."""
    m, out = layer.num_heads, []
    dq, dv = q.shape[-1] // m, v.shape[-1] // m
    for h in range(m):
        logits = (q[:, h * dq : (h + 1) * dq] * layer.qk_dim**-0.5) @ k[:, h * dq : (h + 1) * dq].T
        out.append(logits.softmax(-1) @ v[:, h * dv : (h + 1) * dv])
    return torch.cat(out, -1)


def _region_tokens(s, rh, rw, hmax, wmax):
    """Token coordinates of each region, row-major regions, clipped to (hmax, wmax)."""
    regions = []
    for r in range(s):
        for c in range(s):
            regions.append(
                [(i, j) for i in range(r * rh, min((r + 1) * rh, hmax)) for j in range(c * rw, min((c + 1) * rw, wmax))]
            )
    return regions


def _naive_official(layer, x):
    """Official legacy BRA with auto_pad; returns (out (B, H, W, C), routing sets per batch and query region)."""
    b, h, w, c = x.shape
    s = layer.n_win
    rh, rw = -(-h // s), -(-w // s)
    xp = x.new_zeros(b, rh * s, rw * s, c)
    xp[:, :h, :w] = x
    q, k, v = _qkv(layer, xp)
    regions = _region_tokens(s, rh, rw, rh * s, rw * s)
    out = torch.zeros_like(v)
    routes = []
    for bi in range(b):
        qw = torch.stack([torch.stack([q[bi, i, j] for i, j in reg]).mean(0) for reg in regions])
        kw = torch.stack([torch.stack([k[bi, i, j] for i, j in reg]).mean(0) for reg in regions])
        picks = ((qw * layer.qk_dim**-0.5) @ kw.T).topk(min(layer.topk, s * s), dim=-1).indices
        routes.append([set(p.tolist()) for p in picks])
        for r, reg in enumerate(regions):
            keys = [t for p in picks[r].tolist() for t in regions[p]]
            qi, qj = zip(*reg)
            ki, kj = zip(*keys)
            out[bi, list(qi), list(qj)] = _attend(
                layer, q[bi, list(qi), list(qj)], k[bi, list(ki), list(kj)], v[bi, list(ki), list(kj)]
            )
    out = out + _lepe(layer, v)
    out = out @ layer.proj.weight.T + layer.proj.bias
    return out[:, :h, :w], routes


def _naive_masked(layer, x):
    """Masked BRA: padded tokens exist nowhere; returns (out (B, H, W, C), routing sets per real query region)."""
    b, h, w, c = x.shape
    s = layer.n_win
    rh, rw = -(-h // s), -(-w // s)
    q, k, v = _qkv(layer, x)
    regions = _region_tokens(s, rh, rw, h, w)
    real = [r for r, reg in enumerate(regions) if reg]
    topk = min(layer.topk, len(real))
    out = torch.zeros_like(v)
    routes = []
    for bi in range(b):
        qw = torch.stack([torch.stack([q[bi, i, j] for i, j in regions[r]]).mean(0) for r in real])
        kw = torch.stack([torch.stack([k[bi, i, j] for i, j in regions[r]]).mean(0) for r in real])
        picks = ((qw * layer.qk_dim**-0.5) @ kw.T).topk(topk, dim=-1).indices
        routes.append({r: {real[p] for p in picks[n].tolist()} for n, r in enumerate(real)})
        for n, r in enumerate(real):
            keys = [t for p in picks[n].tolist() for t in regions[real[p]]]
            qi, qj = zip(*regions[r])
            ki, kj = zip(*keys)
            out[bi, list(qi), list(qj)] = _attend(
                layer, q[bi, list(qi), list(qj)], k[bi, list(ki), list(kj)], v[bi, list(ki), list(kj)]
            )
    out = out + _lepe(layer, v)
    return out @ layer.proj.weight.T + layer.proj.bias, routes


def _layer(dim=64, heads=2, n_win=7, topk=4, mask_padding=True):
    torch.manual_seed(1)
    layer = BiLevelRoutingAttention(dim, num_heads=heads, n_win=n_win, topk=topk, mask_padding=mask_padding)
    with torch.no_grad():  # non-zero biases so that padding before the projection shows
        for p in layer.parameters():
            p.normal_(0, 0.3)
    return layer.eval()


# (H, W, n_win, topk): divisible; non-divisible; more regions than tokens per side; topk above the region count
SIZES = [(14, 14, 7, 4), (15, 9, 7, 4), (3, 5, 7, 16), (6, 6, 4, 16), (9, 13, 3, 2)]


@pytest.mark.parametrize("h,w,n_win,topk", SIZES)
def test_bra_matches_official_auto_pad_without_masking(h, w, n_win, topk):
    layer = _layer(n_win=n_win, topk=topk, mask_padding=False)
    x = torch.randn(2, h, w, 64)
    with torch.no_grad():
        out, routing_idx = layer(x, return_routing=True)
        ref, ref_routes = _naive_official(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    assert [[set(r.tolist()) for r in rb] for rb in routing_idx] == ref_routes


@pytest.mark.parametrize("h,w,n_win,topk", SIZES)
def test_bra_masked_matches_naive_masked(h, w, n_win, topk):
    layer = _layer(n_win=n_win, topk=topk, mask_padding=True)
    x = torch.randn(2, h, w, 64)
    with torch.no_grad():
        out, routing_idx = layer(x, return_routing=True)
        ref, ref_routes = _naive_masked(layer, x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for bi, routes in enumerate(ref_routes):
        for r, picked in routes.items():
            assert set(routing_idx[bi, r].tolist()) == picked


def test_masked_and_unmasked_agree_when_nothing_is_padded():
    x = torch.randn(2, 14, 21, 64)
    with torch.no_grad():
        a = _layer(mask_padding=True)(x)
        b = _layer(mask_padding=False)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("h,w,n_win,topk", SIZES[1:])
def test_masked_output_ignores_padding_content(h, w, n_win, topk, monkeypatch):
    layer = _layer(n_win=n_win, topk=topk)
    x = torch.randn(2, h, w, 64)
    with torch.no_grad():
        clean = layer(x)

    def noisy_pad(t, pad_b, pad_r):
        out = 1e3 * torch.randn(t.shape[0], t.shape[1] + pad_b, t.shape[2] + pad_r, t.shape[3], dtype=t.dtype)
        out[:, : t.shape[1], : t.shape[2]] = t
        return out

    monkeypatch.setattr(routing, "_pad_hw", noisy_pad)
    x.requires_grad_(True)
    noisy = layer(x)
    torch.testing.assert_close(noisy, clean, rtol=0, atol=1e-5)
    noisy.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("h,w,n_win,topk", [(3, 5, 7, 16), (2, 2, 7, 16), (1, 9, 7, 4), (8, 8, 7, 49), (57, 43, 7, 1)])
def test_routing_never_picks_fully_padded_regions(h, w, n_win, topk):
    layer = _layer(n_win=n_win, topk=topk)
    rh, rw = math.ceil(h / n_win), math.ceil(w / n_win)
    real_regions = {r * n_win + c for r in range(n_win) for c in range(n_win) if r * rh < h and c * rw < w}
    with torch.no_grad():
        _, idx = layer(torch.randn(3, h, w, 64), return_routing=True)
    assert idx.shape == (3, n_win * n_win, min(topk, len(real_regions)))
    assert set(idx.unique().tolist()) <= real_regions
    for row in idx.reshape(-1, idx.shape[-1]):  # no region twice
        assert len(set(row.tolist())) == idx.shape[-1]


def test_routing_is_detached_but_attention_gets_gradients():
    layer = _layer(n_win=2, topk=1)
    layer.train()
    x = torch.randn(1, 8, 8, 64, requires_grad=True)
    layer(x).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())
    # routing on its own builds no graph
    _, idx = layer(x, return_routing=True)
    assert not idx.requires_grad


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (CPU-only torch build)")
@pytest.mark.parametrize("mask_padding", [True, False])
def test_triton_path_matches_reference_path(mask_padding):
    # On CPU this runs the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1): tiny shapes only.
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layer = _layer(dim=32, heads=1, n_win=2, topk=2, mask_padding=mask_padding).to(device)
    x = torch.randn(1, 7, 5, 32, device=device, requires_grad=True)
    results = []
    for backend in ("triton", "reference"):
        layer.backend = backend
        layer.zero_grad()
        x.grad = None
        out = layer(x)
        assert last_path("bra") == backend
        out.square().sum().backward()
        results.append((out.detach(), x.grad.clone(), layer.qkv.weight.grad.clone()))
    for a, b in zip(*results):  # output, input gradient, weight gradient; gradients reach ~1e3 here
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_last_stage_attention_matches_naive_mhsa():
    torch.manual_seed(0)
    attn = AttentionLePE(64, num_heads=8, side_dwconv=5).eval()
    x = torch.randn(2, 5, 7, 64)
    b, h, w, c = x.shape
    t = x.reshape(b, h * w, c)
    qkv = t @ attn.qkv.weight.T
    q, k, v = qkv[..., :c], qkv[..., c : 2 * c], qkv[..., 2 * c :]
    heads = []
    for m in range(8):
        sl = slice(m * 8, (m + 1) * 8)
        heads.append(((q[..., sl] @ k[..., sl].transpose(1, 2)) * 8**-0.5).softmax(-1) @ v[..., sl])
    lepe = F.conv2d(x.permute(0, 3, 1, 2), attn.lepe.weight, attn.lepe.bias, padding=2, groups=c)
    ref = torch.cat(heads, -1).reshape(b, h, w, c) + lepe.permute(0, 2, 3, 1)
    ref = ref @ attn.proj.weight.T + attn.proj.bias
    with torch.no_grad():
        torch.testing.assert_close(attn(x), ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------
# whole models at any size


def _small(stem_type="conv", **kwargs):
    torch.manual_seed(0)
    args = dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 96, 128), num_classes=10, stem_type=stem_type)
    if stem_type == "patch":
        args.update(cpe_kernel_size=0, mlp_ratios=4.0)
    return BiFormer(**dict(args, **kwargs)).eval()


def _expected_sizes(size, stem_type):
    """Stage sizes by conv arithmetic: padded 3x3 stride-2 convs round up, 4x4 / 2x2 patchify convs round down."""
    sizes = []
    if stem_type == "conv":
        for _ in range(2):
            size = (size + 2 - 3) // 2 + 1
        sizes.append(size)
        for _ in range(3):
            size = (size + 2 - 3) // 2 + 1
            sizes.append(size)
    else:
        size = (size - 4) // 4 + 1
        sizes.append(size)
        for _ in range(3):
            size = (size - 2) // 2 + 1
            sizes.append(size)
    return sizes


@pytest.mark.parametrize("stem_type", ["conv", "patch"])
@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (65, 97), (64, 40)])
def test_any_size_forward(stem_type, hw):
    model = _small(stem_type)
    with torch.no_grad():
        final, inter = model.forward_intermediates(torch.randn(2, 3, *hw))
        out = model.forward_head(final)
    eh, ew = _expected_sizes(hw[0], stem_type), _expected_sizes(hw[1], stem_type)
    assert [tuple(t.shape[-2:]) for t in inter] == list(zip(eh, ew))
    assert [t.shape[1] for t in inter] == [32, 64, 96, 128]
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_model_mask_padding_flag_is_exact_on_divisible_inputs():
    x = torch.randn(1, 3, 64, 64)  # tokens 16, 8, 4 per side: divisible by n_win=2
    with torch.no_grad():
        a = _small(n_win=2, mask_padding=True)(x)
        b = _small(n_win=2, mask_padding=False)(x)
        c = _small(n_win=3, mask_padding=True)(x)  # 16 % 3 != 0: padding, masked
        d = _small(n_win=3, mask_padding=False)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(c, d)


@pytest.mark.slow
@pytest.mark.parametrize("hw", [(224, 224), (256, 256), (320, 480), (375, 500), (32, 32), (33, 47)])
def test_biformer_tiny_any_size(hw):
    model = timm.create_model("biformer_tiny").eval()
    with torch.no_grad():
        inter = model.forward_intermediates(torch.randn(1, 3, *hw), intermediates_only=True)
    assert [tuple(t.shape[-2:]) for t in inter] == list(
        zip(_expected_sizes(hw[0], "conv"), _expected_sizes(hw[1], "conv"))
    )
    assert all(torch.isfinite(t).all() for t in inter)


# ---------------------------------------------------------------------------------------------------------
# checkpoint converter


def _to_official(sd: dict, stl: bool) -> dict:
    """Our keys -> the official legacy layout, written from the official module tree: ``downsample_layers.0`` is
    the stem Sequential (conv, BN, GELU, conv, BN; STL: conv, BN), ``downsample_layers.{1,2,3}`` the
    downsampling Sequentials (conv, BN; STL: BN, conv); blocks are ``stages.{i}.{j}`` (STL: ``stages.{i}.blocks.{j}``)
    with the MLP as a Sequential (fc1 at 0, fc2 at 3; STL: 2)."""
    stem = {"conv": "0", "norm": "1"} if stl else {"conv1": "0", "norm1": "1", "conv2": "3", "norm2": "4"}
    down = {"norm": "0", "conv": "1"} if stl else {"conv": "0", "norm": "1"}
    out = {}
    for key, value in sd.items():
        parts = key.split(".")
        if parts[0] == "stem":
            key = ".".join(["downsample_layers", "0", stem[parts[1]], *parts[2:]])
        elif parts[0] == "stages" and parts[2] == "downsample":
            key = ".".join(["downsample_layers", parts[1], down[parts[3]], *parts[4:]])
        elif parts[0] == "stages":
            i, j, rest = parts[1], parts[3], parts[4:]
            name = ".".join(rest)
            bra_stage = int(i) < 3
            name = re.sub(r"^cpe\.", "pos_embed.", name)
            if bra_stage:
                name = re.sub(r"^attn\.qkv\.", "attn.qkv.qkv.", name)
                name = re.sub(r"^attn\.proj\.", "attn.wo.", name)
            name = re.sub(r"^mlp\.fc1\.", "mlp.0.", name)
            name = re.sub(r"^mlp\.fc2\.", "mlp.2." if stl else "mlp.3.", name)
            key = f"stages.{i}.blocks.{j}.{name}" if stl else f"stages.{i}.{j}.{name}"
        elif parts[0] == "head":
            key = "head." + parts[-1]
        out[key] = value
    return out


@pytest.mark.parametrize("name", ["biformer_tiny", "biformer_stl"])
def test_converter_round_trip(name):
    torch.manual_seed(0)
    model = timm.create_model(name)
    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                buf.uniform_(0.5, 1.5)
    ours = model.state_dict()
    official = _to_official(ours, stl=name == "biformer_stl")
    dim0 = 96 if name == "biformer_stl" else 64
    # Hallmarks of the official layout (key names and shapes as the official code creates them).
    block = "stages.0.blocks.0" if name == "biformer_stl" else "stages.0.0"
    last = "stages.3.blocks.1" if name == "biformer_stl" else "stages.3.1"
    assert official[f"{block}.attn.qkv.qkv.weight"].shape == (3 * dim0, dim0)
    assert official[f"{block}.attn.lepe.weight"].shape == (dim0, 1, 5, 5)
    assert f"{block}.attn.wo.bias" in official and f"{last}.attn.proj.weight" in official
    assert f"{last}.attn.qkv.weight" in official and f"{last}.attn.qkv.bias" not in official
    assert "downsample_layers.0.1.running_mean" in official and "norm.running_var" in official
    assert official["head.weight"].shape == (1000, 8 * dim0)
    if name == "biformer_stl":
        assert official["downsample_layers.0.0.weight"].shape == (96, 3, 4, 4)
        assert official["downsample_layers.1.0.weight"].shape == (96,)  # BN before the 2x2 conv
        assert "stages.0.blocks.0.mlp.2.weight" in official and not any(".pos_embed." in k for k in official)
    else:
        assert official["downsample_layers.0.3.weight"].shape == (64, 32, 3, 3)
        assert official["stages.0.0.pos_embed.weight"].shape == (64, 1, 3, 3)
        assert official["stages.2.7.mlp.3.weight"].shape == (256, 768)
    assert not any(k.startswith(("stem.", "head.fc")) or ".blocks." in k and name != "biformer_stl" for k in official)

    for wrapped in (official, {"model": official, "epoch": 299}):
        back = checkpoint_filter_fn(dict(wrapped), model)
        assert back.keys() == ours.keys()
        for k in ours:
            assert torch.equal(back[k], ours[k]), k
    assert checkpoint_filter_fn(ours, model) is not None and checkpoint_filter_fn(ours, model).keys() == ours.keys()

    fresh = timm.create_model(name)
    fresh.load_state_dict(checkpoint_filter_fn(official, fresh), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)
