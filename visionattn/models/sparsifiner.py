"""Sparsifiner: Learning Sparse Instance-Dependent Attention for Efficient Vision Transformers (CVPR 2023).

Paper: https://arxiv.org/abs/2303.13755 (Cong Wei, Brendan Duke, Ruowei Jiang, Parham Aarabi, Graham W. Taylor,
Florian Shkurti). Official code: https://github.com/lim142857/Sparsifiner.

Every attention layer predicts, per image and head, which keys each patch query needs: a low-rank
"connectivity" predictor projects q and k to ``c = head_dim / 2`` channels and the token axis to ``K`` basis
tokens, softmaxes the cheap ``(N-1, K)`` logits into basis coefficients, keeps the top 8 of each row, maps them
back through a thresholded ``(K, N)`` basis into an approximate attention map and keeps its top
``ceil(attn_keep_rate * N)`` entries per row. The official code then computes dense ``N x N`` attention and masks
it; here the patch queries attend only to their selected keys through :func:`visionattn.kernels.sparse_attn`
(the Triton kernel on GPU, the reference elsewhere), so the attention costs ``N * keep * N`` instead of ``N^2``
and no ``N x N`` attention map exists. The class token's query attends to every key, as in the official mask.

The models are timm's ``VisionTransformer`` (DeiT-S) with this attention in every block;
``sparsifiner_lvvit_small`` adds LV-ViT-S's pieces: the 4-layer convolutional stem, the residual scale
``1 / skip_lam``, no qkv bias, and the token-labelling head (``head(cls) + 0.5 * max_tokens(aux_head(tokens))``,
the official evaluation output).

Any input size (from 32 px): a side that is not a multiple of 16 is zero-padded on the right / bottom to the next
multiple (timm's ``dynamic_img_pad``; LV-ViT's convolutional stem floors instead, as convolutions do), the
position table is resampled to the patch grid (timm's ``dynamic_img_size``),
and the predictor's token-axis parameters ``proj_n`` / ``proj_back_n``, ``(197, K)`` for the 14 x 14 grid of a
224 px input, are resampled the same way: the class-token row is kept and the 196 patch rows, seen as a 14 x 14
grid of K-vectors, are resized bilinearly (``align_corners=False``) to the actual grid. The budget is
``ceil(attn_keep_rate * N)`` for the actual token count ``N``. At 224 nothing is resampled and the output equals
the official model's.

Quirks kept for checkpoint parity: the predictor scales its cheap logits by ``num_heads ** -0.5`` (not the head
dim), its basis is ``|proj_back_n|`` with entries below 0.02 zeroed (``nn.Threshold``), and the selection
includes the class token's column only when it ranks in the top-k, as the official mask does.

What is not reproduced: the token pruning option (off in every released configuration), the dense
"unmasked" attention the official forward also returns for distillation, and the attention-reconstruction
training phase of the predictor (the predictor's parameters get no gradient from the classification loss, as in
the official main phase, where the mask is detached).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    Format,
    LayerNorm,
    PatchEmbed,
    get_device_dtype,
    nchw_to,
    register_notrace_module,
    resample_abs_pos_embed,
    trunc_normal_,
)
from timm.models import generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer

from visionattn.kernels import sparse_attn
from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import build_model

from ._registry import Family, register_family

__all__ = ["MaskPredictor", "SparsifinerAttention", "Sparsifiner", "checkpoint_filter_fn"]

MIN_INPUT_SIZE = 32
NUM_LEVELS = 4  # feature levels exposed to dense heads: the last block of each quarter of the depth


class MaskPredictor(nn.Module):
    """Low-rank connectivity predictor: per image, head and patch query, the positions of its top keys.

    Args:
        head_dim: channels per head of q and k.
        num_heads: heads (the cheap logits are scaled by ``num_heads ** -0.5``, the official quirk).
        grid_size: patch grid the token-axis parameters are sized for (14 x 14: 197 tokens with the class token).
        reduce_n_factor: ``K = (1 + gh * gw) // reduce_n_factor`` basis tokens.
        reduce_c_factor: q / k are projected to ``head_dim // reduce_c_factor`` channels.
        basis_threshold: basis entries ``|proj_back_n|`` at or below this are zeroed.
        coef_topk: basis coefficients kept per query.
        selection_dtype: dtype of the selection scores (see :meth:`forward`; float32 rounds as the official code).
    """

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        grid_size: tuple[int, int] = (14, 14),
        reduce_n_factor: int = 6,
        reduce_c_factor: int = 2,
        basis_threshold: float = 2e-2,
        coef_topk: int = 8,
        selection_dtype: torch.dtype = torch.float64,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.selection_dtype = selection_dtype
        self.grid_size = tuple(grid_size)
        num_tokens = 1 + self.grid_size[0] * self.grid_size[1]
        reduced_n = num_tokens // reduce_n_factor
        reduced_c = head_dim // reduce_c_factor
        if reduced_n < 1 or reduced_c < 1:
            raise ValueError(
                f"reduce_n_factor={reduce_n_factor} / reduce_c_factor={reduce_c_factor} leave no basis tokens or "
                f"channels for {num_tokens} tokens of head_dim {head_dim}; use smaller factors"
            )
        if not 1 <= coef_topk <= reduced_n:
            raise ValueError(f"coef_topk={coef_topk} must be in [1, {reduced_n}] (the number of basis tokens)")
        self.scale = num_heads**-0.5
        self.basis_threshold = basis_threshold
        self.coef_topk = coef_topk
        self.proj_c_q = nn.Linear(head_dim, reduced_c, **dd)
        self.proj_c_k = nn.Linear(head_dim, reduced_c, **dd)
        self.proj_n = nn.Parameter(torch.zeros(num_tokens, reduced_n, **dd))
        self.proj_back_n = nn.Parameter(torch.zeros(num_tokens, reduced_n, **dd))
        trunc_normal_(self.proj_n, std=0.02)
        trunc_normal_(self.proj_back_n, std=0.02)
        # the selection is not differentiable: these are trained only by the reconstruction objective
        # (Sparsifiner.attention_reconstruction_loss, after set_predictor_trainable(True))
        self.requires_grad_(False)

    def token_params(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``proj_n`` and ``proj_back_n`` for a ``grid`` of patches: (1 + gh * gw, K) each (see the module doc)."""
        if tuple(grid) == self.grid_size:
            return self.proj_n, self.proj_back_n
        out = []
        for p in (self.proj_n, self.proj_back_n):
            patches = p[1:].reshape(1, *self.grid_size, -1).permute(0, 3, 1, 2)
            patches = F.interpolate(patches, size=grid, mode="bilinear", align_corners=False)
            out.append(torch.cat([p[:1], patches.flatten(2)[0].transpose(0, 1)], dim=0))
        return out[0], out[1]

    def coefficients(self, q: torch.Tensor, k: torch.Tensor, proj_n: torch.Tensor) -> torch.Tensor:
        """Basis coefficients of the patch queries: (B, heads, N-1, K), each row a softmax, computed in the dtype
        of ``proj_n`` (the projections' weights are cast to it)."""
        dt = proj_n.dtype
        qc = F.linear(q[:, :, 1:].to(dt), self.proj_c_q.weight.to(dt), self.proj_c_q.bias.to(dt))  # no class row
        kc = F.linear(k.to(dt), self.proj_c_k.weight.to(dt), self.proj_c_k.bias.to(dt)).transpose(-1, -2) @ proj_n
        return ((qc @ kc) * self.scale).softmax(-1)

    def reconstruction(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The official training-phase approximation of the attention rows (every coefficient, the raw basis):
        (B, heads, N-1, N), differentiable in the predictor's parameters."""
        proj_n, proj_back_n = self.token_params(grid)
        return self.coefficients(q, k, proj_n) @ proj_back_n.transpose(0, 1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, grid: tuple[int, int], budget: int) -> torch.Tensor:
        """q, k: (B, heads, N, d) with the class token first -> (B, heads, N - 1, budget) key positions.

        The scores are computed in ``selection_dtype`` (float64 by default): the selection is a discrete decision
        over values whose gaps can fall below float32 rounding, and in float64 it no longer depends on the
        summation order of the runtime (PyTorch or ONNX Runtime, CPU or GPU, batch size)."""
        proj_n, proj_back_n = (p.to(self.selection_dtype) for p in self.token_params(grid))
        coef = self.coefficients(q, k, proj_n)  # (B, heads, N-1, K)
        top, top_idx = coef.topk(self.coef_topk, dim=-1)
        # the kept coefficients as a dense (.., K) row, built with a one-hot sum (exports without a scatter)
        one_hot = top_idx.unsqueeze(-1) == torch.arange(coef.shape[-1], device=coef.device)
        coef = (top.unsqueeze(-1) * one_hot.to(top.dtype)).sum(-2)
        basis = proj_back_n.abs()
        basis = torch.where(basis > self.basis_threshold, basis, 0.0).transpose(0, 1)  # (K, N), nn.Threshold's rule
        approx = coef @ basis  # (B, heads, N-1, N)
        return approx.topk(budget, dim=-1, sorted=False).indices


@register_notrace_module  # data-dependent key selection: a leaf under FX
class SparsifinerAttention(nn.Module):
    """Multi-head self-attention whose patch queries attend only to the keys the predictor selects.

    ``grid`` (the patch grid of the current input) is set by the model before its blocks run. Takes timm's
    attention arguments (``_create_attn``), so it plugs into ``timm.models.vision_transformer.Block``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = False,
        qk_norm: bool = False,
        scale_norm: bool = False,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        norm_layer: type[nn.Module] | None = None,
        depth: int = 0,
        attn_keep_rate: float = 0.25,
        grid_size: tuple[int, int] = (14, 14),
        reduce_n_factor: int = 6,
        reduce_c_factor: int = 2,
        basis_threshold: float = 2e-2,
        coef_topk: int = 8,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        if qk_norm or scale_norm:
            raise ValueError("SparsifinerAttention has no qk_norm / scale_norm; the official blocks have neither")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        if not 0.0 < attn_keep_rate <= 1.0:
            raise ValueError(f"attn_keep_rate={attn_keep_rate} must be in (0, 1] (the share of keys each query keeps)")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.attn_keep_rate = attn_keep_rate
        self.grid: tuple[int, int] = tuple(grid_size)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias, **dd)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.mask_predictor = MaskPredictor(
            self.head_dim, num_heads, grid_size, reduce_n_factor, reduce_c_factor, basis_threshold, coef_topk, **dd
        )

    def budget(self, num_tokens: int) -> int:
        """Keys kept per patch query: ``ceil(attn_keep_rate * N)``."""
        return min(num_tokens, math.ceil(self.attn_keep_rate * num_tokens))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """The selected key positions for tokens ``x`` (B, N, C): (B, heads, N - 1, budget)."""
        q, k, _ = self._qkv(x)
        return self.mask_predictor(q, k, self.grid, self.budget(x.shape[1]))

    def reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of squared errors between the predictor's approximation and this layer's softmax attention rows of
        the patch queries (the target detached), for tokens ``x`` (B, N, C)."""
        q, k, _ = self._qkv(x)
        q, k = q.detach(), k.detach()
        with torch.no_grad():
            target = (q[:, :, 1:] @ k.transpose(-1, -2) * self.scale).softmax(-1)
        return F.mse_loss(self.mask_predictor.reconstruction(q, k, self.grid), target, reduction="sum")

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n, c = x.shape
        return self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """(B, N, C) tokens, class token first -> (B, N, C)."""
        if attn_mask is not None or is_causal:
            raise ValueError("SparsifinerAttention chooses its own keys; attn_mask / is_causal are not supported")
        b, n, c = x.shape
        if n - 1 != self.grid[0] * self.grid[1]:
            raise ValueError(f"{n} tokens do not fit the grid {self.grid} plus a class token; run the whole model")
        q, k, v = self._qkv(x)
        with torch.no_grad():  # the selection is not differentiable; the official mask is detached as well
            index = self.mask_predictor(q, k, self.grid, self.budget(n))
        drop = self.attn_drop if self.training else 0.0
        cls = F.scaled_dot_product_attention(q[:, :, :1], k, v, dropout_p=drop)
        patches = sparse_attn(q[:, :, 1:], k, v, index, scale=self.scale)
        x = torch.cat([cls, patches], dim=2).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class _ResidualScale(nn.Module):
    """Multiplies by a constant: LV-ViT's ``1 / skip_lam`` on each residual branch, in timm Block's LayerScale slot."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _SkipLamBlock(Block):
    def __init__(self, *args, skip_lam: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        if skip_lam != 1.0:
            self.ls1 = _ResidualScale(1.0 / skip_lam)
            self.ls2 = _ResidualScale(1.0 / skip_lam)


class ConvStemPatchEmbed(PatchEmbed):
    """LV-ViT's patch embedding: three convolutions (7x7 stride 2, 3x3, 3x3; 64 channels, BN, ReLU), then an
    8 x 8 stride-8 projection; (B, 3, H, W) -> tokens on a (ceil(H / 2) // 8, ceil(W / 2) // 8) grid."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, stem_chs=64, device=None, **kwargs):
        dtype = kwargs.pop("dtype", None)
        kwargs.pop("bias", None)
        super().__init__(img_size, patch_size, in_chans, embed_dim, device=device, dtype=dtype, **kwargs)
        dd = dict(device=device, dtype=dtype)
        self.conv1 = nn.Conv2d(in_chans, stem_chs, 7, stride=2, padding=3, bias=False, **dd)
        self.bn1 = nn.BatchNorm2d(stem_chs, **dd)
        self.conv2 = nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False, **dd)
        self.bn2 = nn.BatchNorm2d(stem_chs, **dd)
        self.conv3 = nn.Conv2d(stem_chs, stem_chs, 3, padding=1, bias=False, **dd)
        self.bn3 = nn.BatchNorm2d(stem_chs, **dd)
        half = self.patch_size[0] // 2, self.patch_size[1] // 2
        self.proj = nn.Conv2d(stem_chs, embed_dim, kernel_size=half, stride=half, **dd)

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        return (img_size[0] + 1) // 2 // (self.patch_size[0] // 2), (img_size[1] + 1) // 2 // (self.patch_size[1] // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.proj(x)
        if self.flatten:
            x = x.flatten(2).transpose(1, 2)
        elif self.output_fmt != Format.NCHW:
            x = nchw_to(x, self.output_fmt)
        return self.norm(x)


@register_notrace_module  # reads the input's shape: a leaf under FX, so it runs with real sizes
class TokenGrid(nn.Module):
    """Patches (B, gh, gw, C), the position table (1, 1 + gh0 * gw0, C) and the class token (1, 1, C) ->
    tokens (B, 1 + gh * gw, C) with the table resampled to the grid (timm's ``resample_abs_pos_embed``); tells
    the attention layers the grid on the way."""

    def __init__(self, grid_size: tuple[int, int], attention: list[nn.Module]):
        super().__init__()
        self.grid_size = tuple(grid_size)
        self.attention = list(attention)  # not submodules: the blocks own them

    def forward(self, x: torch.Tensor, pos_embed: torch.Tensor, cls_token: torch.Tensor) -> torch.Tensor:
        b, gh, gw, c = x.shape
        for attn in self.attention:
            attn.grid = (int(gh), int(gw))
        pos = resample_abs_pos_embed(pos_embed, new_size=(gh, gw), old_size=self.grid_size, num_prefix_tokens=1)
        return torch.cat([cls_token.expand(b, -1, -1), x.reshape(b, gh * gw, c)], dim=1) + pos


class Sparsifiner(VisionTransformer):
    """Sparsifiner on timm's VisionTransformer (class token, learned position table, any input size >= 32 px).

    Args (besides timm's VisionTransformer arguments):
        attn_keep_rate: share of the keys each patch query keeps (official: 0.25).
        reduce_n_factor / reduce_c_factor / basis_threshold / coef_topk: the predictor (see :class:`MaskPredictor`).
        skip_lam: residual branches are divided by it (LV-ViT: 2).
        conv_stem: LV-ViT's convolutional patch embedding.
        aux_head: LV-ViT's token-labelling head, added to the class head as ``0.5 * max over tokens``.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        attn_keep_rate: float = 0.25,
        reduce_n_factor: int = 6,
        reduce_c_factor: int = 2,
        basis_threshold: float = 2e-2,
        coef_topk: int = 8,
        skip_lam: float = 1.0,
        conv_stem: bool = False,
        aux_head: bool = False,
        norm_eps: float = 1e-6,
        **kwargs,
    ):
        for key in ("dynamic_img_size", "class_token", "no_embed_class", "reg_tokens", "embed_layer", "block_fn"):
            if key in kwargs:
                raise ValueError(f"Sparsifiner fixes {key}; do not pass it")
        grid = (img_size // patch_size, img_size // patch_size)
        predictor = dict(
            attn_keep_rate=attn_keep_rate,
            grid_size=grid,
            reduce_n_factor=reduce_n_factor,
            reduce_c_factor=reduce_c_factor,
            basis_threshold=basis_threshold,
            coef_topk=coef_topk,
        )

        class _Attention(SparsifinerAttention):  # timm's Block wants an attention class, not a partial
            def __init__(self, *args, **kw):
                super().__init__(*args, **predictor, **kw)

        super().__init__(
            img_size=img_size,
            patch_size=patch_size,
            dynamic_img_size=True,
            dynamic_img_pad=kwargs.pop("dynamic_img_pad", not conv_stem),
            attn_layer=_Attention,
            block_fn=partial(_SkipLamBlock, skip_lam=skip_lam),
            embed_layer=ConvStemPatchEmbed if conv_stem else PatchEmbed,
            norm_layer=partial(LayerNorm, eps=norm_eps),
            **kwargs,
        )
        dd = get_device_dtype(self)
        self.output_fmt = "NLC"  # forward_features returns tokens (B, 1 + gh * gw, C), class token first
        self.attn_keep_rate = attn_keep_rate
        self.aux_head = nn.Linear(self.embed_dim, self.num_classes, **dd) if aux_head and self.num_classes else None
        self._aux = aux_head
        if self.aux_head is not None:
            trunc_normal_(self.aux_head.weight, std=0.02)
            nn.init.zeros_(self.aux_head.bias)
        self.token_grid = TokenGrid(self.patch_embed.grid_size, [block.attn for block in self.blocks])
        depth = len(self.blocks)
        self.level_blocks = sorted({max(0, (i + 1) * depth // NUM_LEVELS - 1) for i in range(NUM_LEVELS)})
        reduction = self.patch_embed.feat_ratio()
        self.feature_info = [
            dict(module=f"blocks.{i}", num_chs=self.embed_dim, reduction=reduction) for i in self.level_blocks
        ]

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, gh, gw, C) patches -> (B, 1 + gh * gw, C) tokens; records the grid for the attention layers."""
        return self.pos_drop(self.token_grid(x, self.pos_embed, self.cls_token))

    def forward_features(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + gh * gw, C) normed tokens."""
        x = check_input_size(x, MIN_INPUT_SIZE)
        return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        out = super().forward_head(x, pre_logits=pre_logits)
        if pre_logits or self.aux_head is None or self.global_pool != "token":
            return out
        return out + 0.5 * self.aux_head(x[:, self.num_prefix_tokens :]).amax(1)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """timm's ViT rule (``global_pool``: None keeps it, "token", "avg", ..., "" for unpooled tokens); the
        token-labelling head follows ``num_classes`` and is used with "token" pooling only."""
        super().reset_classifier(num_classes, global_pool)
        if self._aux:
            dd = get_device_dtype(self)
            self.aux_head = nn.Linear(self.embed_dim, num_classes, **dd) if num_classes else None

    def set_predictor_trainable(self, enable: bool = True) -> None:
        """Let the mask predictors' parameters take gradients (off by default: the key selection is not
        differentiable, so only :meth:`attention_reconstruction_loss` trains them)."""
        for block in self.blocks:
            block.attn.mask_predictor.requires_grad_(enable)

    def attention_reconstruction_loss(self, x: torch.Tensor) -> torch.Tensor:
        """The objective of the official first training phase, which teaches the predictors: per block, the sum of
        squared errors between the predictor's dense approximation (every basis coefficient, the raw basis) and
        the block's softmax attention of the patch queries, averaged over the blocks. The official target is a
        frozen teacher's attention (DeiT-S, from whose checkpoint the backbone starts); here it is each block's
        own, detached. The forward pass is the usual sparse one."""
        x = check_input_size(x, MIN_INPUT_SIZE)
        t = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        total = x.new_zeros(())
        for block in self.blocks:
            total = total + block.attn.reconstruction_loss(block.norm1(t))
            t = block(t)
        return total / len(self.blocks)

    def _grid_of(self, x: torch.Tensor) -> tuple[int, int]:
        return self.patch_embed.dynamic_feat_size((x.shape[-2], x.shape[-1]))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        return_prefix_tokens: bool = False,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
        **kwargs,
    ):
        """Token maps after the last block of each quarter of the depth (``feature_info``), (B, C, gh, gw) each;
        ``indices`` select among those levels. Returns (final normed tokens, maps) or the maps only."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} must be 'NCHW' or 'NLC'")
        x = check_input_size(x, MIN_INPUT_SIZE)
        take, max_index = feature_take_indices(len(self.level_blocks), indices)
        take_blocks = {self.level_blocks[i] for i in take}
        last = self.level_blocks[max_index] if stop_early else len(self.blocks) - 1
        b = x.shape[0]
        gh, gw = self._grid_of(x)
        x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
        maps, prefixes = [], []
        for i, block in enumerate(self.blocks[: last + 1]):
            x = block(x)
            if i in take_blocks:
                y = self.norm(x) if norm else x
                prefixes.append(y[:, : self.num_prefix_tokens])
                y = y[:, self.num_prefix_tokens :]
                maps.append(y.reshape(b, gh, gw, -1).permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y)
        if return_prefix_tokens:
            maps = list(zip(maps, prefixes))
        if intermediates_only:
            return maps
        return self.norm(x), maps

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        take, max_index = feature_take_indices(len(self.level_blocks), indices)
        self.blocks = self.blocks[: self.level_blocks[max_index] + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, "")
        return take

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@torch.no_grad()
def checkpoint_filter_fn(state_dict: dict, model: Sparsifiner) -> dict:
    """Official layouts -> ours: Sparsifiner training saves (``{'model': ...}``), and the DeiT-S / LV-ViT-S
    checkpoints the official recipe starts from, whose predictor entries are missing (they keep the model's own
    initial values). The key names are the same as timm's VisionTransformer's; the position table is resampled
    when its grid differs from the model's; ``aux_head`` is dropped for a model without one."""
    state_dict = state_dict.get("model", state_dict)
    own = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key == "pos_embed" and value.shape != own["pos_embed"].shape:
            value = resample_abs_pos_embed(
                value, new_size=model.patch_embed.grid_size, num_prefix_tokens=model.num_prefix_tokens
            )
        if key.startswith("aux_head.") and model.aux_head is None:
            continue
        if key in own:
            out[key] = value
    for key, value in own.items():
        if key not in out and ".mask_predictor." in key:
            out[key] = value
    return out


