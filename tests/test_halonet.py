"""HaloNet on visionattn's halo op: timm's names untouched, the va_ models against timm's own classes, any input
size (zero keys as timm's padded halo, checked against timm's HaloAttn on a zero-padded map), pad_mode, the
paper's H0-H7 against its table and H1 against timm's halonet_h1, errors."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.halo_attn import HaloAttn
from timm.models import byoanet
from visionattn.kernels import _dispatch

import visionattn
from visionattn.layers.halo import HaloAttnOnKernel
from visionattn.models.halonet import PAPER, TIMM_MODELS, HaloNet, HaloValueBlock, halonet_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = ["halonet26t", "haloregnetz_b"]  # block 8 with strided halo layers; block 7 with timm's avg-pool stride
SLOW = [n for n in TIMM_MODELS if n not in FAST]


def _pair(name: str):
    """timm's model and ours with the same (seeded) weights, both in eval mode. timm zero-initialises each block's
    last BatchNorm, which would hide the attention from the logits: not here."""
    torch.manual_seed(0)
    ref = timm.create_model(name, zero_init_last=False).eval()
    ours = timm.create_model(f"va_{name}", zero_init_last=False).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)  # the same keys: timm's checkpoints load as they are
    return ref, ours


def test_import_leaves_timm_names_alone():
    for name in TIMM_MODELS:
        assert timm.models.model_entrypoint(name).__module__ == byoanet.__name__, name
        assert f"va_{name}" in visionattn.list_models("halonet")
        assert name not in visionattn.list_models()
    model = timm.create_model("halonet26t").eval()
    assert type(model) is timm.models.ByobNet
    assert any(type(m) is HaloAttn for m in model.modules())
    assert not any(isinstance(m, HaloAttnOnKernel) for m in model.modules())
    with pytest.raises(AssertionError), torch.no_grad():  # timm still refuses what it refused
        model(torch.randn(1, 3, 224, 224))


def _check_same_as_timm(name: str) -> None:
    ref, ours = _pair(name)
    swapped = [m for m in ours.modules() if isinstance(m, HaloAttnOnKernel)]
    assert swapped and not any(type(m) is HaloAttn for m in ours.modules())
    assert ours.state_dict().keys() == ref.state_dict().keys()
    side = ref.pretrained_cfg["input_size"][-1]
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    assert _dispatch.last_path("halo_attn") == "reference"


@pytest.mark.parametrize("name", FAST)
def test_same_logits_as_timm(name):
    _check_same_as_timm(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_same_logits_as_timm_slow(name):
    _check_same_as_timm(name)


@pytest.mark.parametrize("name, hw", [("halonet26t", (20, 28)), ("haloregnetz_b", (18, 26))])
def test_zero_keys_are_timm_on_a_zero_padded_map(name, hw):
    """Off the block multiple, pad_mode='zeros' is timm's HaloAttn run on the map zero-padded (bottom/right) to the
    block multiple, then cropped: timm's layers have no qkv bias, so a zero input column is a zero key and value."""
    ref, ours = _pair(name)
    pairs = [
        (r, o) for r, o in zip(ref.modules(), ours.modules()) if type(r) is HaloAttn and isinstance(o, HaloAttnOnKernel)
    ]
    assert pairs and all(r.q.bias is None for r, _ in pairs)
    h, w = hw
    for timm_attn, layer in pairs:
        bs, s = timm_attn.block_size, timm_attn.block_stride
        x = torch.randn(1, timm_attn.q.in_channels, h, w)
        hp, wp = -(-h // bs) * bs, -(-w // bs) * bs
        with torch.no_grad():
            exp = timm_attn(F.pad(x, (0, wp - w, 0, hp - h)))
            out = layer(x)
        pooled = not isinstance(timm_attn.pool, torch.nn.Identity)
        ho, wo = (h // 2, w // 2) if pooled else (-(-h // s), -(-w // s))
        assert out.shape[-2:] == (ho, wo)
        torch.testing.assert_close(out, exp[..., :ho, :wo], rtol=0, atol=1e-5)


def test_any_size_from_32():
    torch.manual_seed(0)
    model = timm.create_model("va_halonet26t", num_classes=10).eval()
    with torch.no_grad():
        batch = torch.randn(2, 3, 97, 65)
        out = model(batch)
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        torch.testing.assert_close(model(batch[1:]), out[1:], rtol=0, atol=1e-5)  # no mixing across the batch
        for hw in ((32, 32), (224, 224), (33, 250)):
            assert torch.isfinite(model(torch.randn(1, 3, *hw))).all()
        with pytest.raises(ValueError, match=r"31x40.*resize or pad"):
            model(torch.randn(1, 3, 31, 40))


def test_pad_mode_option():
    torch.manual_seed(0)
    zeros = timm.create_model("va_halonet26t", num_classes=10, zero_init_last=False).eval()
    masked = timm.create_model("va_halonet26t", num_classes=10, zero_init_last=False, pad_mode="mask").eval()
    masked.load_state_dict(zeros.state_dict())
    layers = [m for m in masked.modules() if isinstance(m, HaloAttnOnKernel)]
    assert layers and {m.pad_mode for m in layers} == {"mask"} and masked.pad_mode == "mask"
    x = torch.randn(1, 3, 96, 80)
    with torch.no_grad():
        a, b = zeros(x), masked(x)
        assert (a - b).abs().max() > 1e-4  # border keys left out change the result
        torch.testing.assert_close(zeros.set_halo(pad_mode="mask")(x), b, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pad_mode='same'"):
        timm.create_model("va_halonet26t", pad_mode="same")


def test_bot_models_keep_the_bot_size():
    model = timm.create_model("va_halo2botnet50ts_256", num_classes=0).eval()
    assert model.fixed_size == (256, 256)
    assert any(isinstance(m, HaloAttnOnKernel) for m in model.stages[2].modules())
    with pytest.raises(ValueError, match=r"224x224.*resize"):
        model(torch.randn(1, 3, 224, 224))


# ---------------------------------------------------------------- the paper's H0-H7


def _params_m(name: str) -> float:
    with torch.device("meta"):
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters()) / 1e6


def _check_paper_row(key: str) -> None:
    row = PAPER[key]
    name = "va_halonet_h1" if key == "h1" else f"halonet_{key}"
    count = _params_m(name)
    assert abs(count - row["params_m"]) <= 0.005 * row["params_m"], (name, count, row["params_m"])
    assert timm.models.get_pretrained_cfg(name).input_size[-1] == row["img"]


def test_paper_params():
    """Parameter counts and image sizes of the paper's table (Vaswani et al. 2021), within 0.5 %: H0-H2 here,
    the larger ones (slower to build, even on the meta device) in the slow test."""
    for key in ("h0", "h1", "h2"):
        _check_paper_row(key)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["h3", "h4", "h5", "h6", "h7"])
def test_paper_params_large(key):
    _check_paper_row(key)


def test_h1_is_timm_halonet_h1():
    arch = {k: PAPER["h1"][k] for k in ("b", "h", "rv", "rb", "l3", "df")}
    assert halonet_cfg(**arch) == byoanet.model_cfgs["halonet_h1"]
    with torch.device("meta"):
        ours, ref = timm.create_model("va_halonet_h1"), timm.create_model("halonet_h1")
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


def test_value_multiplier_widens_values_only():
    """H5 (rv 2.5, rb 2; third stage cut to one block): queries and keys keep the bottleneck width (64 x 2^i),
    values are 2.5x wider."""
    arch = {k: PAPER["h5"][k] for k in ("b", "h", "rv", "rb", "df")}
    with torch.device("meta"):
        model = HaloNet(halonet_cfg(**arch, l3=1))
    blocks = [m for m in model.modules() if isinstance(m, HaloValueBlock)]
    assert len(blocks) == 3 + 3 + 1 + 3
    for i, stage in enumerate(model.stages):
        block = stage[0]
        mid = 64 * 2**i
        attn = block.self_attn
        assert block.conv1_1x1.conv.out_channels == mid
        assert attn.num_heads * attn.dim_head_qk == mid and attn.dim_out_v == int(2.5 * mid)
        assert block.conv3_1x1.conv.in_channels == int(2.5 * mid)
        assert block.conv3_1x1.conv.out_channels == int(128 * 2**i)


def test_h_models_run_off_the_block_multiple():
    torch.manual_seed(0)
    model = timm.create_model("halonet_h0", num_classes=5).eval()
    assert isinstance(model, HaloNet)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 72, 40))
    assert out.shape == (1, 5) and torch.isfinite(out).all()
    small = timm.create_model("halonet_h0", depths=(1, 2, 1, 1), widths=(16, 32, 64, 128))
    assert [len(s) for s in small.stages] == [1, 2, 1, 1] and small.num_features == 128
    with pytest.raises(ValueError, match=r"depths=\(1, 1\) must be 4 positive ints"):
        timm.create_model("halonet_h0", depths=(1, 1))
    with pytest.raises(ValueError, match="interleaves"):
        timm.create_model("va_halonet26t", depths=(1, 1, 1, 1))


