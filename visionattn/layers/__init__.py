"""Token mixers shared by families; each computes its attention through visionattn.kernels."""

from .agent_attention import AgentAttention
from .halo import HaloAttnOnKernel, use_halo_op
from .routing import BiLevelRoutingAttention

__all__ = ["AgentAttention", "BiLevelRoutingAttention", "HaloAttnOnKernel", "use_halo_op"]
