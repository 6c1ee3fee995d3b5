"""The checkpoint hub (visionattn.hub): the index derived from the family records, fetch from a local HTTP server
(resume, sha256, refusals, messages), identify, convert -> timm's local-dir layout -> create_model, the README.

No test needs the internet: downloads come from a server on 127.0.0.1 serving the official BiFormer fixture
(tests/fixtures/biformer_reduced_official.pth, as float32 {'model': ...}) and files derived from it.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import http.server
import importlib
import json
import os
import re
import runpy
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch

import visionattn
from visionattn import hub
from visionattn import pretrained as vp
from visionattn.models._registry import Checkpoint, Family, families, get_family

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).parent / "fixtures"
# The official fixture's model: biformer_tiny at reduced width (tests/fixtures/README.md), 10 classes.
REDUCED = dict(depths=(1, 1, 2, 1), embed_dims=(32, 64, 64, 64))


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> Path:
    """The official fixture as an official release stores it: {'model': state_dict} in float32."""
    sd = torch.load(FIXTURES / "biformer_reduced_official.pth", weights_only=True)["model"]
    path = tmp_path_factory.mktemp("official") / "biformer_reduced_in1k.pth"
    torch.save({"model": {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}}, path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# the index


def test_every_registered_model_and_tag_is_in_the_index():
    index = hub.build_index()
    for family in families():
        for model in family.models:
            # every tag timm holds for the model (with weights or not); a model without tags under its own name
            for name in timm.list_models(model, include_tags=True):
                assert name in index, f"{name} (family {family.name}) is missing from the index"
                assert index[name].family == family.name and index[name].model == model
        for ckpt in family.checkpoints:
            name = f"{ckpt.model}.{ckpt.tag}" if ckpt.tag else ckpt.model
            assert index[name].status == ckpt.status and index[name].task == ckpt.task
            assert all(url in index[name].sources for url in ckpt.urls)
    assert all(e.status in hub.STATUSES for e in index.values())


def test_index_reads_the_records_and_the_cfgs():
    index = hub.build_index()
    tiny = index["biformer_tiny.in1k"]
    cfg = timm.models.get_pretrained_cfg("biformer_tiny.in1k").to_dict()
    assert tiny.sources == (cfg["url"],) and tiny.license == cfg["license"] == "mit"
    assert (tiny.status, tiny.checked, tiny.format, tiny.top1) == ("dead", "2026-03", "model", 81.4)
    assert "rayleizhu/BiFormer/issues/53" in tiny.evidence
    assert tiny.converter == "visionattn.models.biformer.checkpoint_filter_fn"
    # timm's hub copy first, then the official link from the record; dense releases are entries of their own
    davit = index["davit_tiny.msft_in1k"]
    assert davit.sources[0] == "hf-hub:timm/davit_tiny.msft_in1k" and "sharepoint.com" in davit.sources[1]
    assert index["davit_tiny.coco_maskrcnn_1x"].task == "det" and not index["davit_tiny.coco_maskrcnn_1x"].in_timm
    assert index["davit_large"].status == "none"


def test_every_named_converter_exists():
    """A converter the index names (the family's, or a dense checkpoint's from its record) resolves to a function."""
    for entry in hub.build_index().values():
        if entry.converter.startswith("none"):
            continue
        module, _, name = entry.converter.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name)), entry.name
    assert hub.build_index()["davit_tiny.coco_maskrcnn_1x"].converter.endswith("davit.convert_dense_checkpoint")


def test_a_new_family_record_is_indexed_without_any_other_edit():
    """A family declared only by its record (a timm model, one extra dense checkpoint) shows up everywhere."""
    family = Family(
        name="hubtoy",
        source="timm",
        models=("test_vit",),
        params_m={"test_vit": 0.3},
        checkpoints=(
            Checkpoint("test_vit", "coco_toy", task="det", urls=("https://example.invalid/toy.pth",), format="mmcv"),
        ),
    )
    index = hub.build_index([family])
    assert {"test_vit.coco_toy"} <= set(index)
    assert all(e.family == "hubtoy" for e in index.values())
    assert any(e.in_timm for e in index.values())  # timm's own tags of test_vit
    assert '<a id="weights-test_vit-coco_toy"></a>' in hub.readme_section(index)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(status="dead"), "needs the date"),
        (dict(status="gone"), "status='gone' is not one of"),
        (dict(format="pickle"), "format='pickle'"),
        (dict(checked="March 2026", status="unknown"), "not a date"),
        (dict(sha256="abc"), "full lower-case hex"),
        (dict(task="depth"), "task='depth'"),
        (dict(tag="In1k"), "must be lower-case letters"),
    ],
)
def test_checkpoint_record_refuses_bad_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Checkpoint("biformer_tiny", **{"tag": "in1k", **kwargs})
    assert Checkpoint("biformer_tiny", "in1k_alpha_0.2").tag == "in1k_alpha_0.2"  # timm tags may hold dots


def test_a_record_without_any_source_is_refused_by_the_index():
    family = dataclasses.replace(get_family("biformer"), checkpoints=(Checkpoint("biformer_tiny", "mirror"),))
    with pytest.raises(ValueError, match="biformer_tiny.mirror has status 'unknown' but no source"):
        hub.build_index([family])


def test_family_refuses_checkpoints_of_other_models():
    biformer = get_family("biformer")
    with pytest.raises(ValueError, match="not one of"):
        dataclasses.replace(biformer, checkpoints=(Checkpoint("davit_tiny", "x"),))
    with pytest.raises(ValueError, match="two Checkpoint entries"):
        dataclasses.replace(biformer, checkpoints=(Checkpoint("biformer_tiny", "x"),) * 2)


def test_list_cli(capsys):
    assert hub.main(["list", "--family", "biformer", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [f"{m}.in1k" for m in get_family("biformer").models]
    assert hub.main(["list", "--family", "davit"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["name", "task", "status", "format", "size", "license", "source"]
    assert any(line.startswith("davit_base.ade20k_upernet_160k ") and " seg " in line for line in table)
    with pytest.raises(SystemExit):
        hub.main(["list", "--family", "nope"])
    assert "pick one of" in capsys.readouterr().err


def test_tools_wrapper_is_the_same_cli(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["tools/hub.py", "list", "--family", "davit", "--json"])
    with pytest.raises(SystemExit) as info:
        runpy.run_path(str(ROOT / "tools" / "hub.py"), run_name="__main__")
    assert info.value.code == 0
    names = [r["name"] for r in json.loads(capsys.readouterr().out)]
    assert names == [e.name for e in hub.build_index([get_family("davit")]).values()]


# ---------------------------------------------------------------------------------------------------------------
# fetch from a local server


class _Server(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (path -> bytes) with HTTP Range; paths in ``cut_once`` break off halfway the first time."""

    files: dict[str, bytes] = {}
    cut_once: set[str] = set()
    requests: list[tuple[str, str | None]] = []

    def do_GET(self):  # noqa: N802  (http.server's naming)
        cls = type(self)
        rng = self.headers.get("Range")
        cls.requests.append((self.path, rng))
        body = cls.files.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        start = int(rng.split("=")[1].split("-")[0]) if rng else 0
        self.send_response(206 if rng else 200)
        if rng:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if self.path in cls.cut_once:  # the connection drops halfway through the body
            cls.cut_once.discard(self.path)
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Server.files, _Server.cut_once, _Server.requests = {}, set(), []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _index(*checkpoints: Checkpoint) -> dict[str, hub.Entry]:
    """An index over BiFormer's record with test entries in place of its own."""
    return hub.build_index([dataclasses.replace(get_family("biformer"), checkpoints=checkpoints)])


