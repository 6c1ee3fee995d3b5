"""Agent-PVT: the Pyramid Vision Transformer (v1) with agent attention (ECCV 2024).

Paper: https://arxiv.org/abs/2312.08874 (Dongchen Han, Tianzhu Ye, Yizeng Han, Zhuofan Xia, Siyuan Pan, Pengfei Wan,
Shiji Song, Gao Huang). Official code: https://github.com/LeapLabTHU/Agent-Attention at commit 207ce3e
(``agent_transformer/models/agent_pvt.py``, the dense ``AgentPVT`` in ``downstream/``); this is an independent
implementation of the same architecture whose official checkpoints load through ``checkpoint_filter_fn``. PVT v1 is
not in timm: the stages are written here on timm's layers, the attention is :class:`~visionattn.layers.AgentAttention`.

Each of the four stages: a patchify conv (4x4 stride 4, then 2x2 stride 2) with a LayerNorm, an absolute position
embedding, then blocks (pre-norm attention + MLP). ``attn_type`` gives the attention of each stage: ``A`` = agent
attention (global, ``agent_num`` agents), ``B`` = PVT's spatial-reduction attention (keys / values from an
``sr_ratio`` stride conv). Every official model is ``AAAA``; there is no final norm.

Size rule: any input whose sides are at least 32 px, square or not (each patchify conv floors, as the official one).
The official dense backbone's rule holds at every size: the position embedding of each stage is resized bilinearly
(corners not aligned) from the training grid (``img_size`` / 4, / 8, ...) to the actual one, the agent biases are
resized to the actual grid and the agent grid keeps its trained count (``agent_shapes`` sets the larger agent grids of
the official dense configs). At the training size every resize is the identity: the output is the official
classification model's.

Differences from the official code: any input size (the official classification model takes its ``img_size`` only,
and its dense twin skips the position-embedding resize whenever a stage has as many tokens as stage 1 at the training
size, e.g. a 448 px input's stage 2, where it fails); the agent pooling as two averaging matrices (ONNX-exportable at
every size); attention through ``F.scaled_dot_product_attention``; a working ``reset_classifier``; timm's feature /
intermediate / grad-checkpointing API.
"""

# No `from __future__ import annotations`: FX writes the forward annotations into the traced code, which
# TorchScript then compiles (timm scripts FX-traced models), so they must be real types, not strings.
import math
import re
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    ClassifierHead,
    DropPath,
    Mlp,
    calculate_drop_path_rates,
    register_notrace_function,
    to_2tuple,
    trunc_normal_,
)
from timm.models import checkpoint, register_model

from visionattn.layers.agent_attention import ROW_COL_BIASES, AgentAttention, resize_row_col_bias
from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import build_model, generate_default_cfgs

from ._pyramid import PyramidContract
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["AgentPVT", "SRAttention", "checkpoint_filter_fn", "resize_pos_embed"]

# Four floor-dividing patchify convs (4, 2, 2, 2): a 32 px side leaves one token in the last stage.
MIN_INPUT_SIZE = 32
PATCH_SIZE = 4
# The agent grids of the official detection / segmentation configs (all four sizes, COCO and ADE20K).
DENSE_AGENT_SHAPES = ((12, 12), (16, 16), (28, 28), (28, 28))


def _tuple4(value, name: str) -> tuple:
    """A per-stage setting: one value for all stages or a sequence of 4."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        if len(value) != 4:
            raise ValueError(f"{name}={value!r} must be one value or 4 values (one per stage)")
        return tuple(value)
    return (value,) * 4


@register_notrace_function
def resize_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(1, gh*gw, C) position embedding of the training grid ``grid`` -> (1, h*w, C) on the actual grid ``size``,
    bilinear with corners not aligned (the official dense rule). At the training grid it is an exact copy; it is not
    skipped there, so that a graph traced at the training size (ONNX with dynamic height / width) still resizes at
    every other size."""
    gh, gw = grid
    c = pos_embed.shape[-1]
    pos = pos_embed.reshape(1, gh, gw, c).permute(0, 3, 1, 2)
    pos = F.interpolate(pos, size=size, mode="bilinear", align_corners=False)
    return pos.flatten(2).transpose(1, 2)


