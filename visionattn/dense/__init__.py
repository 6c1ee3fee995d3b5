"""mmdet / mmseg integration: one backbone adapter for every registered model, and runner helpers.

Needs the ``mm`` extra (``pip install visionattn[mm]``; mmcv with ops comes from ``tools/install_mmcv.py``).
Importing this package registers ``VisionAttnBackbone`` and the necks of its ``*_neck`` modules with mmengine
(and with mmdet / mmseg when they import). Without mmengine the package still imports (its dataset tools need no
mmengine); using the backbone then raises an ImportError that says what to install.
"""

from __future__ import annotations

import importlib.util
from typing import Any

__all__ = ["VisionAttnBackbone", "require_mm"]

if importlib.util.find_spec("mmengine") is not None:
    import pkgutil

    from .backbone import VisionAttnBackbone, require_mm

    # necks that family records name in DenseRecipe.neck: each *_neck module registers its neck on import
    for _info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if _info.name.endswith("_neck"):
            importlib.import_module(f"{__name__}.{_info.name}")
else:  # pragma: no cover - depends on the install

    def __getattr__(name: str) -> Any:
        if name in __all__:
            from . import backbone  # raises the ImportError naming the mm extra

            return getattr(backbone, name)
        raise AttributeError(name)
