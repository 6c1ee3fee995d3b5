"""Official-checkpoint conversion and safe loading.

Every family builds its models through :func:`build_model`, which wraps timm's ``build_model_with_cfg``.
With ``pretrained=True`` the weights are fetched here, not by timm:

* sources, in timm's order of priority: ``pretrained_cfg_overlay=dict(state_dict=...)``, ``dict(file=...)``
  (a local file), ``hf_hub_id`` (the Hugging Face hub) and ``url`` (``https://``, ``http://`` or ``file://``,
  downloaded once into a cache folder);
* files are read with ``torch.load(weights_only=True)`` or safetensors only; a file that holds other pickled
  objects is refused (:class:`UnsafeCheckpointError`), never unpickled;
* a checkpoint is verified by sha256 when one is known (``sha256=`` in the cfg or overlay, a hash registered
  with :func:`generate_default_cfgs`, or timm's ``name-<hash prefix>.ext`` file-name convention);
* ``ckpt['state_dict']`` / ``ckpt['model']`` / raw dicts are unwrapped, then the family converter maps the
  official layout to ours, then timm's ``load_pretrained`` does the rest (classifier dropped when
  ``num_classes`` differs, input conv adapted to ``in_chans``, strict load).

:func:`convert_checkpoint` (CLI: ``tools/convert_checkpoint.py``) writes an official file in our layout.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import hashlib
import http.client
import json
import os
import pickle
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, clean_state_dict, resolve_pretrained_cfg
from timm.models import generate_default_cfgs as _timm_generate_default_cfgs

Converter = Callable[[dict, nn.Module], dict]

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "ChecksumMismatchError",
    "CheckpointDownloadError",
    "build_model",
    "create_model",
    "generate_default_cfgs",
    "get_converter",
    "register_sha256",
    "file_sha256",
    "load_checkpoint_file",
    "unwrap_state_dict",
    "download_checkpoint",
    "fetch_state_dict",
    "convert_state_dict",
    "convert_checkpoint",
]

# timm/torch.hub convention: "resnet50_a1_0-14fe96d1.pth" carries the first hex digits of its sha256.
# At least 8 digits, so names such as "model-face.pth" are not taken for a hash.
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{8,64})\.")
_DOWNLOAD_TIMEOUT_S = float(os.environ.get("VISIONATTN_DOWNLOAD_TIMEOUT", "60"))

_SHA256: dict[str, str] = {}  # url or "hf_hub_id:filename" -> sha256


class CheckpointError(RuntimeError):
    """A checkpoint could not be fetched, read or converted."""


class UnsafeCheckpointError(CheckpointError, ValueError):
    """The file holds pickled Python objects that ``torch.load(weights_only=True)`` refuses."""


class ChecksumMismatchError(CheckpointError, ValueError):
    """The file's sha256 differs from the expected one."""


class CheckpointDownloadError(CheckpointError):
    """The file could not be downloaded (no network, hub unreachable, HTTP error)."""


# ----------------------------------------------------------------------------------------------------------
# registries


def get_converter(model_name: str) -> Converter | None:
    """The converter its family record declares for ``model_name`` (or an alias), None when there is none."""
    from .models import _registry

    try:
        return _registry.get_family(model_name).converter
    except KeyError:
        return None


def register_sha256(location: str, sha256: str) -> None:
    """Record the sha256 of the file at ``location`` (a URL, or ``"hf_hub_id:filename"``)."""
    _SHA256[location] = _check_sha256_arg(sha256, "sha256")


def generate_default_cfgs(cfgs: dict[str, dict[str, Any]]) -> dict:
    """timm's ``generate_default_cfgs`` that also accepts ``sha256=`` in a cfg (recorded for its url/hub file)."""
    plain = {}
    for name, cfg in cfgs.items():
        cfg = dict(cfg)
        sha = cfg.pop("sha256", None)
        if sha:
            if cfg.get("hf_hub_id"):
                register_sha256(f"{cfg['hf_hub_id']}:{cfg.get('hf_hub_filename') or ''}", sha)
            if cfg.get("url"):
                register_sha256(cfg["url"], sha)
            if not cfg.get("hf_hub_id") and not cfg.get("url"):
                raise ValueError(f"default cfg {name!r} has sha256= but neither url= nor hf_hub_id=; add the source")
        plain[name] = cfg
    return _timm_generate_default_cfgs(plain)


