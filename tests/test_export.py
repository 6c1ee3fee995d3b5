"""ONNX export: every registered model against onnxruntime, and BRA graphs without Expand-fed gathers."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from visionattn.kernels import bra

import visionattn
from visionattn.models.biformer import bra_official_gather as bra_official_gather_ours_layout
from visionattn.export import OnnxMismatchError, check_onnx, export_onnx, find_expand_fed_gathers, require_onnx
from visionattn.models._registry import family_of

onnx = pytest.importorskip("onnx", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")
pytest.importorskip("onnxruntime", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")

ROOT = Path(__file__).resolve().parents[1]
# Small kwargs that keep each family's structure (every stage, routing in stages 1-3) but few blocks.
SMALL = {"biformer": dict(depths=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64))}


class TinyBRA(nn.Module):
    """Patchify, route regions by mean q/k, attend: a BRA layer reduced to its export-relevant parts."""

    def __init__(self, dim: int = 32, heads: int = 2, n_win: int = 4, topk: int = 2, official: bool = False):
        super().__init__()
        self.qkv = nn.Conv2d(3, 3 * dim, 4, 4)
        self.heads, self.n_win, self.topk, self.official = heads, n_win, topk, official

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        s, m = self.n_win, self.heads
        h, w = h // 4, w // 4

        def regions(t):  # (B, C, H, W) -> (B, heads, s*s, R, d)
            t = t.reshape(b, m, -1, s, h // s, s, w // s).permute(0, 1, 3, 5, 4, 6, 2)
            return t.reshape(b, m, s * s, (h // s) * (w // s), t.shape[-1])

        q, k, v = (regions(t) for t in self.qkv(x).chunk(3, dim=1))
        q_r, k_r = (t.mean(3).transpose(1, 2).flatten(2) for t in (q, k))
        routing = (q_r @ k_r.transpose(1, 2)).topk(self.topk, dim=-1).indices
        out = bra_official_gather_ours_layout(q, k, v, routing) if self.official else bra(q, k, v, routing)
        return out.flatten(2).mean(-1)


def _data_gathers(path) -> list:
    """Gather nodes that read a tensor rather than a shape (the legacy exporter gathers shape entries too)."""
    model = onnx.load(str(path))
    producers = {o: n for n in model.graph.node for o in n.output}
    return [
        n
        for n in model.graph.node
        if n.op_type == "Gather" and getattr(producers.get(n.input[0]), "op_type", None) not in ("Shape", "Constant")
    ]


def test_missing_onnx_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"pip install visionattn\[onnx\]"):
        require_onnx()
    with pytest.raises(ImportError, match=r"visionattn\[onnx\]"):
        export_onnx(TinyBRA(), "unused.onnx", (3, 32, 32))


def test_bra_op_exports_without_expand_gather(tmp_path):
    """visionattn's BRA: checked at batch 2 and 3, no Gather fed by an Expand, K and V gathered on the flat axis."""
    model = TinyBRA()
    report = export_onnx(model, tmp_path / "bra.onnx", (3, 32, 32), batch=2)
    assert [c.batch for c in report.checks] == [2, 3]
    assert all(c.ok and c.max_abs_err <= 1e-4 for c in report.checks)
    assert find_expand_fed_gathers(report.path) == []
    flat = [n for n in _data_gathers(report.path) if any(a.name == "axis" and a.i == 0 for a in n.attribute)]
    assert len(flat) >= 2, "expected the flat index_select gathers of K and V"


def test_official_gather_is_flagged(tmp_path):
    """The official expand+gather exports correctly but the finder reports the (B, regions, regions, ...) Expand."""
    report = export_onnx(TinyBRA(official=True), tmp_path / "official.onnx", (3, 32, 32), batch=2)
    assert all(c.ok for c in report.checks)
    hits = find_expand_fed_gathers(report.path, sample=torch.randn(3, 3, 32, 32).numpy())
    assert all(h.startswith("GatherElements") for h in hits), hits
    # K/V view (batch 3, 16 regions, 4 tokens, 2 heads * (16 + 16) channels) copied for each of 16 query regions;
    # index (batch, 16 query regions, topk 2) copied over tokens and channels.
    assert sorted(h.split(" <- Expand ")[1].split(" ", 1)[1] for h in hits) == [
        "(3, 1, 16, 4, 64) -> (3, 16, 16, 4, 64)",
        "(3, 16, 2, 1, 1) -> (3, 16, 2, 4, 64)",
    ]


