"""DaViT as a timm-bound family: the names are timm's, importing visionattn changes nothing timm builds, and every
variant up to 100M parameters exports to ONNX (the shared tests export the smallest; see tests/test_export.py).

Dense prediction (the official backbone's outputs, checkpoints, configs) is in tests/test_dense_davit.py.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import timm
import torch

import visionattn
from visionattn.models import get_family

FAMILY = get_family("davit")
NAMES = ("davit_tiny", "davit_small", "davit_base", "davit_large", "davit_huge", "davit_giant")
# Models up to this many million parameters get the full ONNX check; the smallest is in tests/test_export.py
ONNX_MAX_PARAMS_M = 100

pytestmark = pytest.mark.usefixtures("one_thread")


def test_family_lists_timm_names():
    assert visionattn.list_models("davit") == sorted(NAMES)
    assert FAMILY.source == "timm" and not FAMILY.aliases
    for name in NAMES:
        # timm's own entrypoint: nothing re-registered over it
        assert timm.models.model_entrypoint(name).__module__ == "timm.models.davit", name
        assert get_family(name) is FAMILY


_PROBE = """
import sys, torch, timm
assert not any(m == "visionattn" or m.startswith("visionattn.") for m in sys.modules)
torch.manual_seed(0)
model = timm.create_model("davit_tiny", depths=(1, 1, 1, 1), embed_dims=(32, 64, 64, 64), num_heads=(1, 2, 2, 2))
x = torch.randn(2, 3, 61, 47, generator=torch.Generator().manual_seed(1))
with torch.no_grad():
    out = model.eval()(x)
torch.save({"state": model.state_dict(), "out": out, "cls": type(model).__module__ + "." + type(model).__name__},
           sys.argv[1])
"""


def test_importing_visionattn_changes_nothing_timm_builds(tmp_path):
    """The same seed builds the same model with the same keys and outputs, with and without visionattn imported."""
    path = tmp_path / "plain.pt"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(path)], capture_output=True, text=True, timeout=300, env=_one_thread_env()
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = torch.load(path, weights_only=True)
    torch.manual_seed(0)
    model = timm.create_model("davit_tiny", **dict(FAMILY.test_kwargs)).eval()
    assert f"{type(model).__module__}.{type(model).__name__}" == plain["cls"] == "timm.models.davit.DaVit"
    state = model.state_dict()
    assert list(state) == list(plain["state"])
    assert all(torch.equal(state[k], v) for k, v in plain["state"].items())
    x = torch.randn(2, 3, 61, 47, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), plain["out"])


def _one_thread_env() -> dict:
    import os

    return dict(os.environ, OMP_NUM_THREADS="1")


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n != FAMILY.smallest and FAMILY.params_m[n] <= ONNX_MAX_PARAMS_M])
def test_variant_exports_to_onnx(name, tmp_path):
    """The full model: one graph with dynamic batch, height and width (the record's onnx_dynamic_size), within 1e-4
    of PyTorch in onnxruntime at 224 and at 256x240, batch 1 and 2 each."""
    from visionattn.export import export_onnx

    pytest.importorskip("onnxruntime")
    assert FAMILY.onnx_dynamic_size
    report = export_onnx(
        name, tmp_path / f"{name}.onnx", (3, 224, 224), batch=1, extra_sizes=[(3, 256, 240)], dynamic_size=True
    )
    assert [(c.batch, c.input_size) for c in report.checks] == [
        (b, s) for s in [(3, 224, 224), (3, 256, 240)] for b in (1, 2)
    ]
    assert all(c.ok and c.max_abs_err <= 1e-4 for c in report.checks), report.checks
