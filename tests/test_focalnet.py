"""FocalNet: the family over timm's names, the names this project adds, the converter's focal-window rule, ONNX.

References: timm's own ``FocalNet`` class (the subclass and the new names must match it bit for bit), the official
focal modulation written out from the paper / ``classification/focalnet.py`` (microsoft/FocalNet@e8514bd) in
``_official_modulation`` below, and hand-built tensors for the official loader's rule
(``detection/mmcv_custom/checkpoint.py``: kernels zero-padded about their centre, gate rows extended).
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models import model_entrypoint
from timm.models.focalnet import FocalNet as TimmFocalNet

import visionattn
from visionattn.export import default_check_size, export_onnx
from visionattn.models import get_family
from visionattn.models.focalnet import FocalNet, adapt_focal_weights, checkpoint_filter_fn

TIMM_NAMES = [
    "focalnet_tiny_srf",
    "focalnet_tiny_lrf",
    "focalnet_small_srf",
    "focalnet_small_lrf",
    "focalnet_base_srf",
    "focalnet_base_lrf",
    "focalnet_large_fl3",
    "focalnet_large_fl4",
    "focalnet_xlarge_fl3",
    "focalnet_xlarge_fl4",
    "focalnet_huge_fl3",
    "focalnet_huge_fl4",
]
OURS = ["focalnet_test", "focalnet_large_fl4_official"]
REDUCED = dict(depths=(1, 1, 1, 1), embed_dim=16)

pytestmark = pytest.mark.usefixtures("one_thread")


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _modulations(model: nn.Module) -> list[nn.Module]:
    return [m for n, m in model.named_modules() if n.endswith(".modulation")]


# ---------------------------------------------------------------------------------------------------------------
# the family and its names


def test_family_lists_timms_names_and_leaves_them_alone():
    assert visionattn.list_models(family="focalnet") == sorted(TIMM_NAMES + OURS)
    for name in TIMM_NAMES:  # still timm's entrypoints: nothing re-registered
        assert model_entrypoint(name).__module__ == "timm.models.focalnet", name
    assert type(_meta("focalnet_tiny_srf")) is TimmFocalNet
    for name in OURS:
        assert model_entrypoint(name).__module__ == "visionattn.models.focalnet", name
        assert type(_meta(name)) is FocalNet and issubclass(FocalNet, TimmFocalNet)
    assert get_family("focalnet").converter is checkpoint_filter_fn


def test_subclass_is_timms_model_bit_for_bit():
    """focalnet_test is timm's FocalNet with an input check: the same keys, the same outputs for the same seed."""
    kwargs = dict(depths=(1, 1, 2, 1), embed_dim=16, focal_levels=(2, 3, 2, 3), num_classes=7)
    torch.manual_seed(3)
    ours = timm.create_model("focalnet_test", **kwargs).eval()
    torch.manual_seed(3)
    theirs = TimmFocalNet(**kwargs).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        _, mine = ours.forward_intermediates(x)
        _, ref = theirs.forward_intermediates(x)
    assert all(torch.equal(a, b) for a, b in zip(mine, ref, strict=True))


def test_focalnet_test_takes_size_overrides_that_timms_entrypoints_refuse():
    with pytest.raises(TypeError, match="embed_dim"):
        timm.create_model("focalnet_tiny_srf", embed_dim=16)
    model = _meta("focalnet_test", **REDUCED)
    assert [f["num_chs"] for f in model.feature_info] == [16, 32, 64, 128]


def test_input_below_32_px_is_a_clear_error():
    model = timm.create_model("focalnet_test", **REDUCED).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 45)).shape == (1, 1000)
        with pytest.raises(ValueError, match=r"31x45 .*resize or pad it to 32x45"):
            model(torch.randn(1, 3, 31, 45))
        with pytest.raises(ValueError, match="16x16"):
            model.forward_intermediates(torch.randn(1, 3, 16, 16))