def _entry(tag: str, url: str, **kwargs) -> Checkpoint:
    return Checkpoint("biformer_tiny", tag, urls=(url,), format="model", **kwargs)


def test_fetch_verifies_caches_and_converts(server, official, tmp_path, capsys):
    _Server.files["/good.pth"] = official.read_bytes()
    index = _index(_entry("good", f"{server}/good.pth", sha256=_sha(official)))
    cache = tmp_path / "cache"
    argv = ["fetch", "biformer_tiny.good", "--cache-dir", str(cache), "--no-progress"]
    assert hub.main(argv, index=index) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path.parent == cache and _sha(path) == _sha(official)
    # cached under the name create_model(pretrained=True) looks for: the same file loads with no download
    assert path.name == vp._cache_name(f"{server}/good.pth", "biformer_tiny")
    assert hub.main(argv, index=index) == 0
    assert "already in the cache" in capsys.readouterr().err
    assert [p for p, _ in _Server.requests] == ["/good.pth"]
    model = timm.create_model(
        "biformer_tiny",
        pretrained=True,
        num_classes=10,
        cache_dir=str(cache),
        pretrained_cfg_overlay=dict(url=f"{server}/good.pth", num_classes=10),
        **REDUCED,
    )
    assert [p for p, _ in _Server.requests] == ["/good.pth"]
    ref = timm.create_model("biformer_tiny", num_classes=10, **REDUCED)
    ref.load_state_dict(vp.convert_state_dict("biformer_tiny", vp.load_checkpoint_file(official), ref))
    for k, v in ref.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_fetch_shows_progress_and_tries_the_sources_in_order(server, official, tmp_path, monkeypatch, capsys):
    """A source that fails (a hub repo not reachable offline, a 404) hands over to the next; a bar shows."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    _Server.files["/good.pth"] = official.read_bytes()
    index = _index(
        Checkpoint(
            "biformer_tiny",
            "mirrors",
            urls=("hf-hub:visionattn/not-cached", f"{server}/missing.pth", f"{server}/good.pth"),
            sha256=_sha(official),
        )
    )
    assert hub.main(["fetch", "biformer_tiny.mirrors", "--cache-dir", str(tmp_path)], index=index) == 0
    captured = capsys.readouterr()
    assert _sha(captured.out.strip()) == _sha(official)
    assert [p for p, _ in _Server.requests] == ["/missing.pth", "/good.pth"]
    assert f"downloading {server}/good.pth" in captured.err
    assert "biformer_tiny.mirrors: 100%" in captured.err  # the progress bar (tqdm) reached the full size


def test_fetch_from_a_hugging_face_hub_source(official, tmp_path, monkeypatch):
    """An hf-hub source comes through huggingface_hub (its cache here, offline), verified and read safely."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    folder = tmp_path / "upload"
    folder.mkdir()
    (folder / "weights.pth").write_bytes(official.read_bytes())
    _fake_hub_cache(tmp_path / "hub", "visionattn/biformer-official", folder)
    source = "hf-hub:visionattn/biformer-official/weights.pth"
    index = _index(_entry("hub", source, sha256=_sha(official)), _entry("hubbad", source, sha256="1" * 64))
    path = hub.fetch("biformer_tiny.hub", cache_dir=tmp_path / "hub", index=index, progress=False)
    assert _sha(path) == _sha(official) and "models--visionattn--biformer-official" in path
    with pytest.raises(vp.ChecksumMismatchError, match="expected " + "1" * 64):
        hub.fetch("biformer_tiny.hubbad", cache_dir=tmp_path / "hub", index=index, progress=False)


