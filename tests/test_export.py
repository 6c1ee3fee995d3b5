"""ONNX export: every family's smallest model and every registered model against onnxruntime, and graphs
without Expand-fed gathers. The families, their test kwargs and the input sizes come from the family records."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
from visionattn.kernels import bra

from visionattn.export import (
    OnnxMismatchError,
    check_onnx,
    default_check_size,
    export_onnx,
    find_expand_fed_gathers,
    require_onnx,
)
from visionattn.layers.routing import BiLevelRoutingAttention
from visionattn.models import families, get_family

onnx = pytest.importorskip("onnx", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")
pytest.importorskip("onnxruntime", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = {f.name: f for f in families()}


def record_sizes(family, side: int) -> tuple[tuple[int, int, int], tuple[int, int, int] | None]:
    """An export size near ``side`` and a second, non-square size, both within the family's size rule
    (a fixed-size family: its pretrained cfg's size and no second size)."""
    if family.fixed_input_size:
        return tuple(timm.models.get_pretrained_cfg(family.smallest).input_size), None
    base = family.fit_size(side)
    first = (3, base, base)
    second = default_check_size(first, family)
    assert family.accepts(*first[1:]) and family.accepts(*second[1:])
    return first, second


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
        out = _official_bra()(q, k, v, routing) if self.official else bra(q, k, v, routing)
        return out.flatten(2).mean(-1)


def _official_bra():
    """The official expand+gather BRA, as the family that declares it records it (the benchmark baseline)."""
    baselines = [f.kernel_baselines["bra"][1] for f in families() if "bra" in f.kernel_baselines]
    assert baselines, "no family records an official 'bra' baseline"
    return baselines[0]


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


def test_graph_with_external_weights(tmp_path):
    """A graph whose weights are external data (as exporters write graphs over 2 GB): the Expand finder and the
    check read it in place."""
    model = TinyBRA(official=True)
    report = export_onnx(model, tmp_path / "inline.onnx", (3, 32, 32), batch=2)
    external = tmp_path / "ext" / "external.onnx"
    external.parent.mkdir()
    onnx.save(onnx.load(report.path), str(external), save_as_external_data=True, location="w.bin", size_threshold=0)
    assert (external.parent / "w.bin").stat().st_size > 0
    sample = torch.randn(3, 3, 32, 32).numpy()
    assert find_expand_fed_gathers(external, sample=sample) == find_expand_fed_gathers(report.path, sample=sample)
    assert len(find_expand_fed_gathers(external, sample=sample)) == 2
    assert all(c.ok for c in check_onnx(model, external, (3, 32, 32), (2, 3)))


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


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_family_smallest_model_exports(name, tmp_path):
    """Each family's smallest model with its test kwargs, at two sizes its size rule allows (batch 2 and 3 each),
    within 1e-4 of PyTorch and without Expand-fed gathers."""
    family = FAMILIES[name]
    size, second = record_sizes(family, 64)
    extra = [second] if second else []
    model = family.smallest
    report = export_onnx(model, tmp_path / "m.onnx", size, extra_sizes=extra, model_kwargs=dict(family.test_kwargs))
    stems = ["m.onnx"] + [f"m_{s[1]}x{s[2]}.onnx" for s in extra]
    assert [Path(p).name for p in report.paths] == stems
    assert [(c.batch, c.input_size) for c in report.checks] == [(b, s) for s in [size, *extra] for b in (2, 3)]
    assert all(c.ok and c.max_abs_err <= 1e-4 for c in report.checks)
    for p in report.paths:
        assert find_expand_fed_gathers(p) == [], p


def test_bra_layer_padding_mask_is_only_broadcast_over_the_batch(tmp_path):
    """BRA on a map its regions do not divide (16x16 tokens in 7x7 regions of 3x3): the padding mask is the one
    Expand-fed gather input, and it only grows along the batch axis."""
    layer = BiLevelRoutingAttention(32, num_heads=2, n_win=7, topk=4).eval()

    class Nchw(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = layer

        def forward(self, x):
            return self.attn(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    report = export_onnx(Nchw(), tmp_path / "bra_layer.onnx", (32, 16, 16), batch=2)
    assert all(c.ok for c in report.checks)
    assert find_expand_fed_gathers(report.path) == []
    strict = find_expand_fed_gathers(report.path, allow_batch_broadcast=False)
    assert strict and all(h.endswith("-> (2, 49, 9)") for h in strict), strict


@pytest.mark.slow
def test_dynamo_exporter(tmp_path):
    report = export_onnx(TinyBRA(), tmp_path / "bra_dynamo.onnx", (3, 32, 32), exporter="dynamo")
    assert report.exporter == "dynamo" and all(c.ok for c in report.checks)
    assert find_expand_fed_gathers(report.path) == []


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(f.smallest for f in families()))
def test_export_full_size_model(name, tmp_path):
    """Each family's smallest model at full width and depth, at 224 (or its fixed size) and at a second size its
    family allows, batch 2 and 3 each, within 1e-4 of PyTorch (routing near-ties redrawn, see check_onnx), and
    without Expand-fed gathers. Larger variants share the code path: ``tools/export_onnx.py NAME`` checks them."""
    size, second = record_sizes(get_family(name), 224)
    extra = [second] if second else []
    report = export_onnx(name, tmp_path / f"{name}.onnx", size, extra_sizes=extra)
    assert len(report.checks) == 2 * (1 + len(extra)) and all(c.ok for c in report.checks)
    for p in report.paths:
        assert find_expand_fed_gathers(p) == [], p


def test_cli(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("export_onnx_cli", ROOT / "tools" / "export_onnx.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    out = tmp_path / "m.onnx"
    args = [
        "test_efficientnet",
        "--out",
        str(out),
        "--size",
        "32",
        "32",
        "--check-size",
        "48",
        "40",
        "--model-kwargs",
        "num_classes=7",
        "drop_rate=0.0",
    ]
    assert cli.main(args) == 0
    assert out.exists() and (tmp_path / "m_48x40.onnx").exists()
    text = capsys.readouterr().out
    assert text.count(" ok") == 4 and "FAIL" not in text
