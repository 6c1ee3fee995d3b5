"""Sparse-attention ops: PyTorch references (ground truth, CPU) and Triton kernels behind one dispatch.

Each op has a functional entry, an ``nn.Module`` wrapper and a reference implementation; the path
is chosen by ``backend=``, ``VISIONATTN_KERNELS=auto|triton|reference`` or the device of the inputs,
and ``last_path(op)`` tells which ran ("bra", "na2d", "halo_attn", "sparse_attn"). The fallback rule, the error types,
the kernels' dtype / head-dim limits and the fp32 precision rule are the same for every op
(:mod:`visionattn.kernels._dispatch`); ``_aot`` compiles every kernel for sm_90 without a GPU.
"""

from ._dispatch import HAS_TRITON, kernel_mode, last_path
from .bra import BiLevelRoutingAttentionOp, bra, bra_reference
from .halo import HaloAttentionOp, halo_attn, halo_attn_reference
from .neighborhood import NeighborhoodAttention2DOp, na2d, na2d_reference
from .sparse import SparseAttentionOp, sparse_attn, sparse_attn_reference

__all__ = [
    "HAS_TRITON",
    "kernel_mode",
    "last_path",
    "bra",
    "bra_reference",
    "BiLevelRoutingAttentionOp",
    "na2d",
    "na2d_reference",
    "NeighborhoodAttention2DOp",
    "halo_attn",
    "halo_attn_reference",
    "HaloAttentionOp",
    "sparse_attn",
    "sparse_attn_reference",
    "SparseAttentionOp",
]
