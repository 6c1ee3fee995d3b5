"""Agent-DeiT: DeiT with agent attention (Agent Attention, ECCV 2024), on timm's VisionTransformer.

Paper: https://arxiv.org/abs/2312.08874 (Dongchen Han, Tianzhu Ye, Yizeng Han, Zhuofan Xia, Siyuan Pan, Pengfei Wan,
Shiji Song, Gao Huang). Official code: https://github.com/LeapLabTHU/Agent-Attention (``agent_transformer/models/
agent_deit.py``).

The model is timm's ``VisionTransformer`` (class token, learned position table, qkv bias, LayerNorm eps 1e-6) whose
first ``agent_layer`` blocks (all 12 for Agent-DeiT-T / S, the first 4 for Agent-DeiT-B) use
:class:`visionattn.layers.agent_attention.AgentAttention` with the class token as its one prefix token: ``agent_num``
agents (49 for T / S, 81 for B) pooled from the patch queries, the position biases of the official layer (``an/na``
7 x 7, ``ah/aw/ha/wa`` at the training grid ``img_size / 16``, ``ac/ca`` for the class token) and a depth-wise 3 x 3
convolution over the patch values. The other blocks are timm's plain ``Attention``. The state_dict keys are the
official ones.

Any input size (from 32 px, non-square): a side that is not a multiple of 16 is zero-padded on the right / bottom to
the next multiple (timm's ``dynamic_img_pad``); the position table is resampled to the patch grid (bicubic without
antialiasing, class token kept: the rule of the official ``load_pretrained`` for another resolution); each
agent-attention layer resizes its biases to the actual grid by the rule of the official dense backbones:
``an_bias`` / ``na_bias`` and the sums ``ah + aw`` / ``ha + wa`` bilinearly (``align_corners=False``) to the patch
grid (for a square grid the same as the official fine-tuning rule, 1-D linear interpolation of each of ``ah`` / ``aw``
/ ``ha`` / ``wa``); the agent grid keeps its count (sqrt(agent_num) per side, pooled with ``AdaptiveAvgPool2d``'s
bins). At the training size every resize is the identity and the output is the official classification model's;
at a larger square size it is the official model's built for that size with the weights loaded by the official
``load_pretrained`` (``tests/test_agent_deit.py`` checks both against fixtures of the official code).

Differences from the official code: the official layer reads the grid as ``sqrt(N)`` of its token count (square
inputs of the training size only; it works at 224 because 197 is not a square); the two attentions run through
``F.scaled_dot_product_attention`` with the biases as an additive mask, and the agent pooling is two averaging
matrices (ONNX exports it at any size).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import register_notrace_module, resample_abs_pos_embed
from timm.models import generate_default_cfgs, register_model
from timm.models.vision_transformer import Block, VisionTransformer

from ..layers.agent_attention import ROW_COL_BIASES, AgentAttention, resize_row_col_bias
from ..layers.input_size import check_input_size
from ..pretrained import build_model
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["AgentDeiT", "GridAgentAttention", "checkpoint_filter_fn"]

MIN_INPUT_SIZE = 32


@register_notrace_module  # reads the grid the model recorded for this input: a leaf under FX
class GridAgentAttention(AgentAttention):
    """:class:`AgentAttention` with timm's attention call ``attn(x, attn_mask=None)``: the token grid (h, w) of the
    current input is set on ``grid`` by the model before its blocks run. (B, 1 + h*w, C) -> (B, 1 + h*w, C).

    Under gradient checkpointing the blocks are recomputed in the backward pass with the grid of the latest forward:
    run one forward per backward when input sizes vary (the token count is checked, so a grid with another count
    fails loudly; only a transposed grid, e.g. 8 x 4 after 4 x 8, would pass unnoticed).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.grid: tuple[int, int] = self.bias_size

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        if attn_mask is not None or is_causal:
            raise ValueError("agent attention takes no attn_mask / is_causal: every token sees every agent")
        return super().forward(x, self.grid)


