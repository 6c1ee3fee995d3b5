"""The checkpoint hub: one index of every known checkpoint, and the commands to fetch, identify and convert them.

The index is derived, never kept by hand: every model of every registered family (``visionattn.families()``),
every pretrained tag timm holds for it (its ``pretrained_cfg``: source, license, sha256 registered with
``visionattn.pretrained.generate_default_cfgs``), completed by the family record's ``checkpoints``
(:class:`visionattn.models._registry.Checkpoint`: status with evidence and date, file format, official links,
paper result) which also adds the released dense checkpoints as entries of their own. A family that lands with
its record is in the index, the CLI and the README table without any edit here.

    python -m visionattn.hub list [--family F] [--json]
    python -m visionattn.hub fetch NAME[.TAG] [--cache-dir DIR] [--file PATH]
    python -m visionattn.hub identify FILE
    python -m visionattn.hub convert NAME[.TAG] FILE --out DIR [--model-kwargs K=V ...]
    python -m visionattn.hub check [NAME ...] [--family F]
    python -m visionattn.hub readme [--check]

``convert`` writes timm's folder layout (``config.json`` with the architecture, its arguments and the pretrained
cfg; ``model.safetensors`` in our layout), which ``timm.create_model("local-dir:DIR", pretrained=True)`` loads
after ``import visionattn`` (and ``hf-hub:ORG/NAME`` once the folder is uploaded), without any converter.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import http.client
import json
import os
import re
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import torch

from . import pretrained as vp
from .models import _registry

__all__ = [
    "Entry",
    "HubError",
    "build_index",
    "get_entry",
    "fetch",
    "identify",
    "convert",
    "check",
    "readme_section",
    "update_readme",
    "main",
]

STATUSES = ("ok", "dead", "unknown", "none")
README_START, README_END = "<!-- hub:start -->", "<!-- hub:end -->"
_DOWNLOAD_TIMEOUT_S = float(os.environ.get("VISIONATTN_DOWNLOAD_TIMEOUT", "60"))
_HF = "https://huggingface.co"


class HubError(vp.CheckpointError):
    """A hub command could not do what it was asked; the message says why and what to do."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One checkpoint of the index.

    ``name`` is ``model.tag`` (the model alone when it was released without weights); ``sources`` are tried in
    order: ``hf-hub:REPO[/FILE]`` or a URL. ``status`` is ``ok`` / ``dead`` / ``unknown`` / ``none`` (no weights).
    """

    name: str
    family: str
    model: str
    tag: str
    task: str
    sources: tuple[str, ...]
    format: str
    size: int | None
    sha256: str
    license: str
    converter: str
    status: str
    evidence: str
    checked: str
    top1: float | None
    result: str
    notes: str
    card: str
    in_timm: bool  # a timm pretrained tag (``timm.create_model(name, pretrained=True)`` knows it)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def anchor(self) -> str:
        """The id of its README row."""
        return "weights-" + re.sub(r"[^a-z0-9_-]", "-", self.name.lower())


# ----------------------------------------------------------------------------------------------------------
# the index


def _converter_name(family: _registry.Family) -> str:
    conv = family.converter
    if conv is None:
        return "none (the file is in the model's layout)"
    return f"{conv.__module__}.{getattr(conv, '__qualname__', conv.__class__.__name__)}"


def _cfg_sources(cfg: Mapping[str, Any]) -> list[str]:
    """The cfg's weight sources in timm's order of priority (the hub before a URL)."""
    sources = []
    if cfg.get("hf_hub_id"):
        filename = cfg.get("hf_hub_filename")
        sources.append(f"hf-hub:{cfg['hf_hub_id']}" + (f"/{filename}" if filename else ""))
    url = cfg.get("url")
    if isinstance(url, (tuple, list)):
        url = url[0] if url else ""
    if url:
        sources.append(url)
    return sources


def _cfg_sha256(cfg: Mapping[str, Any]) -> str:
    """A sha256 the cfg's family registered for its file (pretrained.generate_default_cfgs(sha256=...))."""
    keys = []
    if cfg.get("hf_hub_id"):
        keys.append(f"{cfg['hf_hub_id']}:{cfg.get('hf_hub_filename') or ''}")
    if cfg.get("url"):
        keys.append(cfg["url"] if isinstance(cfg["url"], str) else cfg["url"][0])
    for key in keys:
        if key in vp._SHA256:
            return vp._SHA256[key]
    return ""


def _pretrained_cfgs(model: str) -> dict[str, dict[str, Any]]:
    """tag -> resolved pretrained cfg of every pretrained tag timm holds for ``model`` (``""``: no tag)."""
    from timm.models import get_arch_pretrained_cfgs

    out = {}
    for cfg in get_arch_pretrained_cfgs(model).values():
        cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
        out[cfg.get("tag") or ""] = cfg
    return out