def test_fetch_resumes_a_broken_download(server, official, tmp_path):
    body = official.read_bytes()
    _Server.files["/big.pth"] = body
    _Server.cut_once.add("/big.pth")
    index = _index(_entry("big", f"{server}/big.pth", sha256=_sha(official)))
    cache = tmp_path / "cache"
    with pytest.raises(vp.CheckpointDownloadError, match="run the same command again to resume") as info:
        hub.fetch("biformer_tiny.big", cache_dir=cache, index=index, progress=False)
    partial = Path(str(info.value).split("resume from ")[1].split()[0])
    assert partial.is_file() and partial.stat().st_size == len(body) // 2
    path = hub.fetch("biformer_tiny.big", cache_dir=cache, index=index, progress=False)
    assert _sha(path) == _sha(official) and not partial.exists()
    # the second request asked only for the missing bytes
    assert _Server.requests == [("/big.pth", None), ("/big.pth", f"bytes={len(body) // 2}-")]


def test_fetch_refuses_a_wrong_hash_and_keeps_nothing(server, official, tmp_path):
    _Server.files["/wrong.pth"] = official.read_bytes()
    index = _index(_entry("wrong", f"{server}/wrong.pth", sha256="0" * 64))
    with pytest.raises(vp.ChecksumMismatchError, match=f"is {_sha(official)}, expected {'0' * 64}"):
        hub.fetch("biformer_tiny.wrong", cache_dir=tmp_path, index=index, progress=False)
    assert list(tmp_path.iterdir()) == []


