"""Model families. Each module of this package (every ``visionattn/models/<family>.py`` not starting with an
underscore) declares its family once (``_registry.register_family``); importing the package imports them all,
which registers the families' models with timm (or binds timm's own). A new family is a new file: nothing here
names one."""

from __future__ import annotations

import importlib
import pkgutil

from ._registry import DenseRecipe, Family, families, get_family, list_models, register_family


def _import_families() -> None:
    # sorted: registration order (and so visionattn.list_families()) does not depend on the file system
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_families()

__all__ = ["DenseRecipe", "Family", "families", "get_family", "list_models", "register_family"]