def test_batch_baked_into_graph_fails_the_check(tmp_path):
    class BakesBatch(nn.Module):
        def forward(self, x):
            return x.mean((1, 2, 3)) * float(x.shape[0])  # float() turns the traced size into a constant

    with pytest.raises(OnnxMismatchError, match="batch 3"):
        export_onnx(BakesBatch(), tmp_path / "bad.onnx", (3, 8, 8), batch=2)
    checks = check_onnx(BakesBatch(), tmp_path / "bad.onnx", (3, 8, 8), (2, 3), raise_on_mismatch=False)
    assert [c.ok for c in checks] == [True, False]


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="input_size"):
        export_onnx(TinyBRA(), tmp_path / "x.onnx", (224, 224))
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(TinyBRA(), tmp_path / "x.onnx", (3, 32, 32), exporter="jit")
    with pytest.raises(ValueError, match="check_batch"):
        export_onnx(TinyBRA(), tmp_path / "x.onnx", (3, 32, 32), batch=2, check_batch=2)
    with pytest.raises(ValueError, match="neither registered"):
        export_onnx("no_such_model_xyz", tmp_path / "x.onnx")


def test_biformer_small_config_exports_at_two_sizes(tmp_path):
    """biformer_tiny with one block per stage at 64x64 (regions padded and masked) and 96x80."""
    report = export_onnx(
        "biformer_tiny", tmp_path / "bt.onnx", (3, 64, 64), extra_sizes=[(3, 96, 80)], model_kwargs=SMALL["biformer"]
    )
    assert [Path(p).name for p in report.paths] == ["bt.onnx", "bt_96x80.onnx"]
    assert [(c.batch, c.input_size[1:]) for c in report.checks] == [
        (2, (64, 64)),
        (3, (64, 64)),
        (2, (96, 80)),
        (3, (96, 80)),
    ]
    assert all(c.ok for c in report.checks)
    for p in report.paths:
        assert find_expand_fed_gathers(p) == []
    # the padding mask (64x64 input: 16x16 tokens in 7x7 regions of 3x3) is only broadcast over the batch
    strict = find_expand_fed_gathers(report.paths[0], allow_batch_broadcast=False)
    assert strict and all(h.endswith("-> (2, 49, 9)") for h in strict if "stages.0" in h), strict


@pytest.mark.slow
def test_dynamo_exporter(tmp_path):
    report = export_onnx(TinyBRA(), tmp_path / "bra_dynamo.onnx", (3, 32, 32), exporter="dynamo")
    assert report.exporter == "dynamo" and all(c.ok for c in report.checks)
    assert find_expand_fed_gathers(report.path) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", visionattn.list_models())
def test_export_registered_model(name, tmp_path):
    """Full-size model at 224 (batch 2 and 3) and at 256x192, within 1e-4 of PyTorch."""
    report = export_onnx(name, tmp_path / f"{name}.onnx", (3, 224, 224), extra_sizes=[(3, 256, 192)])
    assert len(report.checks) == 4 and all(c.ok for c in report.checks)
    if family_of(name) == "biformer":
        for p in report.paths:
            assert find_expand_fed_gathers(p) == []


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_onnx_cli", ROOT / "tools" / "export_onnx.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "m.onnx"
    args = [
        "test_resnet",
        "--out",
        str(out),
        "--size",
        "32",
        "32",
        "--check-size",
        "48",
        "40",
        "--kwargs",
        "num_classes=7",
    ]
    assert cli.main(args) == 0
    assert out.exists() and (tmp_path / "m_48x40.onnx").exists()
    text = capsys.readouterr().out
    assert text.count(" ok") == 4 and "FAIL" not in text
