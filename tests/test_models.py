"""timm's model contract for every registered family, read from the family records.

A family that passes these tests passes timm's own ``tests/test_models.py``: TorchScript, FX forward and backward
(with timm's notrace registry), FX + TorchScript, forward / backward / features at timm's 96-128 px sizes (moved onto
the family's size rule), ``reset_classifier(0)`` and ``(0, '')``, grad-checkpointing equality, the default cfg
fields, ``features_only``, ``forward_intermediates``, channels and strides, ``device``/``dtype`` factory kwargs and
building on the meta device.

* Heavy tests (forwards, backward, grad checkpointing, TorchScript, FX) run on each family's smallest model
  (``Family.smallest``) built with ``Family.test_kwargs``; the ``slow`` ones also run the full smallest model.
* Every registered name gets the cheap tests, on the meta device: the default cfg, ``feature_info`` against the
  record's layout, the parameter count against ``Family.params_m`` and the family's card, the factory kwargs.

Expected shapes come from the input size and the declared reductions alone: a stride-r downsampling of s pixels
gives floor(s/r) or ceil(s/r) (padding-free patchify convs round down, padded convs round up), exactly s/r when r
divides s. Feature maps are compared with what forward hooks on the plain model's ``feature_info`` modules see,
a code path shared with neither ``features_only`` wrapper (FeatureListNet nor FeatureGetterNet).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from timm.layers import DropPath, set_scriptable
from timm.models import get_pretrained_cfg
from timm.models._features_fx import create_feature_extractor, get_graph_node_names
from torch.utils._python_dispatch import TorchDispatchMode

import visionattn
from visionattn.models import _registry

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = _registry.families()
MODELS = visionattn.list_models()
ALIASES = sorted(set(visionattn.list_models(aliases=True)) - set(MODELS))
# One model per family for the heavy tests: the smallest, built with the record's test kwargs.
HEAVY = sorted(f.smallest for f in FAMILIES)
# Every model up to this many million parameters (the record's params_m) runs forward and backward at full width and
# depth; a larger one (DaViT-H/G, ...) would need more memory and time than CI's 2 cores, so it is built and run on
# the meta device instead (shapes, no memory, no arithmetic).
RUN_MAX_PARAMS_M = 300
RUNNABLE = [m for m in MODELS if _registry.get_family(m).params_m[m] <= RUN_MAX_PARAMS_M]
META_ONLY = [m for m in MODELS if m not in RUNNABLE]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------------------
# helpers: the record, sizes from its rule, layouts


def _family(name: str) -> _registry.Family:
    return _registry.get_family(name)


def _create(name: str, full: bool = False, **kwargs) -> nn.Module:
    """The model seeded; the heavy tests' version carries the record's small test kwargs unless ``full``."""
    torch.manual_seed(0)
    args = {} if full else dict(_family(name).test_kwargs)
    args.update(kwargs)
    return timm.create_model(name, **args)


def _meta(name: str, **kwargs) -> nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, **kwargs)


def _default_hw(name: str) -> tuple[int, int]:
    return tuple(get_pretrained_cfg(name).input_size[1:])


def _hw(name: str, h: int, w: int | None = None) -> tuple[int, int]:
    """timm's test size ``h x w`` moved onto the family's size rule (the cfg size for fixed-size families)."""
    family = _family(name)
    if family.is_fixed(name):
        return _default_hw(name)
    return family.fit_size(h), family.fit_size(h if w is None else w)


def _sizes(name: str) -> list[tuple[int, int]]:
    """Square 96 and 128 (timm's feature / forward sizes) and a non-square size off every power of two."""
    return sorted({_hw(name, 96), _hw(name, 128), _hw(name, 97, 65)})


def _allowed(size: int, reduction: int) -> set[int]:
    return {size // reduction, math.ceil(size / reduction)}


def _spatial(t: torch.Tensor, fmt: str) -> tuple[int, int]:
    return tuple(t.shape[1:3]) if fmt == "NHWC" else tuple(t.shape[-2:])


def _channels(t: torch.Tensor, fmt: str) -> int:
    return t.shape[-1] if fmt == "NHWC" else t.shape[1]


def _check_map(t: torch.Tensor, hw: tuple[int, int], reduction: int, channels: int, fmt: str = "NCHW") -> None:
    """A (B, C, h, w) map (or (B, h, w, C)) of ``channels`` at ``reduction`` of an ``hw`` input."""
    assert t.dim() == 4, f"expected a 4-D {fmt} map, got shape {tuple(t.shape)}"
    assert _channels(t, fmt) == channels, f"expected {channels} channels ({fmt}), got shape {tuple(t.shape)}"
    got, (h, w) = _spatial(t, fmt), hw
    if h % reduction == 0 and w % reduction == 0:
        assert got == (h // reduction, w // reduction), f"reduction {reduction} of {hw}: got {got}"
    else:
        assert got[0] in _allowed(h, reduction) and got[1] in _allowed(w, reduction), (
            f"reduction {reduction} of {hw}: got {got}, expected floor or ceil of {h / reduction}, {w / reduction}"
        )


def _output_fmt(model: nn.Module) -> str:
    """Layout of ``forward_features`` (timm's convention: an ``output_fmt`` attribute, NCHW by default)."""
    return str(getattr(model, "output_fmt", "NCHW"))


def _check_features(model: nn.Module, t: torch.Tensor, hw: tuple[int, int]) -> None:
    """The unpooled output of ``model`` for an ``hw`` input: a map in its ``output_fmt``, or for a token model
    (``output_fmt == "NLC"``, timm's ViTs) (B, prefix + h * w, C) tokens, ``num_prefix_tokens`` class tokens first."""
    fmt, reduction, channels = _output_fmt(model), model.feature_info[-1]["reduction"], model.num_features
    if fmt != "NLC":
        _check_map(t, hw, reduction, channels, fmt)
        return
    assert t.dim() == 3 and t.shape[-1] == channels, f"expected (B, N, {channels}) tokens, got {tuple(t.shape)}"
    counts = {a * b for a in _allowed(hw[0], reduction) for b in _allowed(hw[1], reduction)}
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    assert t.shape[1] - prefix in counts, f"{tuple(t.shape)}: {prefix} prefix tokens + one of {sorted(counts)}"


def _hooked_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The outputs of the plain model's ``feature_info`` modules, captured by forward hooks."""
    seen: dict[int, torch.Tensor] = {}
    handles = []
    for i, info in enumerate(model.feature_info):
        module = model.get_submodule(info["module"])
        handles.append(module.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
    assert sorted(seen) == list(range(len(model.feature_info))), "a feature_info module did not run"
    return [seen[i] for i in range(len(model.feature_info))]


def _as_layout(hooked: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A hooked module output in the layout of the returned map (modules may work channels-last)."""
    if hooked.shape == like.shape:
        return hooked
    if hooked.dim() == 4 and hooked.permute(0, 3, 1, 2).shape == like.shape:
        return hooked.permute(0, 3, 1, 2)
    if hooked.dim() == 4 and hooked.permute(0, 2, 3, 1).shape == like.shape:
        return hooked.permute(0, 2, 3, 1)
    if hooked.dim() == 3 and like.dim() == 4 and hooked.shape[-1] == like.shape[1]:
        # (B, prefix + h * w, C) tokens, the prefix (class) tokens first: timm's token layout
        b, c, h, w = like.shape
        return hooked[:, hooked.shape[1] - h * w :].reshape(b, h, w, c).permute(0, 3, 1, 2)
    raise AssertionError(f"hooked module output {tuple(hooked.shape)} is no layout of the map {tuple(like.shape)}")


def _fx_model(model: nn.Module, train: bool) -> nn.Module:
    """The model traced with timm's FX feature extractor, returning its last node (timm's FX tests)."""
    train_nodes, eval_nodes = get_graph_node_names(model)
    nodes = train_nodes if train else eval_nodes
    return create_feature_extractor(model, return_nodes=[nodes[-1]])


def _fx_out(fx: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = fx(x)
    assert isinstance(out, dict) and len(out) == 1
    return next(iter(out.values()))


def _grads(model: nn.Module) -> tuple[list[str], list[str]]:
    missing, nonfinite = [], []
    for pname, p in model.named_parameters():
        if p.requires_grad:
            if p.grad is None:
                missing.append(pname)
            elif not torch.isfinite(p.grad).all():
                nonfinite.append(pname)
    return missing, nonfinite


# ---------------------------------------------------------------------------------------------------------------
# heavy tests: the smallest model of each family


@pytest.mark.parametrize("name", HEAVY)
def test_forward(name):
    model = _create(name).eval()
    for hw in _sizes(name):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            feats = model.forward_features(x)
            out = model.forward_head(feats)
            pooled = model.forward_head(feats, pre_logits=True)
            whole = model(x)
        assert out.shape == (2, model.num_classes)
        assert pooled.shape == (2, model.head_hidden_size)
        _check_features(model, feats, hw)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(whole, out)


@pytest.mark.parametrize("name", HEAVY)
def test_size_rule_below_minimum(name):
    """The record's size rule is the model's: its smallest size works, a side below it or off the multiple raises
    the clear ValueError (not a convolution's RuntimeError)."""
    family = _family(name)
    if family.is_fixed(name):
        h, w = _default_hw(name)
        bad = [(h + 1, w), (h, w - 1)]
    else:
        lo, m = family.fit_size(1), family.input_multiple
        h = w = lo
        bad = [(lo - 1, lo + m)] if lo > 1 else []
        if m > 1:
            bad.append((lo + m // 2, lo))
    model = _create(name).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, h, w))
    assert out.shape == (1, model.num_classes) and torch.isfinite(out).all()
    for bh, bw in bad:
        with pytest.raises(ValueError, match=rf"\b{bh}x{bw}\b") as err:
            with torch.no_grad():
                model(torch.randn(1, 3, bh, bw))
        assert re.search(r"resize|pad|crop", str(err.value)), f"the error says what to do: {err.value}"


def _open_zero_gates(model: nn.Module) -> None:
    """Zero-initialised residual gates (a norm whose weight is all zeros: ResNet's zero_init_last, SHViT's last
    BatchNorm of every residual branch) block their branch's gradient by design; set them to one so that the
    all-zero check sees every path."""
    with torch.no_grad():
        for m in model.modules():
            weight = getattr(m, "weight", None)
            if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm | nn.LayerNorm) and weight is not None:
                if not weight.abs().sum() > 0:
                    weight.fill_(1.0)


@pytest.mark.parametrize("name", HEAVY)
def test_backward(name):
    """timm: train mode, 42 classes, every parameter gets a (finite) gradient; ours: none is all zero (zero-init
    residual gates opened first)."""
    model = _create(name, num_classes=42).train()
    _open_zero_gates(model)
    x = torch.randn(2, 3, *_hw(name, 128))
    out = model(x)
    assert out.shape == (2, 42)
    (out * torch.randn_like(out)).sum().backward()
    missing, nonfinite = _grads(model)
    assert not missing, f"parameters without gradient: {missing}"
    assert not nonfinite, f"parameters with a non-finite gradient: {nonfinite}"
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.abs().sum() > 0]
    assert not zero, f"parameters with an all-zero gradient: {zero}"


@pytest.mark.parametrize("name", HEAVY)
def test_grad_checkpointing(name):
    x = torch.randn(2, 3, *_hw(name, 96))

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


def _script(model: nn.Module):
    with set_scriptable(True):
        return torch.jit.script(model)


@pytest.mark.parametrize("name", HEAVY)
def test_torchscript(name):
    """Scriptable families compile and match eager (also the size error); the others refuse cleanly."""
    model = _create(name).eval()
    if not _family(name).scriptable:
        with pytest.raises(Exception) as err:  # noqa: B017  (any clean refusal; a crash or hang fails the test)
            _script(model)
        assert str(err.value)
        return
    scripted = _script(model)
    for hw in (_hw(name, 128), _hw(name, 97, 65)):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=1e-5, atol=1e-5)
    family = _family(name)
    if not family.is_fixed(name) and family.fit_size(1) > 1:
        side = family.fit_size(1) - 1
        with pytest.raises(Exception, match=rf"{side}x{side}"):
            scripted(torch.randn(1, 3, side, side))


@pytest.mark.parametrize("name", HEAVY)
def test_fx_forward(name):
    """timm's FX test: the traced model (timm's notrace modules and functions as leaves) equals eager exactly."""
    model = _create(name).eval()
    fx = _fx_model(model, train=False)
    for hw in (_hw(name, 128), _hw(name, 97, 65)):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            assert torch.equal(_fx_out(fx, x), model(x))


@pytest.mark.parametrize("name", HEAVY)
def test_fx_backward(name):
    model = _create(name, num_classes=42).train()
    fx = _fx_model(model, train=True)
    out = _fx_out(fx, torch.randn(2, 3, *_hw(name, 128)))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing, nonfinite = _grads(model)
    assert not missing, f"parameters without gradient through FX: {missing}"
    assert not nonfinite, f"parameters with a non-finite gradient through FX: {nonfinite}"


@pytest.mark.parametrize("name", HEAVY)
def test_fx_torchscript(name):
    """timm scripts the FX graph module too: it must match eager. A family recorded as not scriptable may refuse
    here (cleanly); if its traced graph does compile, it must still match."""
    model = _create(name).eval()
    fx = _fx_model(model, train=False)
    if _family(name).scriptable:
        scripted = _script(fx)
    else:
        try:
            scripted = _script(fx)
        except Exception as e:  # noqa: BLE001  (a clean refusal, with a message)
            assert str(e)
            return
    x = torch.randn(2, 3, *_hw(name, 128))
    with torch.no_grad():
        out = scripted(x)
        out = next(iter(out.values())) if isinstance(out, dict) else out
        torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", HEAVY)
def test_features_only(name):
    """features_only: the record's number of maps, channels and strides of feature_info, the exact maps that hooks
    on the plain model's feature_info modules see, and out_indices."""
    family = _family(name)
    plain = _create(name).eval()
    info = plain.feature_info
    # every entry (timm's default out_indices may take fewer, e.g. the last blocks of a ViT); same seed: same weights
    model = _create(name, features_only=True, out_indices=tuple(range(len(info)))).eval()
    assert model.feature_info.channels() == [f["num_chs"] for f in info]
    assert model.feature_info.reduction() == [f["reduction"] for f in info]
    for hw in (_hw(name, 96), _hw(name, 97, 65)):
        x = torch.randn(1, 3, *hw)
        with torch.no_grad():
            feats = model(x)
        hooked = _hooked_maps(plain, x)
        assert len(feats) == len(info) == family.num_stages
        for i, (f, meta) in enumerate(zip(feats, info)):
            _check_map(f, hw, meta["reduction"], meta["num_chs"], family.feature_fmt)
            torch.testing.assert_close(f, _as_layout(hooked[i], f), msg=f"map {i} ({meta['module']})")

    picked = (0, len(info) - 1)
    model = _create(name, features_only=True, out_indices=picked).eval()
    assert model.feature_info.reduction() == [info[i]["reduction"] for i in picked]
    hw = _hw(name, 96)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        feats = model(x)
    hooked = _hooked_maps(plain, x)
    assert len(feats) == len(picked)
    for f, i in zip(feats, picked):
        _check_map(f, hw, info[i]["reduction"], info[i]["num_chs"], family.feature_fmt)
        torch.testing.assert_close(f, _as_layout(hooked[i], f))


@pytest.mark.parametrize("name", HEAVY)
def test_forward_intermediates(name):
    """forward_intermediates: the hooked maps, final output == forward_features, indices / stop_early /
    intermediates_only / norm semantics."""
    family = _family(name)
    model = _create(name).eval()
    hw = _hw(name, 97, 65)
    x = torch.randn(1, 3, *hw)
    n = len(model.feature_info)
    hooked = _hooked_maps(model, x)
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        only = model.forward_intermediates(x, intermediates_only=True)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
        normed_final, normed = model.forward_intermediates(x, norm=True)
        features = model.forward_features(x)
    assert len(inter) == n == family.num_stages
    for i, (a, meta) in enumerate(zip(inter, model.feature_info)):
        _check_map(a, hw, meta["reduction"], meta["num_chs"], family.feature_fmt)
        torch.testing.assert_close(a, _as_layout(hooked[i], a), msg=f"intermediate {i}")
    torch.testing.assert_close(final, features)
    torch.testing.assert_close(normed_final, features)
    for a, b in zip(only, inter):
        torch.testing.assert_close(a, b)
    if _output_fmt(model) == "NLC":  # timm's ViTs put the final token norm on every intermediate
        assert [a.shape for a in normed] == [b.shape for b in inter]
    else:
        for a, b in zip(normed[:-1], inter[:-1]):
            torch.testing.assert_close(a, b)
    assert normed[-1].shape == inter[-1].shape
    assert len(last_two) == 2
    torch.testing.assert_close(last_two[0], inter[-2])
    torch.testing.assert_close(last_two[1], inter[-1])
    assert len(early) == 1
    torch.testing.assert_close(early[0], inter[1])


@pytest.mark.parametrize("name", HEAVY)
def test_prune_intermediate_layers(name):
    model = _create(name).eval()
    hw = _hw(name, 96)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        full = model.forward_intermediates(x, intermediates_only=True)
    kept = model.prune_intermediate_layers([0, 1])
    assert list(kept) == [0, 1]
    with torch.no_grad():
        # timm's convention: the pruned model is asked for the indices it kept
        pruned = model.forward_intermediates(x, indices=kept, intermediates_only=True)
        out = model(x)
    assert len(pruned) == 2
    for a, b in zip(pruned, full[:2]):
        torch.testing.assert_close(a, b)
    # timm's convention: pruning removes the classifier and the pooling, so forward returns an unpooled map.
    assert model.num_classes == 0
    assert out.dim() == (3 if _output_fmt(model) == "NLC" else 4)  # a token model: (B, N, C) tokens


@pytest.mark.parametrize("name", HEAVY)
def test_reset_classifier(name):
    """timm: reset_classifier(0) gives num_classes 0 and the pre-logits; (0, '') an unpooled map; a new head works;
    the constructor takes num_classes=0 and global_pool=''."""
    model = _create(name).eval()
    hw = _hw(name, 96)
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)
    model.reset_classifier(0)
    assert model.num_classes == 0
    with torch.no_grad():
        pooled = model(x)
    assert pooled.shape == (2, model.head_hidden_size) == pre_logits.shape
    torch.testing.assert_close(pooled, pre_logits)
    model.reset_classifier(0, "")
    with torch.no_grad():
        unpooled = model(x)
    _check_features(model, unpooled, hw)
    model.reset_classifier(7, "avg")
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    with torch.no_grad():
        assert model(x).shape == (2, 7)

    headless = _create(name, num_classes=0).eval()
    assert headless.num_classes == 0
    with torch.no_grad():
        assert headless(x).shape == (2, headless.head_hidden_size)
        bare = _create(name, num_classes=0, global_pool="").eval()(x)
    _check_features(model, bare, hw)


@pytest.mark.parametrize("name", HEAVY)
def test_build_on_meta_then_materialise(name):
    """device='meta' then to_empty: non-persistent buffers come back through init_non_persistent_buffers(), and
    the state_dict of a CPU-built twin loads strictly into a model that computes the same output."""
    ref = _create(name).eval()
    model = _create(name, device="meta")
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    model = model.to_empty(device="cpu")
    state = ref.state_dict()
    non_persistent = [n for n, _ in ref.named_buffers() if n not in state]
    if non_persistent:
        inits = [m for m in model.modules() if hasattr(m, "init_non_persistent_buffers")]
        assert inits, f"non-persistent buffers {non_persistent} and no init_non_persistent_buffers() to rebuild them"
        for m in inits:
            m.init_non_persistent_buffers()
    model.load_state_dict(state, strict=True)
    model.eval()
    x = torch.randn(1, 3, *_hw(name, 96))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x))


