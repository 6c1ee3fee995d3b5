"""HaloNet: Scaling Local Self-Attention for Parameter Efficient Visual Backbones (CVPR 2021), on our halo op.

Paper: https://arxiv.org/abs/2103.12731 (Ashish Vaswani, Prajit Ramachandran, Aravind Srinivas, Niki Parmar,
Blake Hechtman, Jonathon Shlens). No official code or weights exist; timm's ``byoanet`` models (ByobNet configs
with timm's ``HaloAttn``) and their ImageNet weights are the reference.

What this file adds to timm, without changing any timm name:

* ``va_<timm name>`` (``va_halonet26t``, ``va_sehalonet33ts``, ``va_halonet50ts``, ``va_eca_halonext26ts``,
  ``va_haloregnetz_b``, ``va_halonet_h1``, ``va_lamhalobotnet50ts_256``, ``va_halo2botnet50ts_256``): timm's model
  config and weights (same state_dict keys, timm's hub files), every ``HaloAttn`` computed by
  :func:`visionattn.kernels.halo_attn` (:class:`visionattn.layers.HaloAttnOnKernel`). They take any input from
  32 px (timm asserts every halo-stage map is a multiple of the block size: 224 fails for the 256 models); where
  timm takes the size, the output equals timm's within 1e-5 (``pad_mode="zeros"``, the default: the keys
  outside the image are zero keys and values, as timm's padded halo). ``pad_mode="mask"`` excludes them from the
  softmax instead; its effect on accuracy with timm's weights (trained with zero keys) is not measured.
  The two ``*bot*`` models keep timm's BoT stage, whose position table fixes the input at 256 x 256.
* ``halonet_h0`` and ``halonet_h2`` ... ``halonet_h7``: the paper's HaloNet family (its table of block size b,
  halo h, value multiplier rv, bottleneck multiplier rb, third-stage depth l3, final width df) on timm's ByobNet
  config machinery. H1 is timm's ``halonet_h1`` config exactly (a test compares the configs), so its name stays
  timm's and our build of it is ``va_halonet_h1``. For rv > 1 (H5-H7) the attention values are rv times wider
  than the bottleneck (queries and keys keep its width): :class:`HaloValueBlock`; with that reading the parameter
  counts match the paper's table within 0.4 % for all eight (timm's H1 reading, bottleneck width rv, would give
  H5-H7 71-200M parameters instead of 30.7-67.4M). No weights exist for the H models.

Why new names instead of taking over timm's: our halo op equals timm's HaloAttn within 1e-5, not bit for bit
(block 7 differs in the last bits), so a model reachable through timm's own name would change what that name
computes. ``timm.create_model("halonet26t")`` stays timm's model after ``import visionattn``.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import register_notrace_function, to_2tuple
from timm.layers.bottleneck_attn import BottleneckAttn
from timm.layers.halo_attn import HaloAttn
from timm.models import byoanet, get_pretrained_cfg, register_model
from timm.models.byobnet import ByoBlockCfg, ByobNet, ByoModelCfg, SelfAttnBlock

from visionattn.layers.halo import use_halo_op
from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import build_model, generate_default_cfgs

from ._registry import Family, register_family

__all__ = ["HaloNet", "HaloValueBlock", "halonet_cfg", "TIMM_MODELS", "PAPER"]

MIN_INPUT_SIZE = 32

# timm's halo models, each rebuilt here as ``va_<name>`` on our op (tag of timm's weights)
TIMM_MODELS = {
    "halonet26t": "a1h_in1k",
    "sehalonet33ts": "ra2_in1k",
    "halonet50ts": "a1h_in1k",
    "eca_halonext26ts": "c1_in1k",
    "haloregnetz_b": "ra3_in1k",
    "halonet_h1": "untrained",
    "lamhalobotnet50ts_256": "a1h_in1k",
    "halo2botnet50ts_256": "a1h_in1k",
}

# The paper's table: block b, halo h, value multiplier rv, bottleneck multiplier rb, third-stage depth l3,
# final 1x1 width df (0: none), image size, parameters (M) and ImageNet top-1 as published.
PAPER = {
    "h0": dict(b=8, h=3, rv=1.0, rb=0.5, l3=7, df=0, img=256, params_m=5.5, top1=77.9),
    "h1": dict(b=8, h=3, rv=1.0, rb=1.0, l3=10, df=0, img=256, params_m=8.1, top1=79.9),
    "h2": dict(b=8, h=3, rv=1.0, rb=1.25, l3=11, df=0, img=256, params_m=9.4, top1=80.4),
    "h3": dict(b=10, h=3, rv=1.0, rb=1.5, l3=12, df=1024, img=320, params_m=11.8, top1=81.9),
    "h4": dict(b=12, h=2, rv=1.0, rb=3.0, l3=12, df=1280, img=384, params_m=19.1, top1=83.3),
    "h5": dict(b=14, h=2, rv=2.5, rb=2.0, l3=23, df=1536, img=448, params_m=30.7, top1=84.0),
    "h6": dict(b=8, h=4, rv=3.0, rb=2.75, l3=24, df=1536, img=512, params_m=43.4, top1=84.4),
    "h7": dict(b=10, h=3, rv=4.0, rb=3.5, l3=26, df=2048, img=600, params_m=67.4, top1=84.9),
}


class HaloValueBlock(SelfAttnBlock):
    """timm's self-attention bottleneck with attention values ``value_ratio`` times the bottleneck width.

    1x1 (in -> mid) -> HaloAttn (q, k: mid; v: value_ratio * mid) -> BN-act -> 1x1 (value_ratio * mid -> out).
    forward: x (B, in_chs, H, W) -> (B, out_chs, H / stride, W / stride).
    """

    def __init__(self, in_chs: int, out_chs: int, value_ratio: float = 1.0, **kwargs: Any):
        super().__init__(in_chs, out_chs, **kwargs)
        attn = self.self_attn
        if not isinstance(attn, HaloAttn):
            raise TypeError(f"HaloValueBlock needs self_attn_layer='halo', got {type(attn).__name__}")
        dd = {"device": kwargs.get("device"), "dtype": kwargs.get("dtype")}
        layers = kwargs["layers"]
        mid = attn.q.in_channels
        dim_v = int(round(mid * value_ratio))
        self.self_attn = HaloAttn(
            mid,
            dim_v,
            stride=attn.block_stride if attn.pool is None or isinstance(attn.pool, nn.Identity) else 2,
            num_heads=attn.num_heads,
            block_size=attn.block_size,
            halo_size=attn.halo_size,
            qk_ratio=mid / dim_v,
            qkv_bias=attn.q.bias is not None,
            scale_pos_embed=attn.scale_pos_embed,
            **dd,
        )
        self.post_attn = layers.norm_act(dim_v, **dd) if not isinstance(self.post_attn, nn.Identity) else nn.Identity()
        self.conv3_1x1 = layers.conv_norm_act(dim_v, out_chs, 1, apply_act=False, **dd)


def halonet_cfg(b: int, h: int, rv: float, rb: float, l3: int, df: int = 0) -> ByoModelCfg:
    """The paper's HaloNet-H config: four all-attention stages of widths 64/128/256/512 x rb (bottleneck 64 x
    2^i), depths 3/3/l3/3, a 7x7 stem with max-pool, a final 1x1 conv of width df (none when 0)."""
    block = "self_attn" if rv == 1 else partial(HaloValueBlock, value_ratio=rv)
    return ByoModelCfg(
        blocks=tuple(
            ByoBlockCfg(type=block, d=d, c=int(base * rb), s=s, gs=0, br=1.0 / rb)
            for d, base, s in ((3, 64, 1), (3, 128, 2), (l3, 256, 2), (3, 512, 2))
        ),
        stem_chs=64,
        stem_type="7x7",
        stem_pool="maxpool",
        num_features=df,
        self_attn_layer="halo",
        self_attn_kwargs=dict(block_size=b, halo_size=h),
    )


class HaloNet(ByobNet):
    """timm's ByobNet whose halo attention runs on :func:`visionattn.kernels.halo_attn`; any input from 32 px.

    Args (besides ByobNet's):
        pad_mode: ``"zeros"`` (timm's zero keys outside the image; the default) or ``"mask"`` (those keys left
            out of the softmax).
        halo_backend: the op's backend, None (the device decides: Triton on a GPU), ``"reference"`` or
            ``"triton"``.
        depths, widths: per-stage block count and output width replacing the config's (plain numbers, so a
            config file can carry them); only for configs whose stages are one block kind each (the H models).
    forward: x (B, in_chans, H, W) -> (B, num_classes).
    """

    def __init__(
        self,
        cfg: ByoModelCfg,
        *,
        pad_mode: str = "zeros",
        halo_backend: str | None = None,
        depths: tuple[int, ...] | None = None,
        widths: tuple[int, ...] | None = None,
        **kwargs: Any,
    ):
        if depths is not None or widths is not None:
            cfg = _resize_stages(cfg, depths, widths)
        super().__init__(cfg, **kwargs)
        # a BoT stage's position table fixes the input size (timm passes img_size for those); halo stages take any
        img_size = kwargs.get("img_size")
        bot = any(isinstance(m, BottleneckAttn) for m in self.modules())
        self.fixed_size = to_2tuple(img_size) if bot and img_size is not None else None
        self.set_halo(pad_mode=pad_mode, backend=halo_backend)

    def set_halo(self, pad_mode: str = "zeros", backend: str | None = None) -> HaloNet:
        """Set the pad mode and backend of every halo layer (see the class arguments); returns the model."""
        use_halo_op(self, backend=backend, pad_mode=pad_mode)
        self.pad_mode, self.halo_backend = pad_mode, backend
        return self

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed_size is not None:
            return check_fixed_size(x, self.fixed_size[0], self.fixed_size[1])
        return check_input_size(x, MIN_INPUT_SIZE)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features(self._check(x))

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        return super().forward_intermediates(self._check(x), *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here so that FX, tracing from this module, leaves the size checks as calls
        return self.forward_head(self.forward_features(x))


def _resize_stages(cfg: ByoModelCfg, depths, widths) -> ByoModelCfg:
    n = len(cfg.blocks)
    for name, values in (("depths", depths), ("widths", widths)):
        if values is not None and (len(values) != n or not all(isinstance(v, int) and v > 0 for v in values)):
            raise ValueError(f"{name}={values!r} must be {n} positive ints, one per stage")
    if not all(isinstance(b, ByoBlockCfg) for b in cfg.blocks):
        raise ValueError("depths / widths need one block kind per stage; this config interleaves kinds in a stage")
    blocks = tuple(
        replace(b, d=b.d if depths is None else depths[i], c=b.c if widths is None else widths[i])
        for i, b in enumerate(cfg.blocks)
    )
    return replace(cfg, blocks=blocks)


@register_notrace_function
def check_fixed_size(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(B, C, H, W) -> the same tensor; ValueError unless H x W is ``height`` x ``width``."""
    h, w = x.shape[-2], x.shape[-1]
    if h != height or w != width:
        raise ValueError(
            f"input {h}x{w}: this model's BoT stage has a position table for {height}x{width} inputs only; "
            "resize the input to that size"
        )
    return x