class AgentBlock(Block):
    """timm's pre-norm ViT block; blocks with index ``depth < agent_layer`` get agent attention (the class token as
    its prefix token), the rest timm's ``Attention``."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        depth: int = 0,
        agent_layer: int = 0,
        agent_num: int = 49,
        bias_size: tuple[int, int] = (14, 14),
        device=None,
        dtype=None,
        **kwargs,
    ) -> None:
        agent = depth < agent_layer
        if agent and (kwargs.get("qk_norm") or kwargs.get("scale_attn_norm") or not kwargs.get("proj_bias", True)):
            raise ValueError("Agent-DeiT's agent attention has no qk_norm / scale_attn_norm and always a proj bias")
        if agent:  # timm's Block builds the attention from a class and fixed arguments: built here instead
            kwargs["attn_layer"] = nn.Identity
        args = dict(
            qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop, depth=depth, device=device, dtype=dtype
        )
        super().__init__(dim, num_heads, **args, **kwargs)
        if agent:
            self.attn = GridAgentAttention(
                dim,
                num_heads,
                agent_num=agent_num,
                bias_size=bias_size,
                qkv_bias=qkv_bias,
                num_prefix_tokens=1,
                attn_drop=attn_drop,
                proj_drop=proj_drop,
                device=device,
                dtype=dtype,
            )


@register_notrace_module  # reads the input's shape: a leaf under FX, so it runs with real sizes
class TokenGrid(nn.Module):
    """Patches (B, gh, gw, C) -> tokens (B, 1 + gh * gw, C): class token first, the position table (1, 1 + N0, C)
    resampled to the grid by the official fine-tuning rule (bicubic, corners not aligned, no antialiasing; timm's
    ``resample_abs_pos_embed``); tells the agent attention layers the grid."""

    def __init__(self, grid_size: tuple[int, int], attention: list[nn.Module]) -> None:
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.attention = list(attention)  # not submodules: the blocks own them

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        b, gh, gw, c = x.shape
        for attn in self.attention:
            attn.grid = (int(gh), int(gw))
        pos = resample_abs_pos_embed(
            pos_embed, new_size=(gh, gw), old_size=self.grid_size, num_prefix_tokens=1, antialias=False
        )
        return torch.cat([cls_token.expand(b, -1, -1), x.reshape(b, gh * gw, c)], dim=1) + pos


class AgentDeiT(VisionTransformer):
    """Agent-DeiT on timm's VisionTransformer; (B, 3, H, W) -> (B, num_classes), H and W >= 32.

    Args (besides timm's VisionTransformer arguments):
        agent_num: agents per agent-attention layer (a perfect square: 49 for T / S, 81 for B).
        agent_layer: the first ``agent_layer`` blocks use agent attention, the rest timm's attention; None: all.
        bias_size: the token grid the position biases are sized for; None: ``img_size / patch_size`` (the
            official ``window``).
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        depth: int = 12,
        agent_num: int = 49,
        agent_layer: int | None = None,
        bias_size: tuple[int, int] | None = None,
        **kwargs,
    ) -> None:
        for key in ("dynamic_img_size", "class_token", "no_embed_class", "reg_tokens", "block_fn", "attn_layer"):
            if key in kwargs:
                raise ValueError(f"AgentDeiT fixes {key}; do not pass it")
        agent_layer = depth if agent_layer is None else int(agent_layer)
        if not 0 <= agent_layer <= depth:
            raise ValueError(f"agent_layer={agent_layer} must be in [0, depth={depth}] (blocks with agent attention)")
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if bias_size is None:
            bias_size = (size[0] // patch_size, size[1] // patch_size)
        self.agent_num = agent_num
        self.agent_layer = agent_layer
        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            depth=depth,
            dynamic_img_size=True,
            dynamic_img_pad=kwargs.pop("dynamic_img_pad", True),
            block_fn=partial(AgentBlock, agent_layer=agent_layer, agent_num=agent_num, bias_size=tuple(bias_size)),
            **kwargs,
        )
        self.output_fmt = "NLC"  # forward_features returns tokens (B, 1 + gh * gw, C), class token first
        agents = [b.attn for b in self.blocks if isinstance(b.attn, GridAgentAttention)]
        self.token_grid = TokenGrid(self.patch_embed.grid_size, agents)

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw, C) patches -> (B, 1 + gh * gw, C) tokens; records the grid for the agent attention layers."""
        return self.pos_drop(self.token_grid(x, self.pos_embed, self.cls_token))

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + gh * gw, C) normed tokens."""
        x = check_input_size(x, MIN_INPUT_SIZE)
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here so that FX patches this module's globals: check_input_size stays one traced call
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, *args, **kwargs):
        """timm's ViT ``forward_intermediates`` (maps after the blocks, (B, C, gh, gw)) with the input-size check."""
        x = check_input_size(x, MIN_INPUT_SIZE)
        return super().forward_intermediates(x, *args, **kwargs)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        """timm's ViT pruning (blocks after the last taken one, the head); without the head nothing reads the last
        block's class token, so that block's class-token-only parameter (``ca_bias``, the class token's bias towards
        the agents) is frozen: it cannot receive a gradient, and a distributed trainer would find it unused."""
        take = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        last = self.blocks[-1].attn if len(self.blocks) else None
        if prune_head and isinstance(last, GridAgentAttention) and last.ca_bias is not None:
            last.ca_bias.requires_grad_(False)
        return take


