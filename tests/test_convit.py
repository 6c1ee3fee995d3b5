"""ConViT on timm's code: timm's names build visionattn's subclass, bit-identical to timm's own class at 224 (the
one size timm takes) and defined at any size from 32 px; GPSA on non-square grids; the fused GPSA against timm's."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed
from timm.models import convit as timm_convit

import visionattn
from visionattn.layers.gpsa import GridGPSA, grid_rel_indices
from visionattn.models.convit import ConVit

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(local_up_to_layer=10, embed_dim=8, num_heads=4)  # timm's convit_tiny structure, 32 channels


def _pair(**kwargs):
    """visionattn's convit_tiny (reduced width) and timm's own class holding the same weights."""
    torch.manual_seed(0)
    ours = timm.create_model("convit_tiny", embed_dim=8, **kwargs).eval()
    theirs = timm_convit.ConVit(**SMALL, **kwargs).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def test_timm_names_build_the_subclass_with_timms_keys_and_cfg():
    assert visionattn.list_models("convit") == ["convit_base", "convit_small", "convit_tiny"]
    with torch.device("meta"):
        ours = timm.create_model("convit_tiny")
        theirs = timm_convit.ConVit(**dict(SMALL, embed_dim=48))
    assert isinstance(ours, ConVit) and isinstance(ours, timm_convit.ConVit)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    shapes = [[tuple(t.shape) for t in m.state_dict().values()] for m in (ours, theirs)]
    assert shapes[0] == shapes[1]
    cfg = ours.pretrained_cfg
    assert cfg["hf_hub_id"] == "timm/convit_tiny.fb_in1k" and cfg["tag"] == "fb_in1k"
    assert not cfg["fixed_input_size"] and cfg["min_input_size"] == (3, 32, 32)


def test_bit_identical_to_timms_class_at_224():
    ours, theirs = _pair()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))
        assert torch.equal(ours.forward_features(x), theirs.forward_features(x))
        for kwargs in (dict(), dict(norm=True), dict(output_fmt="NLC"), dict(indices=[2, 11], stop_early=True)):
            a_final, a = ours.forward_intermediates(x, **kwargs)
            b_final, b = theirs.forward_intermediates(x, **kwargs)
            assert torch.equal(a_final, b_final) and len(a) == len(b)
            assert all(torch.equal(u, v) for u, v in zip(a, b)), kwargs
    # training mode, same dropout draws: same logits and same gradients
    ours, theirs = _pair(drop_path_rate=0.1)
    grads = []
    for model in (ours, theirs):
        model.train()
        torch.manual_seed(1)
        out = model(x)
        out.square().mean().backward()
        grads.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}))
    assert torch.equal(grads[0][0], grads[1][0])
    assert all(torch.equal(grads[0][1][n], grads[1][1][n]) for n in grads[1][1])


def test_features_only_default_is_timms():
    torch.manual_seed(0)
    ours = timm.create_model("convit_tiny", embed_dim=8, features_only=True).eval()
    theirs = timm_convit._create_convit("convit_tiny", **SMALL, features_only=True).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    assert len(a) == len(b) == 3 and ours.feature_info.module_name() == theirs.feature_info.module_name()
    assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_timm_refuses_what_the_subclass_takes():
    ours, theirs = _pair()
    x = torch.randn(1, 3, 160, 96)
    with pytest.raises(AssertionError):
        theirs(x)
    with pytest.raises(AssertionError):
        theirs.set_grad_checkpointing(True)
    with torch.no_grad():
        out = ours(x)
        feats = ours.forward_intermediates(x, indices=[0, 11], intermediates_only=True)
    assert out.shape == (1, 1000) and torch.isfinite(out).all()
    assert [tuple(f.shape) for f in feats] == [(1, 32, 10, 6)] * 2


def test_square_size_matches_timms_class_built_for_it():
    """At 256 px timm's class can be built for the size (img_size=256, a 16 x 16 position table): given our table
    resampled to 16 x 16 it computes what the subclass computes from the 14 x 14 table."""
    ours, _ = _pair()
    theirs = timm_convit.ConVit(img_size=256, **SMALL).eval()
    state = ours.state_dict()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [16, 16], num_prefix_tokens=0)
    theirs.load_state_dict(state)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=1e-6)


def test_rel_indices_of_a_non_square_grid_by_hand():
    h, w = 3, 5
    rel = grid_rel_indices(h, w, torch.device("cpu"), torch.float32)
    assert rel.shape == (1, h * w, h * w, 3)
    for n in range(h * w):
        for m in range(h * w):
            dx, dy = m % w - n % w, m // w - n // w
            assert rel[0, n, m].tolist() == [dx, dy, dx * dx + dy * dy]
    square = timm_convit.GPSA(32, num_heads=4).get_rel_indices(14 * 14)
    assert torch.equal(grid_rel_indices(14, 14, torch.device("cpu"), torch.float32), square)


def test_local_init_heads_attend_to_their_offsets_on_a_non_square_grid():
    """timm's local init gives head (h1, h2) the positional score -|delta - (h1 - c, h2 - c)|^2 (c the centre): on a
    4 x 7 grid each interior token's positional attention peaks at its own position plus that offset, x along the
    width and y along the height."""
    torch.manual_seed(0)
    attn = GridGPSA.adopt(timm_convit.GPSA(36, num_heads=9, locality_strength=4.0))
    attn.local_init()
    h, w = 4, 7
    attn._set_grid(h, w, with_indices=False)
    with torch.no_grad():
        pos = attn.positional_attention()  # (heads, N, N)
    for head in range(9):
        h1, h2 = head % 3, head // 3  # timm: position = h1 + 3 * h2; weight[:, 0] (dx) from h2, [:, 1] (dy) from h1
        ox, oy = h2 - 1, h1 - 1
        for y in range(1, h - 1):
            for x in range(1, w - 1):
                peak = int(pos[head, y * w + x].argmax())
                assert (peak % w, peak // w) == (x + ox, y + oy), (head, x, y)


def _gpsa_pair(fused: bool):
    torch.manual_seed(0)
    ref = timm_convit.GPSA(64, num_heads=4).eval()
    ref.local_init()
    with torch.no_grad():
        ref.gating_param.uniform_(-2, 2)
    ours = timm_convit.GPSA(64, num_heads=4).eval()
    ours.load_state_dict(ref.state_dict())
    return ref, GridGPSA.adopt(ours, fused=fused)


def test_fused_gpsa_matches_timms_gpsa():
    """(1-s) SDPA + s P v against timm's GPSA at 14 x 14 (within 1e-6), outputs and gradients, and against the
    subclass's reference arithmetic on a non-square grid."""
    ref, fused = _gpsa_pair(fused=True)
    x = torch.randn(2, 14, 14, 64)
    with torch.no_grad():
        want = ref(x.reshape(2, 196, 64)).reshape(2, 14, 14, 64)
        got = fused(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    xr, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref(xr.reshape(2, 196, 64)).square().sum().backward()
    fused(xf).square().sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, rtol=1e-5, atol=1e-5)
    # pos_proj.bias's true gradient is zero (it cancels in the softmax): both paths give rounding noise, so absolute
    # errors are judged against the layer's gradient scale
    scale = max(p.grad.abs().max() for p in ref.parameters())
    for name, p in ref.named_parameters():
        torch.testing.assert_close(fused.get_parameter(name).grad, p.grad, rtol=1e-4, atol=1e-6 * scale, msg=name)

    _, plain = _gpsa_pair(fused=False)
    x = torch.randn(2, 5, 9, 64)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=1e-6)