class _SideEffect:
    """Unpickling this creates a directory (what a malicious checkpoint could do with any callable)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_fetch_refuses_a_pickle_with_code_without_running_it(server, official, tmp_path):
    marker = tmp_path / "unpickled"
    trojan = tmp_path / "trojan.pth"
    torch.save({"model": torch.load(official, weights_only=True)["model"], "x": _SideEffect(marker)}, trojan)
    _Server.files["/trojan.pth"] = trojan.read_bytes()
    index = _index(_entry("trojan", f"{server}/trojan.pth"))
    cache = tmp_path / "cache"
    with pytest.raises(vp.UnsafeCheckpointError, match="weights_only=True") as info:
        hub.fetch("biformer_tiny.trojan", cache_dir=cache, index=index, progress=False)
    assert "makedirs" in str(info.value) and "kept aside" in str(info.value)
    assert not marker.exists()
    assert [p.name.endswith(".refused") for p in cache.iterdir()] == [True]  # nothing usable left in the cache


def test_fetch_refuses_a_share_page(server, tmp_path):
    _Server.files["/share"] = b"<!DOCTYPE html><html><body>Sign in to view this file</body></html>"
    index = _index(_entry("page", f"{server}/share"))
    with pytest.raises(hub.HubError, match="returned a web page, not a checkpoint"):
        hub.fetch("biformer_tiny.page", cache_dir=tmp_path, index=index, progress=False)


def test_dead_source_message_gives_the_offline_route(server, official, tmp_path, capsys):
    index = _index(
        _entry("gone", f"{server}/missing.pth", status="dead", checked="2026-03-01", evidence="HTTP 404 upstream"),
    )
    cache = tmp_path / "cache"
    assert hub.main(["fetch", "biformer_tiny.gone", "--cache-dir", str(cache)], index=index) == 1
    err = capsys.readouterr().err
    assert f"{server}/missing.pth answered HTTP 404" in err
    assert "dead since 2026-03-01: HTTP 404 upstream" in err
    assert "python -m visionattn.hub fetch biformer_tiny.gone --file /path/to/file" in err
    assert "pretrained_cfg_overlay=dict(file='/path/to/file'" in err
    # the offline route: a copy obtained elsewhere is verified and cached where fetch would have put it
    assert hub.main(["fetch", "biformer_tiny.gone", "--cache-dir", str(cache), "--file", str(official)], index) == 0
    cached = Path(capsys.readouterr().out.strip())
    assert cached == cache / vp._cache_name(f"{server}/missing.pth", "biformer_tiny") and _sha(cached) == _sha(official)
    # and create_model finds it there: no request is made for the dead link
    requests = len(_Server.requests)
    overlay = dict(url=f"{server}/missing.pth", num_classes=10)
    timm.create_model("biformer_tiny", pretrained=True, cache_dir=str(cache), pretrained_cfg_overlay=overlay, **REDUCED)
    assert len(_Server.requests) == requests


def test_no_network_message(tmp_path, capsys):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    index = _index(_entry("offline", f"http://127.0.0.1:{port}/w.pth"))
    assert hub.main(["fetch", "biformer_tiny.offline", "--cache-dir", str(tmp_path)], index=index) == 1
    err = capsys.readouterr().err
    assert f"could not reach http://127.0.0.1:{port}/w.pth" in err and "--file /path/to/file" in err


def test_fetch_refuses_models_without_weights():
    with pytest.raises(hub.HubError, match="no weights were released"):
        hub.fetch("davit_large", index=hub.build_index())


def test_check_probes_the_sources(server, official, capsys):
    _Server.files["/good.pth"] = official.read_bytes()
    index = _index(_entry("good", f"{server}/good.pth"), _entry("gone", f"{server}/missing.pth"))
    rows = hub.check([index["biformer_tiny.good"], index["biformer_tiny.gone"]], timeout=10)
    assert [(r["name"], r["status"]) for r in rows] == [("biformer_tiny.good", "ok"), ("biformer_tiny.gone", "dead")]
    assert rows[1]["evidence"] == "HTTP 404 Not Found"
    assert hub.main(["check", "biformer_tiny.gone"], index=index) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:3] == ["biformer_tiny.gone", "dead", datetime.date.today().isoformat()]


# ---------------------------------------------------------------------------------------------------------------
# identify


def test_identify_by_hash(official, tmp_path, capsys):
    index = _index(_entry("x", "https://example.invalid/x.pth", sha256=_sha(official)))
    assert hub.main(["identify", str(official), "--family", "biformer"], index=index) == 0
    out = capsys.readouterr().out
    assert "by hash: biformer_tiny.x" in out and f"sha256 {_sha(official)}" in out and ": model," in out


def _shapes_only(model: torch.nn.Module, path: Path, wrap: str | None = None, prefix: str = "") -> Path:
    """A state_dict of the model's shapes whose tensors share one element (a few KB on disk)."""
    sd = {prefix + k: torch.zeros((), dtype=v.dtype).expand(v.shape) for k, v in model.state_dict().items()}
    torch.save({wrap: sd} if wrap else sd, path)
    return path


