"""timm model contract for every model visionattn registers (parametrised over ``visionattn.list_models()``).

The default (fast) run checks the smallest model of each family at small inputs on one thread; the ``slow``
marker covers every registered model, including the default input size. Expected shapes come from the input
size and the declared reductions alone: a stride-r downsampling of s pixels yields floor(s/r) or ceil(s/r)
(padding-free patchify convs round down, padded overlapping convs round up), exactly s/r when r divides s.
"""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath

import visionattn
from visionattn.models import _registry

MODELS = visionattn.list_models()
ALIASES = sorted(set(visionattn.list_models(aliases=True)) - set(MODELS))
SMALL = (64, 96)  # divisible by 32: exact sizes expected
ODD = (65, 97)  # non-square, not divisible


def _meta_model(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _smallest_per_family() -> list[str]:
    by_family: dict[str, list[str]] = {}
    for name in MODELS:
        by_family.setdefault(_registry.family_of(name), []).append(name)
    return sorted(min(names, key=lambda n: _num_params(_meta_model(n))) for names in by_family.values())


FAST = _smallest_per_family()
SLOW_ONLY = [n for n in MODELS if n not in FAST]
# Fast set: smallest model per family; the rest of the registry runs under `slow`.
ALL = [*FAST, *[pytest.param(n, marks=pytest.mark.slow) for n in SLOW_ONLY]]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _create(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, **kwargs)


def _allowed(size: int, reduction: int) -> set[int]:
    return {size // reduction, math.ceil(size / reduction)}


def _check_spatial(t: torch.Tensor, hw: tuple[int, int], reduction: int) -> None:
    h, w = hw
    got = tuple(t.shape[-2:])
    if h % reduction == 0 and w % reduction == 0:
        assert got == (h // reduction, w // reduction), f"reduction {reduction} of {hw}: got {got}"
    else:
        assert got[0] in _allowed(h, reduction) and got[1] in _allowed(w, reduction), (
            f"reduction {reduction} of {hw}: got {got}, expected floor or ceil of {h / reduction}, {w / reduction}"
        )


@pytest.mark.parametrize("hw", [SMALL, ODD])
@pytest.mark.parametrize("name", ALL)
def test_forward(name, hw):
    model = _create(name).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
        pooled = model.forward_head(feats, pre_logits=True)
    assert out.shape == (2, model.num_classes)
    assert pooled.shape == (2, model.head_hidden_size)
    assert feats.shape[1] == model.num_features
    _check_spatial(feats, hw, model.feature_info[-1]["reduction"])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(model(x), out)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_forward_default_size(name):
    model = _create(name).eval()
    cfg = model.pretrained_cfg
    hw = tuple(cfg["input_size"][1:])
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, *cfg["input_size"]))
        out = model.forward_head(feats)
    assert out.shape == (1, cfg["num_classes"]) and torch.isfinite(out).all()
    _check_spatial(feats, hw, model.feature_info[-1]["reduction"])
    if cfg.get("pool_size"):
        assert tuple(feats.shape[-2:]) == tuple(cfg["pool_size"])


@pytest.mark.parametrize("name", ALL)
def test_backward(name):
    model = _create(name).train()
    x = torch.randn(2, 3, *SMALL)
    out = model(x)
    (out * torch.randn_like(out)).sum().backward()
    missing, zero = [], []
    for pname, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.grad is None:
            missing.append(pname)
        else:
            assert torch.isfinite(p.grad).all(), pname
            if not p.grad.abs().sum() > 0:
                zero.append(pname)
    assert not missing, f"parameters without gradient: {missing}"
    assert not zero, f"parameters with an all-zero gradient: {zero}"


@pytest.mark.parametrize("name", ALL)
def test_features_only(name):
    ref = _meta_model(name)
    info = ref.feature_info
    reductions = [f["reduction"] for f in info]
    assert reductions == sorted(reductions) and len(set(reductions)) == len(reductions)

    model = _create(name, features_only=True).eval()
    assert model.feature_info.channels() == [f["num_chs"] for f in info]
    assert model.feature_info.reduction() == reductions
    for hw in (SMALL, ODD):
        with torch.no_grad():
            feats = model(torch.randn(1, 3, *hw))
        assert len(feats) == len(info)
        for f, meta in zip(feats, info):
            assert f.shape[:2] == (1, meta["num_chs"])
            _check_spatial(f, hw, meta["reduction"])

    last = len(info) - 1
    picked = (1, last)
    model = _create(name, features_only=True, out_indices=picked).eval()
    assert model.feature_info.reduction() == [reductions[i] for i in picked]
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *SMALL))
    assert [f.shape[1] for f in feats] == [info[i]["num_chs"] for i in picked]
    for f, i in zip(feats, picked):
        _check_spatial(f, SMALL, reductions[i])


