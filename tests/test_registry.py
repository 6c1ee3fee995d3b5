"""The family registry: records are checked, aliases reach timm, and the shared tests cover a family declared
through its record alone (the two toy families of tests/toy_families.py, registered by tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

import visionattn
from visionattn.models import _registry
from visionattn.models._registry import DenseRecipe, Family, register_family, unregister_family

ROOT = Path(__file__).resolve().parents[1]
TOY_MODELS = ("toyvit_tiny", "test_resnet")


def _family(**changes) -> Family:
    base = dict(name="probe", models=("test_vit",), source="timm", params_m={"test_vit": 0.37})
    return Family(**(base | changes))


def test_every_model_belongs_to_exactly_one_family():
    seen = {}
    for family in _registry.families():
        for model in family.models:
            assert model not in seen, f"{model} is in {seen.get(model)} and {family.name}"
            seen[model] = family.name
            assert visionattn.get_family(model) is family
    assert sorted(seen) == visionattn.list_models()
    assert {"biformer", "davit", "toyvit", "toyconv"} <= set(visionattn.list_families())


def test_aliases_build_their_target_through_timm():
    for family in _registry.families():
        for alias, target in family.aliases.items():
            assert timm.is_model(alias) and visionattn.get_family(alias) is family
            with torch.device("meta"):
                a, t = timm.create_model(alias), timm.create_model(target)
            assert type(a) is type(t) and a.pretrained_cfg["architecture"] == target


def test_timm_family_is_bound_not_shadowed():
    from timm.models import davit as timm_davit

    for name in visionattn.list_models("davit"):
        assert timm.models.model_entrypoint(name).__module__ == timm_davit.__name__
    assert visionattn.get_family("davit").converter is timm_davit.checkpoint_filter_fn


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(name="Probe"), ValueError, "lower-case"),
        (dict(models=()), ValueError, "no models"),
        (dict(source="mmdet"), ValueError, "source="),
        (dict(layout="pyramid"), ValueError, "layout="),
        (dict(feature_fmt="NLC"), ValueError, "feature_fmt="),
        (dict(converter=42), TypeError, "callable"),
        (dict(aliases={"probe_v": "resnet18"}), ValueError, "not one of its models"),
        (dict(params_m={}), ValueError, "params_m lacks"),
        (dict(min_input_size=0), ValueError, "positive"),
    ],
)
def test_bad_records_are_refused(changes, error, match):
    with pytest.raises(error, match=match):
        _family(**changes)
    with pytest.raises(ValueError, match="out_norm"):
        DenseRecipe(out_norm="bn")


def test_register_refuses_unknown_names_and_collisions():
    with pytest.raises(ValueError, match="not registered with timm"):
        register_family(_family(models=("no_such_model_xyz",), params_m={"no_such_model_xyz": 1.0}))
    with pytest.raises(ValueError, match="already belongs to family 'biformer'"):
        register_family(_family(models=("biformer_tiny",), params_m={"biformer_tiny": 13.1}))
    with pytest.raises(ValueError, match="already a timm model"):
        register_family(_family(aliases={"resnet18": "test_vit"}))
    with pytest.raises(KeyError, match="neither a visionattn family"):
        visionattn.get_family("resnet18")
    with pytest.raises(ValueError, match="family='nope'"):
        visionattn.list_models("nope")


def test_register_and_unregister_a_family():
    family = register_family(_family(aliases={"probe_alias_v": "test_vit"}))
    try:
        assert visionattn.get_family("probe_alias_v") is family
        assert visionattn.list_models("probe", aliases=True) == ["probe_alias_v", "test_vit"]
        assert family.smallest == "test_vit"
        assert family.accepts(32, 48) and not family.accepts(31, 48)
    finally:
        unregister_family("probe")
    assert "test_vit" not in visionattn.list_models()


def test_size_rule():
    family = _family(min_input_size=16, input_multiple=16)
    assert family.accepts(16, 64) and family.accepts(48, 32)
    assert not family.accepts(8, 64) and not family.accepts(24, 32) and not family.accepts(32, 40)
    assert [family.fit_size(s) for s in (1, 16, 17, 40, 48)] == [16, 16, 32, 48, 48]
    assert [_family(min_input_size=32).fit_size(s) for s in (1, 32, 33)] == [32, 32, 33]


@pytest.mark.slow  # collects three test modules in a fresh interpreter
def test_shared_tests_cover_the_toy_families():
    """The contract, export and dense tests parametrise over the registry: the toys, declared only through their
    records, appear in each of them with no toy-specific test code."""
    files = ["tests/test_models.py", "tests/test_export.py", "tests/test_dense.py"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "not gpu", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ids = proc.stdout.splitlines()
    for path in files:
        for model in TOY_MODELS:
            assert any(line.startswith(path) and model in line for line in ids), f"{path} does not cover {model}"
    for path in files:
        text = (ROOT / path).read_text()
        assert not any(word in text for word in ("toyvit", "toyconv", *TOY_MODELS)), path


# Shared code reads the records; a family name in one of these is a record field that is missing.
SHARED = ["visionattn/dense", "visionattn/export.py", "visionattn/bench", "configs/_base_/models"]


def test_shared_code_names_no_family():
    words = set()
    for family in _registry.families():
        words |= {family.name, *family.models, *family.aliases}
    files = [p for entry in SHARED for p in ([ROOT / entry] if entry.endswith(".py") else (ROOT / entry).rglob("*.py"))]
    assert files
    offenders = []
    for path in files:
        text = path.read_text().lower()
        offenders += [f"{path.relative_to(ROOT)}: {w}" for w in sorted(words) if w.lower() in text]
    assert not offenders, offenders


def test_fixed_size_models_are_per_model():
    """A family may hold models that take only their cfg's size (``fixed_size_models``) beside any-size ones."""
    base = dict(name="sizes", models=("a_model", "b_model"), params_m={"a_model": 1.0, "b_model": 2.0})
    fam = _registry.Family(**base, fixed_size_models=["b_model"])
    assert fam.fixed_size_models == ("b_model",)
    assert not fam.is_fixed("a_model") and fam.is_fixed("b_model")
    assert _registry.Family(**base, fixed_input_size=True).is_fixed("a_model")
    with pytest.raises(ValueError, match=r"fixed_size_models names \['c_model'\]"):
        _registry.Family(**base, fixed_size_models=("c_model",))
