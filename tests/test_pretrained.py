"""Official-checkpoint loading: parity with the official BiFormer, every loading route, refusals.

The fixtures (tests/fixtures/README.md) come from the official BiFormer code at reduced width: its state_dict in
the official layout and its float64 logits / stage features for a 112x112 batch and a 100x76 auto_pad input.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import importlib.util
import os
import shutil
import socket
import threading
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import visionattn
from visionattn import pretrained as vp
from visionattn.models._registry import Family, get_family
from visionattn.models.biformer import checkpoint_filter_fn

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "biformer_reduced_official.pth"
# The official config of the fixtures, in our constructor's terms (n_win 7, topks 1/4/16/-2, head_dim 32, 8-head
# last stage and mlp_ratio 3 are biformer_tiny's own).
REDUCED = dict(depths=(1, 1, 2, 1), embed_dims=(32, 64, 64, 64), num_classes=10)
CASES = {
    "112x112": ("biformer_reduced_outputs.pt", {}),
    "auto_pad_100x76": ("biformer_reduced_autopad_outputs.pt", {"mask_padding": False}),
}


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _create(overlay: dict | None = None, pretrained: bool = True, **kwargs):
    overlay = dict(file=str(OFFICIAL), num_classes=10) if overlay is None else overlay
    return timm.create_model(
        "biformer_tiny", pretrained=pretrained, pretrained_cfg_overlay=overlay, **{**REDUCED, **kwargs}
    ).eval()


def _official_outputs(case: str) -> dict:
    return torch.load(FIXTURES / CASES[case][0], weights_only=True)


@functools.lru_cache(maxsize=1)
def _reference_state() -> dict:
    """Our state_dict after loading the official fixture (its parity is checked by test_official_parity)."""
    return {k: v.clone() for k, v in _create().state_dict().items()}


def _assert_loaded(model, skip=()) -> None:
    ref = _reference_state()
    state = model.state_dict()
    assert set(state) == set(ref)
    for k, v in state.items():
        if not k.startswith(tuple(skip)):
            assert torch.equal(v, ref[k]), k


@pytest.fixture(scope="module")
def official_fp32(tmp_path_factory) -> Path:
    """The fixture as an official release is stored: {'model': state_dict} in float32."""
    sd = torch.load(OFFICIAL, weights_only=True)["model"]
    path = tmp_path_factory.mktemp("official") / "biformer_reduced_in1k.pth"
    torch.save({"model": {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}}, path)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory, official_fp32) -> Path:
    """The fixture converted to our layout by the library call behind tools/convert_checkpoint.py."""
    dst = tmp_path_factory.mktemp("converted") / "biformer_reduced.safetensors"
    path, _ = vp.convert_checkpoint("biformer_tiny", official_fp32, dst, model_kwargs=REDUCED)
    return Path(path)


# ---------------------------------------------------------------------------------------------------------------
# parity with the official implementation


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-10)], ids=["fp32", "fp64"])
def test_official_parity(case, dtype, tol):
    """Logits and the four stage features of the official model (float64 run) on the same weights and input."""
    ref = _official_outputs(case)
    model = _create(**CASES[case][1]).to(dtype)
    x = ref["input"].to(dtype)
    with torch.no_grad():
        logits = model(x)
        feats = model.forward_intermediates(x, intermediates_only=True)
    torch.testing.assert_close(logits.double(), ref["logits"], rtol=tol, atol=tol)
    assert len(feats) == 4
    for i, feat in enumerate(feats):
        torch.testing.assert_close(feat.double(), ref[f"stage{i}"], rtol=tol, atol=tol, msg=f"stage{i} differs")


def test_auto_pad_fixture_depends_on_padding_semantics():
    """The 100x76 fixture really checks unmasked padding: masking the padded tokens changes the output."""
    ref = _official_outputs("auto_pad_100x76")
    with torch.no_grad():
        masked = _create(mask_padding=True)(ref["input"].float()).double()
    assert (masked - ref["logits"]).abs().max() > 1e-3


def test_features_only_loads_backbone_weights():
    ref = _official_outputs("112x112")
    model = timm.create_model(
        "biformer_tiny",
        pretrained=True,
        features_only=True,
        pretrained_cfg_overlay=dict(file=str(OFFICIAL)),
        **REDUCED,
    ).eval()
    with torch.no_grad():
        feats = model(ref["input"].float())
    assert len(feats) == 4
    for i, feat in enumerate(feats):
        torch.testing.assert_close(feat.double(), ref[f"stage{i}"], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------------
# timm's adaptations


def test_num_classes_change_drops_the_head():
    # the fixture's head has 10 classes; the cfg is told so, the model asks for 5
    model = _create(num_classes=5)
    assert model.head.fc.weight.shape == (5, 64)
    _assert_loaded_except_head(model)
    # the cfg says 1000 classes (the default) and the model has 10: the 10-class head is dropped as well
    model = _create(overlay=dict(file=str(OFFICIAL)))
    assert not torch.equal(model.head.fc.weight, _reference_state()["head.fc.weight"])
    _assert_loaded_except_head(model)


def _assert_loaded_except_head(model) -> None:
    ref = _reference_state()
    for k, v in model.state_dict().items():
        if not k.startswith("head."):
            assert torch.equal(v, ref[k]), k


def test_in_chans_adaptation(official_fp32):
    official = torch.load(official_fp32, weights_only=True)["model"]
    model = _create(overlay=dict(file=str(official_fp32), num_classes=10), in_chans=1)
    expected = official["downsample_layers.0.0.weight"].sum(dim=1, keepdim=True)  # timm's rule for 3 -> 1
    torch.testing.assert_close(model.stem.conv1.weight, expected)
    _assert_loaded(model, skip=("stem.conv1.weight",))


# ---------------------------------------------------------------------------------------------------------------
# routes


def test_checkpoint_layouts_unwrap_to_the_same_weights(official_fp32, tmp_path):
    sd = torch.load(official_fp32, weights_only=True)["model"]
    variants = {
        "raw.pth": sd,
        "state_dict.pth": {"state_dict": sd, "epoch": 3},
        "ddp.pth": {"model": {f"module.{k}": v for k, v in sd.items()}},
        "deit_args.pth": {"model": sd, "args": argparse.Namespace(lr=5e-4, model="biformer_tiny"), "epoch": 299},
    }
    for name, obj in variants.items():
        torch.save(obj, tmp_path / name)
        loaded = vp.load_checkpoint_file(tmp_path / name)
        assert set(loaded) == set(sd), name
        assert all(torch.equal(loaded[k], sd[k]) for k in sd), name
    _assert_loaded(_create(overlay=dict(file=str(tmp_path / "deit_args.pth"), num_classes=10)))


def test_not_a_state_dict_is_refused(tmp_path):
    torch.save({"epoch": 3, "net": {"w": torch.zeros(1)}, "best_acc": 0.5}, tmp_path / "x.pth")
    with pytest.raises(vp.CheckpointError, match="not tensors.*top-level keys"):
        vp.load_checkpoint_file(tmp_path / "x.pth")
    with pytest.raises(FileNotFoundError, match="does-not-exist.pth"):
        _create(overlay=dict(file=str(tmp_path / "does-not-exist.pth")))


def test_safetensors_file(converted):
    assert converted.suffix == ".safetensors"
    _assert_loaded(_create(overlay=dict(file=str(converted), num_classes=10, sha256=_sha(converted))))


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self):  # noqa: N802  (http.server's naming)
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_dir(tmp_path):
    """A folder served on 127.0.0.1; yields (folder, base_url)."""
    root = tmp_path / "served"
    root.mkdir()
    _QuietHandler.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=root))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_url_route_http_with_sha256_and_cache(official_fp32, http_dir, tmp_path):
    root, base = http_dir
    shutil.copy(official_fp32, root / "biformer_reduced_in1k.pth")
    cache = tmp_path / "cache"
    overlay = dict(url=f"{base}/biformer_reduced_in1k.pth", sha256=_sha(official_fp32), num_classes=10)
    _assert_loaded(_create(overlay=overlay, cache_dir=str(cache)))
    assert (cache / "biformer_reduced_in1k.pth").is_file()
    _assert_loaded(_create(overlay=overlay, cache_dir=str(cache)))
    assert _QuietHandler.requests == ["/biformer_reduced_in1k.pth"]  # the second load came from the cache

    # a wrong sha256 is refused and nothing is cached
    bad = dict(overlay, sha256="0" * 64, url=f"{base}/biformer_reduced_in1k.pth")
    with pytest.raises(vp.ChecksumMismatchError, match=f"{_sha(official_fp32)}.*expected {'0' * 64}"):
        _create(overlay=bad, cache_dir=str(tmp_path / "cache2"))
    assert not any((tmp_path / "cache2").iterdir())


def test_url_route_hash_prefix_in_file_name(official_fp32, http_dir, tmp_path):
    """timm's convention: name-<first hex digits of sha256>.ext is checked without an explicit sha256."""
    root, base = http_dir
    good = f"biformer_reduced-{_sha(official_fp32)[:8]}.pth"
    shutil.copy(official_fp32, root / good)
    _assert_loaded(_create(overlay=dict(url=f"{base}/{good}", num_classes=10), cache_dir=str(tmp_path / "c")))
    shutil.copy(official_fp32, root / "biformer_reduced-0badc0de.pth")
    with pytest.raises(vp.ChecksumMismatchError, match="expected 0badc0de"):
        _create(overlay=dict(url=f"{base}/biformer_reduced-0badc0de.pth"), cache_dir=str(tmp_path / "c"))


