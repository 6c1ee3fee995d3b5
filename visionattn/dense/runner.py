"""mmengine Runner set-up shared by ``tools/train.py`` and ``tools/test.py``.

Fixes three problems of mmengine 0.10 on current torch / CPU-only machines in one place:

* resuming (or ``load_from``) an mmengine checkpoint under torch's ``weights_only=True`` default: the
  checkpoint pickles ``HistoryBuffer`` and numpy arrays/scalars; :func:`allow_mmengine_checkpoints`
  allow-lists exactly those (the ``getattr`` calls in the pickle are answered for ``HistoryBuffer``'s
  statistics methods only, so the loader stays on torch's safe path);
* ``--launcher pytorch`` without a GPU: mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its
  default DDP wrapper passes ``device_ids=[LOCAL_RANK]``; :func:`setup_launcher` initialises a gloo process
  group first (the Runner then skips its own initialisation) and wraps with ``device_ids=None``;
* SyncBN and AMP have no CPU implementation: :func:`cpu_safe_config` turns them into BN and fp32 in the
  config, and the Runner built by :func:`build_runner` reverts SyncBN layers built in code before wrapping.
"""

from __future__ import annotations

import logging
import os
import pickle
import warnings
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .backbone import MM_HINT

try:
    from mmengine.config import Config, DictAction
    from mmengine.logging import HistoryBuffer
    from mmengine.model import is_model_wrapper, revert_sync_batchnorm
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"the training tools need mmengine: {MM_HINT}") from e

__all__ = [
    "DictAction",
    "allow_mmengine_checkpoints",
    "build_runner",
    "cpu_safe_config",
    "load_config",
    "setup_launcher",
]

_logger = logging.getLogger(__name__)


def _history_buffer_getattr(obj: Any, name: str) -> Any:
    """Stands in for ``builtins.getattr`` while unpickling: only ``HistoryBuffer``'s statistics methods.

    ``HistoryBuffer.__getstate__`` stores its statistics functions (``HistoryBuffer.min`` ...), which pickle
    as ``getattr(HistoryBuffer, 'min')``. Allow-listing the real ``getattr`` would let a crafted file reach
    arbitrary attributes, so only those lookups are answered.
    """
    # the four built-in statistics, plus any registered with HistoryBuffer.register_statistics
    if obj is HistoryBuffer and name in {"min", "max", "current", "mean", *HistoryBuffer._statistics_methods}:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f"refusing getattr({obj!r}, {name!r}) while loading a checkpoint")


def allow_mmengine_checkpoints() -> None:
    """Let ``torch.load(weights_only=True)`` read mmengine checkpoints (resume, ``load_from``, test)."""
    multiarray = getattr(np, "_core", None)
    multiarray = multiarray.multiarray if multiarray is not None else np.core.multiarray
    safe: list[Any] = [
        HistoryBuffer,
        np.ndarray,
        np.dtype,
        # numpy >= 2 pickles these as numpy._core.multiarray.*, older files say numpy.core.multiarray.*
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        multiarray.scalar,
        multiarray._reconstruct,
        (_history_buffer_getattr, "builtins.getattr"),
    ]
    # numpy >= 1.25 pickles a dtype through its class (numpy.dtypes.Float64DType ...)
    for name in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint32", "float16", "float32", "float64"):
        cls = type(np.dtype(name))
        if cls is not np.dtype:
            safe.append(cls)
    torch.serialization.add_safe_globals(safe)


def _cuda() -> bool:
    return torch.cuda.is_available()


def _replace_type(node: Any, old: str, new: str) -> int:
    """Replace ``type=old`` by ``type=new`` in every dict of a config tree; returns the count."""
    count = 0
    if isinstance(node, dict):
        if node.get("type") == old:
            node["type"] = new
            count += 1
        for v in node.values():
            count += _replace_type(v, old, new)
    elif isinstance(node, (list, tuple)):
        for v in node:
            count += _replace_type(v, old, new)
    return count


def cpu_safe_config(cfg: Config) -> Config:
    """Without CUDA: SyncBN -> BN, no ``sync_bn`` conversion, AMP optimizer wrapper -> fp32 (in place)."""
    if _cuda():
        return cfg
    n = _replace_type(cfg._cfg_dict, "SyncBN", "BN")
    if n:
        _logger.warning("no CUDA device: %d SyncBN layer config(s) use BN instead", n)
    if cfg.get("sync_bn") is not None:
        cfg.pop("sync_bn")
        _logger.warning("no CUDA device: cfg.sync_bn ignored (SyncBatchNorm has no CPU implementation)")
    optim = cfg.get("optim_wrapper")
    if isinstance(optim, dict) and optim.get("type") == "AmpOptimWrapper":
        optim["type"] = "OptimWrapper"
        for key in ("loss_scale", "dtype", "use_fsdp"):
            optim.pop(key, None)
        warnings.warn("no CUDA device: the config's AMP (AmpOptimWrapper) is replaced by fp32 training", stacklevel=2)
    return cfg


def setup_launcher(cfg: Config, launcher: str) -> None:
    """Set ``cfg.launcher``; on CPU with ``launcher='pytorch'`` start gloo and wrap DDP without device ids."""
    if launcher not in ("none", "pytorch"):
        raise ValueError(f"launcher={launcher!r} is not supported; use 'none' or 'pytorch' (torchrun)")
    cfg.launcher = launcher
    if launcher == "none" or _cuda():
        return
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ValueError(
            f"--launcher pytorch needs the torchrun environment ({', '.join(missing)} unset); "
            f"start with `torchrun --nproc_per_node N tools/train.py ...` or use --launcher none"
        )
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    wrapper = dict(cfg.get("model_wrapper_cfg") or {})
    wrapper.setdefault("type", "MMDistributedDataParallel")
    wrapper.setdefault("broadcast_buffers", False)
    wrapper.setdefault("find_unused_parameters", cfg.get("find_unused_parameters", False))
    # CPU modules must be wrapped with device_ids=None; mmengine's default is [LOCAL_RANK]
    wrapper["device_ids"] = None
    cfg.model_wrapper_cfg = wrapper


def load_config(
    path: str,
    *,
    work_dir: str | None = None,
    cfg_options: dict | None = None,
) -> Config:
    """Read a config, merge ``--cfg-options`` and pick the work dir (default ``work_dirs/<config name>``)."""
    if not os.path.isfile(path):
        raise ValueError(f"config {path!r} does not exist; pass a file under configs/")
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = os.path.join("work_dirs", os.path.splitext(os.path.basename(path))[0])
    return cfg


def build_runner(cfg: Config) -> Runner:
    """Build the Runner (``cfg.runner_type`` if the config names one) with the fixes above applied."""
    allow_mmengine_checkpoints()
    cpu_safe_config(cfg)
    scope = cfg.get("default_scope")
    if scope in ("mmdet", "mmseg"):
        from .backbone import require_mm

        require_mm(scope)
    base = RUNNERS.get(cfg.runner_type) if "runner_type" in cfg else Runner

    class CPUSafeRunner(base):
        def wrap_model(self, model_wrapper_cfg: dict | None, model: torch.nn.Module) -> torch.nn.Module:
            # SyncBatchNorm built in code (not from a config's norm_cfg) must become BN before DDP sees it
            if not _cuda() and not is_model_wrapper(model):
                model = revert_sync_batchnorm(model)
            return super().wrap_model(model_wrapper_cfg, model)

    return CPUSafeRunner.from_cfg(cfg)
