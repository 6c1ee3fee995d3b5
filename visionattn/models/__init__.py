"""Model families. Each module declares its family once (``_registry.register_family``); importing it registers
the family's models with timm (or binds timm's own)."""

from __future__ import annotations

from . import biformer, davit  # noqa: F401
from ._registry import DenseRecipe, Family, families, get_family, list_models, register_family  # noqa: E402

__all__ = ["DenseRecipe", "Family", "families", "get_family", "list_models", "register_family"]
