"""TransNeXt: official parity fixtures, the aggregated attention against an unfold-based naive reference, the
size-derived geometry against brute-force constructions, the converter, the kernel path.

The naive reference below recomputes aggregated attention the way the official native code does (``F.unfold``
of the keys / values, an explicit padding mask, ``adaptive_avg_pool2d``, ``torch.unique`` over every query / pooled
key coordinate pair, one softmax over the concatenated logits); it shares no code with the layer.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from visionattn.kernels import _dispatch, last_path, na2d, na2d_reference

import visionattn
from visionattn.layers.aggregated_attention import (
    AggregatedAttention,
    CosineAttention,
    _interpolated_cpb,
    cpb_index,
    local_key_count,
    pool_matrix,
)
from visionattn.models.transnext import TransNeXt, checkpoint_filter_fn

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL_PARAMS = {  # README of DaiShiResearch/TransNeXt, millions
    "transnext_micro": 12.8,
    "transnext_tiny": 28.2,
    "transnext_small": 49.7,
    "transnext_base": 89.7,
    "transnext_micro_aaaa": 13.1,
}
# The reduced official configuration of the fixtures in our constructor's terms (see tests/fixtures/README.md).
REDUCED = dict(depths=(1, 1, 1, 1), embed_dims=(16, 32, 32, 48), num_heads=(2, 2, 4, 4), mlp_ratios=(4, 4, 2, 2))
PARITY = {
    "native_224": ("transnext_micro", "transnext_reduced"),
    "size_160": ("transnext_micro", "transnext_reduced"),
    "dense_100x76": ("transnext_micro", "transnext_reduced"),
    "size_128": ("transnext_micro_aaaa", "transnext_aaaa_reduced"),
}

DEVICE = _dispatch.triton_device()  # where the Triton path runs here (None: nowhere)
needs_triton = pytest.mark.skipif(
    DEVICE is None, reason="triton is not installed, or there is neither a GPU nor TRITON_INTERPRET=1"
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _official(stem: str) -> nn.Module:
    return FIXTURES / f"{stem}_official.pth"


def test_registered_names():
    assert visionattn.list_models("transnext") == sorted(OFFICIAL_PARAMS)
    tags = timm.list_pretrained("transnext_*")
    assert {"transnext_small.in1k_384", "transnext_base.in1k_384", "transnext_micro_aaaa.in1k"} <= set(tags)
    assert all(f"{n}.in1k" in tags for n in OFFICIAL_PARAMS)


def test_architecture_details():
    model = _meta("transnext_micro_aaaa")
    assert all(isinstance(s.blocks[0].attn, AggregatedAttention) for s in model.stages)
    assert [s.blocks[0].attn.sr_ratio for s in model.stages] == [16, 8, 4, 2]
    assert [s.blocks[0].attn.pretrain_size for s in model.stages] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    model = _meta("transnext_tiny")
    assert isinstance(model.stages[3].blocks[0].attn, CosineAttention)
    assert [len(s.blocks) for s in model.stages] == [2, 2, 15, 2]
    block = model.stages[0].blocks[0]
    # ConvGLU: hidden int(2 * 72 * 8 / 3) = 384 per branch; head dim 24 everywhere
    assert block.mlp.fc1.out_features == 2 * 384 and block.mlp.dwconv.groups == 384
    assert block.attn.head_dim == 24 and block.norm1.eps == 1e-6 and block.attn.norm.eps == 1e-5
    assert model.stem.proj.kernel_size == (7, 7) and model.stem.norm.eps == 1e-5 and model.stages[0].downsample is None
    assert model.stages[1].downsample.proj.kernel_size == (3, 3) and model.stages[1].downsample.proj.stride == (2, 2)


# ----------------------------------------------------------------------------------------------------------
# official parity


@pytest.mark.parametrize("case", sorted(PARITY))
def test_official_parity(case):
    """Our model on the converted official weights reproduces the official code's logits and stage outputs."""
    name, stem = PARITY[case]
    ref = torch.load(FIXTURES / f"{stem}_outputs.pt", weights_only=True)[case]
    overlay = dict(file=str(_official(stem)), num_classes=10)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=10, **REDUCED)
    with torch.no_grad():
        final, stages = model.eval().forward_intermediates(ref["input"].float())
        logits = model.forward_head(final)
    for i, out in enumerate(stages):
        torch.testing.assert_close(out, ref[f"stage{i}"], rtol=0, atol=1e-5, msg=f"{case} stage {i}")
    if "logits" in ref:
        torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["interpolation96_100x76", "interpolation96_64x92"])