# ---------------------------------------------------------------- ONNX


@pytest.mark.slow
def test_timm_weights_model_exports_one_graph_for_every_size(tmp_path):
    """va_halonet26t exported once at timm's 256 with dynamic height and width, checked at 256, at 224 (which timm
    refuses) and at 33x47: no Unfold, onnxruntime within 1e-4 at two batch sizes each; timm's halo models do not
    export at all (Unfold)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from visionattn.export import export_onnx

    sizes = [(3, 256, 256), (3, 224, 224), (3, 33, 47)]
    report = export_onnx(
        "va_halonet26t",
        tmp_path / "m.onnx",
        sizes[0],
        extra_sizes=sizes[1:],
        dynamic_size=True,
        model_kwargs=dict(zero_init_last=False),  # the attention reaches the logits
    )
    assert len(report.paths) == 1 and [c.input_size for c in report.checks] == [s for s in sizes for _ in (2, 3)]
    assert all(c.ok and c.max_abs_err <= 1e-4 and c.max_ref_abs > 0.1 for c in report.checks)
    ops = {n.op_type for n in onnx.load(report.path).graph.node}
    assert "Unfold" not in ops and "Col2Im" not in ops


# ---------------------------------------------------------------- dense


def test_dense_five_levels_at_a_size_timm_refuses():
    """The configs' backbone (va_halonet50ts) through the shared adapter: five levels at strides 2-32 for a
    200x296 image (timm's halonet50ts asserts there), the maps forward_intermediates gives."""
    from visionattn.dense import VisionAttnBackbone

    torch.manual_seed(0)
    b = VisionAttnBackbone("va_halonet50ts", dict(zero_init_last=False)).eval()
    assert b.strides == [2, 4, 8, 16, 32] and b.channels == [64, 256, 512, 1024, 2048]
    torch.manual_seed(0)  # the same draws: the same weights
    ref = timm.create_model("va_halonet50ts", zero_init_last=False).eval()
    x = torch.randn(1, 3, 200, 296)
    with torch.no_grad():
        outs = b(x)
        exp = ref.forward_intermediates(x, intermediates_only=True)
    assert [tuple(o.shape[-2:]) for o in outs] == [(100, 148), (50, 74), (25, 37), (13, 19), (7, 10)]
    for o, e in zip(outs, exp):
        torch.testing.assert_close(o, e, rtol=0, atol=1e-5)
