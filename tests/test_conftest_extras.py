"""VISIONATTN_REQUIRE_EXTRAS=1 turns a missing optional dependency into a failure (CI runs with it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PROBE = """
import pytest
pytest.importorskip("visionattn_no_such_module_xyz")

def test_never_reached():
    pass
"""


def _pytest(tmp_path: Path, require: str) -> subprocess.CompletedProcess:
    test = ROOT / "tests" / f"_probe_extras_{os.getpid()}_{require}.py"
    test.write_text(PROBE)
    try:
        env = dict(os.environ, VISIONATTN_REQUIRE_EXTRAS=require)
        return subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(test)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        test.unlink()


@pytest.mark.slow  # two pytest sessions
def test_missing_module_skips_without_the_flag_and_fails_with_it(tmp_path):
    relaxed = _pytest(tmp_path, "0")
    assert relaxed.returncode == 5 or "skipped" in relaxed.stdout, relaxed.stdout[-2000:]
    strict = _pytest(tmp_path, "1")
    assert strict.returncode not in (0, 5), strict.stdout[-2000:]
    text = strict.stdout + strict.stderr
    assert "VISIONATTN_REQUIRE_EXTRAS=1" in text and "visionattn_no_such_module_xyz" in text, text[-2000:]