def _format_of_source(source: str) -> str:
    path = source.split("?")[0]
    return "safetensors" if path.endswith(".safetensors") else ""


def build_index(families: Iterable[_registry.Family] | None = None) -> dict[str, Entry]:
    """name -> :class:`Entry` for every model and tag of ``families`` (default: every registered family)."""
    families = list(_registry.families() if families is None else families)
    index: dict[str, Entry] = {}
    for family in families:
        records = {(c.model, c.tag): c for c in family.checkpoints}
        converter = _converter_name(family)
        for model in family.models:
            cfgs = _pretrained_cfgs(model)
            tagged = {t: c for t, c in cfgs.items() if t}
            # a model without a tag of its own is listed once, under its name
            keys = [(t, c) for t, c in tagged.items()] or [("", cfgs.get("", {}))]
            keys += [(c.tag, None) for c in family.checkpoints if c.model == model and c.tag not in dict(keys)]
            for tag, cfg in keys:
                record = records.get((model, tag))
                in_timm = cfg is not None and tag in tagged
                cfg = cfg or {}
                sources = _cfg_sources(cfg)
                sources += [u for u in (record.urls if record else ()) if u not in sources]
                if record is not None:
                    status, evidence, checked = record.status, record.evidence, record.checked
                elif sources:
                    status, evidence, checked = "unknown", "not checked: `python -m visionattn.hub check` probes it", ""
                else:
                    status, evidence, checked = "none", "no weights are published (the pretrained cfg names none)", ""
                if status != "none" and not sources:
                    raise ValueError(
                        f"family {family.name!r}: Checkpoint {model}.{tag} has status {status!r} but no source; give "
                        "urls=(...) or a pretrained cfg with url / hf_hub_id"
                    )
                name = f"{model}.{tag}" if tag else model
                index[name] = Entry(
                    name=name,
                    family=family.name,
                    model=model,
                    tag=tag,
                    task=record.task if record else "cls",
                    sources=tuple(sources),
                    format=(
                        record.format if record and record.format else _format_of_source(sources[0]) if sources else ""
                    ),
                    size=record.size if record else None,
                    sha256=(record.sha256 if record and record.sha256 else _cfg_sha256(cfg)),
                    license=(
                        record.license
                        if record and record.license
                        else (cfg.get("license") or "" if status != "none" else "")
                    ),
                    converter=(
                        record.converter
                        if record and record.converter
                        else converter
                        if (record.task if record else "cls") == "cls"
                        else "none: a whole mmdet / mmseg model (its backbone.* keys in the classification layout)"
                    ),
                    status=status,
                    evidence=evidence,
                    checked=checked,
                    top1=record.top1 if record else None,
                    result=record.result if record else "",
                    notes=record.notes if record else "",
                    card=family.card,
                    in_timm=in_timm,
                )
    return index


def get_entry(name: str, index: Mapping[str, Entry] | None = None) -> Entry:
    """The entry of ``model.tag``, or of a model (or alias) alone: its first classification tag."""
    index = build_index() if index is None else index
    if name in index:
        return index[name]
    model, _, tag = name.partition(".")
    model = _registry.resolve_alias(model)
    full = f"{model}.{tag}" if tag else model
    if full in index:
        return index[full]
    if not tag:
        for entry in index.values():
            if entry.model == model and entry.task == "cls":
                return entry
    known = sorted(e.name for e in index.values() if e.model == model)
    hint = f"the index has {known}" if known else "see `python -m visionattn.hub list`"
    raise HubError(f"{name!r} is not in the checkpoint index; {hint}")


def _source_url(source: str) -> str:
    """A source as a URL a browser opens (an hf-hub source: its resolve URL)."""
    if not source.startswith("hf-hub:"):
        return source
    repo, filename = _split_hub(source)
    return f"{_HF}/{repo}/resolve/main/{filename or 'model.safetensors'}"


def _split_hub(source: str) -> tuple[str, str | None]:
    parts = source[len("hf-hub:") :].split("/")
    repo = "/".join(parts[:2])
    filename = "/".join(parts[2:]) or None
    return repo, filename


# ----------------------------------------------------------------------------------------------------------
# fetch


def _cache_path(entry: Entry, source: str, cache_dir: str) -> str:
    """Where a URL source is cached: the name ``create_model(pretrained=True)`` looks for (pretrained.py)."""
    return os.path.join(cache_dir, vp._cache_name(source, entry.model))


