"""SHViT: Single-Head Vision Transformer with Memory Efficient Macro Design (CVPR 2024), bound from timm.

Paper: https://arxiv.org/abs/2401.16456 (Seokju Yun, Youngmin Ro). Official code: https://github.com/ysj9909/SHViT.
The models are timm's own (``timm.models.shvit``: ``shvit_s1`` ... ``shvit_s4``): this file declares the family so
that visionattn's shared tests, dense adapter, export and benchmarks cover it, and adds what timm lacks:

* :func:`checkpoint_filter_fn` converts the official ``.pth`` layout (``blocks1/2/3.*``, optionally a distillation
  head) to timm's (``stages.i.downsample`` / ``stages.i.blocks``); timm's own filter only unwraps ``model`` and
  its Hugging Face weights were converted beforehand. timm-layout weights pass through unchanged.
* :func:`convert_dense_checkpoint` maps an official mmdet checkpoint (``backbone.blocks*``, ``neck.*``) to a
  detector built on ``VisionAttnBackbone`` and ``EfficientViTFPN`` (``visionattn/dense/shvit_neck.py``, the official
  3-stage neck with transposed-conv levels at strides 4 and 8).

Nothing is re-registered: ``timm.create_model("shvit_s1")`` builds exactly timm's model.
"""

from __future__ import annotations

import re

import torch
import torch.nn as nn

from ._registry import Checkpoint, DenseRecipe, Family, register_family

__all__ = ["checkpoint_filter_fn", "convert_dense_checkpoint", "official_to_timm_key"]

# official key -> timm key; the official trunk keeps three flat Sequentials, blocks2 / blocks3 starting with
# the three downsampling entries (Residual DW + FFN, PatchMerging, Residual DW + FFN) timm keeps as `downsample`
_FIRST = re.compile(r"^blocks1\.(\d+)\.(.*)$")
_LATER = re.compile(r"^blocks([23])\.(\d+)\.(.*)$")
_PAIR = re.compile(r"^([01])\.(.*)$")


def official_to_timm_key(key: str) -> str:
    """One official SHViT key in timm's layout (keys outside ``blocks1/2/3`` are the same in both)."""
    m = _FIRST.match(key)
    if m:
        return f"stages.0.blocks.{m.group(1)}.{m.group(2)}"
    m = _LATER.match(key)
    if not m:
        return key
    stage, index, rest = int(m.group(1)) - 1, int(m.group(2)), m.group(3)
    if index == 1:
        return f"stages.{stage}.downsample.2.{rest}"
    if index in (0, 2):
        pair = _PAIR.match(rest)
        if pair is None:
            raise ValueError(f"official SHViT key {key!r}: expected blocks{stage + 1}.{index}.<0|1>.*")
        return f"stages.{stage}.downsample.{int(pair.group(1)) + (0 if index == 0 else 3)}.{pair.group(2)}"
    return f"stages.{stage}.blocks.{index - 3}.{rest}"


