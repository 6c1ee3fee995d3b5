"""Benchmark tool: consistent numbers, parseable output, the official-gather BRA baseline. No timing assertions."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
from pathlib import Path

import pytest
import torch
from visionattn.kernels import bra_reference

from visionattn import benchmark as vb

ROOT = Path(__file__).resolve().parents[1]
MODEL_COLUMNS = [
    "label",
    "mode",
    "device",
    "dtype",
    "batch",
    "height",
    "width",
    "threads",
    "channels_last",
    "compiled",
    "iters",
    "images_per_s",
    "latency_ms",
    "latency_p90_ms",
    "peak_mem_mb",
    "mem_method",
    "params_m",
]


def _cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("heads,regions,r,d,dv,topk", [(2, 9, 4, 8, 8, 3), (3, 16, 2, 4, 6, 16), (1, 4, 5, 8, 8, 1)])
def test_official_gather_equals_reference(heads, regions, r, d, dv, topk):
    b = 2
    q, k = (torch.randn(b, heads, regions, r, d, dtype=torch.float64, requires_grad=True) for _ in range(2))
    v = torch.randn(b, heads, regions, r, dv, dtype=torch.float64, requires_grad=True)
    routing = torch.rand(b, regions, regions).topk(topk, dim=-1).indices
    official = vb.bra_official_gather_ours_layout(q, k, v, routing, scale=0.37)
    ours = bra_reference(q, k, v, routing, scale=0.37)
    torch.testing.assert_close(official, ours, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ours)
    grads_official = torch.autograd.grad(official, (q, k, v), g)
    grads_ours = torch.autograd.grad(ours, (q, k, v), g)
    for a, e in zip(grads_official, grads_ours):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_official_layout_round_trip():
    q, k, v = torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 4, 5, 6)
    qo, kvo = vb.to_official_layout(q, k, v)
    assert qo.shape == (2, 4, 5, 24) and kvo.shape == (2, 4, 5, 24 + 18)
    # head-major channels: channel h * d + c of region n, token t is q[b, h, n, t, c]
    assert qo[1, 2, 3, 1 * 8 + 5] == q[1, 1, 2, 3, 5]
    assert kvo[0, 3, 4, 24 + 2 * 6 + 1] == v[0, 2, 3, 4, 1]
    torch.testing.assert_close(vb.from_official_layout(kvo[..., 24:], 3), v, rtol=0, atol=0)


def test_cpu_peak_bytes_hand_checked():
    x = torch.randn(1_000_000)

    def f():
        y = x + 1  # 4 MB
        z = y * 2  # 4 MB more while y is alive: 8 MB
        del y
        w = z + 1  # y freed first: still 8 MB
        return w.sum()

    peak = vb.cpu_peak_bytes(f)
    assert 8_000_000 <= peak < 8_000_000 + 4096, peak


def test_parse_spec():
    s = vb.parse_spec("biformer_tiny,VISIONATTN_KERNELS=reference,drop_path_rate=0.1,depths=(1,1,1,1)")
    assert s.model == "biformer_tiny"
    assert s.env == {"VISIONATTN_KERNELS": "reference"}
    assert s.kwargs == {"drop_path_rate": 0.1, "depths": (1, 1, 1, 1)}
    same = vb.parse_spec("VISIONATTN_KERNELS=triton", default=s)
    assert same.model == "biformer_tiny" and same.env == {"VISIONATTN_KERNELS": "triton"}
    assert same.kwargs == s.kwargs
    assert vb.parse_spec("drop_path_rate=0.2", default="resnet18").kwargs == {"drop_path_rate": 0.2}
    with pytest.raises(ValueError, match="names no model"):
        vb.parse_spec("VISIONATTN_KERNELS=triton")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        vb.parse_spec("resnet18,oops")


def test_bench_model_numbers_are_consistent():
    r = vb.bench_model("test_resnet", size=(32, 32), batch=3, iters=3, warmup=1)
    assert r.mode == "infer" and r.threads == 1 and r.batch == 3 and r.iters == 3
    assert math.isclose(r.images_per_s, 3 / (r.latency_ms / 1e3), rel_tol=1e-12)
    assert r.latency_p90_ms >= r.latency_ms > 0
    import timm

    n_params = sum(p.numel() for p in timm.create_model("test_resnet").parameters())
    assert math.isclose(r.params_m, n_params / 1e6)
    # at least the first activation, (3, C, 16, 16) float32 after the stem conv, is allocated
    first = timm.create_model("test_resnet").conv1
    c = first[0].out_channels if isinstance(first, torch.nn.Sequential) else first.out_channels
    assert r.peak_mem_mb * 2**20 >= 3 * c * 16 * 16 * 4
    assert r.mem_method == "cpu_allocator_profiler"


def test_bench_model_train_mode():
    r = vb.bench_model("test_resnet", size=(32, 32), batch=2, iters=2, warmup=1, train=True)
    assert r.mode == "train" and math.isclose(r.images_per_s, 2e3 / r.latency_ms, rel_tol=1e-12)
    # fwd+bwd holds a gradient for every parameter at its peak
    assert r.peak_mem_mb * 2**20 >= r.params_m * 1e6 * 4


def test_spec_environment_is_applied_and_restored(monkeypatch):
    monkeypatch.delenv("VISIONATTN_KERNELS", raising=False)
    spec = "biformer_tiny,VISIONATTN_KERNELS=bogus,depths=(1,1,1,1),embed_dims=(32,64,64,64)"
    with pytest.raises(ValueError, match="VISIONATTN_KERNELS='bogus'"):
        vb.bench_model(spec, size=(64, 64), batch=1, iters=1, warmup=0, memory=False)
    assert "VISIONATTN_KERNELS" not in os.environ


def test_compare_cli_csv_and_markdown(tmp_path, capsys):
    cli = _cli()
    csv_path, md_path = tmp_path / "m.csv", tmp_path / "m.md"
    argv = ["test_resnet", "--size", "32", "--batch", "2", "3", "--iters", "2", "--warmup", "1"]
    png = tmp_path / "m.png"
    cli.main(argv + ["--compare", "test_convnext", "--csv", str(csv_path), "--md", str(md_path), "--plot", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert list(rows[0]) == MODEL_COLUMNS
    assert [r["label"] for r in rows] == ["test_resnet", "test_convnext", "ratio (first / compare)"] * 2
    assert [r["batch"] for r in rows] == ["2"] * 3 + ["3"] * 3
    for a, b, ratio in (rows[:3], rows[3:]):
        for col in ("images_per_s", "latency_ms", "latency_p90_ms", "peak_mem_mb"):
            assert math.isclose(float(ratio[col]), float(a[col]) / float(b[col]), rel_tol=1e-12), col
        for r in (a, b):
            ips = int(r["batch"]) / (float(r["latency_ms"]) / 1e3)
            assert math.isclose(float(r["images_per_s"]), ips, rel_tol=1e-12)
    stdout = capsys.readouterr().out
    assert stdout.startswith("| label | mode |") and stdout.count("\n| ") == 6  # 6 rows below the separator
    assert md_path.read_text().count("\n") == 8


def test_compare_same_model_under_env(tmp_path):
    cli = _cli()
    csv_path = tmp_path / "k.csv"
    argv = ["biformer_tiny,depths=(1,1,1,1),embed_dims=(32,64,64,64)", "--size", "64", "--iters", "1"]
    cli.main(
        argv + ["--warmup", "0", "--no-memory", "--compare", "VISIONATTN_KERNELS=reference", "--csv", str(csv_path)]
    )
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert rows[0]["label"] == "biformer_tiny,depths=(1, 1, 1, 1),embed_dims=(32, 64, 64, 64)"
    assert (
        rows[1]["label"] == "biformer_tiny,VISIONATTN_KERNELS=reference,depths=(1, 1, 1, 1),embed_dims=(32, 64, 64, 64)"
    )
    assert rows[0]["params_m"] == rows[1]["params_m"]


def test_bytes_and_flops_hand_checked():
    s1 = next(c for c in vb.kernel_cases() if c.name == "BiFormer-S s1 @224")
    assert s1.keys_per_query == 64 and s1.tokens == 3136
    fb, ff, bb, bf = vb._bytes_flops(s1, "visionattn", 2, 2)
    t = 2 * 2 * 3136 * 32 * 2  # one of q, k, v, o in bf16
    assert (fb, bb) == (4 * t, 12 * t)
    assert ff == 4 * 2 * 2 * 3136 * 64 * 32 and bf == 3.5 * ff
    assert vb._bytes_flops(s1, "sdpa_dense", 2, 2)[1] == 4 * 2 * 2 * 3136 * 3136 * 32
    halo = next(c for c in vb.kernel_cases() if c.op == "halo")
    assert halo.keys_per_query == (8 + 2 * 3) ** 2


def test_kernel_quick_preset_bra_on_cpu(tmp_path):
    rows = vb.bench_kernels(["bra"], quick=True, iters=1, warmup=0)
    assert [r.case for r in rows[::3]] == ["BiFormer-S s1 @224", "BiFormer-S s2 @224", "BiFormer-S s3 @224"]
    assert [r.impl for r in rows[:3]] == ["visionattn", "official_gather", "sdpa_dense"]
    for r in rows:
        assert r.status == "ok", r
        assert r.fwd_ms > 0 and r.fwdbwd_ms > 0 and r.fwd_mem_mb > 0 and r.fwdbwd_mem_mb > 0
        assert math.isnan(r.fwd_roofline_pct)  # ceilings are GPU ceilings
    for i in range(0, len(rows), 3):
        base = rows[i]
        assert base.path == "reference" and base.fwd_speedup == 1.0
        for r in rows[i : i + 3]:
            assert math.isclose(r.fwd_speedup, r.fwd_ms / base.fwd_ms) and math.isclose(
                r.fwdbwd_speedup, r.fwdbwd_ms / base.fwdbwd_ms
            )
    # the official gather's backward scatters into the expanded (B, regions, regions, R, C) view of K/V:
    # 49 copies of 3136 tokens x 128 channels (2 heads x (32 + 32)) in float32
    s1 = rows[:3]
    assert s1[1].fwdbwd_mem_mb > 49 * 3136 * 128 * 4 / 2**20 > s1[0].fwdbwd_mem_mb


def test_kernel_cli_csv(tmp_path, capsys):
    cli = _cli()
    out = tmp_path / "k.csv"
    cli.main(["kernels", "--op", "bra", "--cases", "s3 @224", "--iters", "1", "--warmup", "0", "--csv", str(out)])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["impl"] for r in rows] == ["visionattn", "official_gather", "sdpa_dense"]
    assert list(rows[0])[:5] == ["op", "case", "impl", "path", "status"]
    assert "fwd_tbps" in rows[0] and "fwdbwd_roofline_pct" in rows[0]
    assert "| BiFormer-S s3 @224 | official_gather |" in capsys.readouterr().out


def test_missing_op_reported_not_raised(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "visionattn.kernels.neighborhood":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    rows = vb.bench_kernels(["na2d"], cases=["NA 7x7"], iters=1, warmup=0)
    assert len(rows) == 1 and rows[0].status.startswith("not available") and math.isnan(rows[0].fwd_ms)


def test_bad_kernel_arguments():
    with pytest.raises(ValueError, match="op 'flash'"):
        vb.bench_kernels(["flash"])
    with pytest.raises(ValueError, match="impl 'cudnn'"):
        vb.bench_kernels(["bra"], impls=["cudnn"])