def test_positional_factors_are_timms_positional_attention():
    """P_y (x) P_x equals softmax(pos_proj(rel)) computed as timm computes it, on a non-square grid, for random
    pos_proj weights (its bias included: it cancels in the softmax)."""
    _, fused = _gpsa_pair(fused=True)
    with torch.no_grad():
        fused.pos_proj.weight.normal_()
        fused.pos_proj.bias.normal_()
        fused._set_grid(5, 8)
        rel = grid_rel_indices(5, 8, torch.device("cpu"), torch.float32)
        want = fused.pos_proj(rel[0]).permute(2, 0, 1).softmax(dim=-1)
        pos_y, pos_x = fused.positional_factors()
        assert pos_y.shape == (4, 5, 5) and pos_x.shape == (4, 8, 8)
        torch.testing.assert_close(fused.positional_attention(), want, rtol=0, atol=1e-6)


def test_positional_factors_cache_follows_size_and_weights():
    _, fused = _gpsa_pair(fused=True)
    with torch.no_grad():
        fused(torch.randn(1, 4, 6, 64))
        first = fused.positional_factors()
        assert fused.positional_factors() is first  # cached
        fused(torch.randn(1, 6, 4, 64))
        other = fused.positional_factors()
        assert [tuple(t.shape) for t in other] == [(4, 6, 6), (4, 4, 4)]
        assert fused.rel_grid == (0, 0)  # the fused path never built the (N, N, 3) indices
        fused.pos_proj.weight.mul_(0.5)  # an in-place update (an optimiser step) invalidates it
        x = torch.randn(1, 6, 4, 64)
        _, plain = _gpsa_pair(fused=False)
        plain.load_state_dict(fused.state_dict())
        torch.testing.assert_close(fused(x), plain(x), rtol=0, atol=1e-6)


def test_fused_model_matches_reference_model():
    torch.manual_seed(0)
    ref = timm.create_model("convit_tiny", embed_dim=8).eval()
    fused = timm.create_model("convit_tiny", embed_dim=8, fused_gpsa=True).eval()
    fused.load_state_dict(ref.state_dict())
    for hw in ((224, 224), (97, 161)):
        x = torch.randn(2, 3, *hw)
        with torch.no_grad():
            torch.testing.assert_close(fused(x), ref(x), rtol=0, atol=1e-5)