def test_official_dense_interpolation_parity(case):
    """pos_bias='interpolation' reproduces the official dense backbone built with is_extrapolation=False,
    img_size=96 (bias computed on the 96 px grids, resized bilinearly to larger and smaller maps)."""
    ref = torch.load(FIXTURES / "transnext_interpolation_outputs.pt", weights_only=True)[case]
    overlay = dict(file=str(_official("transnext_reduced")), num_classes=10)
    kwargs = dict(REDUCED, num_classes=10, pos_bias="interpolation", pos_bias_size=96)
    model = timm.create_model("transnext_micro", pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    with torch.no_grad():
        stages = model.eval().forward_intermediates(ref["input"].float(), intermediates_only=True)
    for i, out in enumerate(stages):
        torch.testing.assert_close(out, ref[f"stage{i}"], rtol=0, atol=1e-5, msg=f"{case} stage {i}")


def test_interpolation_at_its_own_size_is_extrapolation():
    """Resampling to the grid the bias was computed on is the identity: both modes agree at pos_bias_size, and
    differ elsewhere."""
    base = TransNeXt(**dict(REDUCED, num_classes=10)).eval()
    interp = TransNeXt(**dict(REDUCED, num_classes=10), pos_bias="interpolation", pos_bias_size=(96, 64)).eval()
    weights = checkpoint_filter_fn(torch.load(_official("transnext_reduced"), weights_only=True), base)
    base.load_state_dict({k: v.float() for k, v in weights.items()})
    interp.load_state_dict(base.state_dict())
    torch.manual_seed(0)
    assert interp.stages[0].blocks[0].attn.pos_bias_size == (24, 16)
    assert interp.stages[3].blocks[0].attn.pos_bias_size == (3, 2)
    with torch.no_grad():
        x = torch.randn(1, 3, 96, 64)
        torch.testing.assert_close(interp(x), base(x), rtol=0, atol=1e-6)
        y = torch.randn(1, 3, 80, 112)
        assert (interp(y) - base(y)).abs().max() > 1e-3


@pytest.mark.parametrize(
    "trained, pool, query, key",
    [((24, 24), (3, 3), (25, 19), (3, 2)), ((12, 16), (3, 4), (8, 12), (2, 3)), ((5, 4), (5, 4), (7, 3), (7, 3))],
)
def test_interpolated_cpb_matches_resizing_the_full_bias(trained, pool, query, key):
    """The separable interpolation equals the official order: gather the full (heads, trained Nq, trained Nk) bias,
    resize its key axes, then its query axes (2-D bilinear, half-pixel centres)."""
    torch.manual_seed(0)
    layer = AggregatedAttention(16, 2, pretrain_size=(56, 56))
    for lin in (layer.cpb_fc1, layer.cpb_fc2):
        nn.init.normal_(lin.bias, std=0.5)
    table, index = _official_cpb(trained, pool, (56, 56))
    with torch.no_grad():
        full = layer.cpb_fc2(layer.cpb_act(layer.cpb_fc1(table))).t()[:, index]  # (heads, Tq, Tk)
        heads, tq, _ = full.shape
        full = F.interpolate(full.reshape(heads, tq, *pool), key, mode="bilinear", align_corners=False)
        full = full.reshape(heads, tq, -1).transpose(1, 2).reshape(heads, -1, *trained)
        expected = F.interpolate(full, query, mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
        got = _interpolated_cpb(layer, trained, pool, query, key, (56, 56), None, torch.float32)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_converter_maps_every_official_key():
    sd = torch.load(_official("transnext_reduced"), weights_only=True)
    model = TransNeXt(num_classes=10, **REDUCED)
    converted = checkpoint_filter_fn(sd, model)
    assert set(converted) == set(model.state_dict())
    assert converted["stages.0.blocks.0.mlp.dwconv.weight"] is sd["model"]["block1.0.mlp.dwconv.dwconv.weight"]
    assert converted["stages.3.norm.weight"] is sd["model"]["norm4.weight"]
    assert converted["stem.proj.weight"] is sd["model"]["patch_embed1.proj.weight"]
    assert converted["stages.1.downsample.norm.bias"] is sd["model"]["patch_embed2.norm.bias"]
    assert converted["head.fc.bias"] is sd["model"]["head.bias"]
    # a bare state_dict, one with official buffers, and our own layout all load
    bare = dict(sd["model"], relative_pos_index1=torch.zeros(3), **{"block1.0.attn.padding_mask": torch.zeros(1)})
    assert set(checkpoint_filter_fn(bare, model)) == set(converted)
    assert checkpoint_filter_fn(model.state_dict(), model).keys() == model.state_dict().keys()


# ----------------------------------------------------------------------------------------------------------
# geometry derived from the size, against brute-force constructions


def _official_cpb(query_hw, key_hw, pretrain_hw):
    """Coordinates of every (query pixel, pooled cell) pair, deduplicated with torch.unique as officially."""
    qh, qw = torch.arange(query_hw[0], dtype=torch.float32), torch.arange(query_hw[1], dtype=torch.float32)
    kh = F.adaptive_avg_pool1d(qh[None], key_hw[0])[0]
    kw = F.adaptive_avg_pool1d(qw[None], key_hw[1])[0]
    kh, kw = (t.reshape(-1) for t in torch.meshgrid(kh, kw, indexing="ij"))
    qh, qw = (t.reshape(-1) for t in torch.meshgrid(qh, qw, indexing="ij"))
    rel_h = (qh[:, None] - kh[None, :]) / (pretrain_hw[0] - 1) * 8
    rel_w = (qw[:, None] - kw[None, :]) / (pretrain_hw[1] - 1) * 8
    table, index = torch.unique(torch.stack([rel_h, rel_w], -1).view(-1, 2), return_inverse=True, dim=0)
    table = torch.sign(table) * torch.log2(table.abs() + 1.0) / torch.log2(torch.tensor(8.0))
    return table, index.view(rel_h.shape)


@pytest.mark.parametrize(
    "query,key,pretrain", [((56, 56), (7, 7), (56, 56)), ((25, 19), (3, 2), (56, 56)), ((7, 5), (7, 5), (7, 7))]
)
def test_cpb_coordinates_match_unique_over_all_pairs(query, key, pretrain):
    table, index = cpb_index(query, key, pretrain)
    ref_table, ref_index = _official_cpb(query, key, pretrain)
    assert table.shape == ref_table.shape  # the distinct pairs are the product of the per-axis distinct values
    torch.testing.assert_close(table[index], ref_table[ref_index], rtol=0, atol=0)


@pytest.mark.parametrize("length,out", [(56, 7), (25, 3), (19, 2), (7, 7), (3, 5), (1, 1), (13, 4)])
def test_pool_matrix_is_adaptive_average_pooling(length, out):
    x = torch.randn(2, 3, length)
    expected = F.adaptive_avg_pool1d(x, out)
    torch.testing.assert_close(x @ pool_matrix(length, out).t(), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (2, 3), (7, 5)])
def test_local_key_count_matches_unfold(h, w):
    ones = F.unfold(torch.ones(1, 1, h, w), 3, padding=1).sum(1).view(h, w)
    assert torch.equal(local_key_count(h, w, 3), ones)


# ----------------------------------------------------------------------------------------------------------
# the layer against an unfold-based naive reference


def _naive_aggregated(layer: AggregatedAttention, x: torch.Tensor, pool_hw) -> torch.Tensor:
    b, h, w, c = x.shape
    n, heads, d = h * w, layer.num_heads, layer.head_dim
    ph, pw = pool_hw
    xs = x.reshape(b, n, c)
    ones = F.unfold(torch.ones(1, 1, h, w), 3, padding=1)  # (1, 9, N)
    pad_mask = ones[0].t() == 0  # (N, 9)
    log_len = torch.log(ones[0].sum(0)[:, None] + ph * pw)  # (N, 1)
    q_norm = F.normalize(layer.q(xs).view(b, n, heads, d).transpose(1, 2), dim=-1)
    q_s = (q_norm + layer.query_embedding) * F.softplus(layer.temperature) * log_len
    k, v = layer.kv(xs).chunk(2, dim=-1)
    k = F.normalize(k.view(b, n, heads, d), dim=-1).reshape(b, n, c)
    kv = torch.cat([k, v], -1).transpose(1, 2).reshape(b, 2 * c, h, w)
    k_loc, v_loc = F.unfold(kv, 3, padding=1).view(b, 2 * heads, d, 9, n).permute(0, 1, 4, 2, 3).chunk(2, dim=1)
    attn_loc = (q_s.unsqueeze(-2) @ k_loc).squeeze(-2) + layer.relative_pos_bias_local.unsqueeze(1)
    attn_loc = attn_loc.masked_fill(pad_mask, float("-inf"))
    pooled = F.adaptive_avg_pool2d(layer.act(layer.sr(xs.transpose(1, 2).reshape(b, c, h, w))), (ph, pw))
    pooled = layer.norm(pooled.flatten(2).transpose(1, 2))
    k_pool, v_pool = layer.kv(pooled).view(b, ph * pw, 2 * heads, d).transpose(1, 2).chunk(2, dim=1)
    table, index = _official_cpb((h, w), (ph, pw), layer.pretrain_size)
    bias = layer.cpb_fc2(layer.cpb_act(layer.cpb_fc1(table))).t()[:, index.view(-1)].view(heads, n, ph * pw)
    attn_pool = q_s @ F.normalize(k_pool, dim=-1).transpose(-2, -1) + bias
    attn = torch.cat([attn_loc, attn_pool], -1).softmax(-1)
    a_loc, a_pool = attn.split([9, ph * pw], -1)
    weights = q_norm @ layer.learnable_tokens + layer.learnable_bias + a_loc
    out = (weights.unsqueeze(-2) @ v_loc.transpose(-2, -1)).squeeze(-2) + a_pool @ v_pool
    return layer.proj(out.transpose(1, 2).reshape(b, h, w, c))


def _randomised(layer: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.dim() > 1 else 0.5))
    return layer