def test_identify_by_key_layout(tmp_path):
    index = hub.build_index([get_family("davit"), get_family("biformer")])
    with torch.device("meta"):
        model = timm.create_model("davit_tiny", num_classes=10)
    found = hub.identify(_shapes_only(model, tmp_path / "a.pth", wrap="model"), index=index)
    assert found["format"] == "model" and found["by_hash"] == []
    assert found["by_layout"] == [
        {"model": "davit_tiny", "entries": ["davit_tiny.msft_in1k"], "kwargs": {"num_classes": 10}, "dense": False}
    ]
    # a detection checkpoint: the backbone under 'backbone.' in an mmcv {'state_dict': ...}
    with torch.device("meta"):
        backbone = timm.create_model("davit_small", num_classes=0)
    path = _shapes_only(backbone, tmp_path / "d.pth", wrap="state_dict", prefix="backbone.")
    dense = torch.load(path, weights_only=True)
    for i, dim in enumerate((96, 192, 384, 768)):  # the official dense backbone's LayerNorm per output
        dense["state_dict"].update(
            {f"backbone.norm{i}.weight": torch.ones(dim), f"backbone.norm{i}.bias": torch.zeros(dim)}
        )
    dense["state_dict"]["neck.lateral_convs.0.conv.weight"] = torch.zeros(256, 96, 1, 1)
    torch.save(dense, path)
    found = hub.identify(path, index)
    assert found["format"] == "mmcv"
    [match] = found["by_layout"]
    assert match["model"] == "davit_small" and match["dense"] and "davit_small.coco_maskrcnn_1x" in match["entries"]


def test_identify_an_official_layout(official):
    """The official BiFormer layout is recognised through the family converter (the fixture is a reduced
    biformer_tiny: no registered size has its shapes, so the reduced model stands in for biformer_tiny)."""
    index = hub.build_index([get_family("biformer")])
    found = hub.identify(official, index=index)
    assert found["format"] == "model" and found["by_layout"] == []
    hub._META_MODELS["biformer_tiny"] = timm.create_model("biformer_tiny", num_classes=10, **REDUCED)
    try:
        found = hub.identify(official, index=index)
    finally:
        hub._META_MODELS.pop("biformer_tiny")
    assert [m["model"] for m in found["by_layout"]] == ["biformer_tiny"]
    assert found["by_layout"][0]["kwargs"] == {}


# ---------------------------------------------------------------------------------------------------------------
# convert -> timm's local-dir layout -> create_model


def test_convert_official_file_round_trip_equals_the_official_outputs(official, tmp_path, capsys):
    """Official BiFormer file -> convert -> local-dir -> plain timm: the official model's float64 outputs."""
    out = tmp_path / "biformer_tiny_in1k"
    kwargs = ["depths=(1,1,2,1)", "embed_dims=(32,64,64,64)"]
    assert hub.main(["convert", "biformer_tiny.in1k", str(official), "--out", str(out), "--model-kwargs", *kwargs]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith(_sha(out / "model.safetensors")) and f"local-dir:{out}" in printed
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "biformer_tiny" and config["num_classes"] == 10  # read from the head
    assert config["pretrained_cfg"]["tag"] == "in1k" and config["model_args"]["depths"] == [1, 1, 2, 1]
    assert "license: mit" in (out / "README.md").read_text()
    # our layout: the safetensors keys are the model's own, no converter needed
    model = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert set(safetensors.torch.load_file(out / "model.safetensors")) == set(model.state_dict())
    ref = torch.load(FIXTURES / "biformer_reduced_outputs.pt", weights_only=True)
    with torch.no_grad():
        logits = model.double()(ref["input"].double())
    torch.testing.assert_close(logits, ref["logits"], rtol=1e-10, atol=1e-10)


def _fake_hub_cache(cache: Path, repo: str, folder: Path) -> None:
    """huggingface_hub's cache layout for ``repo`` holding the files of ``folder`` (what an upload serves)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(commit)
    (base / "snapshots" / commit).mkdir(parents=True)
    for file in folder.iterdir():
        (base / "snapshots" / commit / file.name).write_bytes(file.read_bytes())


def test_converted_folder_loads_from_the_hugging_face_hub(official, tmp_path, monkeypatch):
    """The converted folder, as uploaded to a hub repo, loads with plain timm's hf-hub: route (hub cache, offline)."""
    import huggingface_hub.constants

    out, _ = hub.convert("biformer_tiny", official, tmp_path / "folder", model_kwargs=REDUCED)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hub_cache"
    _fake_hub_cache(cache, "visionattn/biformer-reduced", Path(out))
    from_hub = timm.create_model("hf-hub:visionattn/biformer-reduced", pretrained=True, cache_dir=str(cache))
    from_dir = timm.create_model(f"local-dir:{out}", pretrained=True)
    assert from_hub.num_classes == 10
    for k, v in from_dir.state_dict().items():
        assert torch.equal(from_hub.state_dict()[k], v), k


def _input_size(family: Family, model: torch.nn.Module) -> tuple[int, int]:
    if family.fixed_input_size:
        return tuple(model.pretrained_cfg["input_size"][1:])
    side = family.fit_size(max(family.min_input_size, 64))
    return side, side


@pytest.mark.parametrize("family", [f.name for f in families()])
def test_convert_round_trip_per_family(family, tmp_path, one_thread):
    """Each family's smallest model: weights -> convert -> local-dir -> create_model gives the same outputs."""
    record = get_family(family)
    name = record.smallest
    kwargs = dict(record.test_kwargs)
    try:
        json.dumps(kwargs)
    except TypeError:  # config.json holds JSON model arguments only: the smallest model at its own arguments
        kwargs = {}
    src = visionattn.create_model(name, num_classes=7, **kwargs).eval()
    file = tmp_path / "weights.pth"
    torch.save({"model": src.state_dict()}, file)
    out, digest = hub.convert(name, file, tmp_path / "out", model_kwargs=kwargs)
    assert digest == _sha(Path(out) / "model.safetensors")
    loaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert type(loaded) is type(src) and loaded.num_classes == 7  # read from the classifier
    x = torch.randn(2, 3, *_input_size(record, src))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x), rtol=0, atol=0)