# ---------------------------------------------------------------------------------------------------------------
# large_fl4: normalize_modulator as the official config sets it


def _official_modulation(mod: nn.Module, x: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The official focal modulation on an NCHW map, from the module's weights: f -> (q, ctx, gates); L sequential
    depth-wise conv + GELU levels gated and summed; a global GELU(mean) level; divided by L + 1 when normalised;
    q * h(ctx_all); the post-modulation norm when present; proj."""
    c, levels = x.shape[1], len(mod.focal_layers)
    q, ctx, gates = torch.split(F.conv2d(x, mod.f.weight, mod.f.bias), (c, c, levels + 1), 1)
    ctx_all = torch.zeros_like(ctx)
    for level in range(levels):
        w = mod.focal_layers[level][0].weight
        ctx = F.gelu(F.conv2d(ctx, w, padding=w.shape[-1] // 2, groups=c))
        ctx_all = ctx_all + ctx * gates[:, level : level + 1]
    ctx_all = ctx_all + F.gelu(ctx.mean((2, 3), keepdim=True)) * gates[:, levels:]
    if normalize:
        ctx_all = ctx_all / (levels + 1)
    out = mod.norm(q * F.conv2d(ctx_all, mod.h.weight, mod.h.bias))
    return F.conv2d(out, mod.proj.weight, mod.proj.bias)


def test_large_fl4_official_normalizes_the_modulator():
    official, timms = _meta("focalnet_large_fl4_official"), _meta("focalnet_large_fl4")
    assert all(m.normalize_modulator for m in _modulations(official))
    assert not any(m.normalize_modulator for m in _modulations(timms))  # timm's entrypoint leaves it unset
    # the same weights load into both: same keys, same shapes, same pretrained file
    assert {k: v.shape for k, v in official.state_dict().items()} == {k: v.shape for k, v in timms.state_dict().items()}
    assert (
        official.pretrained_cfg["hf_hub_id"] == timms.pretrained_cfg["hf_hub_id"] == "timm/focalnet_large_fl4.ms_in22k"
    )

    # reduced, with timm's class as the reference and the official formula for every modulation
    torch.manual_seed(0)
    model = timm.create_model("focalnet_large_fl4_official", **REDUCED).eval()
    torch.manual_seed(0)
    ref = TimmFocalNet(**REDUCED, **_large_fl4_args(), normalize_modulator=True, num_classes=21842).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
        g = torch.Generator().manual_seed(1)
        for mod in _modulations(model):
            for p in mod.parameters():  # O(1) weights, so the normalisation shows far above rounding
                p.copy_(torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5 if p.dim() > 1 else 3))
            y = torch.randn(2, mod.h.weight.shape[0], 5, 6, generator=g)
            torch.testing.assert_close(mod(y), _official_modulation(mod, y, normalize=True), atol=1e-5, rtol=0)
            assert (mod(y) - _official_modulation(mod, y, normalize=False)).abs().max() > 1e-2


def _large_fl4_args() -> dict:
    """timm's focalnet_large_fl4 arguments (its entrypoint), without depths and width."""
    return dict(focal_levels=(4, 4, 4, 4), use_post_norm=True, use_overlap_down=True, layerscale_value=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# the official rule for other focal windows / levels


def _test_model(**kwargs) -> nn.Module:
    return timm.create_model("focalnet_test", **dict(REDUCED, focal_levels=(2, 3, 2, 3)) | kwargs).eval()


def test_window_3_weights_into_the_window_9_model_keep_its_function():
    """Zero-padding a depth-wise kernel about its centre (padding k // 2) computes the same convolution: the dense
    window-9 model with the converted weights gives the classification model's outputs."""
    torch.manual_seed(0)
    cls = _test_model()
    dense = _test_model(focal_windows=(9, 9, 9, 9))
    state = checkpoint_filter_fn(cls.state_dict(), dense)
    dense.load_state_dict(state)
    w3 = cls.state_dict()["layers.2.blocks.0.modulation.focal_layers.0.0.weight"]
    w5 = cls.state_dict()["layers.1.blocks.0.modulation.focal_layers.1.0.weight"]
    w7 = cls.state_dict()["layers.1.blocks.0.modulation.focal_layers.2.0.weight"]
    expect = torch.zeros(64, 1, 9, 9)
    expect[:, :, 3:6, 3:6] = w3
    assert torch.equal(state["layers.2.blocks.0.modulation.focal_layers.0.0.weight"], expect)
    for w, key, k in ((w5, "focal_layers.1", 11), (w7, "focal_layers.2", 13)):
        got = state[f"layers.1.blocks.0.modulation.{key}.0.weight"]
        assert got.shape == (32, 1, k, k)
        border = torch.ones_like(got, dtype=torch.bool)
        border[:, :, 3:-3, 3:-3] = False
        assert torch.equal(got[:, :, 3:-3, 3:-3], w) and not got[border].any()
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), cls(x), atol=1e-5, rtol=0)
        for a, b in zip(dense.forward_intermediates(x)[1], cls.forward_intermediates(x)[1], strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_more_focal_levels_extend_the_gate_rows():
    """srf (2 levels) weights into an lrf (3 levels) model: q / ctx rows and the global gate copied, level gates
    0..1 kept, the new level's gate row zero; the new level's kernel keeps the model's initialisation."""
    torch.manual_seed(0)
    srf = _test_model(focal_levels=(2, 2, 2, 2))
    lrf = _test_model(focal_levels=(3, 3, 3, 3), focal_windows=(9, 9, 9, 9))
    init = {k: v.clone() for k, v in lrf.state_dict().items()}
    state = checkpoint_filter_fn(srf.state_dict(), lrf)
    lrf.load_state_dict(state)  # strict
    c = 16
    w, b = (
        srf.state_dict()["layers.0.blocks.0.modulation.f.weight"],
        srf.state_dict()["layers.0.blocks.0.modulation.f.bias"],
    )
    assert w.shape == (2 * c + 3, c, 1, 1)
    expect_w = torch.cat([w[: 2 * c + 2], torch.zeros(1, c, 1, 1), w[-1:]])
    expect_b = torch.cat([b[: 2 * c + 2], torch.zeros(1), b[-1:]])
    assert torch.equal(state["layers.0.blocks.0.modulation.f.weight"], expect_w)
    assert torch.equal(state["layers.0.blocks.0.modulation.f.bias"], expect_b)
    new = "layers.3.blocks.0.modulation.focal_layers.2.0.weight"
    assert torch.equal(state[new], init[new])
    # the official loader refuses fewer levels; so does ours, naming the fix
    with pytest.raises(ValueError, match="focal_levels"):
        adapt_focal_weights(lrf.state_dict(), srf.state_dict())


def test_timm_layout_passes_through_unchanged():
    torch.manual_seed(0)
    model = _test_model()
    state = checkpoint_filter_fn(model.state_dict(), model)
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# ---------------------------------------------------------------------------------------------------------------
# ONNX for every model up to 100M parameters


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in TIMM_NAMES if get_family(n).params_m[n] <= 100])
def test_onnx_every_variant_up_to_100m(name, tmp_path):
    """Full model at 224 and the family's second size, one graph with dynamic batch / height / width, batch 2 and
    3, within 1e-4 of PyTorch in onnxruntime."""
    size = (3, 224, 224)
    second = default_check_size(size, get_family(name))
    report = export_onnx(name, tmp_path / f"{name}.onnx", size, extra_sizes=[second], dynamic_size=True)
    assert [(c.batch, c.input_size) for c in report.checks] == [(b, s) for s in (size, second) for b in (2, 3)]
    assert all(c.ok and c.max_abs_err <= 1e-4 for c in report.checks)
