"""Benchmark package and tool: numbers against hand-computed values (scripted clocks), costs against a FLOP
profiler and a byte count of the real tensors, the families' official baselines against the references."""

from __future__ import annotations

import csv
import importlib.util
import io
import math
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from visionattn import bench
from visionattn.bench import timing
from visionattn.models._registry import families

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
BASELINES = [(f.name, op, label) for f in families() for op, (label, _) in f.kernel_baselines.items()]


def _cli():
    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "tools" / "benchmark.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class ScriptedClock:
    """A clock whose consecutive (start, stop) readings are ``durations`` apart."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.t = 100.0
        self.running = False

    def __call__(self) -> float:
        if self.running:
            self.t += self.durations.pop(0)
        self.running = not self.running
        return self.t


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return _tensors(list(obj.values()))
    return []


# ----------------------------------------------------------------------------------------------------------
# official baselines (from the family records) against the references


@pytest.mark.parametrize("family,op,label", BASELINES)
def test_family_baseline_equals_reference(family, op, label):
    fn = next(f for f in families() if f.name == family).kernel_baselines[op][1]
    spec = bench.op_spec(op)
    case = bench.make_case(spec.test_case, op=op)
    torch.manual_seed(0)
    inp = spec.make_inputs(case, 2, torch.device("cpu"), torch.float64, True)
    ref = getattr(__import__("visionattn.kernels", fromlist=[spec.reference]), spec.reference)
    official = fn(*inp.args, **inp.kwargs)
    ours = ref(*inp.args, **inp.kwargs)
    torch.testing.assert_close(official, ours, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ours)
    for a, e in zip(torch.autograd.grad(official, inp.leaves, g), torch.autograd.grad(ours, inp.leaves, g)):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_official_layout_round_trip():
    from visionattn.models.biformer import from_official_layout, to_official_layout

    q, k, v = torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 4, 5, 6)
    qo, kvo = to_official_layout(q, k, v)
    assert qo.shape == (2, 4, 5, 24) and kvo.shape == (2, 4, 5, 24 + 18)
    # head-major channels: channel h * d + c of region n, token t is q[b, h, n, t, c]
    assert qo[1, 2, 3, 1 * 8 + 5] == q[1, 1, 2, 3, 5]
    assert kvo[0, 3, 4, 24 + 2 * 6 + 1] == v[0, 2, 3, 4, 1]
    torch.testing.assert_close(from_official_layout(kvo[..., 24:], 3), v, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------------
# timing primitives


def test_cpu_peak_bytes_hand_checked():
    x = torch.randn(1_000_000)

    def f():
        y = x + 1  # 4 MB
        z = y * 2  # 4 MB more while y is alive: 8 MB
        del y
        w = z + 1  # y freed first: still 8 MB
        return w.sum()

    peak = bench.cpu_peak_bytes(f)
    assert 8_000_000 <= peak < 8_000_000 + 4096, peak


def test_measured_ceilings_hand_checked(monkeypatch):
    clock = ScriptedClock([0.003, 0.001, 0.002, 0.004, 0.002, 0.005])  # 3 copies, then 3 matmuls: the fastest count
    monkeypatch.setattr(timing, "clock", clock)
    c = bench.measure_ceilings("cpu", "float32", copy_bytes=2**20, matmul_size=64, iters=3, warmup=0)
    assert not clock.durations
    assert c.bandwidth == pytest.approx(2 * 2**20 / 0.001)  # 1 MiB read + 1 MiB written in 1 ms
    assert c.flops == pytest.approx(2 * 64**3 / 0.002)
    assert c.bandwidth_how.startswith("measured: 1 MiB cpu copy") and c.flops_how == "measured: 64^3 float32 matmul"
    # a given ceiling is not measured (the clock has no reading left to give)
    given = bench.measure_ceilings("cpu", "float32", bandwidth=3e12, flops=8e14)
    assert (given.bandwidth, given.flops, given.bandwidth_how, given.flops_how) == (3e12, 8e14, "given", "given")
    with pytest.raises(ValueError, match="bandwidth"):
        bench.Ceilings(0.0, 1.0)


# ----------------------------------------------------------------------------------------------------------
# model mode


def test_parse_spec():
    s = bench.parse_spec("biformer_tiny,VISIONATTN_KERNELS=reference,drop_path_rate=0.1,depths=(1,1,1,1)")
    assert s.model == "biformer_tiny"
    assert s.env == {"VISIONATTN_KERNELS": "reference"}
    assert s.kwargs == {"drop_path_rate": 0.1, "depths": (1, 1, 1, 1)}
    same = bench.parse_spec("VISIONATTN_KERNELS=triton", default=s)
    assert same.model == "biformer_tiny" and same.env == {"VISIONATTN_KERNELS": "triton"}
    assert same.kwargs == s.kwargs
    assert bench.parse_spec("drop_path_rate=0.2", default="resnet18").kwargs == {"drop_path_rate": 0.2}
    assert bench.parse_spec("resnet18,global_pool=avg").kwargs == {"global_pool": "avg"}  # bare word: a string
    with pytest.raises(ValueError, match="names no model"):
        bench.parse_spec("VISIONATTN_KERNELS=triton")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench.parse_spec("resnet18,oops")


def test_bench_model_numbers_hand_checked(monkeypatch):
    monkeypatch.setattr(timing, "clock", ScriptedClock([0.1, 0.3, 0.2]))
    r = bench.bench_model("test_resnet", size=(32, 32), batch=3, iters=3, warmup=1)
    assert r.mode == "infer" and r.threads == 1 and r.batch == 3 and r.iters == 3
    # median of 100, 300, 200 ms; 3 images per 0.2 s; p90 between 200 and 300 ms at 0.8 of the way
    assert r.latency_ms == pytest.approx(200.0) and r.images_per_s == pytest.approx(15.0)
    assert r.latency_p90_ms == pytest.approx(280.0)
    import timm

    n_params = sum(p.numel() for p in timm.create_model("test_resnet").parameters())
    assert math.isclose(r.params_m, n_params / 1e6)
    # at least the first activation, (3, C, 16, 16) float32 after the stem conv, is allocated
    first = timm.create_model("test_resnet").conv1
    c = first[0].out_channels if isinstance(first, torch.nn.Sequential) else first.out_channels
    assert r.peak_mem_mb * 2**20 >= 3 * c * 16 * 16 * 4
    assert r.mem_method == "cpu_allocator_profiler"


def test_bench_model_train_mode(monkeypatch):
    monkeypatch.setattr(timing, "clock", ScriptedClock([0.5, 0.25]))
    r = bench.bench_model("test_resnet", size=(32, 32), batch=2, iters=2, warmup=1, train=True)
    assert r.mode == "train"
    assert r.latency_ms == pytest.approx(375.0) and r.images_per_s == pytest.approx(2 / 0.375)
    # fwd+bwd holds a gradient for every parameter at its peak
    assert r.peak_mem_mb * 2**20 >= r.params_m * 1e6 * 4


def test_spec_environment_is_applied_and_restored(monkeypatch):
    monkeypatch.delenv("VISIONATTN_KERNELS", raising=False)
    spec = "biformer_tiny,VISIONATTN_KERNELS=bogus,depths=(1,1,1,1),embed_dims=(32,64,64,64)"
    with pytest.raises(ValueError, match="VISIONATTN_KERNELS='bogus'"):
        bench.bench_model(spec, size=(64, 64), batch=1, iters=1, warmup=0, memory=False)
    assert "VISIONATTN_KERNELS" not in os.environ


def test_compare_cli_csv_and_markdown(tmp_path, capsys, monkeypatch):
    # interleaved: per batch, iteration 1 times first then compare, iteration 2 compare then first
    clock = ScriptedClock([0.2, 0.1, 0.1, 0.2, 0.3, 0.6, 0.6, 0.3])
    peaks = [4 * 2**20, 2**20, 6 * 2**20, 3 * 2**20]
    monkeypatch.setattr(timing, "clock", clock)
    monkeypatch.setattr(timing, "peak_bytes", lambda fn, device: peaks.pop(0))
    cli = _cli()
    csv_path, md_path, png = tmp_path / "m.csv", tmp_path / "m.md", tmp_path / "m.png"
    argv = ["test_resnet", "--size", "32", "--batch", "2", "3", "--iters", "2", "--warmup", "1"]
    cli.main(argv + ["--compare", "test_convnext", "--csv", str(csv_path), "--md", str(md_path), "--plot", str(png)])
    assert not clock.durations and not peaks
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert list(rows[0]) == MODEL_COLUMNS
    assert [r["label"] for r in rows] == ["test_resnet", "test_convnext", "ratio (first / compare)"] * 2
    assert [r["batch"] for r in rows] == ["2"] * 3 + ["3"] * 3
    expected = {  # hand-computed from the scripted durations and peaks
        0: dict(images_per_s=10.0, latency_ms=200.0, peak_mem_mb=4.0),
        1: dict(images_per_s=20.0, latency_ms=100.0, peak_mem_mb=1.0),
        2: dict(images_per_s=0.5, latency_ms=2.0, latency_p90_ms=2.0, peak_mem_mb=4.0),
        3: dict(images_per_s=10.0, latency_ms=300.0, peak_mem_mb=6.0),
        4: dict(images_per_s=5.0, latency_ms=600.0, peak_mem_mb=3.0),
        5: dict(images_per_s=2.0, latency_ms=0.5, latency_p90_ms=0.5, peak_mem_mb=2.0),
    }
    for i, cols in expected.items():
        for col, value in cols.items():
            assert float(rows[i][col]) == pytest.approx(value), (i, col)
    stdout = capsys.readouterr().out
    assert stdout.startswith("| label | mode |") and stdout.count("\n| ") == 6  # 6 rows below the separator
    assert md_path.read_text().count("\n") == 8


def test_interleaved_order_and_external_builder(tmp_path, monkeypatch):
    # an external builder (a file outside any package) records the order in which the models are called
    calls: list[str] = []
    builder = tmp_path / "ext.py"
    builder.write_text(
        "import torch\n"
        "class Tag(torch.nn.Module):\n"
        "    def __init__(self, name, log):\n"
        "        super().__init__()\n"
        "        self.name, self.log, self.w = name, log, torch.nn.Parameter(torch.ones(3))\n"
        "    def forward(self, x):\n"
        "        self.log.append(self.name)\n"
        "        return x.mean((2, 3)) * self.w\n"
        "def make(name, log):\n"
        "    return Tag(name, log)\n"
    )
    specs = [bench.ModelSpec(f"{builder}:make", kwargs=dict(name=n, log=calls)) for n in "ab"]
    monkeypatch.setattr(timing, "clock", ScriptedClock([0.1, 0.4, 0.3, 0.2, 0.4, 0.2]))
    a, b = bench.bench_models(specs, size=(8, 8), iters=3, warmup=1, memory=False)
    # warm-up a, b; then a b | b a | a b: a takes 0.1, 0.2, 0.4 s, b 0.4, 0.3, 0.2 s
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert a.latency_ms == pytest.approx(200.0) and b.latency_ms == pytest.approx(300.0)
    assert a.params_m == b.params_m == 3e-6
    with pytest.raises(ValueError, match="has no function 'nope'"):
        bench.bench_model(f"{builder}:nope", size=(8, 8), iters=1, warmup=0, memory=False)
    with pytest.raises(ValueError, match="is not a file"):
        bench.bench_model(f"{tmp_path}/missing.py:make", size=(8, 8), iters=1, warmup=0, memory=False)


def test_compare_same_model_under_env(tmp_path):
    cli = _cli()
    csv_path = tmp_path / "k.csv"
    argv = ["biformer_tiny", "--model-kwargs", "depths=(1,1,1,1)", "embed_dims=(32,64,64,64)", "--size", "64"]
    cli.main(
        argv
        + ["--iters", "1", "--warmup", "0", "--no-memory", "--compare", "VISIONATTN_KERNELS=reference"]
        + ["--csv", str(csv_path)]
    )
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text())))
    assert rows[0]["label"] == "biformer_tiny,depths=(1, 1, 1, 1),embed_dims=(32, 64, 64, 64)"
    assert (
        rows[1]["label"] == "biformer_tiny,VISIONATTN_KERNELS=reference,depths=(1, 1, 1, 1),embed_dims=(32, 64, 64, 64)"
    )
    assert rows[0]["params_m"] == rows[1]["params_m"]
    with pytest.raises(SystemExit, match="--model-kwargs"):
        cli.main(["biformer_tiny,depths=(1,1,1,1)"])


# ----------------------------------------------------------------------------------------------------------
# kernel costs: hand-computed, a FLOP profiler, the bytes of the real tensors


def test_bra_cost_hand_checked():
    case = bench.make_case(dict(op="bra", name="t", height=8, width=8, heads=2, head_dim=4, regions_side=2, topk=1))
    cost = bench.op_spec("bra").cost(case, 1, 4)
    # 4 regions of 4x4 tokens; each of the 64 queries of 2 heads sees 1 x 16 keys of 4 channels:
    # q.k and p.v are 2 x 16 x 4 multiply-adds = 256 FLOPs per query and head
    assert cost.fwd_flops == 64 * 2 * 256 == 32768
    assert cost.fwdbwd_flops == 98304  # plus dq, dk (from q.k) and dp, dv (from p.v): 3 x
    # q, k, v, o: 64 x 2 x 4 float32 = 2048 B each; routing 4 x 1 int64 = 32 B
    assert cost.fwd_bytes == 4 * 2048 + 32 == 8224
    # backward reads q, k, v, routing and dO, writes dq, dk, dv
    assert cost.fwdbwd_bytes == 8224 + 3 * 2048 + 32 + 2048 + 3 * 2048 == 22592


@pytest.mark.parametrize("op", ["bra", "na2d", "halo_attn"])
def test_useful_flops_match_the_profiler(op):
    """The reference computes exactly the products that define the op: the profiler's matmul count is the
    spec's useful FLOPs (forward, and forward + backward)."""
    spec = bench.op_spec(op)
    case = bench.make_case(spec.test_case, op=op)
    ref = getattr(__import__("visionattn.kernels", fromlist=[spec.reference]), spec.reference)
    inp = spec.make_inputs(case, 2, torch.device("cpu"), torch.float32, True)
    cost = spec.cost(case, 2, 4)
    with FlopCounterMode(display=False) as fwd:
        out = ref(*inp.args, **inp.kwargs)
    assert fwd.get_total_flops() == cost.fwd_flops
    with FlopCounterMode(display=False) as both:
        ref(*inp.args, **inp.kwargs).backward(torch.ones_like(out))
    assert both.get_total_flops() == cost.fwdbwd_flops


