"""Two toy families declared through the family record alone, so that the shared tests prove they cover any family.

* ``toyvit`` (our own code): a two-block isotropic ViT with a stride-16 patchify stem and no position table, so it
  takes any input whose sides are multiples of 16 (``input_multiple=16``); three of its four feature entries share
  one stride, as a plain ViT's do.
* ``toyconv`` (a timm binding): timm's ``test_resnet``, a five-level pyramid (strides 2 to 32) that runs at any
  size down to 1 px, declared over timm's own name.

``tests/conftest.py`` registers both before collection; the contract, export and dense tests then parametrise
over them with no toy-specific test code.
"""

# No `from __future__ import annotations`: timm scripts FX-traced models, whose code carries these annotations.
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import ClassifierHead, DropPath, Mlp, calculate_drop_path_rates, get_device_dtype
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices

from visionattn.layers.input_size import check_input_size
from visionattn.models._registry import DenseRecipe, Family, register_family
from visionattn.pretrained import build_model


class ToyBlock(nn.Module):
    """Pre-norm attention + MLP on (B, H, W, C) maps, a 3x3 depth-wise conv as position encoding."""

    def __init__(self, dim: int, heads: int, drop_path: float = 0.0, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, **dd)
        self.norm1 = nn.LayerNorm(dim, **dd)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, **dd)
        self.norm2 = nn.LayerNorm(dim, **dd)
        self.mlp = Mlp(dim, 2 * dim, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, c = x.shape
        x = x + self.pos(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        t = self.norm1(x).reshape(b, h * w, c)
        x = x + self.drop_path(self.attn(t, t, t, need_weights=False)[0].reshape(b, h, w, c))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ToyViT(nn.Module):
    """Isotropic toy backbone; (B, 3, H, W) -> (B, num_classes), H and W multiples of 16."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "avg",
        embed_dim: int = 32,
        depth: int = 4,
        heads: int = 2,
        drop_path_rate: float = 0.0,
        device=None,
        dtype=None,
    ):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.output_fmt = "NHWC"  # forward_features returns (B, H/16, W/16, C)
        self.num_features = self.head_hidden_size = embed_dim
        self.grad_checkpointing = False
        self.stem = nn.Conv2d(in_chans, embed_dim, 16, stride=16, **dd)
        dpr = calculate_drop_path_rates(drop_path_rate, depth)
        self.blocks = nn.Sequential(*[ToyBlock(embed_dim, heads, dpr[i], **dd) for i in range(depth)])
        self.feature_info = [dict(num_chs=embed_dim, reduction=16, module=f"blocks.{i}") for i in range(depth)]
        self.norm = nn.LayerNorm(embed_dim, **dd)
        self.head = ClassifierHead(embed_dim, num_classes, pool_type=global_pool, input_fmt="NHWC", **dd)

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, **get_device_dtype(self))

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ):
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; ToyViT returns 'NCHW' intermediates")
        x = check_input_size(x, 16, 16)
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        x = self.stem(x).permute(0, 2, 3, 1)
        blocks = self.blocks if torch.jit.is_scripting() or not stop_early else self.blocks[: max_index + 1]
        intermediates = []
        for i, block in enumerate(blocks):
            x = block(x)
            if i in take_indices:
                y = self.norm(x) if norm and i == len(self.blocks) - 1 else x
                intermediates.append(y.permute(0, 3, 1, 2))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True) -> list[int]:
        take_indices, max_index = feature_take_indices(len(self.blocks), indices)
        self.blocks = self.blocks[: max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, H/16, W/16, C), normed."""
        x = check_input_size(x, 16, 16)
        x = self.stem(x).permute(0, 2, 3, 1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.blocks, x)
        else:
            x = self.blocks(x)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs(
    {
        "toyvit_tiny.untrained": dict(
            url="",
            num_classes=1000,
            input_size=(3, 64, 64),
            min_input_size=(3, 16, 16),
            pool_size=(4, 4),
            crop_pct=1.0,
            interpolation="bicubic",
            mean=IMAGENET_DEFAULT_MEAN,
            std=IMAGENET_DEFAULT_STD,
            first_conv="stem",
            classifier="head.fc",
            license="apache-2.0",
        )
    }
)


@register_model
def toyvit_tiny(pretrained: bool = False, **kwargs) -> ToyViT:
    """Toy isotropic ViT for the shared tests."""
    out_indices = kwargs.pop("out_indices", (0, 1, 2, 3))
    feature_cfg = dict(feature_cls="getter", out_indices=out_indices)
    return build_model(ToyViT, "toyvit_tiny", pretrained, feature_cfg=feature_cfg, **kwargs)


TOY_FAMILIES = (
    Family(
        name="toyvit",
        models=("toyvit_tiny",),
        aliases={"toyvit_t": "toyvit_tiny"},
        params_m={"toyvit_tiny": 0.093},
        card="tests/toy_families.py",
        min_input_size=16,
        input_multiple=16,
        layout="isotropic",
        num_stages=4,
        test_kwargs=dict(depth=4),
        dense=DenseRecipe(out_norm="ln2d"),
    ),
    Family(
        name="toyconv",
        source="timm",
        models=("test_resnet",),
        params_m={"test_resnet": 0.470},
        card="tests/toy_families.py",
        min_input_size=1,
        layout="hierarchical",
        num_stages=5,
        # timm zero-initialises each block's last BN scale, which zeroes the block's other gradients at init
        test_kwargs=dict(zero_init_last=False),
        onnx_dynamic_size=True,
    ),
)


def register() -> None:
    for family in TOY_FAMILIES:
        register_family(family)