@pytest.mark.parametrize("name", ALL)
def test_forward_intermediates(name):
    model = _create(name).eval()
    feat_model = _create(name, features_only=True).eval()  # same seed: same weights
    x = torch.randn(1, 3, *ODD)
    with torch.no_grad():
        expected = feat_model(x)
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        normed = model.forward_intermediates(x, norm=True, intermediates_only=True)
        features = model.forward_features(x)
    assert len(inter) == len(expected) == len(model.feature_info)
    for a, b in zip(inter, expected):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
    for a, b in zip(only, inter):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(normed[-1], features)
    assert len(last_two) == 2
    torch.testing.assert_close(last_two[0], inter[-2])
    assert len(early) == 1
    torch.testing.assert_close(early[0], inter[1])
    with pytest.raises((ValueError, AssertionError)):
        model.forward_intermediates(x, output_fmt="NHWC")


@pytest.mark.parametrize("name", ALL)
def test_prune_intermediate_layers(name):
    model = _create(name).eval()
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
    kept = model.prune_intermediate_layers([0, 1])
    assert list(kept) == [0, 1]
    with torch.no_grad():
        pruned = model.forward_intermediates(x, intermediates_only=True)
        out = model(x)
    assert len(pruned) == 2
    for a, b in zip(pruned, full[:2]):
        torch.testing.assert_close(a, b)
    # timm's convention: pruning removes the classifier and the pooling, so forward returns the last kept map.
    assert model.num_classes == 0
    assert out.shape[:2] == (1, model.feature_info[1]["num_chs"])
    _check_spatial(out, SMALL, model.feature_info[1]["reduction"])


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier(name):
    model = _create(name).eval()
    x = torch.randn(2, 3, *SMALL)
    c = model.num_features
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(x).shape == (2, c)
    model.reset_classifier(0, "")
    with torch.no_grad():
        unpooled = model(x)
    assert unpooled.dim() == 4 and unpooled.shape[:2] == (2, c)
    model.reset_classifier(7, "avg")
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    with torch.no_grad():
        assert model(x).shape == (2, 7)

    headless = _create(name, num_classes=0)
    assert isinstance(headless.get_classifier(), nn.Identity)
    with torch.no_grad():
        assert headless.eval()(x).shape == (2, c)
        assert _create(name, num_classes=0, global_pool="").eval()(x).dim() == 4


@pytest.mark.parametrize("name", ALL)
def test_grad_checkpointing(name):
    x = torch.randn(2, 3, *SMALL)

    def run(checkpointing: bool):
        model = _create(name).eval()
        model.set_grad_checkpointing(checkpointing)
        calls = [0]
        hooks = [m.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1)) for m in model.modules()]
        out = model(x)
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        for h in hooks:
            h.remove()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out.detach(), grads, calls[0]

    out0, grads0, calls0 = run(False)
    out1, grads1, calls1 = run(True)
    assert calls1 > calls0, "set_grad_checkpointing(True) did not recompute anything in backward"
    torch.testing.assert_close(out1, out0)
    assert grads1.keys() == grads0.keys()
    for n in grads0:
        torch.testing.assert_close(grads1[n], grads0[n], rtol=1e-4, atol=1e-6, msg=n)


@pytest.mark.parametrize("name", MODELS)
def test_pretrained_cfg(name):
    model = _meta_model(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    assert isinstance(cfg.get("url", ""), str) and isinstance(cfg.get("hf_hub_id", "") or "", str)
    assert cfg["num_classes"] == model.num_classes == 1000
    c, h, w = cfg["input_size"]
    assert c == 3 and h >= 32 and w >= 32
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and all(0 < s < 1 for s in cfg["std"])
    assert 0 < cfg["crop_pct"] <= 1
    assert cfg["interpolation"] in ("bilinear", "bicubic", "nearest")
    assert cfg["license"]
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    head = model.get_submodule(cfg["classifier"])
    assert isinstance(head, nn.Linear) and head.out_features == cfg["num_classes"]
    assert head is model.get_classifier()
    if cfg.get("pool_size"):
        red = model.feature_info[-1]["reduction"]
        assert cfg["pool_size"][0] in _allowed(h, red) and cfg["pool_size"][1] in _allowed(w, red)


@pytest.mark.parametrize("name", MODELS)
def test_drop_path_rate_wiring(name):
    def probs(rate):
        model = _meta_model(name, drop_path_rate=rate)
        return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]

    assert not [p for p in probs(0.0) if p > 0]
    rates = probs(0.25)
    assert rates, "drop_path_rate=0.25 created no DropPath module"
    assert all(b >= a - 1e-9 for a, b in zip(rates, rates[1:])), "drop path rates must not decrease with depth"
    assert 0 < max(rates) <= 0.25 + 1e-6


@pytest.mark.parametrize("name", FAST)
def test_drop_path_is_stochastic_in_training(name):
    x = torch.randn(2, 3, *SMALL)
    model = _create(name, drop_path_rate=0.5).train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.parametrize("alias", ALIASES)
def test_alias(alias):
    target = _registry.resolve_alias(alias)
    a, t = _meta_model(alias), _meta_model(target)
    assert type(a) is type(t)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in t.named_parameters()]
    assert a.pretrained_cfg["architecture"] == target
