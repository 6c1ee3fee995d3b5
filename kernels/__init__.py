"""Sparse-attention ops: PyTorch references (ground truth, CPU) and Triton kernels behind one dispatch.

Each op has a functional entry, an ``nn.Module`` wrapper and a reference implementation; the path
is chosen by ``backend=``, ``VISIONATTN_KERNELS=auto|triton|reference`` or the device of the inputs,
and ``last_path(op)`` tells which ran.
"""

from ._dispatch import HAS_TRITON, kernel_mode, last_path
from .bra import BiLevelRoutingAttentionOp, bra, bra_reference

__all__ = [
    "HAS_TRITON",
    "kernel_mode",
    "last_path",
    "bra",
    "bra_reference",
    "BiLevelRoutingAttentionOp",
]