def _fold_bn_linear(sd: dict, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``Linear(BatchNorm1d(x))`` of ``prefix`` (eval statistics) as one weight and bias (float64)."""
    g, beta = sd[f"{prefix}.bn.weight"].double(), sd[f"{prefix}.bn.bias"].double()
    mean, var = sd[f"{prefix}.bn.running_mean"].double(), sd[f"{prefix}.bn.running_var"].double()
    scale = g / (var + 1e-5).sqrt()  # the official BatchNorm1d's default eps
    w = sd[f"{prefix}.l.weight"].double()
    b = sd.get(f"{prefix}.l.bias")
    b = torch.zeros(w.shape[0], dtype=torch.float64) if b is None else b.double()
    return w * scale[None, :], b + w @ (beta - mean * scale)


def checkpoint_filter_fn(state_dict: dict, model: nn.Module) -> dict:
    """An SHViT checkpoint (official or timm layout) in timm's layout.

    Official files (``ckpt['model']`` with ``blocks1/2/3.*``) are remapped key by key. Two quirks of the official
    files are handled: 1x1 convolution weights stored as 2-D matrices (the official loader adds the two trailing
    axes when the shapes differ), and a distillation head ``head_dist``: the official model then predicts
    ``(head(x) + head_dist(x)) / 2`` in eval mode, which is folded into timm's single head (both BatchNorm1d +
    Linear pairs fused and averaged, the head's BatchNorm set to the identity), so the logits are the official
    eval logits. timm-layout weights pass through unchanged.
    """
    state_dict = state_dict.get("model", state_dict)
    state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
    if not any(k.startswith(("blocks1.", "blocks2.", "blocks3.")) for k in state_dict):
        return state_dict
    ours = model.state_dict()
    out = {}
    for key, value in state_dict.items():
        if key.startswith("head_dist."):
            continue
        new = official_to_timm_key(key)
        target = ours.get(new)
        if target is not None and value.ndim == 2 and target.ndim == 4 and target.shape[2:] == (1, 1):
            value = value[:, :, None, None]
        out[new] = value
    if "head_dist.l.weight" in state_dict and "head.l.weight" in state_dict:
        w1, b1 = _fold_bn_linear(state_dict, "head")
        w2, b2 = _fold_bn_linear(state_dict, "head_dist")
        # at least float32: the folded head is a product of the stored values, not one of them
        dtype = torch.promote_types(state_dict["head.l.weight"].dtype, torch.float32)
        n = w1.shape[1]
        eps = getattr(getattr(getattr(model, "head", None), "bn", None), "eps", 1e-5)
        out["head.l.weight"] = ((w1 + w2) / 2).to(dtype)
        out["head.l.bias"] = ((b1 + b2) / 2).to(dtype)
        out["head.bn.weight"] = torch.ones(n, dtype=dtype)
        out["head.bn.bias"] = torch.zeros(n, dtype=dtype)
        out["head.bn.running_mean"] = torch.zeros(n, dtype=dtype)
        out["head.bn.running_var"] = torch.full((n,), 1.0 - eps, dtype=dtype)  # sqrt(var + eps) == 1
    return out


def convert_dense_checkpoint(state_dict: dict) -> dict:
    """An official SHViT mmdet checkpoint (``backbone.blocks*``, ``neck.*``, heads) for a detector built on
    ``VisionAttnBackbone`` (trunk = timm's feature wrapper, ``stages_i``) with the ``EfficientViTFPN`` neck.

    The neck keeps the official names (``lateral_convs``, ``fpn_convs``, ``extra_trans_convs``,
    ``extra_fpn_convs``) and heads are mmdet's own, so only backbone keys change.
    """
    state_dict = state_dict.get("state_dict", state_dict)
    out = {}
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            inner = official_to_timm_key(key.removeprefix("backbone."))
            # timm's feature wrapper flattens the top-level Sequentials: patch_embed.0 -> patch_embed_0
            inner = re.sub(r"^(patch_embed|stages)\.(\d+)\.", r"\1_\2.", inner)
            if inner.startswith("head"):
                continue  # the dense backbone has no classifier
            key = f"backbone.trunk.{inner}"
        out[key] = value
    return out


_RELEASE = "https://github.com/ysj9909/SHViT/releases/download/v1.0/{}"
_UNCHECKED = "not downloaded for this record (no network where it was written); links from the official README"
_CHECKPOINTS = (
    *(
        Checkpoint(
            f"shvit_{v}",
            "in1k",
            urls=(_RELEASE.format(f"shvit_{v}.pth"),),
            license="mit",
            top1=top1,
            evidence=_UNCHECKED,
            notes="the hub copy is in timm's layout; the official file is {'model': ...} in the official layout "
            "(blocks1/2/3), which the family converter maps and timm's filter does not",
        )
        for v, top1 in (("s1", 72.8), ("s2", 75.2), ("s3", 77.4), ("s4", 79.4))
    ),
    *(
        Checkpoint(
            "shvit_s4",
            tag,
            task="det",
            urls=(_RELEASE.format(file),),
            format="mmcv",
            license="mit",
            result=result,
            evidence=_UNCHECKED,
            notes="full mmdet 2.25 model: backbone.* in the official layout, neck.* of EfficientViTFPN (loads as is)",
            converter=f"{__name__}.convert_dense_checkpoint",
        )
        for tag, file, result in (
            ("coco_retinanet_1x", "retinanet_shvit_s4_1x_coco.pth", "box AP 38.8"),
            ("coco_maskrcnn_1x", "maskrcnn_shvit_s4_1x_coco.pth", "box AP 39.0 / mask AP 35.9"),
        )
    ),
)

register_family(
    Family(
        name="shvit",
        source="timm",
        models=("shvit_s1", "shvit_s2", "shvit_s3", "shvit_s4"),
        converter=checkpoint_filter_fn,
        params_m={"shvit_s1": 6.33, "shvit_s2": 11.48, "shvit_s3": 14.25, "shvit_s4": 16.59},
        card="model_cards/shvit.md",
        min_input_size=1,  # four padded stride-2 convolutions and stride-2 merges: a 1x1 input still runs
        layout="hierarchical",
        num_stages=3,  # strides 16 / 32 / 64; EfficientViTFPN (visionattn.dense.shvit_neck) adds strides 4 and 8
        # every stage and block type: stage 1 convolution-only ("i"), stages 2-3 single-head attention ("s")
        test_kwargs=dict(embed_dim=(16, 24, 32), partial_dim=(8, 8, 12), depth=(1, 1, 1)),
        # the official detectors' neck (visionattn/dense/shvit_neck.py) in its Mask R-CNN setting: transposed-conv
        # levels at strides 8 and 4 under the three maps; the official backbone keeps BatchNorm in eval (the
        # configs set norm_eval=True)
        dense=DenseRecipe(neck=dict(type="EfficientViTFPN", num_extra_trans_convs=2)),
        drop_path=False,  # the official Residual has a drop rate that its model builders never set
        onnx_dynamic_size=True,
        checkpoints=_CHECKPOINTS,
    )
)