def _cfg(**kwargs) -> dict:
    return {
        "url": "",
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
        "paper_ids": "arXiv:2303.13755",
        "origin_url": "https://github.com/lim142857/Sparsifiner",
        "notes": (
            "No Sparsifiner weights were released. pretrained_cfg_overlay=dict(file=...) loads an official training "
            "save, or the DeiT-S / LV-ViT-S checkpoint the official recipe starts from (the predictor keeps its init).",
        ),
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "sparsifiner_deit_small.untrained": _cfg(),
        "sparsifiner_lvvit_small.untrained": _cfg(first_conv="patch_embed.conv1", classifier=("head", "aux_head")),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> Sparsifiner:
    out_indices = kwargs.pop("out_indices", tuple(range(NUM_LEVELS)))
    return build_model(
        Sparsifiner, variant, pretrained, feature_cfg=dict(feature_cls="getter", out_indices=out_indices), **kwargs
    )


@register_model
def sparsifiner_deit_small(pretrained: bool = False, **kwargs) -> Sparsifiner:
    """Sparsifiner-S: DeiT-S (384 wide, 12 blocks of 6 heads, qkv bias), 25 % of the keys per query."""
    args = dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, qkv_bias=True)
    return _create("sparsifiner_deit_small", pretrained, **dict(args, **kwargs))