def _progress(total: int | None, initial: int, label: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm comes with huggingface_hub; without it there is no bar
        enabled = False
    if not enabled:
        return _NoBar()
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024, desc=label, leave=True)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _http_download(url: str, target: str, *, expected: str, size: int | None, progress: bool, label: str) -> None:
    """Download ``url`` to ``target``; a ``target.partial`` left by an interrupted run is resumed (HTTP Range).

    Raises :class:`~visionattn.pretrained.CheckpointDownloadError` (the partial file is kept when the transfer
    broke off, so the next call resumes) or :class:`~visionattn.pretrained.ChecksumMismatchError` (nothing kept).
    """
    partial = target + ".partial"
    have = os.path.getsize(partial) if os.path.isfile(partial) else 0
    headers = {"User-Agent": "visionattn"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # the partial file is already whole
            response = None
        else:
            raise vp.CheckpointDownloadError(f"{url} answered HTTP {err.code} ({err.reason})") from err
    except (OSError, http.client.HTTPException) as err:  # no network, refused, DNS, timeout
        reason = getattr(err, "reason", None) or err
        raise vp.CheckpointDownloadError(f"could not reach {url} ({reason})") from err
    if response is not None:
        with response:
            resumed = have and response.status == 206
            if have and not resumed:  # the server ignored the range: start again
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length and length.isdigit() else size
            bar = _progress(total, have, label, progress)
            written = have
            try:
                with open(partial, "ab" if resumed else "wb") as out:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        written += len(block)
                        bar.update(len(block))
            except (OSError, http.client.HTTPException) as err:  # IncompleteRead, reset, timeout
                raise vp.CheckpointDownloadError(
                    f"the download of {url} broke off after {written} bytes ({type(err).__name__}); run the same "
                    f"command again to resume from {partial}"
                ) from err
            finally:
                bar.close()
            if total is not None and written < total:
                raise vp.CheckpointDownloadError(
                    f"the download of {url} ended after {written} of {total} bytes; run the same command again to "
                    f"resume from {partial}"
                )
    actual = vp.file_sha256(partial)
    if expected and not actual.startswith(expected):
        os.remove(partial)  # a complete file with the wrong content: resuming cannot fix it
        raise vp.ChecksumMismatchError(
            f"sha256 of the file downloaded from {url} is {actual}, expected {expected}: the file is not the one "
            "the index records (changed upstream, or a wrong link); nothing was kept"
        )
    vp._chmod_like_new_file(partial)
    os.replace(partial, target)


def _looks_like_html(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(512).lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head"))


def _check_readable(path: str, source: str) -> None:
    """Refuse a file that is a web page or holds pickled code; it is moved aside to ``PATH.refused``."""
    try:
        if _looks_like_html(path):
            raise HubError(
                f"{source} returned a web page, not a checkpoint (a share page that needs a browser or a sign-in); "
                "download the file in a browser and add it with --file"
            )
        vp.load_checkpoint_file(path)
    except (HubError, vp.CheckpointError) as err:
        refused = path + ".refused"
        os.replace(path, refused)
        raise type(err)(f"{err}\n(the file was kept aside as {refused}, not in the cache)") from None


def _offline_help(entry: Entry, cache_dir: str) -> str:
    url_sources = [s for s in entry.sources if not s.startswith("hf-hub:")]
    where = _cache_path(entry, url_sources[0], cache_dir) if url_sources else None
    lines = [
        "What you can do:",
        f"  - if you have the file (a colleague, a mirror, an archive): python -m visionattn.hub fetch {entry.name} "
        "--file /path/to/file   (verifies it and puts it in the cache" + (f" as {where})" if where else ")"),
        f"  - or load it directly: timm.create_model('{entry.model}', pretrained=True, "
        f"pretrained_cfg_overlay=dict(file='/path/to/file'{', sha256=' + repr(entry.sha256) if entry.sha256 else ''}))",
    ]
    return "\n".join(lines)


def fetch(
    name: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    file: str | os.PathLike | None = None,
    index: Mapping[str, Entry] | None = None,
    progress: bool = True,
    log: TextIO | None = None,
) -> str:
    """Download the checkpoint ``name`` (``model.tag``) into the cache, verified; return its path.

    Sources are tried in order; a broken-off download resumes on the next call; the sha256 is checked when the
    index knows it; a file holding pickled code, or a web page, is refused. ``file=``: a copy obtained by other
    means is verified and copied into the cache instead (the offline route). URL sources are cached where
    ``create_model(name, pretrained=True)`` looks (``$TORCH_HOME/hub/checkpoints`` unless ``cache_dir``);
    Hugging Face hub sources in huggingface_hub's cache.
    """
    entry = get_entry(name, index)
    log = log or sys.stderr
    hub_cache = os.fspath(cache_dir) if cache_dir else None  # huggingface_hub keeps its own cache by default
    cache_dir = hub_cache or vp._default_cache_dir()
    if entry.status == "none":
        raise HubError(f"{entry.name}: no weights were released ({entry.evidence})")
    expected = entry.sha256
    url_sources = [s for s in entry.sources if not s.startswith("hf-hub:")]
    if file is not None:
        file = os.fspath(file)
        if not os.path.isfile(file):
            raise FileNotFoundError(f"--file {file!r} does not exist")
        if expected:
            vp._verify(file, expected, file)
        if _looks_like_html(file):
            raise HubError(f"{file} is a web page, not a checkpoint")
        vp.load_checkpoint_file(file)
        os.makedirs(cache_dir, exist_ok=True)
        target = (
            _cache_path(entry, url_sources[0], cache_dir)
            if url_sources
            else os.path.join(cache_dir, os.path.basename(file))
        )
        shutil.copyfile(file, target)
        _note_sha(entry, target, log)
        return target

    failures = []
    for source in entry.sources:
        try:
            if source.startswith("hf-hub:"):
                repo, filename = _split_hub(source)
                path = vp._download_from_hub(repo, filename, hub_cache, entry.model)
                if expected:
                    vp._verify(path, expected, f"{path} (from {source})")
                _check_readable_inplace(path, source)
                _note_sha(entry, path, log)
                return path
            os.makedirs(cache_dir, exist_ok=True)
            target = _cache_path(entry, source, cache_dir)
            if os.path.isfile(target):
                if not expected or vp.file_sha256(target).startswith(expected):
                    print(f"{entry.name}: already in the cache", file=log)
                    return target
                os.remove(target)  # a stale or corrupt copy
            print(f"{entry.name}: downloading {source}", file=log)
            _http_download(source, target, expected=expected, size=entry.size, progress=progress, label=entry.name)
            _check_readable(target, source)
            _note_sha(entry, target, log)
            return target
        except vp.CheckpointDownloadError as err:
            if "broke off" in str(err) or "ended after" in str(err):
                raise  # resumable: the next call continues this source
            failures.append(str(err).split(". Download ")[0])
            print(f"{entry.name}: {failures[-1]}", file=log)
    status = ""
    if entry.status == "dead":
        status = f"The index records these links as dead since {entry.checked}: {entry.evidence}.\n"
    raise vp.CheckpointDownloadError(
        f"could not download {entry.name} from any of its {len(entry.sources)} source(s):\n  - "
        + "\n  - ".join(failures)
        + "\n"
        + status
        + _offline_help(entry, cache_dir)
    )


def _check_readable_inplace(path: str, source: str) -> None:
    """As :func:`_check_readable`, for a file in huggingface_hub's cache (left where it is)."""
    if _looks_like_html(path):
        raise HubError(f"{source} returned a web page, not a checkpoint")
    vp.load_checkpoint_file(path)


def _note_sha(entry: Entry, path: str, log: TextIO) -> None:
    if not entry.sha256:
        digest = vp.file_sha256(path)
        print(
            f"{entry.name}: the index records no sha256; this file's is {digest} (add sha256='{digest}' to the "
            f"family's Checkpoint entry to pin it)",
            file=log,
        )


# ----------------------------------------------------------------------------------------------------------
# identify


def _read_raw(path: str) -> tuple[str, dict[str, torch.Tensor]]:
    """(format, flat state_dict) of a checkpoint, read safely."""
    if vp._is_safetensors(path):
        return "safetensors", vp._read_checkpoint(path)

    def load(mmap: bool) -> Any:
        with vp._allow_namespace():
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)

    try:
        try:
            raw = load(mmap=True)  # only the key layout is needed: leave the tensors on disk
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            raw = load(mmap=False)
    except Exception:
        vp._read_checkpoint(path)  # raises the safe loader's own error (pickled objects, not a checkpoint)
        raise
    fmt = "state_dict"
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        fmt = "mmcv"
    elif isinstance(raw, Mapping) and isinstance(raw.get("model"), Mapping):
        fmt = "model"
    return fmt, vp.unwrap_state_dict(raw, path)


_META_MODELS: dict[str, torch.nn.Module] = {}


def _meta_model(name: str) -> torch.nn.Module | None:
    import timm

    if name not in _META_MODELS:
        try:
            with torch.device("meta"):
                _META_MODELS[name] = timm.create_model(name, pretrained=False)
        except Exception:  # a model that cannot be built on the meta device is not matched by layout
            _META_MODELS[name] = None
    return _META_MODELS[name]


def _layout_match(state_dict: Mapping[str, torch.Tensor], model_name: str) -> dict[str, Any] | None:
    """How ``state_dict`` (after the family converter) fits ``model_name``: None, or what differs."""
    model = _meta_model(model_name)
    if model is None:
        return None
    try:
        converted = vp.convert_state_dict(model_name, dict(state_dict), model)
    except Exception:  # the converter does not understand this layout
        return None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in converted.items() if isinstance(v, torch.Tensor)}
    classifier = (getattr(model, "pretrained_cfg", {}) or {}).get("classifier") or ""
    head = (classifier + ".") if isinstance(classifier, str) and classifier else "\0"
    body_want = {k: s for k, s in want.items() if not k.startswith(head)}
    body_got = {k: s for k, s in got.items() if not k.startswith(head)}
    if body_want != body_got:
        return None
    head_got = {k: s for k, s in got.items() if k.startswith(head)}
    head_want = {k: s for k, s in want.items() if k.startswith(head)}
    if head_got == head_want:
        return {}
    if not head_got:
        return {"num_classes": 0}
    weight = head_got.get(head + "weight")
    return {"num_classes": weight[0]} if weight else None


