"""Agent attention (ECCV 2024): a few pooled queries (the agents) gather the values, then every query reads the agents.

Paper: https://arxiv.org/abs/2312.08874 (Dongchen Han, Tianzhu Ye, Yizeng Han, Zhuofan Xia, Siyuan Pan, Pengfei Wan,
Shiji Song, Gao Huang). One layer serves the four backbones of the paper (DeiT, PVT, Swin, CSwin):

* q, k, v = ``qkv(x)``; the agents A (``agent_shape`` = ph x pw of them) are q average-pooled over the token grid by
  ``torch.nn.AdaptiveAvgPool2d``'s bins, computed as two small matrix products (``adaptive_pool_matrix``), so that a
  grid that is not a multiple of the agent grid (56 -> 3) exports to ONNX;
* agent aggregation: ``V_A = softmax(A Kᵀ / sqrt(d) + B1) V`` and agent broadcast:
  ``out = softmax(Q Aᵀ / sqrt(d) + B2) V_A``, both through ``F.scaled_dot_product_attention`` with the position bias
  as its additive float mask;
* ``out += dwc(V)`` (a depth-wise 3x3 convolution over the token grid), then ``proj``.

Position biases (the official parameters and shapes): ``an_bias`` / ``na_bias`` (heads, agents, 7, 7) are
resized bilinearly to the token grid; ``ah_bias`` + ``aw_bias`` (agent -> row / column) and ``ha_bias`` + ``wa_bias``
(row / column -> agent) are kept at the training grid ``bias_size`` and, when the token grid differs, their sum is
resized bilinearly to it. When the agent grid differs from the trained one (``agent_shape`` of the official dense
backbones, e.g. 9 agents trained, 9 x 9 used), every bias is also resized bilinearly over the agent axes. This is the
rule of the official detection / segmentation backbones; at the training grid and agent count every resize is the
identity, which is the official classification model's computation.

Prefix tokens (DeiT's class token, ``num_prefix_tokens``) are left out of the pooling and of the convolution; they
take part in both attentions with their own biases ``ac_bias`` (agent -> prefix) and ``ca_bias`` (prefix -> agent).
"""

# No `from __future__ import annotations`: TorchScript compiles forward from its annotations.
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_function, register_notrace_module, trunc_normal_

__all__ = ["AgentAttention", "adaptive_pool_matrix", "agent_pool", "resize_row_col_bias"]


def adaptive_pool_matrix(
    in_size: int, out_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(out_size, in_size) averaging matrix of ``AdaptiveAvgPool1d(out_size)``: row i averages the inputs
    ``floor(i * in / out) <= j < ceil((i + 1) * in / out)`` (bins overlap where ``out`` does not divide ``in``, and
    repeat inputs where ``out > in``)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"adaptive_pool_matrix needs positive sizes, got in_size={in_size}, out_size={out_size}")
    rows = torch.arange(out_size, device=device)
    start = torch.div(rows * in_size, out_size, rounding_mode="floor")
    end = torch.div((rows + 1) * in_size + out_size - 1, out_size, rounding_mode="floor")
    cols = torch.arange(in_size, device=device)
    inside = (cols[None, :] >= start[:, None]) & (cols[None, :] < end[:, None])
    dtype = dtype if dtype is not None else torch.float32
    return inside.to(dtype) / (end - start).to(dtype)[:, None]


@register_notrace_function
def agent_pool(x: torch.Tensor, size: tuple[int, int], out_size: tuple[int, int]) -> torch.Tensor:
    """(B, H*W, C) tokens on an H x W grid -> (B, oh*ow, C), equal to ``AdaptiveAvgPool2d(out_size)`` of the map
    (within float rounding) and written as two matrix products, so that it exports to ONNX at any size."""
    b, n, c = x.shape
    h, w = size
    oh, ow = out_size
    if n != h * w:
        raise ValueError(f"agent_pool: {n} tokens do not fill a {h}x{w} grid")
    pool_h = adaptive_pool_matrix(h, oh, x.device, x.dtype)
    pool_w = adaptive_pool_matrix(w, ow, x.device, x.dtype)
    rows = torch.matmul(pool_h, x.reshape(b, h, w * c)).reshape(b, oh, w, c)  # (B, oh, W, C)
    out = torch.matmul(pool_w, rows)  # (B, oh, ow, C)
    return out.reshape(b, oh * ow, c)


