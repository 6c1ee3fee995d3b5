"""SHViT implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py shvit_s1 --batch 4 --compare tools/external/shvit.py:birder,variant=shvit_s1
    python tools/benchmark.py tools/external/shvit.py:fused --model-kwargs variant=shvit_s1 --batch 4 \
        --compare tools/external/shvit.py:birder,variant=shvit_s1,reparameterized=True

``birder``: the PyPI package ``birder``, installed aside (``pip install --target DIR birder``), never a dependency of
visionattn; ``VISIONATTN_BIRDER`` names that directory (default /tmp/aside/birder). ``reparameterized=True`` builds
birder's inference form (Conv-BN, BN-Linear and the depth-wise residuals fused), the counterpart of timm's
``model.fuse()``. Nothing of it is part of this repository.
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


def birder(
    variant: str = "shvit_s1", num_classes: int = 1000, size: int = 224, reparameterized: bool = False
) -> nn.Module:
    on_path("VISIONATTN_BIRDER", BIRDER_DEFAULT)
    from birder.model_registry import registry

    model = registry.net_factory(variant, num_classes, size=(size, size))
    if reparameterized:
        model.reparameterize_model()
    return model


def fused(variant: str = "shvit_s1", num_classes: int = 1000) -> nn.Module:
    """timm's model (the one visionattn binds) after ``model.fuse()``: the inference form to set beside birder's
    ``reparameterized=True``."""
    import timm

    return timm.create_model(variant, num_classes=num_classes).eval().fuse()