@pytest.mark.parametrize("op", ["bra", "na2d", "halo_attn"])
def test_compulsory_bytes_match_the_tensors(op):
    """Forward: every input once and the output; backward: every input and dO once, every gradient written."""
    spec = bench.op_spec(op)
    case = bench.make_case(spec.test_case, op=op)
    ref = getattr(__import__("visionattn.kernels", fromlist=[spec.reference]), spec.reference)
    inp = spec.make_inputs(case, 3, torch.device("cpu"), torch.float64, True)
    out = ref(*inp.args, **inp.kwargs)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    inputs = sum(t.nbytes for t in _tensors([inp.args, dict(inp.kwargs)]))
    grads = sum(t.grad.nbytes for t in inp.leaves)
    cost = spec.cost(case, 3, 8)
    assert cost.fwd_bytes == inputs + out.nbytes
    assert cost.fwdbwd_bytes == cost.fwd_bytes + inputs + grad_out.nbytes + grads


def test_dense_cost_matches_the_profiler():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from visionattn.bench.kernel import _dense_cost

    case = bench.make_case(bench.op_spec("na2d").test_case, op="na2d")
    q, k, v = (torch.randn(2, case.heads, case.tokens, case.head_dim, requires_grad=True) for _ in range(3))
    # the math backend runs SDPA as two batched matmuls the profiler counts (CPU's fused kernel is opaque to it)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fwd:
        out = F.scaled_dot_product_attention(q, k, v)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as both:
        F.scaled_dot_product_attention(q, k, v).backward(torch.ones_like(out))
    cost = _dense_cost(case, 2, 4)
    assert (cost.fwd_flops, cost.fwdbwd_flops) == (fwd.get_total_flops(), both.get_total_flops())


