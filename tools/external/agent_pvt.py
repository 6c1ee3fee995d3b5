"""Agent-PVT implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py agent_pvt_tiny --batch 4 \
        --compare tools/external/agent_pvt.py:official,VISIONATTN_OFFICIAL=/path/to/checkout,variant=agent_pvt_tiny

``official``: the paper's classification model (LeapLabTHU/Agent-Attention, ``agent_transformer/models/
agent_pvt.py``) from a local checkout named by ``VISIONATTN_OFFICIAL``, loaded as a single file (the ``models``
package also imports the Swin and CSwin files and their dependencies). It needs only torch and timm. Nothing of it is
part of this repository. Built without stochastic depth, as our model is by default; birder has PVT v1 but no
Agent-PVT.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from functools import partial

import torch.nn as nn

# the official constructors (agent_pvt_tiny ... agent_pvt_large) with the cfgs/agent_pvt_*.yaml agent settings
_DEPTHS = {
    "agent_pvt_tiny": [2, 2, 2, 2],
    "agent_pvt_small": [3, 4, 6, 3],
    "agent_pvt_medium": [3, 4, 18, 3],
    "agent_pvt_large": [3, 8, 27, 3],
}
_SIZES = {"agent_pvt_medium_256": ("agent_pvt_medium", 256)}


def _official_module():
    root = os.environ.get("VISIONATTN_OFFICIAL")
    path = os.path.join(root or "", "agent_transformer", "models", "agent_pvt.py")
    if not root or not os.path.isfile(path):
        raise RuntimeError(
            f"VISIONATTN_OFFICIAL={root!r} does not hold agent_transformer/models/agent_pvt.py; set it to a checkout "
            "of LeapLabTHU/Agent-Attention"
        )
    name = "_official_agent_pvt"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def official(variant: str = "agent_pvt_tiny", num_classes: int = 1000) -> nn.Module:
    """The official ``PyramidVisionTransformer`` of ``variant`` (one of our model names), at its training size."""
    base, img = _SIZES.get(variant, (variant, 224))
    if base not in _DEPTHS:
        raise ValueError(f"variant={variant!r} is not one of {sorted(_DEPTHS) + sorted(_SIZES)}")
    off = _official_module()
    return off.PyramidVisionTransformer(
        img_size=img,
        patch_size=4,
        embed_dims=[64, 128, 320, 512],
        num_heads=[1, 2, 5, 8],
        mlp_ratios=[8, 8, 4, 4],
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        depths=_DEPTHS[base],
        sr_ratios=[8, 4, 2, 1],
        agent_num=[9, 16, 49, 49],
        attn_type="AAAA",
        drop_path_rate=0.0,
        num_classes=num_classes,
    )
