"""Token mixers shared by families; each computes its attention through visionattn.kernels."""

from .halo import HaloAttnOnKernel, use_halo_op
from .routing import BiLevelRoutingAttention

__all__ = ["BiLevelRoutingAttention", "HaloAttnOnKernel", "use_halo_op"]