def test_file_url_route(official_fp32, tmp_path):
    overlay = dict(url=official_fp32.as_uri(), sha256=_sha(official_fp32), num_classes=10)
    _assert_loaded(_create(overlay=overlay, cache_dir=str(tmp_path)))


def test_unreachable_url_says_how_to_load_by_hand(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/biformer_tiny_in1k.pth"
    with pytest.raises(vp.CheckpointDownloadError) as info:
        _create(overlay=dict(url=url, sha256="ab" * 32), cache_dir=str(tmp_path))
    msg = str(info.value)
    assert url in msg and "biformer_tiny_in1k.pth" in msg
    assert "pretrained_cfg_overlay=dict(file='/path/to/biformer_tiny_in1k.pth', sha256='" + "ab" * 32 in msg
    assert "timm.create_model('biformer_tiny'" in msg


def test_unreachable_share_link_names_a_file(tmp_path):
    """Official BiFormer links are share links ending in /root/content: the file to fetch gets a model-derived name."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1.0/shares/s!abc/root/content"
    with pytest.raises(vp.CheckpointDownloadError, match=r"/path/to/biformer_tiny_[0-9a-f]{16}\.pth'"):
        _create(overlay=dict(url=url), cache_dir=str(tmp_path))


def _fake_hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<commit>/<file>}."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, base / "snapshots" / commit / name)


def test_hf_hub_route(converted, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # served from the local cache only
    _fake_hub_cache(tmp_path, "visionattn/biformer-reduced", {"model.safetensors": converted})
    overlay = dict(hf_hub_id="visionattn/biformer-reduced", num_classes=10)
    _assert_loaded(_create(overlay=overlay, cache_dir=str(tmp_path)))
    with pytest.raises(vp.ChecksumMismatchError):
        _create(overlay=dict(overlay, sha256="f" * 64), cache_dir=str(tmp_path))
    # not cached and no network: the error names the file and the manual route
    with pytest.raises(vp.CheckpointDownloadError) as info:
        _create(overlay=dict(hf_hub_id="visionattn/not-cached", num_classes=10), cache_dir=str(tmp_path))
    msg = str(info.value)
    assert "https://huggingface.co/visionattn/not-cached/resolve/main/model.safetensors" in msg
    assert "pretrained_cfg_overlay=dict(file='/path/to/model.safetensors')" in msg


# ---------------------------------------------------------------------------------------------------------------
# refusals


class _SideEffect:
    """Unpickling this object creates a directory (what a malicious checkpoint could do with any callable)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_pickled_objects_are_refused_without_unpickling(official_fp32, tmp_path, zipfile):
    marker = tmp_path / "unpickled"
    sd = torch.load(official_fp32, weights_only=True)["model"]
    path = tmp_path / "trojan.pth"
    torch.save({"model": sd, "extra": _SideEffect(marker)}, path, _use_new_zipfile_serialization=zipfile)

    with pytest.raises(vp.UnsafeCheckpointError, match="weights_only=True") as info:
        _create(overlay=dict(file=str(path), num_classes=10))
    assert not marker.exists()
    if zipfile:  # zip checkpoints can be scanned for the offending globals without unpickling
        assert "makedirs" in str(info.value)
    with pytest.raises(vp.UnsafeCheckpointError):
        vp.load_checkpoint_file(path)
    assert not marker.exists()
    # the payload is live: unpickling it the unsafe way does create the directory
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_wrong_sha256_is_refused(official_fp32, tmp_path):
    actual = _sha(official_fp32)
    with pytest.raises(vp.ChecksumMismatchError) as info:
        _create(overlay=dict(file=str(official_fp32), sha256="1234abcd" * 8))
    assert actual in str(info.value) and "1234abcd" * 8 in str(info.value)
    renamed = tmp_path / "biformer_reduced-1234abcd.pth"
    shutil.copy(official_fp32, renamed)
    with pytest.raises(vp.ChecksumMismatchError, match="expected 1234abcd"):
        _create(overlay=dict(file=str(renamed)))
    with pytest.raises(ValueError, match="not a sha256"):
        _create(overlay=dict(file=str(official_fp32), sha256="not-a-hash"))


# ---------------------------------------------------------------------------------------------------------------
# conversion tool and registry


def _load_tool():
    spec = importlib.util.spec_from_file_location(
        "convert_checkpoint", Path(__file__).parents[1] / "tools" / "convert_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_convert_checkpoint_round_trip(official_fp32, tmp_path, capsys, suffix):
    tool = _load_tool()
    dst = tmp_path / f"biformer_reduced{suffix}"
    kwargs = ["depths=(1,1,2,1)", "embed_dims=(32,64,64,64)", "num_classes=10"]
    assert tool.main(["biformer_tiny", str(official_fp32), str(dst), "--model-kwargs", *kwargs, "--hash-name"]) == 0
    digest, printed = capsys.readouterr().out.split()
    out = Path(printed)
    assert out.name == f"biformer_reduced-{digest[:8]}{suffix}" and not dst.exists()
    assert _sha(out) == digest
    assert Path(f"{out}.sha256").read_text() == f"{digest}  {out.name}\n"

    # our layout, the official values
    saved = safetensors.torch.load_file(out) if suffix == ".safetensors" else torch.load(out, weights_only=True)
    ref = _reference_state()
    assert set(saved) == set(ref)
    assert all(torch.equal(saved[k], ref[k]) for k in ref)
    # and it loads back through the pretrained route (hash prefix in the name checked), converter passing through
    ref_out = _official_outputs("112x112")
    model = _create(overlay=dict(file=str(out), num_classes=10))
    with torch.no_grad():
        torch.testing.assert_close(model(ref_out["input"].float()).double(), ref_out["logits"], rtol=1e-5, atol=1e-5)


def test_convert_checkpoint_needs_the_training_arguments(official_fp32, tmp_path):
    with pytest.raises(vp.CheckpointError, match="num_classes"):
        vp.convert_checkpoint(
            "biformer_tiny", official_fp32, tmp_path / "x.pth", model_kwargs=dict(REDUCED, num_classes=1000)
        )
    assert not (tmp_path / "x.pth").exists()


def test_converter_comes_from_the_family_record():
    for name in visionattn.list_models("biformer", aliases=True):
        assert vp.get_converter(name) is checkpoint_filter_fn, name
    assert vp.get_converter("resnet18") is None  # not a visionattn family: loaded as is
    with pytest.raises(TypeError, match="callable"):
        Family(name="bad", models=("biformer_tiny",), params_m={"biformer_tiny": 1.0}, converter="not a function")


def test_generate_default_cfgs_records_sha256():
    url = "https://example.invalid/weights/model_x.pth"
    cfgs = vp.generate_default_cfgs({"model_x.in1k": dict(url=url, sha256="ab" * 32)})
    assert "model_x" in cfgs and vp._SHA256[url] == "ab" * 32
    with pytest.raises(ValueError, match="neither url= nor hf_hub_id="):
        vp.generate_default_cfgs({"model_y.in1k": dict(sha256="ab" * 32)})


# Models up to this many million parameters (the record's figure) round-trip their full-size weights; larger ones
# (DaViT-L/H/G) take the same code path and would need more memory and time than CI's 2 cores / 24 GB spare.
ROUND_TRIP_MAX_PARAMS_M = 100


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", [n for n in visionattn.list_models() if get_family(n).params_m[n] <= ROUND_TRIP_MAX_PARAMS_M]
)
def test_every_model_loads_its_own_weights(name, tmp_path):
    """Every registered model saves (safetensors) and reloads through visionattn's pretrained route unchanged
    (timm-bound families too: visionattn.create_model reads the file with the safe loader)."""
    model = timm.create_model(name)
    path = tmp_path / f"{name}.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    loaded = visionattn.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    state = loaded.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_timm_bound_family_loads_through_the_safe_loader(tmp_path):
    """visionattn.create_model on a timm-bound family: the file is read and verified here, not by timm."""
    family = get_family("davit")
    kwargs = dict(family.test_kwargs, num_classes=5)
    src = timm.create_model(family.smallest, **kwargs).eval()
    path = tmp_path / "davit.pth"
    torch.save(src.state_dict(), path)
    digest = _sha(path)
    cfg = dict(timm.create_model(family.smallest, pretrained=False).pretrained_cfg, num_classes=5)

    loaded = visionattn.create_model(
        family.smallest, pretrained=True, pretrained_cfg=dict(cfg, file=str(path), sha256=digest), **kwargs
    ).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)
    with pytest.raises(vp.ChecksumMismatchError):
        visionattn.create_model(
            family.smallest, pretrained=True, pretrained_cfg=dict(cfg, file=str(path), sha256="0" * 64), **kwargs
        )

    marker = tmp_path / "unpickled"
    trojan = tmp_path / "trojan.pth"
    torch.save({"model": src.state_dict(), "extra": _SideEffect(marker)}, trojan)
    with pytest.raises(vp.UnsafeCheckpointError):
        visionattn.create_model(
            family.smallest, pretrained=True, pretrained_cfg_overlay=dict(file=str(trojan)), **kwargs
        )
    assert not marker.exists()