# ----------------------------------------------------------------------------------------------------------
# pretrained cfgs: timm's own for the va_ names (its hub files, resolved), new ones for the paper's models


def _timm_cfg(name: str, tag: str) -> dict:
    cfg = get_pretrained_cfg(f"{name}.{tag}").to_dict()
    for key in ("architecture", "tag"):
        cfg.pop(key, None)
    if not cfg.get("fixed_input_size"):
        cfg["min_input_size"] = (3, MIN_INPUT_SIZE, MIN_INPUT_SIZE)
    return cfg


def _paper_cfg(img: int) -> dict:
    """timm's cfg of its (untrained) halonet_h1 at the paper's image size for the model."""
    side = -(-img // 32)
    cfg = _timm_cfg("halonet_h1", "untrained")
    cfg.update(input_size=(3, img, img), pool_size=(side, side), paper_ids="arXiv:2103.12731")
    return cfg


default_cfgs = generate_default_cfgs(
    {
        **{f"va_{name}.{tag}": _timm_cfg(name, tag) for name, tag in TIMM_MODELS.items()},
        **{f"halonet_{k}.untrained": _paper_cfg(v["img"]) for k, v in PAPER.items() if k != "h1"},
    }
)


def _create_halonet(variant: str, model_cfg: ByoModelCfg, pretrained: bool = False, **kwargs: Any) -> HaloNet:
    return build_model(
        HaloNet, variant, pretrained, model_cfg=model_cfg, feature_cfg=dict(flatten_sequential=True), **kwargs
    )


def _timm_entry(name: str):
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> HaloNet:
        cfg_name = name[: -len("_256")] if name.endswith("_256") else name  # timm's cfg names drop the size
        return _create_halonet(f"va_{name}", byoanet.model_cfgs[cfg_name], pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = f"va_{name}"
    entrypoint.__doc__ = f"timm's {name} (config and weights) with its halo attention on visionattn's op."
    entrypoint.__module__ = __name__
    return entrypoint


for _name in TIMM_MODELS:
    globals()[f"va_{_name}"] = register_model(_timm_entry(_name))


@register_model
def halonet_h0(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H0 (paper: 5.5M params, 77.9% top-1 at 256)."""
    return _create_halonet("halonet_h0", halonet_cfg(**_arch("h0")), pretrained, **kwargs)


@register_model
def halonet_h2(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H2 (paper: 9.4M params, 80.4% top-1 at 256)."""
    return _create_halonet("halonet_h2", halonet_cfg(**_arch("h2")), pretrained, **kwargs)


@register_model
def halonet_h3(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H3 (paper: 11.8M params, 81.9% top-1 at 320)."""
    return _create_halonet("halonet_h3", halonet_cfg(**_arch("h3")), pretrained, **kwargs)


@register_model
def halonet_h4(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H4 (paper: 19.1M params, 83.3% top-1 at 384)."""
    return _create_halonet("halonet_h4", halonet_cfg(**_arch("h4")), pretrained, **kwargs)


@register_model
def halonet_h5(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H5 (paper: 30.7M params, 84.0% top-1 at 448)."""
    return _create_halonet("halonet_h5", halonet_cfg(**_arch("h5")), pretrained, **kwargs)


@register_model
def halonet_h6(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H6 (paper: 43.4M params, 84.4% top-1 at 512)."""
    return _create_halonet("halonet_h6", halonet_cfg(**_arch("h6")), pretrained, **kwargs)


@register_model
def halonet_h7(pretrained: bool = False, **kwargs: Any) -> HaloNet:
    """HaloNet-H7 (paper: 67.4M params, 84.9% top-1 at 600)."""
    return _create_halonet("halonet_h7", halonet_cfg(**_arch("h7")), pretrained, **kwargs)


def _arch(key: str) -> dict:
    return {k: PAPER[key][k] for k in ("b", "h", "rv", "rb", "l3", "df")}


register_family(
    Family(
        name="halonet",
        models=(
            *(f"va_{name}" for name in TIMM_MODELS),
            *(f"halonet_{k}" for k in PAPER if k != "h1"),
        ),
        source="visionattn",
        params_m={
            "va_halonet26t": 12.48,
            "va_sehalonet33ts": 13.69,
            "va_halonet50ts": 22.73,
            "va_eca_halonext26ts": 10.76,
            "va_haloregnetz_b": 11.68,
            "va_halonet_h1": 8.10,
            "va_lamhalobotnet50ts_256": 22.57,
            "va_halo2botnet50ts_256": 22.64,
            "halonet_h0": 5.50,
            "halonet_h2": 9.40,
            "halonet_h3": 11.84,
            "halonet_h4": 19.10,
            "halonet_h5": 30.72,
            "halonet_h6": 43.46,
            "halonet_h7": 67.43,
        },
        card="model_cards/halonet.md",
        min_input_size=MIN_INPUT_SIZE,
        # the BoT hybrids' last stage has a position table for 256x256 (timm's cfgs say fixed_input_size)
        fixed_size_models=("va_lamhalobotnet50ts_256", "va_halo2botnet50ts_256"),
        layout="hierarchical",
        num_stages=5,
        # H0 at depth 1 per stage and narrower keeps the paper family's blocks (plain and strided halo stages).
        # timm zero-initialises each block's last BatchNorm: off, so every gradient is non-zero. The stem is the
        # tiered one of timm's halonet26t/50ts: H0's 7x7 stem conv is itself feature 0, leaving no stem before
        # it for the dense adapter's frozen_stages=0 to freeze.
        test_kwargs=dict(zero_init_last=False, stem_type="tiered", depths=(1, 1, 1, 1), widths=(16, 32, 64, 128)),
        scriptable=False,  # the op's dispatch and checks are Python; FX keeps HaloAttnOnKernel as a leaf
        # the windows' pad / reshape / slice sizes are traced from the map size: one graph serves every size
        onnx_dynamic_size=True,
    )
)
