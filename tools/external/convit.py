"""ConViT implementations to benchmark beside ours (``tools/benchmark.py --compare FILE.py:FUNC``).

    python tools/benchmark.py convit_tiny --batch 4 --compare tools/external/convit.py:timm_convit,variant=convit_tiny
    python tools/benchmark.py convit_tiny --batch 4 --model-kwargs fused_gpsa=True \
        --compare tools/external/convit.py:timm_convit,variant=convit_tiny

``timm_convit``: timm's own ``timm.models.convit.ConVit`` with the arguments of timm's entrypoint for ``variant``
(after ``import visionattn`` the name builds visionattn's subclass; this builds timm's class itself). 224 x 224 only.
"""

from __future__ import annotations

import torch.nn as nn


def timm_convit(variant: str = "convit_tiny", num_classes: int = 1000) -> nn.Module:
    from timm.models import convit as timm_convit_module

    from visionattn.models.convit import _VARIANTS

    if variant not in _VARIANTS:
        raise ValueError(f"variant={variant!r} is not one of {sorted(_VARIANTS)}")
    return timm_convit_module.ConVit(num_classes=num_classes, **_VARIANTS[variant])