@register_model
def sparsifiner_lvvit_small(pretrained: bool = False, **kwargs) -> Sparsifiner:
    """Sparsifiner on LV-ViT-S (384 wide, 16 blocks of 6 heads, MLP ratio 3, conv stem, skip_lam 2)."""
    args = dict(
        embed_dim=384, depth=16, num_heads=6, mlp_ratio=3.0, qkv_bias=False, skip_lam=2.0, conv_stem=True,
        aux_head=True, norm_eps=1e-5,
    )  # fmt: skip
    return _create("sparsifiner_lvvit_small", pretrained, **dict(args, **kwargs))


def dense_masked_attention(q, k, v, index, scale=None, always: int = 0) -> torch.Tensor:
    """The official computation of the patch rows: dense ``Q K^T`` over every key, ``-inf`` outside each query's
    selected keys (a mask scattered from ``index``), softmax, ``@ V``. The benchmark's baseline for
    :func:`visionattn.kernels.sparse_attn` (same arguments)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    mask = torch.zeros(*q.shape[:3], k.shape[2], dtype=torch.bool, device=q.device).scatter_(-1, index, True)
    mask[..., :always] = True
    logits = (q @ k.transpose(-1, -2)) * scale
    return logits.masked_fill(~mask, float("-inf")).softmax(-1) @ v


_KERNEL_CASE = dict(op="sparse_attn", heads=6, head_dim=64, keep=0.25, prefix=1)

register_family(
    Family(
        name="sparsifiner",
        models=("sparsifiner_deit_small", "sparsifiner_lvvit_small"),
        aliases={"sparsifiner_s": "sparsifiner_deit_small", "sparsifiner_lvvit_s": "sparsifiner_lvvit_small"},
        converter=checkpoint_filter_fn,
        params_m={"sparsifiner_deit_small": 22.2, "sparsifiner_lvvit_small": 26.4},
        card="model_cards/sparsifiner.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="isotropic",
        num_stages=NUM_LEVELS,
        test_kwargs=dict(embed_dim=64, depth=4, num_heads=2),
        scriptable=False,
        kernel_cases=(
            dict(_KERNEL_CASE, name="Sparsifiner-S @224 (N=197)", height=14, width=14, batch_cuda=128),
            dict(_KERNEL_CASE, name="Sparsifiner-S @448 (N=785)", height=28, width=28, batch_cuda=32),
        ),
        kernel_baselines={"sparse_attn": ("official dense+mask", dense_masked_attention)},
    )
)
