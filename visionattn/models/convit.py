"""ConViT: Improving Vision Transformers with Soft Convolutional Inductive Biases (ICML 2021), on timm's code.

Paper: https://arxiv.org/abs/2103.10697 (Stéphane d'Ascoli, Hugo Touvron, Matthew Leavitt, Ari Morcos, Giulio
Biroli, Levent Sagun). Official code: https://github.com/facebookresearch/convit.

timm's ``ConVit`` runs at 224 x 224 only: its patch embedding asserts the size, its position table is a fixed
14 x 14 grid, GPSA builds relative indices for a square grid and ``set_grad_checkpointing`` asserts. :class:`ConVit`
here subclasses timm's class and extends only where timm refuses:

* any input from 32 px, non-square: the position table is resampled from its 14 x 14 grid to the actual grid
  (timm's bicubic resampling), GPSA's relative indices are built for the actual H x W grid (cached per size);
  sides that are not multiples of 16 lose their last pixels, as the padding-free patchify conv drops them;
* ``set_grad_checkpointing`` (per block);
* ``fused_gpsa=True``: GPSA as ``(1-s) SDPA(q, k, v) + s P v``, the positional attention ``P`` applied through its
  two per-axis factors, cached per size (``visionattn.layers.gpsa``);
* ``forward_intermediates`` / ``features_only`` at any size.

timm's names ``convit_tiny`` / ``convit_small`` / ``convit_base`` are registered again here to build this class:
it has timm's parameters and state_dict keys, and at 224 x 224 (the one size timm takes) it computes exactly what
timm's class computes, bit for bit (``tests/test_convit.py`` checks it against timm's own class). Its pretrained
cfg is timm's with ``fixed_input_size`` off and a 32 px minimum. The official checkpoints have timm's keys.
"""

# No `from __future__ import annotations`: TorchScript compiles the model's methods from their annotations.
import warnings
from contextlib import nullcontext

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.convit import GPSA
from timm.models.convit import ConVit as TimmConVit
from torch.utils.checkpoint import checkpoint

from ..layers.gpsa import GridGPSA, grid_pos_embed
from ..layers.input_size import check_input_size
from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["ConVit"]

MIN_INPUT_SIZE = 32


class ConVit(TimmConVit):
    """timm's ConViT at any input size; (B, 3, H, W) -> (B, num_classes), H and W >= 32.

    Args (beyond timm's ``ConVit``):
        fused_gpsa: compute GPSA as ``(1-s) SDPA + s P v`` (P as two per-axis factors, cached per size) instead of
            timm's arithmetic; equal within float rounding, not bit-identical.
    """

    def __init__(self, *args, fused_gpsa: bool = False, device=None, dtype=None, **kwargs):
        if kwargs.get("hybrid_backbone") is not None:
            raise ValueError("hybrid_backbone is not supported by visionattn's ConVit; use timm.models.convit.ConVit")
        # timm's GPSA.local_init makes an identity matrix without a device: on the meta device it would be a real
        # (dim x dim) CPU tensor, so the constructor runs under the target device
        with torch.device(device) if device is not None else nullcontext():
            super().__init__(*args, device=device, dtype=dtype, **kwargs)
        self.grad_checkpointing = False
        self.fused_gpsa = bool(fused_gpsa)
        self.min_input_size: int = MIN_INPUT_SIZE
        self.output_fmt = "NLC"  # forward_features returns timm's (B, 1 + N, C) tokens
        self.pos_grid: tuple[int, int] = tuple(self.patch_embed.grid_size)
        for block in self.blocks:
            if isinstance(block.attn, GPSA):
                GridGPSA.adopt(block.attn, fused=fused_gpsa)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/16, W/16, C) tokens with their position table added."""
        x = check_input_size(x, self.min_input_size)
        grid = self.patch_embed.proj(x)
        B, C, H, W = grid.shape
        # timm's token layout and arithmetic (flatten, transpose, norm, add), then a map for the GPSA blocks
        x = self.patch_embed.norm(grid.flatten(2).transpose(1, 2))
        if self.use_pos_embed:
            x = x + grid_pos_embed(self.pos_embed, self.pos_grid[0], self.pos_grid[1], grid)
        x = self.pos_drop(x)
        return x.reshape(B, H, W, C)

    def _to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) map -> (B, [1 +] H * W, C) tokens, the class token first (where timm inserts it)."""
        x = x.flatten(1, 2)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        return x

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """timm's ``forward_intermediates`` at any size: block i's output, patch tokens only (class token removed),
        normed by the final norm when ``norm``; (B, C, H/16, W/16) maps (``"NCHW"``) or (B, N, C) (``"NLC"``).
        Returns (final (B, [1 +] N, C) normed tokens, intermediates) or the intermediates only."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; use 'NCHW' or 'NLC'")
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self._embed(x)
        B, H, W, C = x.shape
        if torch.jit.is_scripting() or not stop_early:  # can't slice blocks in torchscript
            blocks = self.blocks
        else:
            blocks = self.blocks[: max_index + 1]
        for i, blk in enumerate(blocks):
            if i == self.local_up_to_layer:
                x = self._to_tokens(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
            if i in take_indices:
                y = self.norm(x) if norm else x
                if i < self.local_up_to_layer:
                    y = y.permute(0, 3, 1, 2).contiguous() if output_fmt == "NCHW" else y.flatten(1, 2)
                else:
                    y = y[:, y.shape[1] - H * W :]
                    if output_fmt == "NCHW":
                        y = y.reshape(B, H, W, C).permute(0, 3, 1, 2).contiguous()
                intermediates.append(y)
        if intermediates_only:
            return intermediates
        if x.dim() == 4:
            x = x.flatten(1, 2)
        return self.norm(x), intermediates

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + H/16 * W/16, C) normed tokens, the class token first (timm's layout)."""
        x = self._embed(x)
        for i, blk in enumerate(self.blocks):
            if i == self.local_up_to_layer:
                x = self._to_tokens(x)
            if self.grad_checkpointing and not torch.jit.is_scripting():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if len(self.blocks) <= self.local_up_to_layer:
            x = x.flatten(1, 2)
        return self.norm(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # timm's forward; defined here so that FX, which wraps the notrace functions found in the traced forward's
        # module, sees this module's size check and position-table resampling as single calls
        return self.forward_head(self.forward_features(x))


def _create_convit(variant: str, pretrained: bool = False, **kwargs) -> ConVit:
    # timm's default for features_only: the last three blocks
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        ConVit, variant, pretrained, feature_cfg=dict(out_indices=out_indices, feature_cls="getter"), **kwargs
    )