def test_grad_checkpointing_same_outputs_and_grads_at_two_sizes():
    x = torch.randn(2, 3, 64, 96)
    results = []
    for enable in (False, True):
        torch.manual_seed(0)
        model = timm.create_model("convit_tiny", embed_dim=8, fused_gpsa=enable).train()
        model.set_grad_checkpointing(enable)
        out = model(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-5)
    for n, g in results[0][1].items():
        torch.testing.assert_close(results[1][1][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_bad_arguments():
    with pytest.raises(ValueError, match="hybrid_backbone"):
        ConVit(hybrid_backbone=torch.nn.Identity())
    model, _ = _pair()
    with pytest.raises(ValueError, match="output_fmt='NHWC'"):
        model.forward_intermediates(torch.randn(1, 3, 64, 64), output_fmt="NHWC")
    with pytest.raises(ValueError, match=r"input 31x64 .*resize or pad"):
        model(torch.randn(1, 3, 31, 64))


_BUILD = """
import sys, torch, timm
if sys.argv[1] == "with":
    import visionattn  # noqa: F401
torch.manual_seed(0)
model = timm.create_model("convit_tiny", embed_dim=8).eval()
torch.manual_seed(1)
x = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    torch.save(dict(state=model.state_dict(), out=model(x), feats=model.forward_features(x)), sys.argv[2])
"""


@pytest.mark.slow  # two fresh interpreters
def test_import_visionattn_does_not_change_what_timm_builds_at_224(tmp_path):
    """In fresh interpreters, with and without ``import visionattn``: the same seeded initialisation (same keys, same
    values) and the same outputs at 224, bit for bit."""
    import subprocess
    import sys

    runs = {}
    for mode in ("without", "with"):
        path = tmp_path / f"{mode}.pt"
        proc = subprocess.run([sys.executable, "-c", _BUILD, mode, str(path)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        runs[mode] = torch.load(path, weights_only=True)
    a, b = runs["without"], runs["with"]
    assert list(a["state"]) == list(b["state"])
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert torch.equal(a["out"], b["out"]) and torch.equal(a["feats"], b["feats"])


FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.mark.parametrize("fused", [False, True])
def test_official_fixture(fused):
    """The official ConViT (facebookresearch/convit@0a9340a, reduced to 4 heads of 8 channels and 10 classes, random
    fp16-rounded weights, mixed gates) at 224: its state_dict loads strictly into timm's name (no converter) and gives
    the official logits and class-token features (equal bit for bit where the fixture was made; 1e-5 allowed for
    other BLAS builds; the fused GPSA within 1e-5)."""
    state = torch.load(FIXTURES / "convit_reduced_official.pth", weights_only=True)
    ref = torch.load(FIXTURES / "convit_reduced_outputs.pt", weights_only=True)
    model = timm.create_model("convit_tiny", embed_dim=8, num_classes=10, fused_gpsa=fused).eval()
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    with torch.no_grad():
        feats = model.forward_features(ref["input"].float())
        logits, pre_logits = model.forward_head(feats), model.forward_head(feats, pre_logits=True)
    torch.testing.assert_close(pre_logits, ref["pre_logits"], rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, ref["logits"], rtol=0, atol=1e-5)


def test_fused_gpsa_exports_to_onnx(tmp_path):
    """The fused path exports too (one graph per size; the factors of P baked in), onnxruntime within 1e-4 at a
    square and a non-square size."""
    pytest.importorskip("onnxruntime")
    from visionattn.export import export_onnx

    report = export_onnx(
        "convit_tiny",
        tmp_path / "convit.onnx",
        input_size=(3, 64, 64),
        extra_sizes=[(3, 80, 48)],
        model_kwargs=dict(embed_dim=8, fused_gpsa=True),
    )
    assert len(report.paths) == 2
    assert {c.input_size for c in report.checks} == {(3, 64, 64), (3, 80, 48)}
    assert all(c.ok and c.max_abs_err < 1e-4 and c.max_ref_abs > 0 for c in report.checks)


def test_relative_indices_are_one_tensor_per_size_shared_by_the_layers():
    model, _ = _pair()
    with torch.no_grad():
        model(torch.randn(1, 3, 96, 64))
    rels = [b.attn.rel_indices for b in model.blocks[: model.local_up_to_layer]]
    assert all(r is rels[0] for r in rels) and rels[0].shape == (1, 24, 24, 3)
    assert torch.equal(rels[0], grid_rel_indices(6, 4, torch.device("cpu"), torch.float32))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 96))  # same token count, transposed grid: new indices
    assert model.blocks[0].attn.rel_grid == (4, 6)
    assert torch.equal(model.blocks[9].attn.rel_indices, grid_rel_indices(4, 6, torch.device("cpu"), torch.float32))
