"""ONNX export with real weights and dynamic height/width, through the library and tools/export_onnx.py.

Weights: each family's smallest model (test kwargs) is seeded and saved by the test; the exported graph, run in
onnxruntime, must reproduce that seeded PyTorch module, which the export never sees. BiFormer's official-layout
fixture (tests/fixtures/README.md) goes through the family converter and must reproduce the official code's logits.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

from visionattn.export import OnnxMismatchError, default_check_size, export_onnx
from visionattn.models import families
from visionattn.pretrained import CheckpointError

onnx = pytest.importorskip("onnx", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")
ort = pytest.importorskip("onnxruntime", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
FAMILIES = {f.name: f for f in families()}


def _size(family) -> tuple[int, int, int]:
    if family.fixed_input_size:
        return tuple(timm.models.get_pretrained_cfg(family.smallest).input_size)
    side = family.fit_size(64)
    return 3, side, side


def _run(path, x: torch.Tensor) -> torch.Tensor:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0])


def _cli():
    spec = importlib.util.spec_from_file_location("export_onnx_cli", ROOT / "tools" / "export_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def seeded(request, tmp_path_factory):
    """(family, its smallest model seeded with 7 in eval mode, the saved state_dict's path)."""
    family = FAMILIES[request.param]
    torch.manual_seed(7)
    model = timm.create_model(family.smallest, **dict(family.test_kwargs)).eval()
    # zero-initialised parameters (residual gates, biases) leave the logits near zero at init, where any two
    # initialisations agree to 1e-4: give them values so that every weight moves the outputs
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and not p.abs().sum() > 0:
                p.copy_(
                    1 + 0.2 * torch.randn(p.shape, generator=g)
                    if name.endswith("weight")
                    else 0.1 * torch.randn(p.shape, generator=g)
                )
    path = tmp_path_factory.mktemp(family.name) / "seeded.pth"
    torch.save(model.state_dict(), path)
    return family, model, path


def test_checkpoint_weights_reach_the_graph(seeded, tmp_path):
    family, model, ckpt = seeded
    size = _size(family)
    torch.manual_seed(1)  # the export builds its model from another seed; only the file can make it match
    report = export_onnx(
        family.smallest, tmp_path / "m.onnx", size, checkpoint=ckpt, model_kwargs=dict(family.test_kwargs)
    )
    assert all(c.ok for c in report.checks)
    x = torch.randn(3, *size, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        expected = model(x)
    got = _run(report.path, x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    random_init = export_onnx(
        family.smallest, tmp_path / "r.onnx", size, check=False, model_kwargs=dict(family.test_kwargs)
    )
    assert (_run(random_init.path, x) - expected).abs().max() > 1e-2


def test_pretrained_weights_reach_the_graph(seeded, tmp_path):
    """pretrained=True fetches the cfg's published file (here a file:// URL to the seeded weights, no hub id)."""
    family, model, ckpt = seeded
    size = _size(family)
    cache = tmp_path / "cache"
    kwargs = dict(
        family.test_kwargs, pretrained_cfg_overlay=dict(url=ckpt.as_uri(), hf_hub_id=""), cache_dir=str(cache)
    )
    report = export_onnx(family.smallest, tmp_path / "m.onnx", size, pretrained=True, model_kwargs=kwargs)
    assert all(c.ok for c in report.checks) and any(cache.iterdir())
    x = torch.randn(2, *size, generator=torch.Generator().manual_seed(12))
    with torch.no_grad():
        torch.testing.assert_close(_run(report.path, x), model(x), atol=1e-4, rtol=0)


def test_official_checkpoint_through_the_converter(tmp_path):
    """BiFormer's official-layout fixture: onnxruntime reproduces the official code's float64 logits."""
    out = tmp_path / "official.onnx"
    kwargs = ["depths=(1,1,2,1)", "embed_dims=(32,64,64,64)", "num_classes=10"]
    args = ["biformer_tiny", "--out", str(out), "--size", "112", "112", "--checkpoint"]
    args += [str(FIXTURES / "biformer_reduced_official.pth"), "--model-kwargs", *kwargs]
    assert _cli().main(args) == 0
    ref = torch.load(FIXTURES / "biformer_reduced_outputs.pt", weights_only=True)
    got = _run(out, ref["input"].float())
    torch.testing.assert_close(got.double(), ref["logits"], atol=1e-4, rtol=0)


def test_checkpoint_errors(tmp_path, capsys):
    cli = _cli()
    assert cli.main(["test_convnext", "--out", str(tmp_path / "x.onnx"), "--checkpoint", str(tmp_path / "no.pth")]) == 1
    assert "does not exist" in capsys.readouterr().err
    # no published weights for the toy: the loader's message, not a traceback
    assert cli.main(["toyvit_tiny", "--out", str(tmp_path / "x.onnx"), "--size", "32", "32", "--pretrained"]) == 1
    assert "pretrained weights" in capsys.readouterr().err
    with pytest.raises(ValueError, match="only used when the model is given by name"):
        export_onnx(nn.Conv2d(3, 4, 3), tmp_path / "x.onnx", (3, 8, 8), checkpoint=tmp_path / "no.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"not.a.key": torch.zeros(1)}, bad)
    with pytest.raises(CheckpointError, match="not.a.key|Unexpected|[Mm]issing"):
        export_onnx("test_convnext", tmp_path / "x.onnx", (3, 32, 32), checkpoint=bad)


# ---------------------------------------------------------------------------------------------------------------
# dynamic height and width


class ConvNet(nn.Module):
    """Convolutions and a global pool: any input size, one graph."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GELU(), nn.Conv2d(8, 8, 3, 2, 1))

    def forward(self, x):
        f = self.body(x)
        return f.mean((2, 3)), f


class BakesWidth(nn.Module):
    """Scales by the input width taken as a Python number, which the exporter freezes into the graph."""

    def forward(self, x):
        return x.mean((1, 2)) * float(x.shape[-1])


def test_dynamic_size_one_graph_checked_at_other_sizes(tmp_path):
    net = ConvNet().eval()
    report = export_onnx(net, tmp_path / "conv.onnx", (3, 32, 48), extra_sizes=[(3, 40, 24)], dynamic_size=True)
    assert report.paths == [str(tmp_path / "conv.onnx")] and report.dynamic_size
    assert [(c.batch, c.input_size) for c in report.checks] == [
        (2, (3, 32, 48)),
        (3, (3, 32, 48)),
        (2, (3, 40, 24)),
        (3, (3, 40, 24)),
    ]
    assert all(c.ok and c.max_abs_err <= 1e-5 for c in report.checks)
    dims = onnx.load(report.path).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "height", "width"]
    x = torch.randn(1, 3, 17, 29)  # a size no check used
    with torch.no_grad():
        torch.testing.assert_close(_run(report.path, x), net(x)[0], atol=1e-5, rtol=0)


def test_dynamic_size_default_second_size(tmp_path):
    report = export_onnx(ConvNet(), tmp_path / "conv.onnx", (3, 32, 32), dynamic_size=True)
    assert [c.input_size for c in report.checks] == [(3, 32, 32)] * 2 + [default_check_size((3, 32, 32))] * 2
    assert default_check_size((3, 32, 32)) == (3, 64, 48)
    assert default_check_size((3, 64, 64), FAMILIES["toyvit"]) == (3, 64 + 2 * 16, 64 + 16)


def test_dynamic_size_refuses_a_graph_that_bakes_the_size(tmp_path):
    with pytest.raises(OnnxMismatchError, match="does not hold at 40x24.*without dynamic_size"):
        export_onnx(BakesWidth(), tmp_path / "bad.onnx", (3, 32, 48), extra_sizes=[(3, 40, 24)], dynamic_size=True)
    # the same model exported per size is fine
    report = export_onnx(BakesWidth(), tmp_path / "ok.onnx", (3, 32, 48), extra_sizes=[(3, 40, 24)])
    assert len(report.paths) == 2 and all(c.ok for c in report.checks)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_dynamic_size_per_family(name, tmp_path):
    """Each family's smallest model: as its record says, one graph holds at a second size, or the export says the
    model bakes its size into the graph and the per-size export holds instead."""
    family = FAMILIES[name]
    if family.fixed_input_size:
        with pytest.raises(ValueError, match="only takes its pretrained cfg's input size"):
            export_onnx(family.smallest, tmp_path / "m.onnx", _size(family), dynamic_size=True)
        return
    size = _size(family)
    second = default_check_size(size, family)
    assert family.accepts(*second[1:])
    kwargs = dict(family.test_kwargs)
    if family.onnx_dynamic_size:
        report = export_onnx(family.smallest, tmp_path / "m.onnx", size, dynamic_size=True, model_kwargs=kwargs)
        assert len(report.paths) == 1 and [c.input_size for c in report.checks][-1] == second
    else:
        with pytest.raises(OnnxMismatchError, match=f"does not hold at {second[1]}x{second[2]}"):
            export_onnx(family.smallest, tmp_path / "m.onnx", size, dynamic_size=True, model_kwargs=kwargs)
        report = export_onnx(family.smallest, tmp_path / "s.onnx", size, extra_sizes=[second], model_kwargs=kwargs)
        assert len(report.paths) == 2
    assert all(c.ok for c in report.checks)


def test_cli_dynamic_size(tmp_path, capsys):
    out = tmp_path / "c.onnx"
    args = ["test_convnext", "--out", str(out), "--size", "64", "64", "--dynamic-size", "--check-size", "96", "80"]
    assert _cli().main(args) == 0
    text = capsys.readouterr().out
    assert "dynamic axes: batch, height, width" in text and text.count(" ok") == 4
    assert "(3, 96, 80)" in text and sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx"]


def test_cli_model_kwargs_syntax(tmp_path, capsys):
    cli = _cli()
    with pytest.raises(SystemExit):
        cli.main(["test_convnext", "--out", str(tmp_path / "x.onnx"), "--model-kwargs", '{"num_classes": 3}'])
    assert "KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["test_convnext", "--kwargs", "num_classes=3"])  # the old flag is gone


@pytest.mark.slow
def test_dynamic_size_dynamo_exporter(tmp_path):
    net = ConvNet().eval()
    report = export_onnx(
        net, tmp_path / "d.onnx", (3, 32, 48), extra_sizes=[(3, 40, 24)], dynamic_size=True, exporter="dynamo"
    )
    assert len(report.paths) == 1 and [c.input_size[1:] for c in report.checks] == [(32, 48)] * 2 + [(40, 24)] * 2
    assert all(c.ok and c.max_abs_err <= 1e-5 for c in report.checks)


def test_converted_checkpoint_exports_and_tools_share_the_kwargs_syntax(tmp_path, capsys):
    """Official fixture -> tools/convert_checkpoint.py (our layout) -> tools/export_onnx.py --checkpoint, both
    with ``--model-kwargs KEY=VALUE``: onnxruntime reproduces the official logits."""
    spec = importlib.util.spec_from_file_location("convert_checkpoint_cli", ROOT / "tools" / "convert_checkpoint.py")
    convert = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(convert)
    kwargs = ["depths=(1,1,2,1)", "embed_dims=(32,64,64,64)", "num_classes=10"]
    ours = tmp_path / "ours.safetensors"
    assert (
        convert.main(
            ["biformer_tiny", str(FIXTURES / "biformer_reduced_official.pth"), str(ours), "--model-kwargs", *kwargs]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "ours.onnx"
    args = ["biformer_tiny", "--out", str(out), "--size", "112", "112", "--checkpoint", str(ours)]
    assert _cli().main([*args, "--model-kwargs", *kwargs]) == 0
    assert "checkpoint " + str(ours) in capsys.readouterr().out
    ref = torch.load(FIXTURES / "biformer_reduced_outputs.pt", weights_only=True)
    torch.testing.assert_close(_run(out, ref["input"].float()).double(), ref["logits"], atol=1e-4, rtol=0)
    with pytest.raises(SystemExit):  # the JSON form is gone from every tool
        convert.main(["biformer_tiny", str(ours), str(tmp_path / "x.pth"), "--model-kwargs", '{"num_classes": 10}'])
    assert "KEY=VALUE" in capsys.readouterr().err
