"""timm's HaloAttn computed through :func:`visionattn.kernels.halo.halo_attn`.

``HaloAttnOnKernel(attn)`` reuses the projections (``q``, ``kv``), the relative tables (``pos_embed``) and
the optional ``pool`` of an existing ``timm.layers.halo_attn.HaloAttn`` (the same module objects, registered
under the same names, so state dicts are unchanged) and replaces only the unfold-and-softmax part.
``use_halo_op(model)`` swaps every HaloAttn of a timm model (halonet26t, sehalonet33ts, ...) in place.

With ``pad_mode="zeros"`` the output equals timm's wherever timm accepts the input; unlike timm, maps that
are not multiples of ``block_size`` also work: the projected keys/values are padded with zeros up to the
block multiple (like timm's halo) and the output is cropped. ``pad_mode="mask"`` excludes every key outside
the feature map instead.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import register_notrace_module
from timm.layers.halo_attn import HaloAttn

from ..kernels.halo import halo_attn

__all__ = ["HaloAttnOnKernel", "use_halo_op"]


# FX keeps the layer whole: the op's checks and dispatch read the map size in Python
@register_notrace_module
class HaloAttnOnKernel(nn.Module):
    """A timm ``HaloAttn`` whose attention runs on ``halo_attn``; parameters are shared, not copied.

    forward: x (B, C, H, W) -> (B, dim_out, H / stride, W / stride).
    """

    def __init__(self, attn: HaloAttn, backend: str | None = None, pad_mode: str = "zeros"):
        super().__init__()
        if not isinstance(attn, HaloAttn):
            raise TypeError(f"attn must be a timm.layers.halo_attn.HaloAttn, got {type(attn).__name__}")
        if pad_mode not in ("zeros", "mask"):
            raise ValueError(f"pad_mode={pad_mode!r} is not one of ('zeros', 'mask')")
        self.num_heads = attn.num_heads
        self.dim_head_qk = attn.dim_head_qk
        self.dim_head_v = attn.dim_head_v
        self.dim_out_v = attn.dim_out_v
        self.scale = attn.scale
        self.scale_pos_embed = attn.scale_pos_embed
        self.block_size = attn.block_size
        self.halo_size = attn.halo_size
        self.block_stride = attn.block_stride
        self.backend = backend
        self.pad_mode = pad_mode
        # the same submodules under timm's names keep checkpoints loadable either way
        self.q = attn.q
        self.kv = attn.kv
        self.pos_embed = attn.pos_embed
        self.pool = attn.pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        nh, dqk, dv = self.num_heads, self.dim_head_qk, self.dim_head_v
        q = self.q(x)
        hq, wq = q.shape[-2:]
        q = q.reshape(b, nh, dqk, hq, wq).permute(0, 1, 3, 4, 2)
        # timm's kv channels are per head: dqk key channels then dv value channels
        k, v = self.kv(x).reshape(b, nh, dqk + dv, h, w).permute(0, 1, 3, 4, 2).split([dqk, dv], dim=-1)
        out = halo_attn(
            q,
            k,
            v,
            self.block_size,
            self.halo_size,
            rel_height=self.pos_embed.height_rel,
            rel_width=self.pos_embed.width_rel,
            scale=self.scale,
            scale_pos_embed=self.scale_pos_embed,
            pad_mode=self.pad_mode,
            backend=self.backend,
        )
        out = out.permute(0, 1, 4, 2, 3).reshape(b, self.dim_out_v, hq, wq)
        return self.pool(out)

    def extra_repr(self) -> str:
        return (
            f"heads={self.num_heads}, block_size={self.block_size}, halo_size={self.halo_size}, "
            f"stride={self.block_stride}, pad_mode={self.pad_mode!r}, backend={self.backend!r}"
        )


def use_halo_op(model: nn.Module, backend: str | None = None, pad_mode: str = "zeros") -> nn.Module:
    """Swap every timm ``HaloAttn`` in ``model`` for :class:`HaloAttnOnKernel`, in place; returns ``model``.

    Layers swapped before get the new ``backend`` and ``pad_mode``.
    """
    if pad_mode not in ("zeros", "mask"):
        raise ValueError(f"pad_mode={pad_mode!r} is not one of ('zeros', 'mask')")
    for name, module in list(model.named_modules()):
        if isinstance(module, HaloAttnOnKernel):
            module.backend, module.pad_mode = backend, pad_mode
        elif isinstance(module, HaloAttn):
            if not name:
                raise TypeError("model is itself a HaloAttn; wrap it with HaloAttnOnKernel(model) instead")
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, HaloAttnOnKernel(module, backend=backend, pad_mode=pad_mode))
    return model