def _cfg(**kwargs) -> dict:
    """timm's ConViT cfg, with the size rule of this class (any size from 32 px) instead of a fixed input."""
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "min_input_size": (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        "pool_size": None,
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "fixed_input_size": False,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2103.10697",
        "origin_url": "https://github.com/facebookresearch/convit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "convit_tiny.fb_in1k": _cfg(hf_hub_id="timm/"),
        "convit_small.fb_in1k": _cfg(hf_hub_id="timm/"),
        "convit_base.fb_in1k": _cfg(hf_hub_id="timm/"),
    }
)

# timm's arguments for each name (timm.models.convit), unchanged
_VARIANTS = {
    "convit_tiny": dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=4),
    "convit_small": dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=9),
    "convit_base": dict(local_up_to_layer=10, locality_strength=1.0, embed_dim=48, num_heads=16),
}


def convit_tiny(pretrained: bool = False, **kwargs) -> ConVit:
    """ConViT-Ti (4 heads of 48, 12 blocks, 10 GPSA); timm's convit_tiny at any input size."""
    return _create_convit("convit_tiny", pretrained, **dict(_VARIANTS["convit_tiny"], **kwargs))


def convit_small(pretrained: bool = False, **kwargs) -> ConVit:
    """ConViT-S (9 heads of 48, 12 blocks, 10 GPSA); timm's convit_small at any input size."""
    return _create_convit("convit_small", pretrained, **dict(_VARIANTS["convit_small"], **kwargs))


def convit_base(pretrained: bool = False, **kwargs) -> ConVit:
    """ConViT-B (16 heads of 48, 12 blocks, 10 GPSA); timm's convit_base at any input size."""
    return _create_convit("convit_base", pretrained, **dict(_VARIANTS["convit_base"], **kwargs))


# The names are timm's: registering them again replaces timm's entrypoints (and cfgs) with these, which build the
# subclass above. timm warns about any overwrite; this one is the point.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"Overwriting convit_(tiny|small|base) in registry")
    for _fn in (convit_tiny, convit_small, convit_base):
        register_model(_fn)


# The official release (facebookresearch/convit models.py, commit 0a9340a): bare state_dicts with timm's keys; timm's
# `fb_in1k` tags are copies on the Hugging Face hub. Top-1: the official weights' ImageNet-1k accuracy as given when
# they were added to timm (huggingface/pytorch-image-models#653; the official README gives 73.1 for Ti).
_CHECKPOINTS = tuple(
    Checkpoint(
        model,
        "fb_in1k",
        urls=(f"https://dl.fbaipublicfiles.com/convit/{model}.pth",),
        format="state_dict",
        top1=top1,
        evidence="not checked from this machine (no network)",
        notes="official file: a bare state_dict with timm's keys (no converter); a 14x14 position table, resampled "
        "on the fly at other sizes",
    )
    for model, top1 in (("convit_tiny", 73.116), ("convit_small", 81.418), ("convit_base", 82.288))
)

register_family(
    Family(
        name="convit",
        source="timm",
        models=("convit_tiny", "convit_small", "convit_base"),
        params_m={"convit_tiny": 5.71, "convit_small": 27.78, "convit_base": 86.54},
        card="model_cards/convit.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="isotropic",
        num_stages=12,
        # every block type kept (10 GPSA, 2 MHSA after the class token), 4 heads of 8 channels
        test_kwargs=dict(embed_dim=8),
        # no official dense code: the last block's map (the final norm is not applied to features) gets a
        # LayerNorm, then the adapter's simple feature pyramid
        dense=DenseRecipe(out_norm="ln2d"),
        onnx_dynamic_size=False,
        checkpoints=_CHECKPOINTS,
    )
)
