"""SHViT: the family over timm's names, the official checkpoint converter against outputs of the official code.

References: ``tests/fixtures/shvit_reduced_*`` hold a reduced SHViT (official ``model/shvit.py``, random weights, a
distillation head) in the official layout and its float64 logits / stage maps (see tests/fixtures/README.md), and
the key mapping is checked against a rule written out here independently of the converter's regular expressions.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import timm.models.shvit as timm_shvit
import torch
import torch.nn as nn

import visionattn
from visionattn.models.shvit import checkpoint_filter_fn, official_to_timm_key
from visionattn.pretrained import convert_checkpoint

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OFFICIAL = FIXTURES / "shvit_reduced_official.pth"
OUTPUTS = FIXTURES / "shvit_reduced_outputs.pt"
# the fixture's configuration in timm's argument names (official: embed_dim, partial_dim, depth, types, qk_dim)
REDUCED = dict(embed_dim=(16, 24, 32), partial_dim=(8, 8, 12), depth=(1, 2, 2), num_classes=10)
OFFICIAL_TOP1 = {"shvit_s1": 72.8, "shvit_s2": 75.2, "shvit_s3": 77.4, "shvit_s4": 79.4}  # ysj9909/SHViT README

pytestmark = pytest.mark.usefixtures("one_thread")


def _official_state() -> dict:
    return torch.load(OFFICIAL, weights_only=True)["model"]


def _converted_model(dtype=torch.float32) -> nn.Module:
    model = timm.create_model("shvit_s1", **REDUCED)
    sd = checkpoint_filter_fn({"model": _official_state()}, model)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=True)
    return model.to(dtype).eval()


def test_family_is_timms_names_and_classes():
    assert visionattn.list_models(family="shvit") == ["shvit_s1", "shvit_s2", "shvit_s3", "shvit_s4"]
    for name in visionattn.list_models(family="shvit"):
        # importing visionattn re-registers nothing: the entrypoint and class are timm's own
        assert timm.models.model_entrypoint(name) is getattr(timm_shvit, name)
        with torch.device("meta"):
            assert type(timm.create_model(name)) is timm_shvit.SHViT
    assert visionattn.get_family("shvit_s4").num_stages == 3


def test_drop_path_rate_is_refused_as_in_timm():
    # the record says the family has no stochastic depth; timm refuses the argument, and visionattn adds none
    assert visionattn.get_family("shvit").drop_path is False
    with pytest.raises(TypeError, match="drop_path_rate"):
        timm.create_model("shvit_s1", drop_path_rate=0.1)


def _expected_key(key: str) -> str:
    """The official -> timm rule, written out from the two models' structures."""
    parts = key.split(".")
    if parts[0] == "blocks1":
        return ".".join(["stages", "0", "blocks", *parts[1:]])
    if parts[0] not in ("blocks2", "blocks3"):
        return key
    stage, j = str(int(parts[0][-1]) - 1), int(parts[1])
    if j == 0:  # Sequential(Residual(DW), Residual(FFN)) before the merge
        return ".".join(["stages", stage, "downsample", parts[2], *parts[3:]])
    if j == 1:  # PatchMerging
        return ".".join(["stages", stage, "downsample", "2", *parts[2:]])
    if j == 2:  # Sequential(Residual(DW), Residual(FFN)) after the merge
        return ".".join(["stages", stage, "downsample", str(3 + int(parts[2])), *parts[3:]])
    return ".".join(["stages", stage, "blocks", str(j - 3), *parts[2:]])


def test_key_mapping_covers_every_official_key():
    official = _official_state()
    model = timm.create_model("shvit_s1", **REDUCED)
    ours = model.state_dict()
    for key in official:
        if key.startswith("head_dist."):
            continue
        assert official_to_timm_key(key) == _expected_key(key), key
        assert ours[official_to_timm_key(key)].shape == official[key].shape, key
    mapped = {official_to_timm_key(k) for k in official if not k.startswith("head_dist.")}
    assert mapped == set(ours)
    with pytest.raises(ValueError, match="blocks2.0"):
        official_to_timm_key("blocks2.0.weight")