# ----------------------------------------------------------------------------------------------------------
# kernel mode


def _toy_entry(q, k, v):
    return F.scaled_dot_product_attention(q, k, v)


def _toy_reference(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def _toy_inputs(case, b, device, dtype, grad):
    q, k, v = (
        torch.randn(b, case.heads, case.tokens, case.head_dim, device=device, dtype=dtype).requires_grad_(grad)
        for _ in range(3)
    )
    return bench.OpInputs((q, k, v), {}, (q, k, v))


@pytest.fixture
def toy_op():
    """An op added to the benchmark by one spec and nothing else."""
    spec = bench.register_op(
        bench.OpSpec(
            name="toy_attn",
            params={},
            make_inputs=_toy_inputs,
            cost=lambda case, b, itemsize: bench.attention_cost(
                batch=b,
                heads=case.heads,
                queries=case.tokens,
                keys_per_query=case.tokens,
                head_dim=case.head_dim,
                itemsize=itemsize,
            ),
            describe=lambda case: "dense",
            entry=_toy_entry,
            reference=_toy_reference,
            dense=False,
            cases=(dict(name="toy 4x4", height=4, width=4, heads=2, head_dim=8),),
        )
    )
    yield spec
    bench.unregister_op("toy_attn")


def test_kernel_rows_hand_checked(toy_op, monkeypatch):
    assert [c.name for c in bench.kernel_cases(ops=["toy_attn"])] == ["toy 4x4"]
    # entry fwd 2 ms, fwd+bwd 6 ms; reference fwd 4 ms, fwd+bwd 9 ms
    clock = ScriptedClock([0.002, 0.006, 0.004, 0.009])
    monkeypatch.setattr(timing, "clock", clock)
    ceilings = bench.Ceilings(bandwidth=1e9, flops=1e10)
    rows = bench.bench_kernels(
        ["toy_attn"], impls=["visionattn", "reference"], iters=1, warmup=0, memory=False, ceilings=ceilings
    )
    ours, ref = rows
    assert not clock.durations, rows
    assert (ours.impl, ours.path, ours.status, ref.impl, ref.status) == ("visionattn", "-", "ok", "reference", "ok")
    assert (ours.fwd_ms, ours.fwdbwd_ms, ref.fwd_ms, ref.fwdbwd_ms) == pytest.approx((2, 6, 4, 9))
    assert (ref.fwd_speedup, ref.fwdbwd_speedup, ours.fwd_speedup) == pytest.approx((2.0, 1.5, 1.0))
    # 16 tokens x 2 heads x 8 float32 = 1024 B per tensor: fwd 4096 B, fwd+bwd 4096 + 7 x 1024 B;
    # 16 queries x 16 keys x 8 x 4 x 2 heads = 16384 FLOPs forward, 3 x with the backward
    assert ours.fwd_tbps == pytest.approx(4096 / 0.002 / 1e12)
    assert ours.fwd_tflops == pytest.approx(16384 / 0.002 / 1e12)
    assert ours.fwd_bw_frac == pytest.approx(4096 / 0.002 / 1e9)
    assert ours.fwd_flops_frac == pytest.approx(16384 / 0.002 / 1e10)
    assert ours.fwdbwd_bw_frac == pytest.approx(11264 / 0.006 / 1e9)
    assert ref.fwdbwd_flops_frac == pytest.approx(49152 / 0.009 / 1e10)
    assert (ours.peak_tbps, ours.peak_tflops) == pytest.approx((1e-3, 1e-2))
    # no ceilings: rates, no fractions
    monkeypatch.setattr(timing, "clock", ScriptedClock([0.002, 0.006]))
    (row,) = bench.bench_kernels(["toy_attn"], impls=["visionattn"], iters=1, warmup=0, memory=False, ceilings=None)
    assert row.fwd_tbps == pytest.approx(4096 / 0.002 / 1e12) and math.isnan(row.fwd_bw_frac)


def test_official_gather_on_cpu_materialises_the_expanded_kv():
    """The official expand-gather's backward scatters into the expanded (B, regions, regions, R, C) view of K/V;
    the reference gathers through indices. Peak memory shows it (float32, batch 1)."""
    case = next(c for c in bench.kernel_cases(quick=True, ops=["bra"]) if bench.baselines("bra"))
    rows = bench.bench_kernels(["bra"], case_list=[case], iters=1, warmup=0, ceilings=None)
    assert [r.impl for r in rows] == ["visionattn", *[label for label, _ in bench.baselines("bra")], "sdpa_dense"]
    for r in rows:
        assert r.status == "ok", r
        assert r.fwd_ms > 0 and r.fwdbwd_ms > 0 and r.fwd_mem_mb > 0 and r.fwdbwd_mem_mb > 0
    assert rows[0].path == "reference"  # CPU tensors: the dispatch runs the reference
    s = case["regions_side"]
    n, r = s * s, case.tokens // (s * s)
    expanded = n * n * r * (2 * case.heads * case.head_dim) * 4 / 2**20
    assert rows[1].fwdbwd_mem_mb > expanded > rows[0].fwdbwd_mem_mb


def test_kernel_cli_csv(tmp_path, capsys):
    cli = _cli()
    out, md = tmp_path / "k.csv", tmp_path / "k.md"
    case = bench.kernel_cases(quick=True, ops=["bra"])[0]
    argv = ["kernels", "--op", "bra", "--cases", case.name, "--iters", "1", "--warmup", "0", "--no-memory"]
    cli.main(argv + ["--peak-tbps", "2", "--peak-tflops", "500", "--impls", "visionattn", "sdpa_dense"])
    cli.main(argv + ["--peak-tbps", "2", "--peak-tflops", "500", "--csv", str(out), "--md", str(md)])
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [r["impl"] for r in rows] == ["visionattn", *[label for label, _ in bench.baselines("bra")], "sdpa_dense"]
    assert list(rows[0])[:5] == ["op", "case", "impl", "path", "status"]
    assert {r["peak_tbps"] for r in rows} == {"2.0"} and {r["peak_tflops"] for r in rows} == {"500.0"}
    assert "fwd_tbps" in rows[0] and "fwdbwd_flops_frac" in rows[0]
    text = capsys.readouterr().out
    assert "ceilings: 2 TB/s (given), 500 TFLOP/s (given)" in text
    assert f"| {case.name} | sdpa_dense |" in text
    assert md.read_text().startswith("ceilings: 2 TB/s (given)")


def test_missing_op_reported_not_raised(toy_op):
    bench.register_op(bench.OpSpec(**{**toy_op.__dict__, "entry": "no_such_op"}))
    rows = bench.bench_kernels(["toy_attn"], iters=1, warmup=0, ceilings=None)
    assert len(rows) == 1 and rows[0].status.startswith("not available") and math.isnan(rows[0].fwd_ms)


def test_bad_kernel_arguments():
    with pytest.raises(ValueError, match="op 'flash'"):
        bench.bench_kernels(["flash"])
    with pytest.raises(ValueError, match="impl 'cudnn'"):
        bench.bench_kernels(["bra"], impls=["cudnn"])
    with pytest.raises(TypeError, match="ceilings"):
        bench.bench_kernels(["bra"], ceilings="h100")
    base = dict(op="na2d", name="x", height=8, width=8, heads=1, head_dim=8)
    with pytest.raises(ValueError, match=r"lacks \['kernel_size'\]"):
        bench.make_case(base)
    with pytest.raises(ValueError, match="'topk'.* are not shape arguments of op 'na2d'"):
        bench.make_case({**base, "kernel_size": 3, "topk": 2})
    with pytest.raises(ValueError, match="no kernel-benchmark spec"):
        bench.make_case({**base, "op": "flash"})


def test_every_family_case_has_a_spec():
    """Every case a family declares builds against its op's spec (a new op needs one spec, not code here)."""
    for fam in families():
        for rec in fam.kernel_cases:
            case = bench.make_case(rec, source=fam.name)
            assert case.op in bench.op_specs() and case.source == fam.name
    for fam in families():
        for op in fam.kernel_baselines:
            assert op in bench.op_specs(), (fam.name, op)
