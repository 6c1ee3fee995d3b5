"""BiFormer implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py biformer_tiny --batch 4 \
        --compare tools/external/biformer.py:official,VISIONATTN_OFFICIAL=/path/to/BiFormer,variant=biformer_tiny
    python tools/benchmark.py biformer_tiny --batch 4 --compare tools/external/biformer.py:birder,variant=biformer_t

``official``: the paper's code (rayleizhu/BiFormer) from a local checkout named by ``VISIONATTN_OFFICIAL``.
``birder``: the PyPI package ``birder``, installed aside (``pip install --target DIR birder``), never a dependency of
visionattn; ``VISIONATTN_BIRDER`` names that directory. Nothing of either is part of this repository.
"""

from __future__ import annotations

import os
import sys
import types

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


def official(variant: str = "biformer_tiny", num_classes: int = 1000) -> nn.Module:
    on_path("VISIONATTN_OFFICIAL")
    if "fairscale" not in sys.modules:
        # models/biformer.py imports fairscale's checkpoint_wrapper, which it calls only when activation
        # checkpointing is asked for; an empty stand-in lets it import without fairscale installed
        stub = types.ModuleType("fairscale.nn.checkpoint")
        stub.checkpoint_wrapper = lambda module, **_: module
        for name in ("fairscale", "fairscale.nn"):
            sys.modules[name] = types.ModuleType(name)
        sys.modules["fairscale.nn.checkpoint"] = stub
    from models import biformer  # the official package layout

    return getattr(biformer, variant)(pretrained=False, num_classes=num_classes)


def birder(variant: str = "biformer_t", num_classes: int = 1000, size: int = 224) -> nn.Module:
    on_path("VISIONATTN_BIRDER", BIRDER_DEFAULT)
    from birder.model_registry import registry

    return registry.net_factory(variant, num_classes, size=(size, size))
