"""Gated positional self-attention (ConViT's GPSA) on an (H, W) token grid of any size.

timm's ``GPSA`` takes (B, N, C) tokens and builds its relative indices for a square ``sqrt(N)`` grid, which is
why timm's ConViT runs at 224 only. :class:`GridGPSA` is timm's module (same parameters, same ``get_attention``)
fed (B, H, W, C) maps: the relative indices are built for the actual H x W grid (non-square too), shared by every
layer through a per-size cache.

Two ways to compute the same attention:

* the reference (default): timm's arithmetic, ``attn = (1-s) softmax(q k^T / sqrt(d)) + s softmax(pos_proj(rel))``
  renormalised, then ``attn @ v``; bit-identical to timm's GPSA on a square grid.
* ``fused=True``: ``(1-s) SDPA(q, k, v) + s (P v)``. The positional attention ``P = softmax(pos_proj(rel))`` is
  input-independent, and since its logits ``w_x dx + w_y dy + w_d (dx^2 + dy^2) + b`` split into an x part and a
  y part, ``P = P_y (x) P_x`` (a Kronecker product of an (H, H) and a (W, W) softmax per head): ``P v`` is two small
  matrix products, O(N (H + W) d) instead of O(N^2 d), and no (N, N) positional matrix is ever made. The factors are
  cached per grid size while ``pos_proj`` is not being trained. The renormalisation of the reference is a no-op
  (both rows sum to one). Equal to the reference within float rounding; the (B, heads, N, N) content attention
  never leaves SDPA.
"""

# No `from __future__ import annotations`: TorchScript compiles this module's classes from their annotations.
import weakref

import torch
import torch.nn.functional as F
from timm.layers import register_notrace_function, resample_abs_pos_embed
from timm.models._features_fx import register_notrace_module
from timm.models.convit import GPSA

__all__ = ["GridGPSA", "grid_pos_embed", "grid_rel_indices", "gpsa_fused"]


