"""Official-checkpoint conversion and safe loading.

Every family builds its models through :func:`build_model`, which wraps timm's
``build_model_with_cfg`` and converts official checkpoints with the family's converter.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn
from timm.models import build_model_with_cfg

Converter = Callable[[dict, nn.Module], dict]


def build_model(
    model_cls: type[nn.Module],
    variant: str,
    pretrained: bool,
    *,
    converter: Converter | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build ``model_cls`` for ``variant`` with timm's machinery; ``converter`` maps an official
    state_dict (already unwrapped from ``ckpt['model']``) to this model's layout."""
    return build_model_with_cfg(model_cls, variant, pretrained, pretrained_filter_fn=converter, **kwargs)