class SRAttention(nn.Module):
    """PVT's spatial-reduction attention (``attn_type`` B): keys / values from a stride-``sr_ratio`` conv of the
    tokens (LayerNorm after it); (B, H*W, C) -> (B, H*W, C). Official parameter names (``q``, ``kv``, ``sr``, ``norm``,
    ``proj``)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if dim % num_heads:
            raise ValueError(f"SRAttention: dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.sr_ratio = sr_ratio
        self.attn_drop = attn_drop
        self.q = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.kv = nn.Linear(dim, dim * 2, bias=qkv_bias, **dd)
        self.proj = nn.Linear(dim, dim, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio, **dd)
            self.norm = nn.LayerNorm(dim, **dd)  # the official nn.LayerNorm default eps 1e-5
        else:
            self.sr = None
            self.norm = None

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """x: (B, H*W, C) with ``size`` = (H, W) -> (B, H*W, C)."""
        b, n, c = x.shape
        h, w = size
        heads, d = self.num_heads, self.head_dim
        q = self.q(x).reshape(b, n, heads, d).transpose(1, 2)
        src = x
        if self.sr is not None and self.norm is not None:
            src = self.norm(self.sr(x.transpose(1, 2).reshape(b, c, h, w)).flatten(2).transpose(1, 2))
        k, v = self.kv(src).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, n, c)))


class AgentPVTBlock(nn.Module):
    """LN -> agent (A) or spatial-reduction (B) attention -> LN -> MLP, residual; (B, H*W, C) -> (B, H*W, C)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        attn_type: str = "A",
        agent_num: int = 49,
        bias_size: tuple[int, int] = (14, 14),
        agent_shape: tuple[int, int] | None = None,
        sr_ratio: int = 1,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6, **dd)
        if attn_type == "A":
            self.attn = AgentAttention(
                dim,
                num_heads,
                agent_num=agent_num,
                bias_size=bias_size,
                qkv_bias=qkv_bias,
                agent_shape=agent_shape,
                attn_drop=attn_drop,
                proj_drop=proj_drop,
                **dd,
            )
        else:
            self.attn = SRAttention(
                dim, num_heads, sr_ratio=sr_ratio, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, **dd
            )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6, **dd)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, drop=proj_drop, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x), size))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class PatchEmbed(nn.Module):
    """Patchify conv (kernel = stride = ``patch_size``, flooring) + LayerNorm; (B, C_in, H, W) -> (B, C, h, w)
    (the norm over channels, eps 1e-5 as the official ``nn.LayerNorm``).

    The model's stem (stage 1's patch embedding) checks the input against the family's size rule
    (``min_input_size``) with a clear error.
    """

    def __init__(self, in_chs: int, embed_dim: int, patch_size: int, min_input_size: int = 0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.min_input_size = min_input_size
        self.proj = nn.Conv2d(in_chs, embed_dim, patch_size, stride=patch_size, **dd)
        self.norm = nn.LayerNorm(embed_dim, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.min_input_size:
            x = check_input_size(x, self.min_input_size)
        x = self.proj(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class AgentPVTStage(nn.Module):
    """Patch embedding (stages 2-4; stage 1's is the model's stem), position embedding (resized to the actual grid),
    blocks; (B, C_in, H, W) -> (B, C, h, w)."""

    def __init__(
        self,
        in_chs: int,
        dim: int,
        depth: int,
        num_heads: int,
        grid_size: tuple[int, int],
        patch_size: int = 2,
        drop_path: Sequence[float] = (),
        proj_drop: float = 0.0,
        device=None,
        dtype=None,
        **block_kwargs,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.grid_size = (int(grid_size[0]), int(grid_size[1]))
        self.grad_checkpointing = False
        self.patch_embed = PatchEmbed(in_chs, dim, patch_size, **dd) if patch_size else nn.Identity()
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], dim, **dd))
        self.pos_drop = nn.Dropout(proj_drop)
        self.blocks = nn.ModuleList(
            [
                AgentPVTBlock(
                    dim,
                    num_heads,
                    bias_size=self.grid_size,
                    proj_drop=proj_drop,
                    drop_path=drop_path[j] if drop_path else 0.0,
                    **dd,
                    **block_kwargs,
                )
                for j in range(depth)
            ]
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        x = self.pos_drop(x + resize_pos_embed(self.pos_embed, self.grid_size, (h, w)))
        for blk in self.blocks:
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, (h, w))
            else:
                x = blk(x, (h, w))
        return x.transpose(1, 2).reshape(b, c, h, w)


class AgentPVT(PyramidContract, nn.Module):
    """Agent-PVT backbone and classifier; (B, in_chans, H, W) -> (B, num_classes), any H, W >= 32.

    Args:
        img_size: the training size: the position embeddings and the agent biases are sized to its grids
            (``img_size / 4``, ``/ 8``, ``/ 16``, ``/ 32``) and resized from them at any other size.
        in_chans: input channels.
        num_classes: classes of the linear head (0: no head, ``forward`` returns pooled features).
        global_pool: head pooling, 'avg' (the official token mean) or '' (no pooling, with num_classes=0).
        embed_dims: channels per stage.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        mlp_ratios: MLP expansion per stage.
        attn_type: one letter per stage, ``A`` (agent attention) or ``B`` (PVT's spatial-reduction attention).
        agent_num: agents per stage (perfect squares) of the trained model.
        agent_shapes: the agent grid (ph, pw) per stage, None: the trained sqrt(agent_num) square (the official dense
            configs use :data:`DENSE_AGENT_SHAPES`); the biases are resized over the agent axes.
        sr_ratios: key / value reduction of the B stages.
        qkv_bias: bias in the q / k / v projections.
        drop_rate: dropout before the classifier.
        proj_drop_rate: dropout after the position embedding, the attention projection and the MLP (the official
            ``drop_rate``).
        attn_drop_rate: dropout on the attention maps.
        drop_path_rate: stochastic depth, linear from 0 to this over all blocks.
    """

    pyramid_stem = "patch_embed"
    pyramid_final_norm = False
    pyramid_checkpoint_stages = False

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (1, 2, 5, 8),
        mlp_ratios: float | Sequence[float] = (8, 8, 4, 4),
        attn_type: str = "AAAA",
        agent_num: int | Sequence[int] = (9, 16, 49, 49),
        agent_shapes: Sequence[Sequence[int] | None] | None = None,
        sr_ratios: int | Sequence[int] = (8, 4, 2, 1),
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        proj_drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        embed_dims, depths, num_heads = (
            _tuple4(embed_dims, "embed_dims"),
            _tuple4(depths, "depths"),
            _tuple4(num_heads, "num_heads"),
        )
        mlp_ratios, agent_num, sr_ratios = (
            _tuple4(mlp_ratios, "mlp_ratios"),
            _tuple4(agent_num, "agent_num"),
            _tuple4(sr_ratios, "sr_ratios"),
        )
        if not isinstance(attn_type, str) or len(attn_type) != 4 or set(attn_type) - {"A", "B"}:
            raise ValueError(
                f"attn_type={attn_type!r} must be 4 letters, one per stage: 'A' (agent attention) or 'B' "
                "(spatial-reduction attention), e.g. 'AAAA' as in every official Agent-PVT"
            )
        if agent_shapes is None:
            agent_shapes = (None,) * 4
        if len(agent_shapes) != 4:
            raise ValueError(f"agent_shapes={agent_shapes!r} must hold 4 entries (one (ph, pw) or None per stage)")
        agent_shapes = tuple(None if s is None else (int(s[0]), int(s[1])) for s in agent_shapes)
        for i, (dim, heads) in enumerate(zip(embed_dims, num_heads)):
            if dim % heads:
                raise ValueError(f"num_heads[{i}]={heads} must divide embed_dims[{i}]={dim}")
            side = math.isqrt(int(agent_num[i]))
            if attn_type[i] == "A" and side * side != agent_num[i]:
                raise ValueError(f"agent_num[{i}]={agent_num[i]} must be a perfect square (9, 16, 49, ...)")
        img_h, img_w = to_2tuple(img_size)
        self.img_size = (int(img_h), int(img_w))
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.embed_dims = embed_dims
        self.num_features = self.head_hidden_size = embed_dims[-1]
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        dpr = calculate_drop_path_rates(drop_path_rate, list(depths), stagewise=True)
        grid = (self.img_size[0] // PATCH_SIZE, self.img_size[1] // PATCH_SIZE)
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], PATCH_SIZE, min_input_size=MIN_INPUT_SIZE, **dd)
        stages, self.feature_info = [], []
        for i in range(4):
            if i:
                grid = (grid[0] // 2, grid[1] // 2)
            stages.append(
                AgentPVTStage(
                    embed_dims[max(i - 1, 0)],
                    embed_dims[i],
                    depths[i],
                    num_heads[i],
                    grid_size=grid,
                    patch_size=0 if i == 0 else 2,
                    drop_path=dpr[i],
                    proj_drop=proj_drop_rate,
                    mlp_ratio=mlp_ratios[i],
                    attn_type=attn_type[i],
                    agent_num=int(agent_num[i]),
                    agent_shape=agent_shapes[i],
                    sr_ratio=int(sr_ratios[i]),
                    qkv_bias=qkv_bias,
                    attn_drop=attn_drop_rate,
                    **dd,
                )
            )
            self.feature_info.append(dict(num_chs=embed_dims[i], reduction=PATCH_SIZE * 2**i, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.head = ClassifierHead(self.num_features, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)
        self.init_weights()

    def init_weights(self) -> None:
        for stage in self.stages:
            trunc_normal_(stage.pos_embed, std=0.02)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    @torch.jit.ignore
    def no_weight_decay(self) -> set:
        # the official training decays every tensor of two or more dims, position embeddings and biases included
        return set()

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        return dict(
            stem=r"^patch_embed",
            blocks=r"^stages\.(\d+)"
            if coarse
            else [
                (r"^stages\.(\d+)\.(?:patch_embed|pos_embed)", (0,)),
                (r"^stages\.(\d+)\.blocks\.(\d+)", None),
            ],
        )

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable
        for stage in self.stages:
            stage.set_grad_checkpointing(enable)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, H, W) -> (B, C, H/32, W/32), the last stage's map (no final norm)."""
        return self.stages(self.patch_embed(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """(B, C, h, w) -> (B, num_classes), or the pooled (B, C) with ``pre_logits``."""
        return self.head(x, pre_logits=True) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ----------------------------------------------------------------------------------------------------------
# official checkpoints

_PREFIXES = ("module.", "backbone.")


def _compute_dtype(t: torch.Tensor) -> torch.Tensor:
    """Half-precision checkpoints are resized in float32 (CPU interpolation kernels), float32 / 64 as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _fit_to_model(key: str, value: torch.Tensor, target: torch.Tensor, stage: nn.Module) -> torch.Tensor:
    """A position embedding or row / column bias trained at another size -> the model's training grid (the official
    fine-tuning rule: bicubic for position embeddings, linear for the row / column biases)."""
    if value.shape == target.shape:
        return value
    if key.endswith("pos_embed"):
        n, c = value.shape[1], value.shape[2]
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{key}: {n} position embeddings are not a square grid; cannot resize to {target.shape}")
        grid = _compute_dtype(value.reshape(1, side, side, c).permute(0, 3, 1, 2))
        out = F.interpolate(grid, size=stage.grid_size, mode="bicubic", align_corners=False)
        return out.flatten(2).transpose(1, 2).to(value.dtype)
    for name, dim in ROW_COL_BIASES.items():
        if key.endswith(name):
            return resize_row_col_bias(key, value, target.shape[dim]).to(value.dtype)
    return value


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """Official Agent-PVT state_dict (classification ``{'model': ...}`` training save, mmdet / mmseg ``state_dict``
    with a ``backbone.`` prefix, or bare) -> this layout.

    ``patch_embed{i}`` / ``pos_embed{i}`` / ``block{i}.{j}`` -> ``stages.{i-1}.patch_embed`` / ``.pos_embed`` /
    ``.blocks.{j}`` (``patch_embed1`` is the stem ``patch_embed``); in agent-attention blocks the separate ``attn.q``
    and ``attn.kv`` are concatenated into ``attn.qkv``; ``head`` -> ``head.fc``. Position embeddings and row / column
    biases trained at another size are resized to the model's (the official fine-tuning rule). A state_dict already
    in this layout passes through.
    """
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
    if any(k.startswith("backbone.") for k in state_dict):  # a detector / segmentor: its backbone only
        state_dict = {k: v for k, v in state_dict.items() if k.startswith("backbone.")}
    clean = {}
    for key, value in state_dict.items():
        for prefix in _PREFIXES:
            key = key.removeprefix(prefix)
        clean[key] = value
    if any(k.startswith("stages.") for k in clean):  # already ours
        return clean
    out = {}
    for key, value in clean.items():
        m = re.match(r"(patch_embed|pos_embed|block)(\d+)(?:\.(.+))?$", key)
        if m:
            kind, i, rest = m.group(1), int(m.group(2)) - 1, m.group(3)
            if kind == "block":
                j, rest = rest.split(".", 1)
                key = f"stages.{i}.blocks.{j}.{rest}"
            elif kind == "patch_embed" and i == 0:
                key = f"patch_embed.{rest}"
            else:
                key = f"stages.{i}.{kind}" + (f".{rest}" if rest else "")
        elif key.startswith("head."):
            key = "head.fc." + key[len("head.") :]
        out[key] = value
    # agent attention: q (C, C) and kv (2C, C) are one qkv (3C, C) here, rows in the same q, k, v order
    model_state = model.state_dict()
    for key in [k for k in out if k.endswith(".attn.q.weight") or k.endswith(".attn.q.bias")]:
        fused = key.replace(".attn.q.", ".attn.qkv.")
        if fused in model_state:
            kv = key.replace(".attn.q.", ".attn.kv.")
            out[fused] = torch.cat([out.pop(key), out.pop(kv)], dim=0)
    for key, value in out.items():
        m = re.match(r"stages\.(\d+)\.", key)
        if m and key in model_state and value.shape != model_state[key].shape:
            out[key] = _fit_to_model(key, value, model_state[key], model.stages[int(m.group(1))])
    return out


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": (7, 7),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head.fc",
        # the official repository has no LICENSE file at the studied commit (its vendored mmdet / mmseg are Apache-2.0)
        "license": "unknown",
        "paper_ids": "arXiv:2312.08874",
        "paper_name": "Agent Attention: On the Integration of Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/Agent-Attention",
        **kwargs,
    }


_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
# model -> (Tsinghua Cloud file id, official top-1)
_RELEASES = {
    "agent_pvt_tiny": ("13fdf0e0a7c5498c934f", 78.4),
    "agent_pvt_small": ("36b8be9a8863456685a3", 82.2),
    "agent_pvt_medium": ("4d00ecacf18b45f9b88c", 83.4),
    "agent_pvt_large": ("040cfe0cfbbe4762ad09", 83.7),
    "agent_pvt_medium_256": ("654df734121643b19c52", 83.8),
}

default_cfgs = generate_default_cfgs(
    {
        f"{name}.in1k": _cfg(url=_TSINGHUA.format(fid))
        if name != "agent_pvt_medium_256"
        else _cfg(url=_TSINGHUA.format(fid), input_size=(3, 256, 256), pool_size=(8, 8))
        for name, (fid, _) in _RELEASES.items()
    }
)


def _create_agent_pvt(variant: str, pretrained: bool = False, **kwargs) -> AgentPVT:
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    return build_model(
        AgentPVT,
        variant,
        pretrained,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


# Every official Agent-PVT: PVT v1 widths / heads / MLP ratios, qkv bias, agent attention in all stages with 9, 16,
# 49, 49 agents. Stochastic depth is off by default (timm's convention); the official ImageNet training used
# drop_path_rate 0.1 (T, S) and 0.3 (M, L, M@256), cfgs/agent_pvt_*.yaml.
_BASE = dict(
    embed_dims=(64, 128, 320, 512),
    num_heads=(1, 2, 5, 8),
    mlp_ratios=(8, 8, 4, 4),
    attn_type="AAAA",
    agent_num=(9, 16, 49, 49),
    qkv_bias=True,
)


@register_model
def agent_pvt_tiny(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-T: 11.6M params, 78.4% ImageNet top-1 (official)."""
    args = dict(_BASE, depths=(2, 2, 2, 2))
    return _create_agent_pvt("agent_pvt_tiny", pretrained, **dict(args, **kwargs))


@register_model
def agent_pvt_small(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-S: 20.6M params, 82.2% ImageNet top-1 (official)."""
    args = dict(_BASE, depths=(3, 4, 6, 3))
    return _create_agent_pvt("agent_pvt_small", pretrained, **dict(args, **kwargs))


@register_model
def agent_pvt_medium(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M: 35.9M params, 83.4% ImageNet top-1 (official)."""
    args = dict(_BASE, depths=(3, 4, 18, 3))
    return _create_agent_pvt("agent_pvt_medium", pretrained, **dict(args, **kwargs))


@register_model
def agent_pvt_large(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-L (the official cfg agent_pvt_b.yaml): 48.7M params, 83.7% ImageNet top-1 (official)."""
    args = dict(_BASE, depths=(3, 8, 27, 3))
    return _create_agent_pvt("agent_pvt_large", pretrained, **dict(args, **kwargs))


@register_model
def agent_pvt_medium_256(pretrained: bool = False, **kwargs) -> AgentPVT:
    """Agent-PVT-M trained at 256 px: 36.1M params, 83.8% ImageNet top-1 (official)."""
    args = dict(_BASE, depths=(3, 4, 18, 3), img_size=256)
    return _create_agent_pvt("agent_pvt_medium_256", pretrained, **dict(args, **kwargs))


def _checkpoints() -> tuple[Checkpoint, ...]:
    """The official releases (Tsinghua Cloud; the classification ids of the README, the dense ones of the downstream
    READMEs). Not downloaded from here: status unknown."""
    cls = [Checkpoint(model, "in1k", format="model", top1=top1) for model, (_, top1) in _RELEASES.items()]
    models = {"t": "agent_pvt_tiny", "s": "agent_pvt_small", "m": "agent_pvt_medium", "l": "agent_pvt_large"}
    notes = "mmdet 2 / mmseg 0.x checkpoint; the backbone's keys load through the family converter"
    dense = [
        Checkpoint(
            models[size],
            tag,
            task=task,
            urls=(_TSINGHUA.format(fid),) if fid else (),
            format="mmcv",
            status="unknown" if fid else "none",
            result=result,
            notes=notes if fid else "the official README lists this result with an empty download link",
        )
        for size, tag, task, fid, result in (
            ("t", "coco_mask_rcnn_1x", "det", "79cbc3a7b7a24a0b92c1", "box AP 41.4 / mask AP 38.7"),
            ("s", "coco_mask_rcnn_1x", "det", "8e333aa6b55e45d4b76c", "box AP 44.5 / mask AP 41.2"),
            ("m", "coco_mask_rcnn_1x", "det", "6401bf2b227046a58fc3", "box AP 45.9 / mask AP 42.0"),
            ("l", "coco_mask_rcnn_1x", "det", "8fa3d506f1e24099b99f", "box AP 46.9 / mask AP 42.8"),
            ("t", "coco_retinanet_1x", "det", "d3c1dbe0243d4775aafd", "box AP 40.3"),
            ("s", "coco_retinanet_1x", "det", "d427a52511f64ab5a928", "box AP 44.1"),
            ("m", "coco_retinanet_1x", "det", "81d6c824d9f244a192a3", "box AP 45.8"),
            ("l", "coco_retinanet_1x", "det", "2dc5b1f685fd4ecf8db5", "box AP 46.8"),
            ("t", "ade20k_fpn_40k", "seg", "5e7bf988b4b74efe8654", "mIoU 40.18"),
            ("s", "ade20k_fpn_40k", "seg", "11332fa565e443678e4c", "mIoU 44.18"),
            ("m", "ade20k_fpn_40k", "seg", "", "mIoU 44.30"),
            ("l", "ade20k_fpn_40k", "seg", "0da8b58581214f85974f", "mIoU 46.52"),
        )
    ]
    return tuple(cls + dense)


register_family(
    Family(
        name="agent_pvt",
        models=tuple(_RELEASES),
        aliases={
            "agent_pvt_t": "agent_pvt_tiny",
            "agent_pvt_s": "agent_pvt_small",
            "agent_pvt_m": "agent_pvt_medium",
            "agent_pvt_l": "agent_pvt_large",
        },
        converter=checkpoint_filter_fn,
        params_m={
            "agent_pvt_tiny": 11.6,
            "agent_pvt_small": 20.6,
            "agent_pvt_medium": 35.9,
            "agent_pvt_large": 48.7,
            "agent_pvt_medium_256": 36.1,
        },
        card="model_cards/agent_attention.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="hierarchical",
        num_stages=4,
        # one block per stage, both block kinds (agent attention in stages 1, 3, 4; spatial reduction in stage 2)
        test_kwargs=dict(embed_dims=(16, 32, 40, 64), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), attn_type="ABAA"),
        # the official dense backbone: the raw stage outputs, larger agent grids (biases resized to them)
        dense=DenseRecipe(out_norm="none", model_kwargs=dict(agent_shapes=DENSE_AGENT_SHAPES)),
        # the position-embedding and bias resizes stay in an exported graph, also at the training size (identities
        # there): one graph holds at every size
        onnx_dynamic_size=True,
        checkpoints=_checkpoints(),
    )
)