def identify(path: str | os.PathLike, index: Mapping[str, Entry] | None = None) -> dict[str, Any]:
    """Which checkpoint a file is: ``{"sha256", "format", "by_hash": [names], "by_layout": [...]}``.

    By hash: the index entries whose sha256 is the file's. By layout: the registered models whose weights the
    file holds, after the family converter (an official layout counts), as ``{"model", "entries", "kwargs",
    "dense"}``; ``kwargs`` says what differs (``num_classes``), ``dense`` that the weights are a detection /
    segmentation checkpoint's backbone (``backbone.`` keys).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    index = build_index() if index is None else index
    digest = vp.file_sha256(path)
    by_hash = [e.name for e in index.values() if e.sha256 and digest.startswith(e.sha256)]
    fmt, state_dict = _read_raw(path)
    dense = any(k.startswith("backbone.") for k in state_dict)
    if dense:
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    # Building a model (on the meta device) costs up to seconds: first the models whose recorded size is near the
    # file's (a classifier for other classes or a dense backbone's extra norms move it a little), then the rest.
    count = sum(v.numel() for v in state_dict.values() if v.is_floating_point())
    models = list(dict.fromkeys(e.model for e in index.values()))
    near = [m for m in models if m in _META_MODELS or _near(count, _registry.get_family(m).params_m.get(m))]
    matches = _scan(near, state_dict, dense, index)
    if not matches:
        matches = _scan([m for m in models if m not in near], state_dict, dense, index)
    return {"path": path, "sha256": digest, "format": fmt, "by_hash": by_hash, "by_layout": matches}


def _near(count: int, params_m: float | None) -> bool:
    if params_m is None:
        return True
    n = params_m * 1e6
    return n - max(0.1 * n, 2e6) <= count <= 1.05 * n + 1e5


def _scan(
    models: Sequence[str], state_dict: dict[str, torch.Tensor], dense: bool, index: Mapping[str, Entry]
) -> list[dict[str, Any]]:
    matches = []
    for model in models:
        fit = _layout_match(state_dict, model)
        if fit is None and dense:
            # a dense backbone may carry one norm per output (norm0..3) that the classification model lacks
            trimmed = {k: v for k, v in state_dict.items() if not re.match(r"norm\d+\.", k)}
            fit = _layout_match(trimmed, model)
            fit = None if fit is None else {**fit, "num_classes": 0}
        if fit is not None:
            entries = [e.name for e in index.values() if e.model == model and (e.task != "cls") == dense]
            matches.append({"model": model, "entries": entries, "kwargs": fit, "dense": dense})
    return matches


# ----------------------------------------------------------------------------------------------------------
# convert


def convert(
    name: str,
    file: str | os.PathLike,
    out: str | os.PathLike,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    sha256: str | None = None,
    index: Mapping[str, Entry] | None = None,
) -> tuple[str, str]:
    """Convert checkpoint ``file`` of ``name`` (``model`` or ``model.tag``) to timm's folder layout in ``out``.

    Writes ``config.json`` (architecture, model arguments, the tag's pretrained cfg) and ``model.safetensors``
    (our layout: loads with no converter) and a ``README.md`` model card for a hub upload. The file is checked
    against ``sha256`` (default: the index's, when known) and must load strictly; ``num_classes`` is read from
    the classifier when it differs from the cfg's. Returns (folder, sha256 of model.safetensors).
    """
    import timm
    from timm.models._hub import save_for_hf

    index = build_index() if index is None else index
    model_name, _, tag = name.partition(".")
    model_name = _registry.resolve_alias(model_name)
    try:
        _registry.get_family(model_name)
    except KeyError:
        raise HubError(
            f"{model_name!r} is not a model of a visionattn family; see `python -m visionattn.hub list`"
        ) from None
    entry = None
    try:
        entry = get_entry(f"{model_name}.{tag}" if tag else model_name, index)
    except HubError:
        if tag:
            raise
    if entry is not None and entry.task != "cls":
        how = (
            f"convert it with {entry.converter} and use the result as `load_from` of the family's config in "
            "configs/det or configs/seg"
            if not entry.converter.startswith("none")
            else "its backbone.* keys are in the classification layout"
        )
        raise HubError(
            f"{entry.name} is a {entry.task} checkpoint (a whole mmdet / mmseg model), not a classification model; "
            f"timm's folder layout holds a classifier: {how}"
        )
    tag = entry.tag if entry is not None and entry.in_timm else ""
    kwargs = dict(model_kwargs or {})
    expected = sha256 or (entry.sha256 if entry is not None else "") or None
    state_dict = vp.load_checkpoint_file(file, sha256=expected)
    arch = f"{model_name}.{tag}" if tag else model_name
    model = timm.create_model(arch, pretrained=False, **kwargs)
    converted = vp.convert_state_dict(model_name, state_dict, model)
    classifier = model.pretrained_cfg.get("classifier")
    if isinstance(classifier, (tuple, list)):  # several heads (e.g. distillation): they share num_classes
        classifier = classifier[0] if classifier else None
    weight = converted.get(f"{classifier}.weight") if isinstance(classifier, str) else None
    if "num_classes" not in kwargs and weight is not None and weight.shape[0] != model.num_classes:
        kwargs["num_classes"] = int(weight.shape[0])
        model = timm.create_model(arch, pretrained=False, **kwargs)
        converted = vp.convert_state_dict(model_name, state_dict, model)
    built = f"{model_name}" + (f" with {json.dumps(kwargs)}" if kwargs else "")
    hint = "pass the arguments the checkpoint was trained with as --model-kwargs KEY=VALUE"
    try:
        result = model.load_state_dict(converted, strict=False)
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).strip().splitlines()[1:]]
        raise HubError(f"{file} does not fit {built}: {' '.join(lines[:4])}; {hint}") from None
    if result.missing_keys or result.unexpected_keys:
        raise HubError(
            f"{file} does not convert to {built}: missing keys {result.missing_keys[:8]}, unexpected keys "
            f"{result.unexpected_keys[:8]}; {hint}"
        )
    out = os.fspath(out)
    try:
        save_for_hf(model.eval(), out, safe_serialization=True)
    except ValueError as err:  # a model argument config.json cannot hold (a config object, a class)
        raise HubError(
            f"{built} cannot be written as a timm folder: {err} config.json holds JSON model arguments only; "
            "convert a model built from JSON-able arguments (e.g. the registered variant's own)"
        ) from None
    weights = os.path.join(out, "model.safetensors")
    digest = vp.file_sha256(weights)
    _write_card(out, model_name, tag, entry, digest)
    return out, digest


def _write_card(out: str, model: str, tag: str, entry: Entry | None, digest: str) -> None:
    family = _registry.get_family(model)
    license_ = entry.license if entry is not None and entry.license else "other"
    lines = [
        "---",
        f"license: {license_}",
        "library_name: timm",
        "tags:",
        "- image-classification",
        "- timm",
        "- visionattn",
        "---",
        f"# {model}{'.' + tag if tag else ''}",
        "",
        f"{model} ({family.name} family of visionattn), converted from "
        + (
            f"the official checkpoint `{entry.name}` ({', '.join(entry.sources) or 'no public source'})"
            if entry
            else "a checkpoint"
        )
        + " to timm's layout. `model.safetensors` sha256: `"
        + digest
        + "`.",
        "",
        "```python",
        "import timm",
        "import visionattn  # registers the model with timm",
        "model = timm.create_model('local-dir:PATH_TO_THIS_FOLDER', pretrained=True)  # or 'hf-hub:ORG/NAME'",
        "```",
        "",
    ]
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write("\n".join(lines))


# ----------------------------------------------------------------------------------------------------------
# check: probe the sources


def _probe(url: str, timeout: float) -> tuple[str, str]:
    """(status, evidence) of one URL from a one-byte ranged GET."""
    request = urllib.request.Request(url, headers={"User-Agent": "visionattn", "Range": "bytes=0-0"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            kind = response.headers.get("Content-Type", "")
            if "text/html" in kind:
                return "unknown", f"HTTP {response.status}, a web page ({kind}), not a file"
            return "ok", f"HTTP {response.status} {kind}".strip()
    except urllib.error.HTTPError as err:
        status = "dead" if err.code in (404, 410) or (err.code == 400 and "share" in url) else "unknown"
        return status, f"HTTP {err.code} {err.reason}"
    except (OSError, http.client.HTTPException) as err:  # timeouts are OSErrors
        return "unknown", f"not reachable from here ({getattr(err, 'reason', None) or err})"


def check(entries: Sequence[Entry], timeout: float = 20.0) -> list[dict[str, str]]:
    """Probe each entry's sources now; one row per source: name, source, status, evidence, date."""
    today = datetime.date.today().isoformat()
    rows = []
    for entry in entries:
        for source in entry.sources:
            status, evidence = _probe(_source_url(source), timeout)
            rows.append(dict(name=entry.name, source=source, status=status, evidence=evidence, checked=today))
    return rows


# ----------------------------------------------------------------------------------------------------------
# README section


def _source_label(source: str) -> str:
    if source.startswith("hf-hub:"):
        repo, _ = _split_hub(source)
        return f"[hf-hub {repo}]({_HF}/{repo})"
    host = urllib.parse.urlparse(source).netloc
    label = {"api.onedrive.com": "OneDrive", "github.com": "GitHub"}.get(host, host)
    if host.endswith("sharepoint.com"):
        label = "SharePoint"
    elif host.endswith("huggingface.co"):
        label = "hf"
    return f"[{label}]({source})"


def readme_section(index: Mapping[str, Entry] | None = None) -> str:
    """The README's "Pretrained weights" section, from the index."""
    index = build_index() if index is None else index
    counts = {s: sum(e.status == s for e in index.values()) for s in STATUSES}
    lines = [
        "One index of every released checkpoint, derived from the family records and their timm pretrained cfgs",
        f"({len(index)} entries: {counts['ok']} ok, {counts['dead']} dead, {counts['unknown']} unknown, "
        f"{counts['none']} released without weights).",
        "`list --json` gives everything per entry: every source, file format, size and sha256 where known, license,",
        "converter, and the evidence and date behind the status.",
        "",
        "```bash",
        "python -m visionattn.hub list [--family davit] [--json]",
        "python -m visionattn.hub fetch davit_tiny.msft_in1k       # progress bar, resume, sha256 check, cache",
        "python -m visionattn.hub fetch biformer_tiny.in1k --file ~/biformer_tiny.pth   # a copy you already have",
        "python -m visionattn.hub identify some_checkpoint.pth      # which model / tag, by hash or key layout",
        "python -m visionattn.hub convert biformer_tiny official.pth --out biformer_tiny_in1k/   # timm folder",
        "python -c \"import timm, visionattn; timm.create_model('local-dir:biformer_tiny_in1k', pretrained=True)\"",
        "```",
        "",
        "`convert` writes `config.json` (architecture, arguments, pretrained cfg) and `model.safetensors` in our",
        "layout; uploaded to the Hugging Face hub, the folder loads as `hf-hub:ORG/NAME` with plain timm after",
        "`import visionattn`. Status: `ok` (downloaded on the date given), `dead` (links fail: see the evidence),",
        "`unknown` (not checked; `python -m visionattn.hub check NAME` probes the links), `none` (no weights).",
        "This table is generated: `python -m visionattn.hub readme` rewrites it, `--check` fails when it is stale.",
        "",
        "| model | tag | task | source | status | paper result |",
        "|---|---|---|---|---|---|",
    ]
    # families and models in registration order; per model its classification weights first
    order = {name: i for i, name in enumerate(dict.fromkeys(e.model for e in index.values()))}
    for entry in sorted(index.values(), key=lambda e: (order[e.model], e.task != "cls", e.tag)):
        source = " ".join(_source_label(s) for s in entry.sources) or "-"
        status = entry.status + (f" ({entry.checked})" if entry.checked else "")
        result = f"top-1 {entry.top1:.1f}" if entry.top1 is not None else entry.result or "-"
        lines.append(
            f'| <a id="{entry.anchor}"></a>`{entry.model}` | {entry.tag or "-"} | {entry.task} | {source} | '
            f"{status} | {result} |"
        )
    return "\n".join(lines) + "\n"


def update_readme(
    path: str | os.PathLike, *, check_only: bool = False, index: Mapping[str, Entry] | None = None
) -> bool:
    """Rewrite the text between the hub markers of ``path``; True when it changed (or, with ``check_only``,
    would change). Nothing outside the markers is touched."""
    text = Path(path).read_text()
    start, end = text.find(README_START), text.find(README_END)
    if start < 0 or end < start:
        raise HubError(f"{path} has no {README_START} ... {README_END} markers; add them where the section goes")
    new = text[: start + len(README_START)] + "\n" + readme_section(index) + text[end:]
    if new == text:
        return False
    if not check_only:
        Path(path).write_text(new)
    return True


# ----------------------------------------------------------------------------------------------------------
# CLI


def _human(size: int | None) -> str:
    if size is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "?"


def _print_table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip(), file=out)


def main(argv: Sequence[str] | None = None, index: Mapping[str, Entry] | None = None) -> int:
    from .cli import add_model_kwargs_argument, parse_model_kwargs

    parser = argparse.ArgumentParser(prog="python -m visionattn.hub", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="the checkpoint index")
    p.add_argument("--family", default=None, help="one family (see visionattn.list_families())")
    p.add_argument("--json", action="store_true", help="every field of every entry, as JSON")
    p = sub.add_parser("fetch", help="download a checkpoint (resume, sha256 check, cache)")
    p.add_argument("name", help="model.tag (or model: its first tag), e.g. davit_tiny.msft_in1k")
    p.add_argument("--cache-dir", default=None, help="default: $TORCH_HOME/hub/checkpoints (where timm looks)")
    p.add_argument("--file", default=None, help="a copy you already have: verify it and put it in the cache")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p = sub.add_parser("identify", help="which model / tag a checkpoint file is")
    p.add_argument("file")
    p.add_argument("--family", default=None, help="match the key layout against this family only (faster)")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("convert", help="write timm's folder layout (config.json + model.safetensors)")
    p.add_argument("name", help="model or model.tag the file holds")
    p.add_argument("file", help="checkpoint (.pth/.pt/.bin read with weights_only=True, or .safetensors)")
    p.add_argument("--out", required=True, help="output folder (loads with timm.create_model('local-dir:OUT'))")
    p.add_argument("--sha256", default=None, help="expected sha256 of FILE (default: the index's, when known)")
    add_model_kwargs_argument(p)
    p = sub.add_parser("check", help="probe the sources now and print what they answer")
    p.add_argument("names", nargs="*", help="entries (default: all, or --family)")
    p.add_argument("--family", default=None)
    p.add_argument("--timeout", type=float, default=20.0)
    p = sub.add_parser("readme", help="rewrite the README's Pretrained weights section")
    p.add_argument("--path", default=None, help="default: README.md of the repository")
    p.add_argument("--check", action="store_true", help="exit 1 when the section is stale, write nothing")
    args = parser.parse_args(argv)
    out = sys.stdout

    def chosen() -> list[Entry]:
        idx = build_index() if index is None else index
        if args.family is not None:
            families = sorted({e.family for e in idx.values()})
            if args.family not in families:
                parser.error(f"--family {args.family!r} is not registered; pick one of {families}")
            return [e for e in idx.values() if e.family == args.family]
        return list(idx.values())

    try:
        if args.command == "list":
            entries = chosen()
            if args.json:
                json.dump([e.to_dict() for e in entries], out, indent=1)
                print(file=out)
                return 0
            rows = [["name", "task", "status", "format", "size", "license", "source"]]
            for e in entries:
                rows.append(
                    [
                        e.name,
                        e.task,
                        e.status + (f" ({e.checked})" if e.checked else ""),
                        e.format or "?",
                        _human(e.size),
                        e.license or "?",
                        (e.sources[0] if e.sources else "-")
                        + (f" (+{len(e.sources) - 1})" if len(e.sources) > 1 else ""),
                    ]
                )
            _print_table(rows, out)
            return 0
        if args.command == "fetch":
            path = fetch(
                args.name, cache_dir=args.cache_dir, file=args.file, index=index, progress=not args.no_progress
            )
            print(path, file=out)
            return 0
        if args.command == "identify":
            found = identify(args.file, index={e.name: e for e in chosen()})
            if args.json:
                json.dump(found, out, indent=1)
                print(file=out)
            else:
                print(f"{found['path']}: {found['format']}, sha256 {found['sha256']}", file=out)
                for name in found["by_hash"]:
                    print(f"  by hash: {name}", file=out)
                for m in found["by_layout"]:
                    what = "backbone of a dense checkpoint of " if m["dense"] else ""
                    extra = f" with {json.dumps(m['kwargs'])}" if m["kwargs"] else ""
                    tags = f" (index: {', '.join(m['entries'])})" if m["entries"] else ""
                    print(f"  by key layout: {what}{m['model']}{extra}{tags}", file=out)
                if not found["by_hash"] and not found["by_layout"]:
                    print("  no entry of the index and no registered model matches this file", file=out)
            return 0 if found["by_hash"] or found["by_layout"] else 1
        if args.command == "convert":
            try:
                kwargs = parse_model_kwargs(args.model_kwargs)
            except ValueError as err:
                parser.error(str(err))
            folder, digest = convert(
                args.name, args.file, args.out, model_kwargs=kwargs, sha256=args.sha256, index=index
            )
            print(f"{digest}  {os.path.join(folder, 'model.safetensors')}", file=out)
            print(
                f"load: timm.create_model('local-dir:{folder}', pretrained=True)  (after import visionattn)", file=out
            )
            return 0
        if args.command == "check":
            idx = build_index() if index is None else index
            entries = [get_entry(n, idx) for n in args.names] if args.names else chosen()
            rows = [["name", "status", "checked", "evidence", "source"]]
            for r in check(entries, timeout=args.timeout):
                rows.append([r["name"], r["status"], r["checked"], r["evidence"], r["source"]])
            _print_table(rows, out)
            return 0
        if args.command == "readme":
            path = args.path or str(Path(__file__).resolve().parent.parent / "README.md")
            changed = update_readme(path, check_only=args.check, index=index)
            if args.check:
                if changed:
                    print(
                        f"{path}: the Pretrained weights section is stale; run python -m visionattn.hub readme",
                        file=sys.stderr,
                    )
                    return 1
                print(f"{path}: the Pretrained weights section is current", file=out)
                return 0
            print(f"{path}: {'rewritten' if changed else 'already current'}", file=out)
            return 0
    except (vp.CheckpointError, FileNotFoundError, ValueError) as err:
        print(f"hub {args.command}: error: {err}", file=sys.stderr)
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