@pytest.mark.parametrize(
    "h,w,sr,fixed", [(9, 13, 2, None), (8, 8, 8, None), (1, 6, 4, None), (11, 7, 2, 3), (5, 4, 2, 7), (3, 3, 4, None)]
)
def test_aggregated_attention_matches_naive(h, w, sr, fixed):
    layer = _randomised(AggregatedAttention(24, 3, sr_ratio=sr, pretrain_size=(10, 12), fixed_pool_size=fixed))
    x = torch.randn(2, h, w, 24)
    pool = (fixed, fixed) if fixed else (max(1, h // sr), max(1, w // sr))
    assert layer.pool_size(h, w) == pool
    torch.testing.assert_close(layer(x), _naive_aggregated(layer, x, pool), rtol=1e-5, atol=1e-5)
    out = layer(x.requires_grad_())
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_cosine_attention_matches_naive():
    layer = _randomised(CosineAttention(32, 4, pretrain_size=(7, 7)))
    x = torch.randn(2, 5, 6, 32)
    b, h, w, c = x.shape
    q, k, v = layer.qkv(x.view(b, h * w, c)).view(b, h * w, 3 * 4, 8).transpose(1, 2).chunk(3, dim=1)
    table, index = _official_cpb((h, w), (h, w), (7, 7))
    bias = layer.cpb_fc2(layer.cpb_act(layer.cpb_fc1(table))).t()[:, index.view(-1)].view(4, h * w, h * w)
    q = (F.normalize(q, dim=-1) + layer.query_embedding) * F.softplus(layer.temperature) * math.log(h * w)
    attn = (q @ F.normalize(k, dim=-1).transpose(-2, -1) + bias).softmax(-1)
    expected = layer.proj((attn @ v).transpose(1, 2).reshape(b, h, w, c))
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_fixed_pool_size_is_linear_inference_mode():
    torch.manual_seed(0)
    base = timm.create_model("transnext_micro", **dict(REDUCED, num_classes=10)).eval()
    fixed = timm.create_model("transnext_micro", **dict(REDUCED, num_classes=10), fixed_pool_size=7).eval()
    fixed.load_state_dict(base.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():  # at 224 every aggregated layer pools to 7x7 anyway: the two modes agree
        torch.testing.assert_close(fixed(x), base(x), rtol=0, atol=0)
        y = torch.randn(1, 3, 320, 288)
        assert not torch.allclose(fixed(y), base(y))
    assert [s.blocks[0].attn.pool_size(80, 72) for s in list(fixed.stages)[:3]] == [(7, 7)] * 3
    assert [s.blocks[0].attn.pool_size(80, 72) for s in list(base.stages)[:3]] == [(10, 9), (20, 18), (40, 36)]


@pytest.mark.parametrize("hw", [(32, 32), (33, 47), (65, 97), (64, 40), (37, 32)])
def test_any_size_forward(hw):
    torch.manual_seed(0)
    model = timm.create_model("transnext_micro", **dict(REDUCED, num_classes=10)).eval()
    with torch.no_grad():
        stages = model.forward_intermediates(torch.randn(2, 3, *hw), intermediates_only=True)
    h, w = hw
    for i, out in enumerate(stages):
        h, w = -(-h // (4 if i == 0 else 2)), -(-w // (4 if i == 0 else 2))
        assert out.shape == (2, model.feature_info[i]["num_chs"], h, w) and torch.isfinite(out).all()


def test_bad_inputs_and_arguments_raise():
    model = timm.create_model("transnext_micro", **dict(REDUCED, num_classes=10))
    with pytest.raises(ValueError, match=r"input 31x64 .* at least 32 px.*32x64"):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match="window_size=4"):
        AggregatedAttention(16, 2, window_size=4)
    with pytest.raises(ValueError, match="fixed_pool_size=0"):
        AggregatedAttention(16, 2, fixed_pool_size=0)
    with pytest.raises(ValueError, match="num_heads=3 must divide dim=16"):
        AggregatedAttention(16, 3)
    with pytest.raises(ValueError, match="must divide embed_dims"):
        TransNeXt(embed_dims=(16, 32, 32, 48), num_heads=(3, 2, 4, 4))
    with pytest.raises(ValueError, match="pos_bias='linear' must be 'extrapolation' or 'interpolation'"):
        TransNeXt(pos_bias="linear")
    with pytest.raises(ValueError, match="needs pos_bias_size"):
        TransNeXt(pos_bias="interpolation")
    with pytest.raises(ValueError, match="pos_bias_size=16 is below 32 px"):
        TransNeXt(pos_bias="interpolation", pos_bias_size=16)
    with pytest.raises(ValueError, match=r"pos_bias_size=\(800, 800, 3\) must be an int or an \(H, W\) pair"):
        TransNeXt(pos_bias="interpolation", pos_bias_size=(800, 800, 3))
    with pytest.raises(TypeError, match="pos_bias_size=800.0 must be an int"):
        TransNeXt(pos_bias="interpolation", pos_bias_size=800.0)
    with pytest.raises(ValueError, match="pos_bias='cubic' is not one of"):
        CosineAttention(16, 2, pos_bias="cubic")


# ----------------------------------------------------------------------------------------------------------
# na2d's additional_bias and the kernel path


def test_na2d_additional_bias_is_added_to_the_pooled_logits():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 4, 5, 8) for _ in range(3))
    ak, av = torch.randn(2, 2, 3, 8), torch.randn(2, 2, 3, 8)
    bias = torch.randn(1, 2, 4, 5, 3)
    out = na2d_reference(q, k, v, 3, additional_keys=ak, additional_values=av, additional_bias=bias, border="mask")
    # the bias on three extra keys equals three extra channels: q gains the bias, the keys an identity block
    scale = 8**-0.5
    q2 = torch.cat([q, (bias / scale).expand(2, -1, -1, -1, -1)], -1)
    z = torch.zeros(2, 2, 4, 5, 3)
    ak2 = torch.cat([ak, torch.eye(3).expand(2, 2, 3, 3)], -1)
    av2 = torch.cat([av, torch.zeros(2, 2, 3, 3)], -1)
    k2, v2 = torch.cat([k, z], -1), torch.cat([v, z], -1)
    expected = na2d_reference(q2, k2, v2, 3, scale=scale, additional_keys=ak2, additional_values=av2, border="mask")
    torch.testing.assert_close(out, expected[..., :8], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="additional_bias must be"):
        na2d_reference(q, k, v, 3, additional_keys=ak, additional_values=av, additional_bias=bias[..., :2])
    with pytest.raises(ValueError, match="additional_bias needs additional_keys"):
        na2d_reference(q, k, v, 3, additional_bias=bias)


@needs_triton
def test_na2d_additional_bias_triton_matches_reference():
    torch.manual_seed(0)
    dev = DEVICE
    args = [torch.randn(1, 2, 5, 6, 8, device=dev, requires_grad=True) for _ in range(3)]
    ak, av = (torch.randn(1, 2, 4, 8, device=dev, requires_grad=True) for _ in range(2))
    bias = torch.randn(1, 2, 5, 6, 4, device=dev, requires_grad=True)
    rpb = torch.randn(2, 5, 5, device=dev, requires_grad=True)
    kw = dict(rpb=rpb, additional_keys=ak, additional_values=av, additional_bias=bias, border="mask", scale=0.7)
    inputs = (*args, ak, av, bias, rpb)
    ref = na2d_reference(*args, 3, **kw)
    out = na2d(*args, 3, backend="triton", **kw)
    assert last_path("na2d") == "triton"
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    g = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, inputs, g), torch.autograd.grad(ref, inputs, g)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@needs_triton
def test_transnext_micro_triton_path_matches_reference():
    """transnext_micro's features with every aggregated attention on the Triton kernel equal the reference path."""
    torch.manual_seed(0)
    ref_model = timm.create_model("transnext_micro", features_only=True, attn_backend="reference").eval()
    tri_model = timm.create_model("transnext_micro", features_only=True, attn_backend="triton").eval()
    tri_model.load_state_dict(ref_model.state_dict())
    x = torch.randn(1, 3, 40, 36)
    ref_model, tri_model, x = ref_model.to(DEVICE), tri_model.to(DEVICE), x.to(DEVICE)
    with torch.no_grad():
        ref = ref_model(x)
        out = tri_model(x)
    assert last_path("na2d") == "triton"
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "config", ["det/mask_rcnn_transnext_t_1x_coco.py", "seg/upernet_transnext_b_160k_ade20k_512.py"]
)
def test_dense_configs_no_decay_keys_hit_the_official_parameters(config):
    """The official no-decay keys of the dense recipes name parameters of this model (names kept official)."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(Path(__file__).parents[1] / "configs" / config))
    keys = cfg.optim_wrapper.paramwise_cfg.custom_keys
    assert {k for k, v in keys.items() if v.get("decay_mult") == 0.0} == {
        "query_embedding", "relative_pos_bias_local", "cpb", "temperature", "norm"
    }  # fmt: skip
    model = _meta(cfg.model.backbone.model_name)
    names = [n for n, _ in model.named_parameters()]
    for key in keys:
        assert any(key in n for n in names), key
    blocks = sum(len(stage.blocks) for stage in model.stages)
    assert sum("cpb" in n for n in names) == 4 * blocks  # cpb_fc1 / cpb_fc2 weight and bias in every block
