"""Agent-Swin implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py agent_swin_tiny --batch 4 \
        --compare tools/external/agent_swin.py:official,VISIONATTN_OFFICIAL=/path/to/checkout,variant=agent_swin_tiny

``official``: the paper's classification model (LeapLabTHU/Agent-Attention, ``agent_transformer/models/
agent_swin.py``) from a local checkout named by ``VISIONATTN_OFFICIAL``, loaded as a single file (the ``models``
package also imports the CSwin and PVT files and their dependencies). It needs only torch and timm. Nothing of it is
part of this repository. Built without stochastic depth, as our model is in eval mode; birder has no Agent-Swin.
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch.nn as nn

# the official cfgs/agent_swin_*.yaml (WINDOW_SIZE is the A blocks' window: the stage-1 grid)
_OFFICIAL = {
    "agent_swin_tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], attn_type="AAAB"),
    "agent_swin_small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], attn_type="AABB"),
    "agent_swin_base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], attn_type="AAMB2"),
}
_SIZES = {"agent_swin_small_288": ("agent_swin_small", 288), "agent_swin_base_384": ("agent_swin_base", 384)}


def _official_module():
    root = os.environ.get("VISIONATTN_OFFICIAL")
    path = os.path.join(root or "", "agent_transformer", "models", "agent_swin.py")
    if not root or not os.path.isfile(path):
        raise RuntimeError(
            f"VISIONATTN_OFFICIAL={root!r} does not hold agent_transformer/models/agent_swin.py; set it to a checkout "
            "of LeapLabTHU/Agent-Attention"
        )
    name = "_official_agent_swin"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def official(variant: str = "agent_swin_tiny", num_classes: int = 1000) -> nn.Module:
    """The official ``AgentSwinTransformer`` of ``variant`` (one of our model names), at its training size."""
    base, img = _SIZES.get(variant, (variant, 224))
    if base not in _OFFICIAL:
        raise ValueError(f"variant={variant!r} is not one of {sorted(_OFFICIAL) + sorted(_SIZES)}")
    off = _official_module()
    return off.AgentSwinTransformer(
        img_size=img,
        window_size=img // 4,
        agent_num=[9, 16, 49, 49],
        drop_path_rate=0.0,
        num_classes=num_classes,
        **_OFFICIAL[base],
    )