@torch.no_grad()
def checkpoint_filter_fn(state_dict: dict, model: AgentDeiT) -> dict:
    """Official Agent-DeiT layouts -> ours: training saves (``{'model': ...}``) or bare state dicts, the same keys.
    The position table is resampled to the model's grid when it differs (bicubic, the official fine-tuning rule),
    ``ah/aw/ha/wa_bias`` are linearly interpolated to the model's ``bias_size`` (the same rule); entries the model
    does not have (a distillation head) are dropped. Resized entries are computed in float32 at least (a half-precision
    file would otherwise be interpolated in half precision) and returned in that dtype."""
    state_dict = state_dict.get("model", state_dict)
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key not in own:
            continue
        if key == "pos_embed" and value.shape != own[key].shape:
            value = resample_abs_pos_embed(
                value.to(torch.promote_types(value.dtype, torch.float32)),
                new_size=model.patch_embed.grid_size,
                num_prefix_tokens=1,
                antialias=False,
            )
        elif key.endswith(tuple(ROW_COL_BIASES)) and value.shape != own[key].shape:
            axis = ROW_COL_BIASES[key.rsplit(".", 1)[-1]]
            value = resize_row_col_bias(key, value, own[key].shape[axis])
        out[key] = value
    return out


def _cfg(url: str = "", **kwargs) -> dict:
    return {
        "url": url,
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "fixed_input_size": False,
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        "paper_ids": "arXiv:2312.08874",
        "paper_name": "Agent Attention: On the Integration of Softmax and Linear Attention",
        "origin_url": "https://github.com/LeapLabTHU/Agent-Attention",
        **kwargs,
    }


_TSINGHUA = "https://cloud.tsinghua.edu.cn/f/{}/?dl=1"
# (model, Tsinghua Cloud id, ImageNet-1k top-1 of the official README)
_RELEASES = (
    ("agent_deit_tiny", "57e0904221824ee7b7af", 74.9),
    ("agent_deit_small", "fdd43304372541db8ea7", 80.5),
    ("agent_deit_base", "5115f15fdd7e4ab58fbc", 82.0),
    ("agent_deit_small_448", "a228f86241c445f1969b", 83.1),
)

default_cfgs = generate_default_cfgs(
    {
        f"{model}.in1k": _cfg(
            url=_TSINGHUA.format(cid), **(dict(input_size=(3, 448, 448)) if model.endswith("448") else {})
        )
        for model, cid, _ in _RELEASES
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> AgentDeiT:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model(
        AgentDeiT, variant, pretrained, feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **kwargs
    )


@register_model
def agent_deit_tiny(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-T: 192 wide, 12 agent-attention blocks of 3 heads, 49 agents."""
    args = dict(embed_dim=192, depth=12, num_heads=3, agent_num=49)
    return _create("agent_deit_tiny", pretrained, **dict(args, **kwargs))


@register_model
def agent_deit_small(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-S: 384 wide, 12 agent-attention blocks of 6 heads, 49 agents (official drop path 0.1)."""
    args = dict(embed_dim=384, depth=12, num_heads=6, agent_num=49)
    return _create("agent_deit_small", pretrained, **dict(args, **kwargs))


@register_model
def agent_deit_base(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-B: 768 wide, 12 blocks of 12 heads, agent attention (81 agents) in the first 4 (official drop
    path 0.3)."""
    args = dict(embed_dim=768, depth=12, num_heads=12, agent_num=81, agent_layer=4)
    return _create("agent_deit_base", pretrained, **dict(args, **kwargs))


@register_model
def agent_deit_small_448(pretrained: bool = False, **kwargs) -> AgentDeiT:
    """Agent-DeiT-S at 448 px: the position table and the row / column biases sized for the 28 x 28 grid."""
    args = dict(img_size=448, embed_dim=384, depth=12, num_heads=6, agent_num=49)
    return _create("agent_deit_small_448", pretrained, **dict(args, **kwargs))


register_family(
    Family(
        name="agent_deit",
        models=("agent_deit_tiny", "agent_deit_small", "agent_deit_base", "agent_deit_small_448"),
        aliases={
            "agent_deit_t": "agent_deit_tiny",
            "agent_deit_s": "agent_deit_small",
            "agent_deit_b": "agent_deit_base",
        },
        converter=checkpoint_filter_fn,
        params_m={
            "agent_deit_tiny": 6.02,
            "agent_deit_small": 22.65,
            "agent_deit_base": 87.2,
            "agent_deit_small_448": 23.07,
        },
        card="model_cards/agent_attention.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="isotropic",
        num_stages=12,
        # the 12 agent blocks, 3 heads of 16 channels, the 49 agents; the head averages every token (class token
        # included): with the class-token head the last block's patch-only parameters (na / ha / wa biases, dwc)
        # get no gradient, in the official model too (tests/test_agent_deit.py checks which), and the shared tests
        # ask that every parameter has one
        test_kwargs=dict(embed_dim=48, global_pool="avg", pool_include_prefix=True),
        # no official dense code for DeiT: the last block's map (the final norm is not applied to features) gets a
        # LayerNorm, then the adapter's simple feature pyramid
        dense=DenseRecipe(out_norm="ln2d"),
        scriptable=False,
        onnx_dynamic_size=False,
        checkpoints=tuple(Checkpoint(m, "in1k", format="model", top1=top1) for m, _, top1 in _RELEASES),
    )
)