@pytest.mark.parametrize("tag", ["", "2"])
def test_converted_official_weights_match_official_outputs(tag):
    """fp32 logits (the distillation heads' eval average, folded into one head) and the three stage maps within
    1e-5 of the official float64 run; in float64 the stage maps agree to 1e-10 and the logits to 1e-7 (the folded
    head is stored in float32)."""
    ref = torch.load(OUTPUTS, weights_only=True)
    x = ref[f"input{tag}"].float()
    for dtype, tol, head_tol in ((torch.float32, 1e-5, 1e-5), (torch.float64, 1e-10, 1e-7)):
        model = _converted_model(dtype)
        with torch.no_grad():
            logits = model(x.to(dtype))
            _, stages = model.forward_intermediates(x.to(dtype))
        torch.testing.assert_close(logits.double(), ref[f"logits{tag}"], atol=head_tol, rtol=0)
        for i, s in enumerate(stages):
            torch.testing.assert_close(s.double(), ref[f"stage{i}{tag}"], atol=tol, rtol=0)


def test_converter_quirks_and_timm_layout_pass_through():
    official = _official_state()
    model = timm.create_model("shvit_s1", **REDUCED)
    converted = checkpoint_filter_fn(official, model)
    # official files store some 1x1 convolutions as matrices (their loader adds the axes); so does ours
    squeezed = {
        k: v[:, :, 0, 0] if k.endswith(".c.weight") and v.shape[2:] == (1, 1) else v for k, v in official.items()
    }
    assert sum(v.ndim == 2 for v in squeezed.values()) > sum(v.ndim == 2 for v in official.values())
    again = checkpoint_filter_fn({"model": {f"module.{k}": v for k, v in squeezed.items()}}, model)
    assert again.keys() == converted.keys()
    assert all(torch.equal(again[k], converted[k]) for k in converted)
    # timm's layout (e.g. timm's Hugging Face weights) is returned as it is
    ours = model.state_dict()
    assert checkpoint_filter_fn(ours, model) is ours or checkpoint_filter_fn(ours, model) == ours
    # without a distillation head the head is taken as it is
    plain = {k: v for k, v in official.items() if not k.startswith("head_dist.")}
    out = checkpoint_filter_fn(plain, model)
    assert torch.equal(out["head.l.weight"], plain["head.l.weight"]) and "head_dist.l.weight" not in out


def test_convert_checkpoint_tool_writes_timm_layout(tmp_path):
    """tools/convert_checkpoint.py's library call: the written file loads strictly into timm's own model."""
    dst, digest = convert_checkpoint("shvit_s1", OFFICIAL, tmp_path / "shvit.pth", model_kwargs=REDUCED)
    model = timm.create_model("shvit_s1", **REDUCED)
    state = torch.load(dst, weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    ref = torch.load(OUTPUTS, weights_only=True)
    with torch.no_grad():
        logits = model.eval()(ref["input"].float())
    torch.testing.assert_close(logits.double(), ref["logits"], atol=1e-5, rtol=0)
    assert len(digest) == 64


def test_create_model_converts_an_official_file():
    """visionattn.create_model(pretrained=True) on an official file: the record's converter runs (timm's filter alone
    would leave the official keys unloaded), the logits are the official ones."""
    overlay = dict(file=str(OFFICIAL), hf_hub_id="", num_classes=10)
    model = visionattn.create_model("shvit_s1", pretrained=True, pretrained_cfg_overlay=overlay, **REDUCED).eval()
    ref = torch.load(OUTPUTS, weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["input2"].float()).double(), ref["logits2"], atol=1e-5, rtol=0)


def test_card_states_official_accuracy():
    card = (Path(__file__).resolve().parents[1] / "model_cards/shvit.md").read_text()
    for name, top1 in OFFICIAL_TOP1.items():
        assert any(name in ln and str(top1) in ln for ln in card.splitlines()), name