# ----------------------------------------------------------------------------------------------------------
# files


def _check_sha256_arg(sha256: str, what: str) -> str:
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{8,64}", sha256):
        raise ValueError(
            f"{what}={sha256!r} is not a sha256 hex digest (or a prefix of at least 8 hex digits); "
            "pass the value printed by `sha256sum FILE` or tools/convert_checkpoint.py"
        )
    return sha256.lower()


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _hash_from_name(name: str) -> str | None:
    match = _HASH_IN_NAME.search(os.path.basename(name))
    return match.group(1) if match else None


def _mismatch(source: str, actual: str, expected: str, from_name: bool) -> ChecksumMismatchError:
    if from_name:
        why = (
            " (a prefix taken from the file name, timm's name-<sha256 prefix>.ext convention); if that part of the "
            "name is not a hash, rename the file or pass its real sha256 (pretrained_cfg_overlay=dict(file=..., "
            "sha256=...))"
        )
    else:
        why = (
            f"{' (prefix)' if len(expected) < 64 else ''}: the file is corrupt, truncated or not the one expected; "
            "download it again, or pass the right sha256 (pretrained_cfg_overlay=dict(file=..., sha256=...))"
        )
    return ChecksumMismatchError(f"sha256 of {source} is {actual}, expected {expected}{why}")


def _verify(path: str, sha256: str | None, source: str, name: str | None = None) -> None:
    """Check ``path`` against ``sha256``, else against a hash prefix in ``name`` (default: the path's name)."""
    expected = _check_sha256_arg(sha256, "sha256") if sha256 else _hash_from_name(name or path)
    if not expected:
        return
    actual = file_sha256(path)
    if not actual.startswith(expected):
        raise _mismatch(source, actual, expected, from_name=not sha256)


def _is_safetensors(path: str) -> bool:
    if path.endswith(".safetensors"):
        return True
    # a safetensors file opens with a little-endian u64 header length, then the JSON header
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < (1 << 32)


def _unsafe_globals(path: str) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # legacy (non-zip) files cannot be scanned without unpickling; the message says so
        return []


class _ConfigAsDict:
    """Stands in for a training-config class while unpickling: yields a plain OrderedDict (which the weights-only
    unpickler fills with the config's keys and attributes); the real class is never imported or called."""

    def __new__(cls, *args: Any, **kwargs: Any) -> collections.OrderedDict:
        return collections.OrderedDict()


# Config objects that Swin-style training saves (Swin, LITv2, Agent Attention, ...) store under 'config': a
# dict subclass holding plain values. They are read as plain dicts by name, without importing the class.
_CONFIG_CLASSES = ("yacs.config.CfgNode",)


def _allow_namespace():
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    if safe_globals is None:
        return contextlib.nullcontext()
    return safe_globals([argparse.Namespace, *((_ConfigAsDict, name) for name in _CONFIG_CLASSES)])


