"""TransNeXt implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py transnext_micro --batch 4 \
        --compare tools/external/transnext.py:official,VISIONATTN_OFFICIAL=/path/to/TransNeXt,variant=transnext_micro
    python tools/benchmark.py transnext_micro --batch 4 \
        --compare tools/external/transnext.py:birder,variant=transnext_micro

``official``: the paper's code (DaiShiResearch/TransNeXt, ``classification/``, its native PyTorch path) from a local
checkout named by ``VISIONATTN_OFFICIAL``, built for ``img_size``. ``birder``: the PyPI package ``birder``,
installed aside (``pip install --target DIR birder``), never a dependency of visionattn; ``VISIONATTN_BIRDER``
names that directory. Nothing of either is part of this repository. Both are built without stochastic depth, as
ours is by default.
"""

from __future__ import annotations

import contextlib
import importlib
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


@contextlib.contextmanager
def _official_imports():
    """The official module registers its constructors under our timm names and asks pkg_resources whether its CUDA
    extension is installed: import it with a registry stand-in that registers nothing and a pkg_resources that
    finds no extension (the native path), then restore both."""
    saved = {name: sys.modules.get(name) for name in ("timm.models.registry", "pkg_resources")}
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    resources = types.ModuleType("pkg_resources")

    class DistributionNotFound(Exception):
        pass

    def get_distribution(name):
        raise DistributionNotFound(name)

    resources.DistributionNotFound, resources.get_distribution = DistributionNotFound, get_distribution
    sys.modules["timm.models.registry"], sys.modules["pkg_resources"] = registry, resources
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def official(variant: str = "transnext_micro", num_classes: int = 1000, img_size: int = 224) -> nn.Module:
    root = on_path("VISIONATTN_OFFICIAL")
    classification = os.path.join(root, "classification")
    if classification not in sys.path:
        sys.path.insert(0, classification)
    with _official_imports():
        module = importlib.import_module("transnext")
    name = "transnext_micro_AAAA" if variant == "transnext_micro_aaaa" else variant
    return getattr(module, name)(img_size=img_size, pretrain_size=224 if "AAAA" not in name else 256,
                                 num_classes=num_classes)  # fmt: skip


def birder(variant: str = "transnext_micro", num_classes: int = 1000, size: int = 224) -> nn.Module:
    on_path("VISIONATTN_BIRDER", BIRDER_DEFAULT)
    from birder.model_registry import registry

    return registry.net_factory(variant, num_classes, size=(size, size), config={"drop_path_rate": 0.0})