def test_convert_refusals(official, tmp_path):
    with pytest.raises(hub.HubError, match="det checkpoint"):
        hub.convert("davit_tiny.coco_maskrcnn_1x", official, tmp_path / "o")
    with pytest.raises(hub.HubError, match="missing keys|does not fit"):
        hub.convert("biformer_tiny", official, tmp_path / "o")  # trained with other depths: say which arguments
    with pytest.raises(vp.ChecksumMismatchError):
        hub.convert("biformer_tiny", official, tmp_path / "o", sha256="ab" * 32, model_kwargs=REDUCED)
    with pytest.raises(hub.HubError, match="not in the checkpoint index"):
        hub.convert("biformer_tiny.nope", official, tmp_path / "o")


# ---------------------------------------------------------------------------------------------------------------
# README


def test_readme_section_is_current():
    """README.md's Pretrained weights section is the index's (fresh process: only the package's families)."""
    run = subprocess.run(
        [sys.executable, "-m", "visionattn.hub", "readme", "--check", "--path", str(ROOT / "README.md")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr + "\nrun `python -m visionattn.hub readme` to regenerate it"


def test_model_card_links_point_at_index_rows():
    """A card's links into the README table name real rows; a card that links any of its family's rows links all
    of its classification rows."""
    index = hub.build_index()
    anchors = {e.anchor for e in index.values()}
    for family in families():
        card = ROOT / family.card
        if not family.card.startswith("model_cards/") or not card.is_file():
            continue
        linked = set(re.findall(r"README\.md#(weights-[\w.-]+)", card.read_text()))
        assert linked <= anchors, f"{family.card} links rows the index does not have: {sorted(linked - anchors)}"
        own = {e.anchor for e in index.values() if e.family == family.name and e.task == "cls"}
        if linked & own:
            assert own <= linked, f"{family.card} does not link {sorted(own - linked)}"


def test_readme_rewrites_only_between_the_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\nbefore\n{hub.README_START}\nold table\n{hub.README_END}\nafter\n")
    assert hub.main(["readme", "--check", "--path", str(readme)]) == 1
    assert hub.main(["readme", "--path", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# Title\n\nbefore\n" + hub.README_START + "\nOne index of every released checkpoint")
    assert text.endswith(hub.README_END + "\nafter\n") and "old table" not in text
    assert '<a id="weights-biformer_tiny-in1k"></a>`biformer_tiny` | in1k | cls | [OneDrive](' in text
    assert "| dead (2026-03) | top-1 81.4 |" in text
    assert hub.main(["readme", "--check", "--path", str(readme)]) == 0
    readme.write_text("no markers\n")
    assert hub.main(["readme", "--path", str(readme)]) == 1