def unwrap_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """``checkpoint['state_dict']``, ``checkpoint['model']`` or ``checkpoint`` itself, as a dict of tensors."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(checkpoint).__name__}, not a dict of tensors; save model.state_dict() "
            "(or a dict with it under 'model' or 'state_dict')"
        )
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    not_tensors = [k for k, v in checkpoint.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"{source}: entries {not_tensors[:5]} are not tensors; expected a state_dict, optionally under "
            f"'model' or 'state_dict' (top-level keys: {list(checkpoint)[:10]})"
        )
    return clean_state_dict(dict(checkpoint))


def load_checkpoint_file(path: str | os.PathLike, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a .pth/.pt/.bin (``torch.load(weights_only=True)``) or .safetensors file as an unwrapped state_dict.

    ``sha256`` (full digest or a prefix of >= 8 hex digits) is checked first; without it, a hash prefix in the
    file name (``name-1a2b3c4d.pth``, timm's convention) is checked.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist; check the path given as file=")
    _verify(path, sha256, path)
    return _read_checkpoint(path)


def _read_checkpoint(path: str) -> dict[str, torch.Tensor]:
    if _is_safetensors(path):
        import safetensors.torch

        return unwrap_state_dict(safetensors.torch.load_file(path, device="cpu"), path)
    try:
        # DeiT-style training scripts (used by several official repos) store argparse.Namespace under 'args';
        # rebuilding one only sets attributes, so it is allowed, as timm does; yacs configs become plain dicts.
        with _allow_namespace():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _unsafe_globals(path)
        what = f" ({', '.join(found[:8])})" if found else ""
        raise UnsafeCheckpointError(
            f"{path} holds pickled Python objects{what} besides tensors. visionattn reads checkpoints with "
            "torch.load(weights_only=True) only and does not unpickle such objects, because unpickling can run "
            "arbitrary code. If you trust the file, re-save just its tensors once, in a separate process: "
            "`sd = torch.load(PATH, weights_only=False)['model']; torch.save(sd, 'clean.pth')` "
            "(or safetensors.torch.save_file(sd, 'clean.safetensors')), and load clean.pth instead. "
            f"torch said: {str(err).splitlines()[0][:300]}"
        ) from None
    return unwrap_state_dict(checkpoint, path)


# ----------------------------------------------------------------------------------------------------------
# downloads


def _default_cache_dir() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def _cache_name(url: str, architecture: str | None) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if "." in name:
        return name
    # share links such as ".../root/content" have no file name: key the cache on the URL
    return f"{architecture or 'checkpoint'}_{hashlib.sha256(url.encode()).hexdigest()[:16]}.pth"


def _offline_help(what: str, name: str, architecture: str | None, sha256: str | None) -> str:
    arch = architecture or "MODEL"
    sha = f", sha256='{sha256}'" if sha256 else ""
    return (
        f"Download {what} yourself (on a machine with access), then load it with "
        f"timm.create_model('{arch}', pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/{name}'{sha}))"
    )


def download_checkpoint(
    url: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    sha256: str | None = None,
    architecture: str | None = None,
) -> str:
    """Download ``url`` into ``cache_dir`` (default ``$TORCH_HOME/hub/checkpoints``) once; return the path.

    A cached file is re-verified on every call and fetched again when it no longer matches ``sha256``.
    """
    cache_dir = os.fspath(cache_dir) if cache_dir else _default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    name = _cache_name(url, architecture)
    target = os.path.join(cache_dir, name)
    expected = _check_sha256_arg(sha256, "sha256") if sha256 else _hash_from_name(name)
    if os.path.isfile(target):
        if not expected or file_sha256(target).startswith(expected):
            return target
        os.remove(target)  # stale or corrupt copy: fetch again
    fd, partial = tempfile.mkstemp(prefix=name + ".", suffix=".partial", dir=cache_dir)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "visionattn"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                digest.update(block)
                out.write(block)
    except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, refused/reset connections
        if os.path.exists(partial):
            os.remove(partial)
        reason = getattr(err, "reason", None) or err
        raise CheckpointDownloadError(
            f"could not download {url} ({reason}). " + _offline_help(f"the file ({name})", name, architecture, sha256)
        ) from err
    actual = digest.hexdigest()
    if expected and not actual.startswith(expected):
        os.remove(partial)  # nothing corrupt stays in the cache
        raise _mismatch(f"the file downloaded from {url}", actual, expected, from_name=not sha256)
    _chmod_like_new_file(partial)
    shutil.move(partial, target)
    return target


def _chmod_like_new_file(path: str) -> None:
    """Temporary files are created 0600; give the final file the permissions a plain open() would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _download_from_hub(hub_id: str, filename: str | None, cache_dir: str | None, architecture: str | None) -> str:
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError
    except ImportError as err:
        raise ImportError(
            f"loading {hub_id!r} from the Hugging Face hub needs huggingface_hub: `pip install huggingface_hub`"
        ) from err
    repo_id, _, revision = hub_id.partition("@")
    names = [filename] if filename else ["model.safetensors", "pytorch_model.bin"]  # timm's defaults
    failure: Exception | None = None
    for name in names:
        try:
            return hf_hub_download(repo_id, name, revision=revision or None, cache_dir=cache_dir)
        except EntryNotFoundError as err:  # not in the repo, or (Local...) offline and not cached: try the next
            failure = err
        except Exception as err:  # hub unreachable, HTTP or auth errors
            failure = err
            break
    if isinstance(failure, EntryNotFoundError) and not isinstance(failure, LocalEntryNotFoundError):
        raise CheckpointError(
            f"the Hugging Face hub repo {hub_id} has none of {names}; name the file with "
            "pretrained_cfg_overlay=dict(hf_hub_id=..., hf_hub_filename=...)"
        ) from failure
    name = names[0]
    url = f"https://huggingface.co/{repo_id}/resolve/{revision or 'main'}/{name}"
    raise CheckpointDownloadError(
        f"could not fetch {name} from the Hugging Face hub repo {hub_id} "
        f"({type(failure).__name__}: {str(failure).splitlines()[0] if str(failure) else ''}). "
        + _offline_help(url, name, architecture, _SHA256.get(f"{hub_id}:{filename or ''}"))
    ) from failure