@pytest.mark.parametrize("name", [m for m in HEAVY if _family(m).drop_path])
def test_drop_path_is_stochastic_in_training(name):
    x = torch.randn(2, 3, *_hw(name, 96))
    model = _create(name, drop_path_rate=0.5).train()
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x))
        model.eval()
        torch.testing.assert_close(model(x), model(x))


@pytest.mark.slow
@pytest.mark.parametrize("name", HEAVY)
def test_full_model_default_size(name):
    """The full smallest model at its default cfg size: logits, pool_size == forward_features' spatial size
    (timm's default-cfg test), TorchScript and FX at timm's 128 px."""
    model = _create(name, full=True).eval()
    cfg = model.pretrained_cfg
    hw = tuple(cfg["input_size"][1:])
    fmt = _output_fmt(model)
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, *cfg["input_size"]))
        out = model.forward_head(feats)
    assert out.shape == (1, cfg["num_classes"]) and torch.isfinite(out).all()
    _check_features(model, feats, hw)
    if cfg.get("pool_size"):
        assert _spatial(feats, fmt) == tuple(cfg["pool_size"])
    x = torch.randn(1, 3, *_hw(name, 128))
    with torch.no_grad():
        eager = model(x)
        assert torch.equal(_fx_out(_fx_model(model, train=False), x), eager)
        if _family(name).scriptable:
            torch.testing.assert_close(_script(model)(x), eager, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# every registered name at full size: run up to RUN_MAX_PARAMS_M, on the meta device above it


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNNABLE)
def test_every_model_forward_backward(name):
    """The full model (not the test kwargs) at a small size its rule allows: eval logits and the last map's shape,
    then train mode with 42 classes, every parameter gets a finite gradient."""
    hw = _hw(name, 64)
    model = _create(name, full=True).eval()
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()
    _check_features(model, feats, hw)
    del model
    model = _create(name, full=True, num_classes=42).train()
    out = model(x)
    assert out.shape == (2, 42)
    (out * torch.randn_like(out)).sum().backward()
    missing, nonfinite = _grads(model)
    assert not missing, f"parameters without gradient: {missing}"
    assert not nonfinite, f"parameters with a non-finite gradient: {nonfinite}"


