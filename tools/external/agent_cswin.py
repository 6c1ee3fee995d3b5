"""Agent-CSwin implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    PYTHONPATH=/path/to/einops python tools/benchmark.py agent_cswin_tiny --batch 4 --compare \
        tools/external/agent_cswin.py:official,VISIONATTN_OFFICIAL=/path/to/Agent-Attention,variant=agent_cswin_tiny

``official``: the paper's code (LeapLabTHU/Agent-Attention, ``agent_transformer/models/agent_cswin.py``) from a
local checkout named by ``VISIONATTN_OFFICIAL``, built with the configuration of ``agent_transformer/cfgs`` for
``variant`` (agent numbers 9-16-49-49, ``AABB``, the agent split at the stage resolutions). It needs einops, which
is not a dependency of visionattn. Nothing of it is part of this repository. Built without stochastic depth, as
ours is by default.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import types

import torch.nn as nn

# variant -> (official constructor, training size, CSWIN_LA_SPLIT_SIZE) of agent_transformer/cfgs/agent_cswin_*.yaml
_OFFICIAL = {
    "agent_cswin_tiny": ("Agent_CSWin_64_24181_tiny_224", 224, "56-28-14-7"),
    "agent_cswin_small": ("Agent_CSWin_64_36292_small_224", 224, "56-28-14-7"),
    "agent_cswin_base": ("Agent_CSWin_96_36292_base_224", 224, "56-28-14-7"),
    "agent_cswin_base_384": ("Agent_CSWin_96_36292_base_384", 384, "96-48-24-12"),
}


def on_path(env_var: str, default: str | None = None) -> str:
    """The directory named by ``env_var``, with a clear error when it is not set."""
    path = os.environ.get(env_var, default)
    if not path or not os.path.isdir(path):
        raise RuntimeError(f"{env_var}={path!r} is not a directory; set it to the checkout or install to benchmark")
    return path


@contextlib.contextmanager
def _registry_stand_in():
    """The official module registers nothing we need; its ``timm.models.registry`` import gets a stand-in whose
    ``register_model`` returns the function unchanged, restored afterwards."""
    saved = sys.modules.get("timm.models.registry")
    registry = types.ModuleType("timm.models.registry")
    registry.register_model = lambda fn: fn
    sys.modules["timm.models.registry"] = registry
    try:
        yield
    finally:
        if saved is None:
            sys.modules.pop("timm.models.registry", None)
        else:
            sys.modules["timm.models.registry"] = saved


def official(variant: str = "agent_cswin_tiny", num_classes: int = 1000) -> nn.Module:
    if variant not in _OFFICIAL:
        raise ValueError(f"variant={variant!r} is not one of {sorted(_OFFICIAL)}")
    root = on_path("VISIONATTN_OFFICIAL")
    path = os.path.join(root, "agent_transformer", "models", "agent_cswin.py")
    spec = importlib.util.spec_from_file_location("official_agent_cswin", path)
    module = importlib.util.module_from_spec(spec)
    with _registry_stand_in():
        spec.loader.exec_module(module)
    name, size, la_split = _OFFICIAL[variant]
    return getattr(module, name)(
        img_size=size,
        la_split_size=la_split,
        agent_num=["9", "16", "49", "49"],
        attn_type="AABB",
        num_classes=num_classes,
    )
