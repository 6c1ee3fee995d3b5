"""Model families; importing a family module registers its models with timm."""

from __future__ import annotations

from . import biformer  # noqa: F401

# Every family module appends the names it registers here (official names and aliases).
from ._registry import list_models  # noqa: E402

__all__ = ["list_models"]
