"""TransNeXt's token mixers: aggregated (pixel-focused) attention and length-scaled cosine attention.

Paper: https://arxiv.org/abs/2311.17132 (Dai Shi), CVPR 2024.

* :class:`AggregatedAttention` (stages 1-3): every query attends, in one softmax, to its 3x3 neighbourhood
  (borders masked, plus a learnt bias per window slot) and to the keys of a pooled map (``sr`` 1x1 conv, GELU,
  average pool, LayerNorm, the same ``kv`` projection) with a continuous position bias (CPB) from a small MLP over
  log-spaced relative coordinates. Queries are L2-normalised, shifted by a learnt query embedding and scaled by a
  learnt temperature and ``log(keys seen)``; keys are L2-normalised. After the softmax the window weights gain
  ``q . learnable_tokens + learnable_bias`` (unnormalised, as the official code does) before they weigh the values.
  The softmax part runs through :func:`visionattn.kernels.na2d` (``border="mask"``, ``rpb``, pooled keys as
  ``additional_keys/values`` with the CPB as ``additional_bias``); the post-softmax window term is nine shifted
  slices of the zero-padded values.
* :class:`CosineAttention` (stage 4 of the standard models): the same scaled cosine attention over all tokens with
  a CPB over token pairs, through ``F.scaled_dot_product_attention``.

Sizes: the geometry (window key counts, the pooled grid, the CPB coordinate tables, the pooling weights) is derived
from the map size of each call and cached per size, never stored in a buffer. CPB coordinates are normalised by
the pre-training grid (``pretrain_size``), so a model run at another size computes what the official model
re-instantiated for that size with ``pretrain_size`` set does. The pooled grid is ``(max(1, H // sr),
max(1, W // sr))`` or, with ``fixed_pool_size`` (the official "linear inference mode"), a fixed grid. That is the
official dense code's "extrapolation" of the relative position bias; its "interpolation" (``pos_bias=
"interpolation"``) computes the CPB once at a fixed map size (``pos_bias_size``, the official ``img_size`` per stage)
and resizes it bilinearly to each call's query and pooled grids.
"""

# No `from __future__ import annotations`: FX writes forward annotations into traced code.
import functools
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module, trunc_normal_

from visionattn.kernels import na2d

__all__ = ["AggregatedAttention", "CosineAttention", "cpb_index", "pool_matrix", "local_key_count"]


