"""FocalNet implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py focalnet_tiny_srf --batch 4 \
        --compare tools/external/focalnet.py:birder,variant=focalnet_t_srf

``birder``: the PyPI package ``birder``, installed aside (``pip install --target DIR birder``), never a dependency of
visionattn; ``VISIONATTN_BIRDER`` names that directory (default /tmp/aside/birder). Its names: ``focalnet_{t,s,b}_
{srf,lrf}``, ``focalnet_{l,xl}{3,4}``. Nothing of it is part of this repository.
"""

from __future__ import annotations

import os
import sys

import torch.nn as nn

BIRDER_DEFAULT = "/tmp/aside/birder"


def on_path(env_var: str, default: str | None = None) -> str:
    """Put the directory named by ``env_var`` first on ``sys.path``, with a clear error when it is not set."""
    path = os.environ.get(env_var, default)
    if not path or not os.path.isdir(path):
        raise RuntimeError(f"{env_var}={path!r} is not a directory; set it to the checkout or install to benchmark")
    if path not in sys.path:
        sys.path.insert(0, path)
    return path


def birder(variant: str = "focalnet_t_srf", num_classes: int = 1000, size: int = 224) -> nn.Module:
    on_path("VISIONATTN_BIRDER", BIRDER_DEFAULT)
    from birder.model_registry import registry

    return registry.net_factory(variant, num_classes, size=(size, size))
