"""Agent-DeiT implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py agent_deit_small --batch 4 \
        --compare tools/external/agent_deit.py:official,VISIONATTN_OFFICIAL=/path/to/checkout,variant=agent_deit_small

``official``: the paper's classification model (LeapLabTHU/Agent-Attention, ``agent_transformer/models/
agent_deit.py`` and the ``deit.py`` beside it, whose ``Block`` Agent-DeiT-B's plain blocks use) from a local checkout
named by ``VISIONATTN_OFFICIAL``. The two files are loaded as a package of their own (the repository's ``models``
package also imports the Swin, PVT and CSwin files and their dependencies); their ``@register_model`` decorators,
which would overwrite timm's ``vit_*`` / ``deit_*`` names in this process, are turned off while they load. They need
only torch and timm. Nothing of them is part of this repository. Built without stochastic depth, as our model is in
eval mode; birder has no Agent-DeiT.
"""

from __future__ import annotations

import importlib
import os
import sys
import types

import torch.nn as nn

# the official agent_deit_* constructors and cfgs/agent_deit_*.yaml (AGENT.NUM; agent_layer of agent_deit_base)
_OFFICIAL = {
    "agent_deit_tiny": dict(embed_dim=192, num_heads=3, agent_num=[49] * 4),
    "agent_deit_small": dict(embed_dim=384, num_heads=6, agent_num=[49] * 4),
    "agent_deit_base": dict(embed_dim=768, num_heads=12, agent_num=[81] * 4, agent_layer=4),
}
_SIZES = {"agent_deit_small_448": ("agent_deit_small", 448)}
_PACKAGE = "_official_agent_deit"


def _official_module():
    root = os.environ.get("VISIONATTN_OFFICIAL")
    folder = os.path.join(root or "", "agent_transformer", "models")
    if not root or not os.path.isfile(os.path.join(folder, "agent_deit.py")):
        raise RuntimeError(
            f"VISIONATTN_OFFICIAL={root!r} does not hold agent_transformer/models/agent_deit.py; set it to a checkout "
            "of LeapLabTHU/Agent-Attention"
        )
    name = f"{_PACKAGE}.agent_deit"
    if name not in sys.modules:
        package = types.ModuleType(_PACKAGE)
        package.__path__ = [folder]  # relative imports (`from .deit import Block`) resolve in this folder
        sys.modules[_PACKAGE] = package
        registry = importlib.import_module("timm.models.registry")
        keep = registry.register_model
        registry.register_model = lambda fn: fn
        try:
            importlib.import_module(name)
        finally:
            registry.register_model = keep
    return sys.modules[name]


def official(variant: str = "agent_deit_small", num_classes: int = 1000) -> nn.Module:
    """The official Agent-DeiT ``VisionTransformer`` of ``variant`` (one of our model names), at its training size."""
    base, img = _SIZES.get(variant, (variant, 224))
    if base not in _OFFICIAL:
        raise ValueError(f"variant={variant!r} is not one of {sorted(_OFFICIAL) + sorted(_SIZES)}")
    off = _official_module()
    return off.VisionTransformer(
        img_size=img, patch_size=16, depth=12, drop_path_rate=0.0, num_classes=num_classes, **_OFFICIAL[base]
    )