def grid_rel_indices(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(1, N, N, 3) relative offsets [dx, dy, dx^2 + dy^2] between the tokens of a row-major H x W grid.

    Entry (n, m) is token m's position minus token n's, in timm's channel order; on a square grid it equals
    ``timm.models.convit.GPSA.get_rel_indices(H * W)`` exactly (small integers, exact in float)."""
    ys = torch.arange(height, dtype=torch.float32).repeat_interleave(width)
    xs = torch.arange(width, dtype=torch.float32).repeat(height)
    dx = xs.view(1, -1) - xs.view(-1, 1)
    dy = ys.view(1, -1) - ys.view(-1, 1)
    rel = torch.stack([dx, dy, dx * dx + dy * dy], dim=-1).unsqueeze(0)
    return rel.to(device=device, dtype=dtype)


# Every GPSA layer of a model uses the same indices: one tensor per (size, device, dtype), held weakly, so that it
# lives as long as a layer uses it (an (N, N, 3) tensor is 200 MB at N = 4150, a 800 x 1333 input).
_REL_CACHE: "weakref.WeakValueDictionary[tuple[int, int, str, str], torch.Tensor]" = weakref.WeakValueDictionary()


def _cached_rel_indices(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    key = (height, width, str(device), str(dtype))
    rel = _REL_CACHE.get(key)
    if rel is None:
        rel = grid_rel_indices(height, width, device, dtype)
        _REL_CACHE[key] = rel
    return rel


@register_notrace_function
def grid_pos_embed(pos_embed: torch.Tensor, base_height: int, base_width: int, x: torch.Tensor) -> torch.Tensor:
    """The (1, N0, C) position table of a ``base_height`` x ``base_width`` grid for the (B, C, H, W) map ``x``:
    the table itself on its own grid, else resampled (timm's bicubic resampling) to (1, H * W, C). FX records it as
    one call, so a traced model resamples at run time."""
    height, width = x.shape[-2], x.shape[-1]
    if height == base_height and width == base_width:
        return pos_embed
    return resample_abs_pos_embed(
        pos_embed, [height, width], old_size=[base_height, base_width], num_prefix_tokens=0, verbose=False
    )


def gpsa_fused(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pos_y: torch.Tensor,
    pos_x: torch.Tensor,
    gate: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """(1 - g) * SDPA(q, k, v) + g * ((P_y (x) P_x) @ v) on a row-major H x W token grid.

    q, k, v: (B, heads, H * W, d); pos_y: (heads, H, H) and pos_x: (heads, W, W), rows summing to one (the positional
    attention is their Kronecker product); gate g: (heads,) in [0, 1]. Returns (B, heads, H * W, d)."""
    B, h, N, d = v.shape
    H, W = pos_y.shape[-1], pos_x.shape[-1]
    g = gate.view(1, -1, 1, 1)
    content = F.scaled_dot_product_attention(q, k, v, scale=scale)
    along_x = torch.matmul(pos_x.unsqueeze(0).unsqueeze(2), v.reshape(B, h, H, W, d))  # (B, h, H, W, d)
    along_y = torch.matmul(pos_y.unsqueeze(0), along_x.reshape(B, h, H, W * d))  # (B, h, H, W * d)
    return (1.0 - g) * content + g * along_y.reshape(B, h, N, d)


@register_notrace_module  # shape-dependent Python (the grid, the caches): a leaf for FX
class GridGPSA(GPSA):
    """timm's GPSA on (B, H, W, C) maps of any H x W; ``fused`` picks the SDPA + cached-P computation.

    Made from a built timm GPSA with :meth:`adopt` (its parameters stay where they are, so state_dict keys and
    initialisation are timm's)."""

    grid: tuple[int, int]
    rel_grid: tuple[int, int]
    fused: bool

    @classmethod
    def adopt(cls, module: GPSA, fused: bool = False) -> "GridGPSA":
        if not isinstance(module, GPSA):
            raise TypeError(f"GridGPSA.adopt needs a timm GPSA module, got {type(module).__name__}")
        module.__class__ = cls
        module.grid = (0, 0)
        module.rel_grid = (0, 0)
        module.fused = bool(fused)
        module._pos_cache = {}
        return module

    def _set_grid(self, height: int, width: int, with_indices: bool = True) -> None:
        """Record the grid; build (or take from the cache) its relative indices if the reference path needs them."""
        self.grid = (height, width)
        if not with_indices:
            return
        rel, weight = self.rel_indices, self.qk.weight
        if (
            self.rel_grid[0] != height
            or self.rel_grid[1] != width
            or rel.device != weight.device
            or rel.dtype != weight.dtype
        ):
            if torch.jit.is_scripting():
                self.rel_indices = grid_rel_indices(height, width, weight.device, weight.dtype)
            else:
                self.rel_indices = _cached_rel_indices(height, width, weight.device, weight.dtype)
            self.rel_grid = (height, width)

    def init_non_persistent_buffers(self) -> None:
        """Rebuild the relative indices of their grid (after ``to_empty``); an unused module has none yet."""
        height, width = self.rel_grid
        if height * width > 0:
            self.rel_indices = grid_rel_indices(height, width, self.qk.weight.device, self.qk.weight.dtype)

    @torch.jit.unused
    def positional_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(heads, H, H) and (heads, W, W) softmaxes whose Kronecker product is ``softmax(pos_proj(rel))`` on the
        current grid; cached while ``pos_proj`` gets no gradient (keyed on the grid and on the weights' versions, so
        an in-place update is seen)."""
        w, b = self.pos_proj.weight, self.pos_proj.bias
        trained = torch.is_grad_enabled() and (w.requires_grad or b.requires_grad)
        key = (self.grid, w.device, w.dtype, w._version, b._version, w.data_ptr(), b.data_ptr())
        if not trained and self._pos_cache.get("key") == key:
            return self._pos_cache["value"]
        height, width = self.grid
        factors = []
        # pos_proj's input channels are [dx, dy, dx^2 + dy^2]; its bias cancels in the softmax but stays in the graph
        # (a zero gradient rather than none, as in timm's arithmetic, so that no parameter looks unused)
        for side, col, bias in ((height, 1, b), (width, 0, torch.zeros_like(b))):
            pos = torch.arange(side, device=w.device, dtype=w.dtype)
            delta = pos.view(1, -1) - pos.view(-1, 1)  # (side, side): key minus query
            logits = w[:, col].view(-1, 1, 1) * delta + w[:, 2].view(-1, 1, 1) * (delta * delta) + bias.view(-1, 1, 1)
            factors.append(logits.softmax(dim=-1))
        value = (factors[0], factors[1])
        self._pos_cache = {} if trained else {"key": key, "value": value}
        return value

    @torch.jit.unused
    def positional_attention(self) -> torch.Tensor:
        """(heads, N, N) positional attention of the current grid, made from its factors (for inspection)."""
        pos_y, pos_x = self.positional_factors()
        h, height, width = pos_y.shape[0], pos_y.shape[-1], pos_x.shape[-1]
        dense = pos_y.view(h, height, 1, height, 1) * pos_x.view(h, 1, width, 1, width)
        return dense.reshape(h, height * width, height * width)

    @torch.jit.unused
    def _forward_fused(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        h = self.num_heads
        q, k = self.qk(x).reshape(B, N, 2, h, C // h).permute(2, 0, 3, 1, 4).unbind(0)
        v = self.v(x).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        pos_y, pos_x = self.positional_factors()
        out = gpsa_fused(q, k, v, pos_y, pos_x, torch.sigmoid(self.gating_param), self.scale)
        return out.transpose(1, 2).reshape(B, N, C)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C)."""
        B, H, W, C = x.shape
        # the fused path has no attention matrix to drop out: with attention dropout in training, the reference
        fused = self.fused and not torch.jit.is_scripting() and not (self.training and self.attn_drop.p > 0)
        self._set_grid(H, W, with_indices=not fused)
        x = x.reshape(B, H * W, C)
        if fused:
            x = self._forward_fused(x)
        else:
            # timm's GPSA.forward after its index check, unchanged
            attn = self.get_attention(x)
            v = self.v(x).reshape(B, H * W, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
            x = (attn @ v).transpose(1, 2).reshape(B, H * W, C)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x.reshape(B, H, W, C)