# ----------------------------------------------------------------------------------------------------------
# pretrained cfg -> state_dict


def _resolve_source(cfg: Mapping[str, Any]) -> tuple[str, Any]:
    """Where the weights of a resolved pretrained cfg live, in timm's order of priority."""
    source = cfg.get("source") or ""
    if source == "hf-hub" and cfg.get("hf_hub_id"):
        return "hf-hub", cfg["hf_hub_id"]
    if source == "local-dir":
        return "local-dir", cfg.get("file")
    if cfg.get("state_dict") is not None:
        return "state_dict", cfg["state_dict"]
    if cfg.get("file"):
        return "file", cfg["file"]
    if cfg.get("hf_hub_id"):
        return "hf-hub", cfg["hf_hub_id"]
    if cfg.get("url"):
        return "url", cfg["url"]
    return "", None


def _expected_sha256(location: str, explicit: str | None) -> str | None:
    if explicit:
        return _check_sha256_arg(explicit, "sha256")
    return _SHA256.get(location)


def fetch_state_dict(
    pretrained_cfg: Mapping[str, Any],
    *,
    sha256: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, torch.Tensor]:
    """Fetch, verify and read the weights a pretrained cfg points to, unwrapped but not converted."""
    kind, location = _resolve_source(pretrained_cfg)
    arch = pretrained_cfg.get("architecture")
    cache_dir = os.fspath(cache_dir) if cache_dir else None
    if kind == "state_dict":
        return unwrap_state_dict(location, "pretrained_cfg state_dict")
    if kind == "file":
        return load_checkpoint_file(location, sha256=sha256)
    if kind == "local-dir":
        for name in ("model.safetensors", "pytorch_model.bin", "model.pth", "checkpoint.pth"):
            path = os.path.join(location or "", name)
            if os.path.isfile(path):
                return load_checkpoint_file(path, sha256=sha256)
        raise FileNotFoundError(f"local-dir {location!r} has no model.safetensors, pytorch_model.bin or model.pth")
    if kind == "hf-hub":
        filename = pretrained_cfg.get("hf_hub_filename")
        path = _download_from_hub(location, filename, cache_dir, arch)
        expected = _expected_sha256(f"{location}:{filename or ''}", sha256)
        _verify(path, expected, f"{path} (from the Hugging Face hub repo {location})")
        return _read_checkpoint(path)
    if kind == "url":
        if isinstance(location, (tuple, list)):  # timm allows (url, filename)
            location = location[0]
        expected = _expected_sha256(location, sha256)
        path = download_checkpoint(location, cache_dir=cache_dir, sha256=expected, architecture=arch)
        return _read_checkpoint(path)  # verified by download_checkpoint
    raise CheckpointError(
        f"no pretrained weights are published for {arch or 'this model'}; use pretrained=False, or load a file "
        "with pretrained=True, pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')"
    )


