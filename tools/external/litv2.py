"""LITv2 implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py litv2_small --batch 4 \
        --compare tools/external/litv2.py:official,VISIONATTN_OFFICIAL=/path/to/LITv2,variant=litv2_small
    python tools/benchmark.py litv2_small --batch 4 --compare tools/external/litv2.py:birder,variant=lit_v2_s

``official``: the paper's code (ziplab/LITv2, ``classification/models``) from a local checkout named by
``VISIONATTN_OFFICIAL``. Its deformable conv is a compiled CUDA extension that imports apex; a stand-in module
with the same parameters takes its place, sampling with ``torchvision.ops.deform_conv2d`` (``dcn="torchvision"``,
the op our model uses, so the comparison is of everything else) or mmcv's CPU op (``dcn="mmcv"``).
``birder``: the PyPI package ``birder``, installed aside (``pip install --target DIR birder``), never a dependency of
visionattn; ``VISIONATTN_BIRDER`` names that directory. Nothing of either is part of this repository.
Both are built without stochastic depth, as our model is by default.
"""

from __future__ import annotations

import math
import os
import sys
import types

import torch
import torch.nn as nn

BIRDER_DEFAULT = "/tmp/aside/birder"
_OFFICIAL = {  # the official yaml configs (classification/configs/litv2-*.yaml)
    "litv2_small": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "litv2_medium": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "litv2_base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}
_BIRDER = {
    "lit_v2_s": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24]),
    "lit_v2_m": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24]),
    "lit_v2_b": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32]),
}


def on_path(env_var: str, default: str | None = None) -> str:
    """Put the directory named by ``env_var`` first on ``sys.path``, with a clear error when it is not set."""
    path = os.environ.get(env_var, default)
    if not path or not os.path.isdir(path):
        raise RuntimeError(f"{env_var}={path!r} is not a directory; set it to the checkout or install to benchmark")
    if path not in sys.path:
        sys.path.insert(0, path)
    return path


class _DeformConvStandIn(nn.Module):
    """The official ``DeformConv2dPack``'s parameters (weight, bias, zero-initialised ``conv_offset``) on a CPU op."""

    impl = "torchvision"

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation=1, *args, **kwargs):
        super().__init__()
        pair = nn.modules.utils._pair
        self.stride, self.padding, self.dilation = pair(stride), pair(padding), pair(dilation)
        k = pair(kernel_size)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *k))
        self.bias = nn.Parameter(torch.empty(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -1 / math.sqrt(self.weight[0].numel()), 1 / math.sqrt(self.weight[0].numel()))
        self.conv_offset = nn.Conv2d(in_channels, 2 * k[0] * k[1], k, self.stride, self.padding, bias=True)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        offset = self.conv_offset(x)
        if self.impl == "mmcv":
            from mmcv.ops import deform_conv2d

            out = deform_conv2d(x, offset, self.weight, self.stride, self.padding, self.dilation, 1, 1, False, 1)
            return out + self.bias.view(1, -1, 1, 1)
        import torchvision

        return torchvision.ops.deform_conv2d(
            x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation
        )


def official(variant: str = "litv2_small", num_classes: int = 1000, size: int = 224, dcn: str = "torchvision"):
    """The official classification ``LITv2`` (fixed input ``size``) with the DCN stand-in."""
    if dcn not in ("torchvision", "mmcv"):
        raise ValueError(f"dcn={dcn!r} must be 'torchvision' or 'mmcv'")
    root = on_path("VISIONATTN_OFFICIAL")
    classification = os.path.join(root, "classification")
    if classification not in sys.path:
        sys.path.insert(0, classification)
    stand_in = types.ModuleType("mm_modules.DCN.modules.deform_conv2d")
    stand_in.DeformConv2dPack = type("DeformConv2dPack", (_DeformConvStandIn,), {"impl": dcn})
    for name in ("mm_modules", "mm_modules.DCN", "mm_modules.DCN.modules"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["mm_modules.DCN.modules.deform_conv2d"] = stand_in
    from models.litv2 import LITv2  # the official package layout

    return LITv2(
        img_size=size,
        num_classes=num_classes,
        mlp_ratio=4.0,
        qkv_bias=True,
        drop_path_rate=0.0,
        alpha=0.9,
        local_ws=[0, 0, 2, 1],
        **_OFFICIAL[variant],
    )


def birder(variant: str = "lit_v2_s", num_classes: int = 1000, size: int = 224) -> nn.Module:
    on_path("VISIONATTN_BIRDER", BIRDER_DEFAULT)
    from birder.model_registry import registry

    config = dict(_BIRDER[variant], local_ws=[0, 0, 2, 1], alpha=0.9, drop_path_rate=0.0)
    return registry.net_factory(variant, num_classes, size=(size, size), config=config)