ROW_COL_BIASES = {"ah_bias": 3, "aw_bias": 4, "ha_bias": 2, "wa_bias": 3}  # name -> its one spatial axis


def resize_row_col_bias(name: str, value: torch.Tensor, size: int) -> torch.Tensor:
    """An ``ah/aw/ha/wa_bias`` trained at another grid -> ``size`` along its one spatial axis: the official fine-tuning
    rule (``utils.load_pretrained``), 1-D linear interpolation with corners not aligned. ``name`` ends in the
    parameter's name; the result is in ``value``'s dtype promoted to at least float32 (the CPU interpolation kernels
    and the precision of a half-precision file)."""
    axis = ROW_COL_BIASES[name.rsplit(".", 1)[-1]]
    moved = value.to(torch.promote_types(value.dtype, torch.float32)).movedim(axis, -1)
    out = F.interpolate(moved.reshape(1, -1, moved.shape[-1]), size=size, mode="linear", align_corners=False)
    return out.reshape(*moved.shape[:-1], size).movedim(-1, axis)


def _resize(bias: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, C, h, w) to ``size`` (the official ``F.interpolate(..., mode='bilinear')``, corners
    not aligned). At the same size it is an exact copy; it is not skipped there, so that a graph traced at the
    training size (ONNX with dynamic height / width) still resizes at every other size."""
    return F.interpolate(bias, size=size, mode="bilinear", align_corners=False)


@register_notrace_module
class AgentAttention(nn.Module):
    """Agent attention over tokens on a grid; (B, P + H*W, C) -> (B, P + H*W, C), P = ``num_prefix_tokens``.

    Args:
        dim: channels C.
        num_heads: attention heads (head dim C / heads).
        agent_num: agents of the trained model, a perfect square (9, 16, 49, 81 in the paper).
        bias_size: the token grid (h, w) the model was trained at (the size of ``ah/aw/ha/wa_bias``).
        qkv_bias: bias in the q / k / v projection.
        num_prefix_tokens: leading tokens that are not on the grid (DeiT's class token), with their own biases.
        agent_shape: the agent grid (ph, pw) to use; None: the trained sqrt(agent_num) x sqrt(agent_num). The
            official dense backbones use more agents (e.g. (12, 12) for 16 trained), biases resized to them.
        kernel_size: the depth-wise convolution over V.
        attn_drop: dropout on both attention maps.
        proj_drop: dropout after ``proj``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        agent_num: int = 49,
        bias_size: tuple[int, int] = (14, 14),
        qkv_bias: bool = True,
        num_prefix_tokens: int = 0,
        agent_shape: tuple[int, int] | None = None,
        kernel_size: int = 3,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if dim % num_heads != 0:
            raise ValueError(f"AgentAttention: dim={dim} is not divisible by num_heads={num_heads}")
        side = math.isqrt(agent_num)
        if agent_num < 1 or side * side != agent_num:
            raise ValueError(f"AgentAttention: agent_num={agent_num} must be a perfect square (9, 16, 49, ...)")
        if agent_shape is not None and (len(agent_shape) != 2 or min(agent_shape) < 1):
            raise ValueError(f"AgentAttention: agent_shape={agent_shape!r} must be two positive ints (ph, pw) or None")
        if agent_shape is not None and num_prefix_tokens and tuple(agent_shape) != (side, side):
            raise ValueError(
                "AgentAttention: an agent_shape other than the trained grid is not defined with prefix tokens"
            )
        bh, bw = int(bias_size[0]), int(bias_size[1])
        self.dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.agent_num = agent_num
        self.pool_size = side
        self.bias_size = (bh, bw)
        self.agent_shape = (side, side) if agent_shape is None else (int(agent_shape[0]), int(agent_shape[1]))
        self.num_prefix_tokens = num_prefix_tokens
        self.attn_drop = attn_drop

        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.dwc = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.an_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7, **dd))
        self.na_bias = nn.Parameter(torch.zeros(num_heads, agent_num, 7, 7, **dd))
        self.ah_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, bh, 1, **dd))
        self.aw_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, 1, bw, **dd))
        self.ha_bias = nn.Parameter(torch.zeros(1, num_heads, bh, 1, agent_num, **dd))
        self.wa_bias = nn.Parameter(torch.zeros(1, num_heads, 1, bw, agent_num, **dd))
        if num_prefix_tokens:
            self.ac_bias = nn.Parameter(torch.zeros(1, num_heads, agent_num, num_prefix_tokens, **dd))
            self.ca_bias = nn.Parameter(torch.zeros(1, num_heads, num_prefix_tokens, agent_num, **dd))
        else:
            self.register_parameter("ac_bias", None)
            self.register_parameter("ca_bias", None)
        self.init_weights()

    def init_weights(self) -> None:
        for bias in (self.an_bias, self.na_bias, self.ah_bias, self.aw_bias, self.ha_bias, self.wa_bias):
            trunc_normal_(bias, std=0.02)
        if self.ac_bias is not None and self.ca_bias is not None:
            trunc_normal_(self.ac_bias, std=0.02)
            trunc_normal_(self.ca_bias, std=0.02)

    def _to_agent_grid(self, bias: torch.Tensor, n: int) -> torch.Tensor:
        """(heads, agents_trained, n) -> (heads, ph*pw, n): resized over the agent axes when the grid differs."""
        p = self.pool_size
        ph, pw = self.agent_shape
        if ph == p and pw == p:
            return bias
        grid = bias.reshape(self.num_heads, p, p, n).permute(0, 3, 1, 2)  # (heads, n, p, p)
        return _resize(grid, (ph, pw)).reshape(self.num_heads, n, ph * pw).permute(0, 2, 1)

    def position_biases(self, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The additive biases of both attentions on an (h, w) token grid: agent -> token (1, heads, agents,
        P + h*w) and token -> agent (1, heads, P + h*w, agents)."""
        h, w = size
        n = h * w
        heads, agents = self.num_heads, self.agent_num
        to_tokens = _resize(self.an_bias, (h, w)) + _resize((self.ah_bias + self.aw_bias)[0], (h, w))
        row_col = (self.ha_bias + self.wa_bias)[0].permute(0, 3, 1, 2)  # (heads, agents, bh, bw)
        to_agents = _resize(self.na_bias, (h, w)) + _resize(row_col, (h, w))
        bias1 = self._to_agent_grid(to_tokens.reshape(heads, agents, n), n)[None]
        bias2 = self._to_agent_grid(to_agents.reshape(heads, agents, n), n).transpose(1, 2)[None]
        if self.ac_bias is not None and self.ca_bias is not None:
            bias1 = torch.cat([self.ac_bias, bias1], dim=-1)
            bias2 = torch.cat([self.ca_bias, bias2], dim=-2)
        return bias1, bias2

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x: (B, P + H*W, C) with ``size`` = (H, W) -> (B, P + H*W, C)."""
        b, n, c = x.shape
        h, w = size
        prefix = self.num_prefix_tokens
        if n != prefix + h * w:
            raise ValueError(f"AgentAttention: {n} tokens are not {prefix} prefix tokens + a {h}x{w} grid")
        heads, d = self.num_heads, self.head_dim
        q, k, v = self.qkv(x).reshape(b, n, 3, c).unbind(2)  # 3 x (B, N, C)
        agents = agent_pool(q[:, prefix:], (h, w), self.agent_shape)  # (B, A, C)
        a = agents.shape[1]
        q = q.reshape(b, n, heads, d).transpose(1, 2)
        k = k.reshape(b, n, heads, d).transpose(1, 2)
        v = v.reshape(b, n, heads, d).transpose(1, 2)
        agents = agents.reshape(b, a, heads, d).transpose(1, 2)
        bias1, bias2 = self.position_biases((h, w))
        drop = self.attn_drop if self.training else 0.0
        agent_v = F.scaled_dot_product_attention(agents, k, v, attn_mask=bias1.to(q.dtype), dropout_p=drop)
        out = F.scaled_dot_product_attention(q, agents, agent_v, attn_mask=bias2.to(q.dtype), dropout_p=drop)
        out = out.transpose(1, 2).reshape(b, n, c)
        grid = v[:, :, prefix:].transpose(1, 2).reshape(b, h, w, c).permute(0, 3, 1, 2)
        local = self.dwc(grid).flatten(2).transpose(1, 2)  # (B, H*W, C)
        if prefix:
            out = torch.cat([out[:, :prefix], out[:, prefix:] + local], dim=1)
        else:
            out = out + local
        return self.proj_drop(self.proj(out))

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, num_heads={self.num_heads}, agent_num={self.agent_num}, agent_shape={self.agent_shape}, "
            f"bias_size={self.bias_size}, num_prefix_tokens={self.num_prefix_tokens}"
        )