def convert_state_dict(model_name: str, state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict:
    """Map an official state_dict of ``model_name``'s family to our layout (identity without a converter)."""
    converter = get_converter(model_name)
    return converter(state_dict, model) if converter is not None else state_dict


# ----------------------------------------------------------------------------------------------------------
# building


def _pretrained_args(kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any], str | None]:
    """Pop ``pretrained_cfg`` and ``pretrained_cfg_overlay`` from build kwargs: (cfg argument for timm, overlay
    without ``sha256``, the ``sha256`` given in either)."""
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    sha256 = overlay.pop("sha256", None)
    cfg_arg = kwargs.pop("pretrained_cfg", None)
    if isinstance(cfg_arg, Mapping):
        cfg_arg = dict(cfg_arg)
        sha256 = sha256 or cfg_arg.pop("sha256", None)
    elif cfg_arg is not None and not isinstance(cfg_arg, str):  # a PretrainedCfg
        cfg_arg = cfg_arg.to_dict()
    return cfg_arg, overlay, sha256


def build_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    *,
    converter: Converter | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls`` for ``variant`` with timm's machinery; ``converter`` maps an official
    state_dict (already unwrapped from ``ckpt['model']``) to this model's layout (default: the converter of
    the variant's family record).

    ``kwargs`` go to ``build_model_with_cfg`` (``pretrained_cfg``, ``pretrained_cfg_overlay``, ``feature_cfg``,
    ``cache_dir``, ``features_only``, model arguments, ...); ``sha256`` may be given in the cfg or overlay.
    """
    if converter is None:
        converter = get_converter(variant)
    cfg_arg, overlay, sha256 = _pretrained_args(kwargs)
    if not pretrained:
        return build_model_with_cfg(
            model_cls,
            variant,
            False,
            pretrained_cfg=cfg_arg,
            pretrained_cfg_overlay=overlay,
            pretrained_filter_fn=converter,
            **kwargs,
        )

    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=cfg_arg, pretrained_cfg_overlay=overlay).to_dict()
    state_dict = fetch_state_dict(cfg, sha256=sha256, cache_dir=kwargs.get("cache_dir"))

    # timm's load_pretrained runs the converter, adapts the input conv, drops a mismatched classifier and loads.
    # It is handed a one-entry placeholder as the cfg's state_dict (a pretrained cfg is deep-copied by timm, the
    # real weights must not be), and no 'source' (which would make timm fetch from the hub itself); the converter
    # is applied to the weights fetched above instead.
    placeholder = {"_fetched_by_visionattn": torch.empty(0)}

    def _convert(_: dict, model: nn.Module) -> dict:
        return converter(state_dict, model) if converter is not None else state_dict

    model = build_model_with_cfg(
        model_cls,
        variant,
        True,
        pretrained_cfg=cfg_arg,
        pretrained_cfg_overlay={**overlay, "state_dict": placeholder, "source": None},
        pretrained_filter_fn=_convert,
        **kwargs,
    )
    model.pretrained_cfg.pop("state_dict", None)
    if cfg.get("source"):
        model.pretrained_cfg["source"] = cfg["source"]
    return model


# create_model kwargs that are not the classification model's arguments
_NOT_MODEL_KWARGS = ("features_only", "out_indices", "feature_cls", "feature_cfg", "cache_dir", "scriptable")


def _timm_filter(model_name: str) -> Callable | None:
    """The checkpoint filter timm's builder applies for ``model_name`` (its module's ``checkpoint_filter_fn``)."""
    import sys

    from timm.models import model_entrypoint

    return getattr(sys.modules.get(model_entrypoint(model_name).__module__), "checkpoint_filter_fn", None)


def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` whose pretrained weights always come through visionattn's loader.

    For a visionattn family this is ``timm.create_model`` (its models are built by :func:`build_model`). For a
    family bound from timm, ``timm.create_model(name, pretrained=True)`` would fetch and unpickle with timm's own
    loader; here the weights are fetched, verified (sha256) and read (weights_only / safetensors) by
    :func:`fetch_state_dict`, mapped by the family's ``converter`` when that is not timm's own filter, then handed
    to timm's build as a state_dict, where timm's filter and ``load_pretrained`` apply as usual.
    ``pretrained_cfg_overlay`` takes ``file=``, ``url=``, ``hf_hub_id=`` and ``sha256=`` as for our own families.
    """
    import timm

    from .models import _registry

    try:
        family = _registry.get_family(model_name)
    except KeyError:
        family = None
    if not pretrained or family is None or family.source != "timm":
        return timm.create_model(model_name, pretrained=pretrained, **kwargs)
    cfg_arg, overlay, sha256 = _pretrained_args(kwargs)
    cfg = resolve_pretrained_cfg(model_name, pretrained_cfg=cfg_arg, pretrained_cfg_overlay=overlay).to_dict()
    state_dict = fetch_state_dict(cfg, sha256=sha256, cache_dir=kwargs.get("cache_dir"))
    if family.converter is not None and family.converter is not _timm_filter(model_name):
        # timm's builder applies timm's own filter only; a record converter that differs (timm's filter misses an
        # official layout) maps the weights first, against the classification model built on the meta device
        with torch.device("meta"):
            ref = timm.create_model(model_name, **{k: v for k, v in kwargs.items() if k not in _NOT_MODEL_KWARGS})
        state_dict = family.converter(state_dict, ref)
    model = timm.create_model(
        model_name,
        pretrained=True,
        pretrained_cfg=cfg_arg,
        # a state_dict source, and no 'source', so that timm reads nothing itself
        pretrained_cfg_overlay={**overlay, "state_dict": state_dict, "source": None},
        **kwargs,
    )
    model.pretrained_cfg.pop("state_dict", None)
    if cfg.get("source"):
        model.pretrained_cfg["source"] = cfg["source"]
    return model


