"""check_onnx and routing top-k: a near-tie that the two runtimes break differently is reported and redrawn; every
other difference (logits off, a clear-margin flip, a difference that routing does not explain) still fails.

The toy router's logits are quantised to multiples of 0.5 plus 1e-5 times the region index, so near-ties
(margins of 1e-5 to 4e-5) are frequent while both runtimes agree on every selection. Its exported graph is then
edited between the logits and the ``TopK``: subtracting 5e-5 from the last region's logit (far below the 1e-4
tolerance) makes onnxruntime break every near-tie with it the other way, exactly as rounding differences break
the near-ties of a real model; the other edits are real mismatches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from visionattn.export import OnnxMismatchError, RoutingFlip, check_onnx, export_onnx

onnx = pytest.importorskip("onnx", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")
pytest.importorskip("onnxruntime", reason="ONNX tests need the onnx extra: pip install visionattn[onnx]")
from onnx import helper, numpy_helper  # noqa: E402

REGIONS, ROWS, TOPK = 5, 2, 2
SIZE = (1, ROWS, REGIONS)  # input (B, 1, rows, regions): one row of routing logits per query region


class ToyRouter(nn.Module):
    """Per row, pick the top-2 of 5 near-quantised logits and sum those regions' values: (B, 1, 2, 5) -> (B, 2, 4)."""

    def __init__(self):
        super().__init__()
        self.values = nn.Parameter(torch.randn(REGIONS, 4, generator=torch.Generator().manual_seed(3)))
        self.register_buffer("offsets", torch.arange(REGIONS) * 1e-5, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.round(x[:, 0] * 2) / 2 + self.offsets  # (B, rows, regions)
        idx = logits.topk(TOPK, dim=-1).indices  # (B, rows, topk)
        return self.values[idx].sum(2)


def _edit_topk_input(path, out, make_node):
    """Write ``out``: ``path`` with ``make_node(logits_name, new_name, model)`` inserted before the TopK."""
    model = onnx.load(str(path))
    nodes = list(model.graph.node)
    (i, topk) = next((i, n) for i, n in enumerate(nodes) if n.op_type == "TopK")
    new = "edited_logits"
    added = make_node(topk.input[0], new, model)
    topk.input[0] = new
    model.graph.ClearField("node")
    model.graph.node.extend(nodes[:i] + added + nodes[i:])
    onnx.save(model, str(out))
    return out


def _add_to_last_region(amount: float):
    def make(src, dst, model):
        bump = torch.zeros(REGIONS)
        bump[-1] = amount
        model.graph.initializer.append(numpy_helper.from_array(bump.numpy(), "bump"))
        return [helper.make_node("Add", [src, "bump"], [dst], name="bump_last_region")]

    return make


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("router")
    report = export_onnx(ToyRouter(), folder / "router.onnx", SIZE, batch=4)
    return folder, report


def test_unedited_graph_matches_without_flips(exported):
    _, report = exported
    assert [c.batch for c in report.checks] == [4, 5]
    assert all(c.ok and c.max_abs_err <= 1e-6 and not c.routing_flips and c.redraws == 0 for c in report.checks)


def test_near_tie_flip_is_reported_and_redrawn(exported):
    folder, _ = exported
    model = ToyRouter().eval()
    edited = _edit_topk_input(folder / "router.onnx", folder / "tie.onnx", _add_to_last_region(-5e-5))
    checks = check_onnx(model, edited, SIZE, (4, 5), redraws=8)
    flips = [f for c in checks for f in c.routing_flips]
    assert flips, "the near-ties with the last region should flip in onnxruntime"
    for f in flips:
        assert isinstance(f, RoutingFlip) and f.call == 0 and f.node
        # torch prefers the last region by (4 - j) * 1e-5 over region j; onnxruntime's -5e-5 reverses that
        assert f.torch_only == (REGIONS - 1,) and 0 < f.gap < 4.1e-5 and f.bound == pytest.approx(5e-5, rel=1e-2)
        assert str(f).startswith(f"sample {f.sample}: top-k #0")
    assert all(c.ok and c.redraws >= 1 for c in checks if c.routing_flips)
    # every sample finally compared passed at the full tolerance
    assert all(c.max_abs_err <= 1e-4 for c in checks)


def test_routing_probe_reads_external_weights(exported):
    """The probe graph (TopK logits and indices as outputs) resolves weights kept as external data."""
    folder, _ = exported
    edited = _edit_topk_input(folder / "router.onnx", folder / "tie_x.onnx", _add_to_last_region(-5e-5))
    (folder / "ext").mkdir()
    external = folder / "ext" / "tie.onnx"
    onnx.save(onnx.load(str(edited)), str(external), save_as_external_data=True, location="w.bin", size_threshold=0)
    checks = check_onnx(ToyRouter().eval(), external, SIZE, (4, 5), redraws=8)
    assert any(c.routing_flips for c in checks) and all(c.ok for c in checks)
    assert sorted(p.name for p in (folder / "ext").iterdir()) == ["tie.onnx", "w.bin"]  # no probe file left


def test_near_tie_in_every_draw_fails(exported):
    folder, _ = exported
    edited = _edit_topk_input(folder / "router.onnx", folder / "tie0.onnx", _add_to_last_region(-5e-5))
    with pytest.raises(OnnxMismatchError, match="routing near-ties in 1 draws"):
        check_onnx(ToyRouter().eval(), edited, SIZE, (64,), redraws=0)


def test_logits_off_by_more_than_the_tolerance_fail(exported):
    folder, _ = exported
    edited = _edit_topk_input(folder / "router.onnx", folder / "off.onnx", _add_to_last_region(-0.25))
    with pytest.raises(OnnxMismatchError, match="routing logits themselves differ by 0.25"):
        check_onnx(ToyRouter().eval(), edited, SIZE, (16,))


def test_clear_margin_flip_fails(exported):
    """Same logits in both runtimes, but onnxruntime's TopK picks the smallest: flips at margins of 0.5 or more."""
    folder, _ = exported
    model = onnx.load(str(folder / "router.onnx"))
    topk = next(n for n in model.graph.node if n.op_type == "TopK")
    kept = [a for a in topk.attribute if a.name != "largest"]
    topk.ClearField("attribute")
    topk.attribute.extend([*kept, helper.make_attribute("largest", 0)])
    onnx.save(model, str(folder / "smallest.onnx"))
    with pytest.raises(OnnxMismatchError, match="NOT a near-tie"):
        check_onnx(ToyRouter().eval(), folder / "smallest.onnx", SIZE, (4,))


def test_mismatch_after_identical_routing_fails(exported):
    folder, _ = exported
    model = onnx.load(str(folder / "router.onnx"))
    for init in model.graph.initializer:
        if tuple(init.dims) == (REGIONS, 4):  # the value table, off by 1 %
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
    onnx.save(model, str(folder / "values.onnx"))
    with pytest.raises(OnnxMismatchError, match="every top-k selected the same indices"):
        check_onnx(ToyRouter().eval(), folder / "values.onnx", SIZE, (4,))


def test_batch_major_flattened_topk_is_split_per_sample(tmp_path):
    """A top-k over (B * rows, regions) still attributes each flip to its sample."""

    class Flat(ToyRouter):
        def forward(self, x):
            logits = (torch.round(x[:, 0] * 2) / 2 + self.offsets).flatten(0, 1)  # (B * rows, regions)
            idx = logits.topk(TOPK, dim=-1).indices.view(x.shape[0], ROWS, TOPK)
            return self.values[idx].sum(2)

    report = export_onnx(Flat(), tmp_path / "flat.onnx", SIZE, batch=4)
    edited = _edit_topk_input(report.path, tmp_path / "flat_tie.onnx", _add_to_last_region(-5e-5))
    checks = check_onnx(Flat().eval(), edited, SIZE, (4, 5), redraws=8)
    flips = [f for c in checks for f in c.routing_flips]
    assert flips and all(f.row < ROWS and f.torch_only == (REGIONS - 1,) for f in flips)
    assert all(c.ok for c in checks)