@pytest.mark.parametrize("name", META_ONLY)
def test_large_model_constructs_and_runs_on_meta(name):
    """A model over RUN_MAX_PARAMS_M: built on the meta device, its forward at the default size gives the logits'
    and every feature map's shape (meta tensors carry shapes through every op without memory)."""
    model = _meta(name).eval()
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    hw = _default_hw(name)
    x = torch.randn(1, 3, *hw, device="meta")
    with torch.no_grad():
        feats = model.forward_features(x)
        out = model.forward_head(feats)
    assert out.shape == (1, model.num_classes or model.head_hidden_size)  # no head: the pooled features
    _check_features(model, feats, hw)
    infos = model.feature_info
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    assert len(maps) == len(infos)
    for t, info in zip(maps, infos):
        _check_map(t, hw, info["reduction"], info["num_chs"], _family(name).feature_fmt)


# ---------------------------------------------------------------------------------------------------------------
# cheap tests: every registered name, on the meta device


class _CpuAllocations(TorchDispatchMode):
    """Records the largest tensor any op creates off the meta device."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (list, tuple)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self.largest = max(self.largest, t.numel())
        return out


@pytest.mark.parametrize("name", MODELS)
def test_factory_kwargs_build_on_meta(name):
    """timm's device/dtype factory kwargs reach every submodule: device='meta' allocates nothing real (a large
    model builds in no memory), dtype applies to every parameter."""
    with _CpuAllocations() as seen:
        model = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    # small index / rate tensors may be made on the CPU; weights may not (the smallest real layer here is larger)
    assert seen.largest <= 4096, f"building on the meta device created a {seen.largest}-element tensor off it"


@pytest.mark.parametrize("name", MODELS)
def test_params_match_record_and_card(name):
    family = _family(name)
    count = sum(p.numel() for p in _meta(name).parameters()) / 1e6
    stated = family.params_m[name]
    assert abs(count - stated) <= 0.005 * stated, f"{name}: {count:.3f}M parameters, the record states {stated}M"
    card = (ROOT / family.card).read_text()
    lines = [ln for ln in card.splitlines() if re.search(rf"(?<![\w.]){re.escape(name)}(?![\w])", ln)]
    assert lines, f"{family.card} does not mention {name}"
    figures = {float(v) for ln in lines for v in re.findall(r"(?<![\d.,])\d+(?:\.\d+)?(?![\d,])", ln)}
    assert stated in figures, f"{family.card} does not state {name}'s {stated}M parameters on a line naming it"


@pytest.mark.parametrize("name", MODELS)
def test_default_cfg(name):
    """The pretrained cfg fields timm's tests read, consistent with the model and with the record's size rule."""
    family = _family(name)
    model = _meta(name)
    cfg = model.pretrained_cfg
    assert cfg["architecture"] == name
    assert isinstance(cfg.get("url", "") or "", str) and isinstance(cfg.get("hf_hub_id", "") or "", str)
    # ImageNet-1k (1000), ImageNet-22k (21842) or a release without a head (0), as the weights were published
    assert cfg["num_classes"] == model.num_classes >= 0
    c, h, w = cfg["input_size"]
    assert c == 3 == model.in_chans
    assert family.accepts(h, w), f"default input {h}x{w} breaks the record's size rule"
    assert bool(cfg.get("fixed_input_size", False)) == family.is_fixed(name)
    if cfg.get("min_input_size"):
        mh, mw = cfg["min_input_size"][1:]
        # timm's tests run at max(target, min_input_size): that size must be one the model takes
        assert family.is_fixed(name) or (mh, mw) == (family.fit_size(mh), family.fit_size(mw)), cfg["min_input_size"]
    assert len(cfg["mean"]) == len(cfg["std"]) == 3 and all(0 < s < 1 for s in cfg["std"])
    assert 0 < cfg["crop_pct"] <= 1
    assert cfg["interpolation"] in ("bilinear", "bicubic", "nearest")
    assert cfg.get("license")
    state = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state
    first = model.get_submodule(cfg["first_conv"])
    assert isinstance(first, nn.Conv2d) and first.in_channels == 3
    if cfg["num_classes"]:
        # one classifier, or several (timm allows a tuple; the first is get_classifier()'s)
        classifiers = (cfg["classifier"],) if isinstance(cfg["classifier"], str) else tuple(cfg["classifier"])
        for i, classifier in enumerate(classifiers):
            assert classifier + ".weight" in state
            head = model.get_submodule(classifier)
            assert isinstance(head, nn.Linear) and head.out_features == cfg["num_classes"]
            assert i or head is model.get_classifier()
    assert model.num_features > 0 and model.head_hidden_size > 0
    if cfg.get("pool_size"):
        red = model.feature_info[-1]["reduction"]
        assert cfg["pool_size"][0] in _allowed(h, red) and cfg["pool_size"][1] in _allowed(w, red)
    # in_chans reaches the first conv (timm adapts pretrained first convs through cfg['first_conv'])
    one = _meta(name, in_chans=1)
    assert one.in_chans == 1 and one.get_submodule(cfg["first_conv"]).in_channels == 1


@pytest.mark.parametrize("name", MODELS)
def test_feature_info_matches_record(name):
    """Channels and strides: feature_info has the record's number of entries, resolvable modules, and strides that
    fit the record's layout (a strictly growing pyramid, or one stride throughout)."""
    family = _family(name)
    model = _meta(name)
    info = model.feature_info
    assert len(info) == family.num_stages
    reductions = [f["reduction"] for f in info]
    for f in info:
        assert f["num_chs"] > 0 and f["reduction"] >= 1
        model.get_submodule(f["module"])
    if family.layout == "isotropic":
        assert len(set(reductions)) == 1, f"an isotropic model has one stride, got {reductions}"
    else:
        assert all(b > a and b % a == 0 for a, b in zip(reductions, reductions[1:])), reductions
    assert info[-1]["num_chs"] == model.num_features


@pytest.mark.parametrize("name", MODELS)
def test_drop_path_rate_wiring(name):
    if not _family(name).drop_path:  # the record says the models have no stochastic depth: the argument is refused
        with pytest.raises(TypeError, match="drop_path_rate"):
            _meta(name, drop_path_rate=0.25)
        return

    def probs(rate):
        model = _meta(name, drop_path_rate=rate)
        return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]

    assert not [p for p in probs(0.0) if p > 0]
    rates = probs(0.25)
    assert rates, "drop_path_rate=0.25 created no DropPath module"
    assert all(b >= a - 1e-9 for a, b in zip(rates, rates[1:])), "drop path rates must not decrease with depth"
    assert 0 < max(rates) <= 0.25 + 1e-6


@pytest.mark.parametrize("alias", ALIASES)
def test_alias(alias):
    target = _registry.resolve_alias(alias)
    a, t = _meta(alias), _meta(target)
    assert type(a) is type(t)
    assert [(n, p.shape) for n, p in a.named_parameters()] == [(n, p.shape) for n, p in t.named_parameters()]
    assert a.pretrained_cfg["architecture"] == target