# ----------------------------------------------------------------------------------------------------------
# conversion tool


def convert_checkpoint(
    model_name: str,
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    sha256: str | None = None,
    hash_name: bool = False,
) -> tuple[str, str]:
    """Convert an official checkpoint ``src`` of ``model_name`` to our layout and write it to ``dst``.

    ``dst`` ending in ``.safetensors`` is written with safetensors, anything else with ``torch.save``. The
    converted weights must load strictly into ``timm.create_model(model_name, **model_kwargs)``. With
    ``hash_name`` the file is renamed ``<stem>-<sha256[:8]><ext>`` (timm's convention, checked on load).
    A ``<dst>.sha256`` file (``sha256sum`` format) is written next to it. Returns (path, sha256).
    """
    model = create_model(model_name, pretrained=False, **dict(model_kwargs or {}))
    state_dict = convert_state_dict(model_name, load_checkpoint_file(src, sha256=sha256), model)
    hint = (
        "pass the model arguments the checkpoint was trained with (num_classes, depths, embed_dims, ...) as "
        "model_kwargs / --model-kwargs"
    )
    built = f"{model_name}{' with ' + json.dumps(dict(model_kwargs)) if model_kwargs else ''}"
    try:
        result = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        lines = [line.strip() for line in str(err).strip().splitlines()[1:]]
        more = f" (and {len(lines) - 4} more)" if len(lines) > 4 else ""
        raise CheckpointError(f"{src} does not fit {built}: {' '.join(lines[:4])}{more}; {hint}") from None
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{src} does not convert to {built}: missing keys {result.missing_keys[:8]}, unexpected keys "
            f"{result.unexpected_keys[:8]}; {hint}"
        )
    tensors = {k: v.detach().contiguous().clone() for k, v in state_dict.items()}
    dst = os.fspath(dst)
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    if dst.endswith(".safetensors"):
        import safetensors.torch

        safetensors.torch.save_file(tensors, dst, metadata={"format": "pt", "model": model_name})
    else:
        torch.save(tensors, dst)
    _chmod_like_new_file(dst)  # safetensors writes through a 0600 temporary file
    digest = file_sha256(dst)
    if hash_name:
        stem, ext = os.path.splitext(dst)
        renamed = f"{stem}-{digest[:8]}{ext}"
        os.replace(dst, renamed)
        dst = renamed
    with open(dst + ".sha256", "w") as f:
        f.write(f"{digest}  {os.path.basename(dst)}\n")
    return dst, digest