def _axis_cpb(query_len: int, key_len: int, pretrain_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct relative coordinates of one axis and the index of each (query, key) pair into them.

    Key positions are the adaptive-average-pool bin centres of ``range(query_len)``; the coordinate is
    ``(q - k) / (pretrain_len - 1) * 8``, computed with the official float32 torch ops so the values are bitwise
    the official ones.
    """
    with torch.no_grad():
        pos = torch.arange(query_len, dtype=torch.float32)
        centres = F.adaptive_avg_pool1d(pos[None], key_len)[0]
        rel = (pos[:, None] - centres[None, :]) / max(pretrain_len - 1, 1) * 8
    values, index = np.unique(rel.cpu().numpy(), return_inverse=True)
    return values, index.reshape(query_len, key_len)


@functools.lru_cache(maxsize=64)
def _cpb_tables(query_hw, key_hw, pretrain_hw) -> tuple[np.ndarray, np.ndarray]:
    vh, ih = _axis_cpb(query_hw[0], key_hw[0], pretrain_hw[0])
    vw, iw = _axis_cpb(query_hw[1], key_hw[1], pretrain_hw[1])
    with torch.no_grad():
        grid = torch.stack(torch.meshgrid(torch.from_numpy(vh), torch.from_numpy(vw), indexing="ij"), -1)
        grid = grid.reshape(-1, 2)
        table = torch.sign(grid) * torch.log2(grid.abs() + 1.0) / torch.log2(torch.tensor(8, dtype=torch.float32))
    # (Hq, Wq, Hk, Wk) -> index into the (|vh| * |vw|) table
    index = ih[:, None, :, None] * len(vw) + iw[None, :, None, :]
    return table.numpy(), index.reshape(query_hw[0] * query_hw[1], key_hw[0] * key_hw[1]).astype(np.int64)


def cpb_index(query_hw, key_hw, pretrain_hw, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """CPB inputs for a query grid and a pooled key grid: ``table`` (T, 2) log-spaced relative coordinates and
    ``index`` (Nq, Nk) into it (Nq = Hq * Wq, Nk = Hk * Wk)."""
    table, index = _cpb_tables(tuple(query_hw), tuple(key_hw), tuple(pretrain_hw))
    return torch.from_numpy(table).to(device), torch.from_numpy(index).to(device)


@functools.lru_cache(maxsize=64)
def _pool_np(length: int, out: int) -> np.ndarray:
    weights = np.zeros((out, length), dtype=np.float32)
    for i in range(out):
        s, e = (i * length) // out, -((-(i + 1) * length) // out)
        weights[i, s:e] = 1.0 / (e - s)
    return weights


def pool_matrix(length: int, out: int, device=None, dtype=None) -> torch.Tensor:
    """(out, length) averaging weights of adaptive average pooling along one axis (any sizes, export friendly)."""
    return torch.from_numpy(_pool_np(length, out)).to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _local_count_np(h: int, w: int, window: int) -> np.ndarray:
    r = window // 2

    def axis(n):
        i = np.arange(n)
        return (np.minimum(i + r, n - 1) - np.maximum(i - r, 0) + 1).astype(np.float32)

    return (axis(h)[:, None] * axis(w)[None, :]).astype(np.float32)


def local_key_count(h: int, w: int, window: int, device=None) -> torch.Tensor:
    """(H, W) number of in-image keys in each query's ``window`` x ``window`` neighbourhood."""
    return torch.from_numpy(_local_count_np(h, w, window)).to(device)


def _pair(size) -> tuple[int, int]:
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def _cpb_bias(mod, query_hw, key_hw, pretrain_hw, device, dtype) -> torch.Tensor:
    """The CPB MLP (``cpb_fc1`` 2 -> 512, ReLU, ``cpb_fc2`` 512 -> heads) over the coordinate table, gathered to
    (heads, Nq, Nk)."""
    table, index = cpb_index(query_hw, key_hw, pretrain_hw, device)
    per_coord = mod.cpb_fc2(mod.cpb_act(mod.cpb_fc1(table.to(dtype))))  # (T, heads)
    return per_coord.t()[:, index]  # (heads, Nq, Nk)


POS_BIAS_MODES = ("extrapolation", "interpolation")


def _check_pos_bias(pos_bias: str, pos_bias_size) -> tuple[int, int] | None:
    if pos_bias not in POS_BIAS_MODES:
        raise ValueError(f"pos_bias={pos_bias!r} is not one of {POS_BIAS_MODES}")
    if pos_bias == "extrapolation":
        return None
    if pos_bias_size is None:
        raise ValueError("pos_bias='interpolation' needs pos_bias_size, the map size (H, W) the bias is computed at")
    size = _pair(pos_bias_size)
    if min(size) < 1:
        raise ValueError(f"pos_bias_size={pos_bias_size!r} must be positive; pass a larger interpolation size")
    return size


@functools.lru_cache(maxsize=64)
def _linear_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """The two source taps and weights of each of ``dst`` outputs of 1-D linear resampling from ``src`` (half-pixel
    centres, torch's own weights, read off ``F.interpolate`` of an identity): (dst, 2) int, (dst, 2) float."""
    with torch.no_grad():
        eye = torch.eye(src, dtype=torch.float32)[None]
        weights = F.interpolate(eye, size=dst, mode="linear", align_corners=False)[0].t().numpy()  # (dst, src)
    taps, tap_w = np.zeros((dst, 2), dtype=np.int64), np.zeros((dst, 2), dtype=np.float32)
    for i, row in enumerate(weights):
        nz = np.flatnonzero(row)[:2]
        taps[i, : len(nz)], tap_w[i, : len(nz)] = nz, row[nz]
    return taps, tap_w


@functools.lru_cache(maxsize=64)
def _axis_interp(trained_q: int, trained_k: int, pretrain: int, q: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One axis of the interpolated CPB: for each (query, key) of the resized grids, the four coordinate indices
    (into the trained grids' distinct coordinates of ``_axis_cpb``) and weights of the bilinear taps: (q, k, 4)."""
    _, index = _axis_cpb(trained_q, trained_k, pretrain)
    qt, qw = _linear_taps(trained_q, q)
    kt, kw = _linear_taps(trained_k, k)
    coords = index[qt[:, None, :, None], kt[None, :, None, :]].reshape(q, k, 4)
    weights = (qw[:, None, :, None] * kw[None, :, None, :]).reshape(q, k, 4)
    return coords, weights


def _interpolated_cpb(mod, trained_q, trained_k, query_hw, key_hw, pretrain_hw, device, dtype) -> torch.Tensor:
    """The CPB computed on the trained query grid ``trained_q`` x pooled grid ``trained_k`` and resized bilinearly
    (half-pixel centres) over the key axes to ``key_hw`` and over the query axes to ``query_hw``: (heads, Nq, Nk).

    The official dense code gathers the full (heads, trained Nq, trained Nk) bias and runs two 2-D
    interpolations over it; resampling is linear and separable per axis, and the trained bias is the MLP over
    (row offset, column offset) pairs, so here the bilinear taps of each axis are applied to the MLP's table of
    distinct offset pairs directly (the same weights; equal up to float rounding, no trained-size temporary).
    """
    table, _ = cpb_index(trained_q, trained_k, pretrain_hw, device)
    n_h = len(_axis_cpb(trained_q[0], trained_k[0], pretrain_hw[0])[0])
    per_coord = mod.cpb_fc2(mod.cpb_act(mod.cpb_fc1(table.to(dtype))))  # (n_h * n_w, heads)
    grid = per_coord.t().reshape(per_coord.shape[1], n_h, -1)  # (heads, n_h, n_w)
    coords_h, w_h = _axis_interp(trained_q[0], trained_k[0], pretrain_hw[0], query_hw[0], key_hw[0])
    coords_w, w_w = _axis_interp(trained_q[1], trained_k[1], pretrain_hw[1], query_hw[1], key_hw[1])
    coords_h, coords_w = torch.from_numpy(coords_h).to(device), torch.from_numpy(coords_w).to(device)
    w_h, w_w = torch.from_numpy(w_h).to(device, dtype), torch.from_numpy(w_w).to(device, dtype)
    rows = sum(grid[:, coords_h[..., i]] * w_h[..., i, None] for i in range(4))  # (heads, Qh, Kh, n_w)
    out = sum(rows[..., coords_w[..., j]] * w_w[..., j] for j in range(4))  # (heads, Qh, Kh, Qw, Kw)
    heads, qh, kh, qw, kw = out.shape
    return out.permute(0, 1, 3, 2, 4).reshape(heads, qh * qw, kh * kw)


def _scaled_query(mod, q: torch.Tensor, log_len: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, heads, *grid, d) -> (L2-normalised q, (q_norm + query_embedding) * softplus(temperature) * log_len)."""
    shape = (q.shape[1],) + (1,) * (q.dim() - 3)
    q_norm = F.normalize(q, dim=-1)
    embedding = mod.query_embedding.view(shape + (q.shape[-1],))
    temperature = F.softplus(mod.temperature).view(shape + (1,))
    return q_norm, (q_norm + embedding) * temperature * log_len


@register_notrace_module
class AggregatedAttention(nn.Module):
    """Aggregated attention; (B, H, W, C) -> (B, H, W, C), any H, W >= 1.

    Args:
        dim: channels C.
        num_heads: heads (head dim = dim // num_heads).
        sr_ratio: the pooled grid is the map divided by this (at least 1 x 1).
        window_size: odd side of the sliding window (3 in every official model).
        pretrain_size: the map size (H, W) this layer saw in pre-training; normalises the CPB coordinates.
        fixed_pool_size: pool to this grid whatever the map size (the official linear inference mode).
        pos_bias: "extrapolation" computes the CPB at each call's map size; "interpolation" computes it at
            ``pos_bias_size`` (and that size's pooled grid) and resizes it bilinearly to the call's grids (the
            official dense backbones' two modes of relative position bias).
        pos_bias_size: the map size (H, W) of this layer at which the interpolated bias is computed.
        qkv_bias: bias in the q / kv projections.
        proj_drop: dropout after the output projection.
        backend: kernel path of :func:`visionattn.kernels.na2d` (None: ``VISIONATTN_KERNELS`` / device).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        sr_ratio: int = 2,
        window_size: int = 3,
        pretrain_size=(56, 56),
        fixed_pool_size: int | None = None,
        pos_bias: str = "extrapolation",
        pos_bias_size=None,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        backend: str | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        if window_size % 2 != 1 or window_size < 1:
            raise ValueError(f"window_size={window_size} must be a positive odd number (the official models use 3)")
        if sr_ratio < 1:
            raise ValueError(f"sr_ratio={sr_ratio} must be >= 1")
        if fixed_pool_size is not None and fixed_pool_size < 1:
            raise ValueError(f"fixed_pool_size={fixed_pool_size} must be a positive grid side or None")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.window_size = window_size
        self.local_len = window_size**2
        self.pretrain_size = _pair(pretrain_size)
        self.fixed_pool_size = fixed_pool_size
        self.pos_bias = pos_bias
        self.pos_bias_size = _check_pos_bias(pos_bias, pos_bias_size)
        self.backend = backend

        self.temperature = nn.Parameter(torch.empty(num_heads, 1, 1, **dd))
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.query_embedding = nn.Parameter(torch.empty(num_heads, 1, self.head_dim, **dd))
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.sr = nn.Conv2d(dim, dim, 1, **dd)
        self.norm = nn.LayerNorm(dim, **dd)  # torch's default eps, as the official pooled-feature norm
        self.act = nn.GELU()
        self.cpb_fc1 = nn.Linear(2, 512, **dd)
        self.cpb_act = nn.ReLU()
        self.cpb_fc2 = nn.Linear(512, num_heads, **dd)
        self.relative_pos_bias_local = nn.Parameter(torch.empty(num_heads, self.local_len, **dd))
        self.learnable_tokens = nn.Parameter(torch.empty(num_heads, self.head_dim, self.local_len, **dd))
        self.learnable_bias = nn.Parameter(torch.empty(num_heads, 1, self.local_len, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.temperature.fill_(math.log(math.expm1(1 / 0.24)))  # softplus(temperature) = 1 / 0.24
            trunc_normal_(self.query_embedding, std=0.02)
            trunc_normal_(self.relative_pos_bias_local, std=0.0004)
            trunc_normal_(self.learnable_tokens, std=0.02)
            self.learnable_bias.zero_()

    def pool_size(self, h: int, w: int) -> tuple[int, int]:
        """The pooled grid of an ``h`` x ``w`` map."""
        if self.fixed_pool_size is not None:
            return self.fixed_pool_size, self.fixed_pool_size
        return max(1, h // self.sr_ratio), max(1, w // self.sr_ratio)

    def _rpb(self) -> torch.Tensor:
        # na2d indexes the bias table by (key - query) + (K - 1) per axis: the 3x3 slots are its central block
        k = self.window_size
        table = self.relative_pos_bias_local.view(self.num_heads, k, k)
        pad = (k - 1) // 2
        return F.pad(table, (pad, pad, pad, pad))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # map sides as plain ints (a tracer hands out tensors): the geometry is per size, an export holds at its own
        # size; the batch stays symbolic
        b, (h, w, c) = x.shape[0], (int(n) for n in x.shape[1:])
        heads, d, k = self.num_heads, self.head_dim, self.window_size
        ph, pw = self.pool_size(h, w)
        dev = x.device

        # queries (B, heads, H, W, d), scaled by temperature and log(window keys in the image + pooled keys)
        q = self.q(x).view(b, h, w, heads, d).permute(0, 3, 1, 2, 4)
        log_len = torch.log(local_key_count(h, w, k, dev).to(x.dtype) + ph * pw)[:, :, None]
        q_norm, q_scaled = _scaled_query(self, q, log_len)
        kv = self.kv(x).view(b, h, w, 2, heads, d).permute(3, 0, 4, 1, 2, 5)
        k_loc, v_loc = F.normalize(kv[0], dim=-1), kv[1]

        # pooled keys / values (B, heads, P, d) through the same kv projection
        # the 1x1 conv ``sr`` (kept a Conv2d for the checkpoint layout) as a linear map on channels-last tokens
        pooled = self.act(F.linear(x, self.sr.weight.flatten(1), self.sr.bias))
        pooled = torch.einsum("ph,bhwc->bpwc", pool_matrix(h, ph, dev, x.dtype), pooled)
        pooled = torch.einsum("qw,bpwc->bpqc", pool_matrix(w, pw, dev, x.dtype), pooled)
        pooled = self.norm(pooled.reshape(b, ph * pw, c))
        kv_pool = self.kv(pooled).view(b, ph * pw, 2, heads, d).permute(2, 0, 3, 1, 4)
        k_pool, v_pool = F.normalize(kv_pool[0], dim=-1), kv_pool[1]

        if self.pos_bias_size is None:
            bias = _cpb_bias(self, (h, w), (ph, pw), self.pretrain_size, dev, x.dtype)
        else:
            trained, trained_pool = self.pos_bias_size, self.pool_size(*self.pos_bias_size)
            bias = _interpolated_cpb(self, trained, trained_pool, (h, w), (ph, pw), self.pretrain_size, dev, x.dtype)
        out = na2d(
            q_scaled, k_loc, v_loc, k, rpb=self._rpb(), scale=1.0, additional_keys=k_pool, additional_values=v_pool,
            additional_bias=bias.view(1, heads, h, w, ph * pw), border="mask", backend=self.backend,
        )  # fmt: skip

        # post-softmax window weights q . learnable_tokens + learnable_bias on the zero-padded values
        extra = torch.einsum("bnhwd,ndt->bnhwt", q_norm, self.learnable_tokens) + self.learnable_bias.view(
            1, heads, 1, 1, self.local_len
        )
        r = k // 2
        v_pad = F.pad(v_loc, (0, 0, r, r, r, r))
        for t in range(self.local_len):
            i, j = t // k, t % k
            out = out + extra[..., t : t + 1] * v_pad[:, :, i : i + h, j : j + w]
        out = out.permute(0, 2, 3, 1, 4).reshape(b, h, w, c)
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        pool = f"fixed_pool_size={self.fixed_pool_size}" if self.fixed_pool_size else f"sr_ratio={self.sr_ratio}"
        text = f"dim={self.dim}, num_heads={self.num_heads}, {pool}, pretrain_size={self.pretrain_size}"
        return text + (f", pos_bias=interpolation from {self.pos_bias_size}" if self.pos_bias_size else "")


@register_notrace_module
class CosineAttention(nn.Module):
    """Length-scaled cosine attention over all tokens with a CPB; (B, H, W, C) -> (B, H, W, C).

    Args:
        dim: channels C.
        num_heads: heads (head dim = dim // num_heads).
        pretrain_size: the map size (H, W) of pre-training; normalises the CPB coordinates.
        pos_bias: "extrapolation" (the CPB at each call's map size) or "interpolation" (computed at
            ``pos_bias_size`` and resized bilinearly), as in :class:`AggregatedAttention`.
        pos_bias_size: the map size (H, W) at which the interpolated bias is computed.
        qkv_bias: bias in the qkv projection.
        attn_drop: dropout on the attention weights.
        proj_drop: dropout after the output projection.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        pretrain_size=(7, 7),
        pos_bias: str = "extrapolation",
        pos_bias_size=None,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide dim={dim}")
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.pretrain_size = _pair(pretrain_size)
        self.pos_bias = pos_bias
        self.pos_bias_size = _check_pos_bias(pos_bias, pos_bias_size)
        self.temperature = nn.Parameter(torch.empty(num_heads, 1, 1, **dd))
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.query_embedding = nn.Parameter(torch.empty(num_heads, 1, self.head_dim, **dd))
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.cpb_fc1 = nn.Linear(2, 512, **dd)
        self.cpb_act = nn.ReLU()
        self.cpb_fc2 = nn.Linear(512, num_heads, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.temperature.fill_(math.log(math.expm1(1 / 0.24)))
            trunc_normal_(self.query_embedding, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, (h, w, c) = x.shape[0], (int(n) for n in x.shape[1:])
        n = h * w
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        _, q = _scaled_query(self, qkv[0], torch.tensor(math.log(n), dtype=x.dtype, device=x.device))
        if self.pos_bias_size is None:
            bias = _cpb_bias(self, (h, w), (h, w), self.pretrain_size, x.device, x.dtype)
        else:
            trained = self.pos_bias_size
            bias = _interpolated_cpb(self, trained, trained, (h, w), (h, w), self.pretrain_size, x.device, x.dtype)
        out = F.scaled_dot_product_attention(
            q,
            F.normalize(qkv[1], dim=-1),
            qkv[2],
            attn_mask=bias.unsqueeze(0),
            dropout_p=self.attn_drop if self.training else 0.0,
            scale=1.0,
        )
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, h, w, c)))
