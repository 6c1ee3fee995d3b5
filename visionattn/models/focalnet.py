"""FocalNet: Focal Modulation Networks (NeurIPS 2022), bound from timm's implementation.

Paper: https://arxiv.org/abs/2203.11926 (Jianwei Yang, Chunyuan Li, Xiyang Dai, Lu Yuan, Jianfeng Gao).
Official code: https://github.com/microsoft/FocalNet. The models are timm's own (``timm.models.focalnet``); this
file declares the family so that visionattn's shared tests, dense adapter, export and benchmarks cover it, and adds
what timm lacks:

* :func:`checkpoint_filter_fn`: timm's converter of the official classification layout, followed by the official
  rule for loading weights into a model of another focal window or level count (depth-wise kernels zero-padded or
  cropped about their centre, ``modulation.f`` gate rows extended). The official dense backbones use focal window
  9 (kernels 9/11[/13]) where the classification weights have window 3 (kernels 3/5[/7]).
* :func:`convert_dense_checkpoint`: an official mmdet / mmseg checkpoint (``backbone.patch_embed.*``,
  ``backbone.layers.*``, ``backbone.norm{i}.*``, ``neck.*``, heads) in the layout of a detector or segmentor built
  on :class:`visionattn.dense.VisionAttnBackbone` (``backbone.trunk.*``, ``backbone.out_norms.{i}.*``).
* ``focalnet_large_fl4_official``: ``focalnet_large_fl4`` as the official config builds it
  (``configs/focalnet_large_fl4.yaml`` sets ``NORMALIZE_MODULATOR: True``; timm's entrypoint leaves it False).
  The official ``focalnet_xlarge_fl4`` config does not set it, so timm's ``focalnet_xlarge_fl4`` is the official
  model. Both names load the same weights.
* ``focalnet_test``: a reduced model (any depths / width / levels through its kwargs, which timm's entrypoints
  refuse) for the shared tests and the dense fixture; it checks its input size with a clear error.

Nothing of timm's is re-registered: ``timm.create_model("focalnet_tiny_srf")`` builds exactly timm's model.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, register_model
from timm.models.focalnet import FocalNet as _TimmFocalNet
from timm.models.focalnet import checkpoint_filter_fn as _timm_checkpoint_filter_fn

from visionattn.layers.input_size import check_input_size
from visionattn.pretrained import generate_default_cfgs

from ._registry import DenseRecipe, Family, register_family

__all__ = [
    "FocalNet",
    "adapt_focal_weights",
    "checkpoint_filter_fn",
    "convert_dense_checkpoint",
    "DENSE_FOCAL_WINDOWS",
]

# The official mmdet / mmseg FocalNet backbones default to focal window 9 at every stage (kernels 9, 11[, 13]).
DENSE_FOCAL_WINDOWS = (9, 9, 9, 9)
MIN_INPUT_SIZE = 32  # stem stride 4 and three stride-2 downsamplings: 32 px leaves a 1x1 last map

_FOCAL_KERNEL = re.compile(r"modulation\.focal_layers\.\d+\.0\.weight$")
_GATES = re.compile(r"modulation\.f\.(weight|bias)$")


class FocalNet(_TimmFocalNet):
    """timm's FocalNet with a clear error for inputs below 32 px (timm's raises a convolution's RuntimeError).

    Used by the names this file registers; outputs and state_dict keys are timm's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_input_size = MIN_INPUT_SIZE

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, C, H / 32, W / 32)."""
        # timm's three steps, spelled out: TorchScript compiles no super() call
        x = self.stem(check_input_size(x, self.min_input_size))
        x = self.layers(x)
        return self.norm(x)

    def forward(self, x):  # no annotation: FX's generated code + TorchScript cannot resolve postponed ones
        """(B, 3, H, W) -> (B, num_classes). Defined here so that FX, which wraps notrace functions in the globals
        of the traced forward's module, keeps the size check as one call."""
        return self.forward_head(self.forward_features(x))

    def forward_intermediates(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        """timm's ``forward_intermediates`` after the input-size check."""
        return super().forward_intermediates(check_input_size(x, self.min_input_size), *args, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# checkpoint conversion


def _resize_kernel(w: torch.Tensor, size: int, key: str) -> torch.Tensor:
    """A depth-wise kernel (C, 1, k, k) zero-padded or cropped about its centre to (C, 1, size, size)."""
    k = w.shape[-1]
    if w.shape[-2] != k or (size - k) % 2:
        raise ValueError(f"{key}: cannot centre a {tuple(w.shape[-2:])} kernel in {size}x{size} (odd sizes only)")
    if k < size:
        out = w.new_zeros(*w.shape[:-2], size, size)
        m = (size - k) // 2
        out[..., m : m + k, m : m + k] = w
        return out
    m = (k - size) // 2
    return w[..., m : m + size, m : m + size].clone()


def adapt_focal_weights(
    state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fit a timm-layout FocalNet ``state_dict`` to a model of other focal windows / levels (``target``: the
    model's own state_dict, for shapes and for the initial values of focal levels the checkpoint lacks).

    The official loader's rule: depth-wise focal kernels zero-padded (or cropped) about their centre; the gate rows
    of ``modulation.f`` extended with zero rows for new levels; the convolutions of new levels keep the model's
    initialisation. Entries whose shape already fits pass through unchanged.
    """
    out = dict(state_dict)
    for key, value in state_dict.items():
        want = target.get(key)
        if want is None or tuple(value.shape) == tuple(want.shape):
            continue
        if _FOCAL_KERNEL.search(key):
            out[key] = _resize_kernel(value, want.shape[-1], key)
        elif _GATES.search(key):
            prefix = key[: key.rindex("f.")]  # "...modulation."
            width = target[prefix + "h.weight"].shape[0]  # C: f has 2C + levels + 1 rows
            rows = want.shape[0]
            if value.shape[0] > rows:
                raise ValueError(
                    f"{key}: the checkpoint has {value.shape[0]} rows (more focal levels) than the model's {rows}; "
                    "the official loader refuses fewer levels too; build the model with the checkpoint's focal_levels"
                )
            v = value.reshape(value.shape[0], *want.shape[1:]) if value.dim() != want.dim() else value
            new = v.new_zeros(want.shape)
            two_c = 2 * width
            new[:two_c] = v[:two_c]
            new[-1] = v[-1]
            new[two_c : value.shape[0] - 1] = v[two_c:-1]
            out[key] = new
    # focal levels the checkpoint lacks: the model's own initial values (the official loader loads non-strictly)
    for key, want in target.items():
        if key not in out and _FOCAL_KERNEL.search(key):
            out[key] = want.detach().clone()
    return out


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """An official FocalNet classification checkpoint (or timm's layout) in ``model``'s layout.

    timm's converter maps the keys (``patch_embed`` -> ``stem``, ``gamma_i`` -> ``ls{i}.gamma``, downsampling to
    the next stage, Linear -> 1x1 conv shapes); then :func:`adapt_focal_weights` fits the focal kernels and gates
    to the model's focal windows and levels (a window-3 checkpoint into the window-9 dense backbone).
    """
    target = model.state_dict()
    converted = _timm_checkpoint_filter_fn(dict(state_dict), model)
    return adapt_focal_weights(converted, target)


_STAGE = re.compile(r"^layers\.(\d+)\.")
_OUT_NORM = re.compile(r"^norm(\d+)\.(weight|bias)$")


def convert_dense_checkpoint(
    checkpoint: Mapping[str, Any], backbone: nn.Module, prefix: str = "backbone."
) -> dict[str, torch.Tensor]:
    """An official FocalNet mmdet / mmseg checkpoint in the layout of a model whose backbone is ``backbone``.

    Args:
        checkpoint: the official file's content (``{'state_dict': ...}``, ``{'model': ...}`` or the state_dict).
        backbone: the :class:`~visionattn.dense.VisionAttnBackbone` the weights are for (its trunk gives the
            target names and shapes; its ``out_indices`` say which ``norm{i}`` feeds which output norm).
        prefix: the backbone's prefix in the checkpoint and in the result; ``""`` for a bare backbone state_dict.

    Returns the whole state_dict: the backbone's entries renamed (``{prefix}trunk.*``, ``{prefix}out_norms.{j}.*``),
    everything else (``neck.*``, ``rpn_head.*``, ``roi_head.*``, ``decode_head.*`` ...) unchanged. Load it with
    ``load_state_dict`` / mmengine's ``load_from``, or save it and pass it to
    ``init_cfg=dict(type='Pretrained', checkpoint=..., prefix='backbone.')``.
    """
    state = checkpoint
    for wrapper in ("state_dict", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(wrapper), Mapping):
            state = state[wrapper]
    if not isinstance(state, Mapping):
        raise TypeError(f"checkpoint must be a dict of tensors (or hold one under 'state_dict'), got {type(state)}")
    state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
    inner = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not inner:
        raise ValueError(f"no key of the checkpoint starts with prefix={prefix!r}; pass the backbone's prefix")
    rest = {k: v for k, v in state.items() if not k.startswith(prefix)}

    ours = backbone.state_dict()
    # the trunk's names with timm's flattened stages ("layers_2.") back in the classification model's ("layers.2.")
    trunk_target = {
        re.sub(r"^layers_(\d+)\.", r"layers.\1.", k[len("trunk.") :]): v
        for k, v in ours.items()
        if k.startswith("trunk.")
    }
    out_indices = list(getattr(backbone, "trunk_indices", getattr(backbone, "out_indices", range(4))))
    result: dict[str, torch.Tensor] = {}
    trunk_src = {}
    for key, value in inner.items():
        m = _OUT_NORM.match(key)
        if m:
            stage = int(m.group(1))
            if stage not in out_indices:
                continue  # a norm of a stage this backbone does not return
            result[f"{prefix}out_norms.{out_indices.index(stage)}.{m.group(2)}"] = value
        else:
            trunk_src[key] = value
    converted = _timm_checkpoint_filter_fn(trunk_src, SimpleNamespace(state_dict=lambda: trunk_target))
    converted = adapt_focal_weights(converted, trunk_target)
    for key, value in converted.items():
        if key not in trunk_target:
            continue  # stages after the last returned one (features_only drops them)
        result[prefix + "trunk." + _STAGE.sub(lambda m: f"layers_{m.group(1)}.", key)] = value
    result.update(rest)
    return result


# ---------------------------------------------------------------------------------------------------------------
# new names: the official large_fl4 and a reduced test model


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "pool_size": (7, 7),
        "crop_pct": 0.9,
        "interpolation": "bicubic",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "first_conv": "stem.proj",
        "classifier": "head.fc",
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        "focalnet_test.untrained": _cfg(),
        # the same file as timm's focalnet_large_fl4.ms_in22k (the official focalnet_large_lrf_384_fl4.pth)
        "focalnet_large_fl4_official.ms_in22k": _cfg(
            hf_hub_id="timm/focalnet_large_fl4.ms_in22k",
            input_size=(3, 384, 384),
            pool_size=(12, 12),
            crop_pct=1.0,
            num_classes=21842,
        ),
    }
)


def _create_focalnet(variant: str, pretrained: bool = False, **kwargs: Any) -> FocalNet:
    out_indices = kwargs.pop("out_indices", tuple(range(len(kwargs.get("depths", (1, 1, 3, 1))))))
    return build_model_with_cfg(
        FocalNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True, out_indices=out_indices),
        **kwargs,
    )


@register_model
def focalnet_test(pretrained: bool = False, **kwargs: Any) -> FocalNet:
    """A reduced FocalNet (1.72M parameters) whose depths, width and levels can be changed through kwargs."""
    args = dict(depths=(1, 1, 2, 1), embed_dim=32, focal_levels=(2, 3, 2, 3))
    return _create_focalnet("focalnet_test", pretrained=pretrained, **dict(args, **kwargs))


@register_model
def focalnet_large_fl4_official(pretrained: bool = False, **kwargs: Any) -> FocalNet:
    """FocalNet-L with 4 focal levels and ``normalize_modulator=True``, as the official config builds it."""
    args = dict(
        depths=(2, 2, 18, 2),
        embed_dim=192,
        focal_levels=(4, 4, 4, 4),
        use_post_norm=True,
        use_overlap_down=True,
        layerscale_value=1e-4,
        normalize_modulator=True,
    )
    return _create_focalnet("focalnet_large_fl4_official", pretrained=pretrained, **dict(args, **kwargs))


register_family(
    Family(
        name="focalnet",
        source="timm",
        models=(
            "focalnet_test",
            "focalnet_tiny_srf",
            "focalnet_tiny_lrf",
            "focalnet_small_srf",
            "focalnet_small_lrf",
            "focalnet_base_srf",
            "focalnet_base_lrf",
            "focalnet_large_fl3",
            "focalnet_large_fl4",
            "focalnet_large_fl4_official",
            "focalnet_xlarge_fl3",
            "focalnet_xlarge_fl4",
            "focalnet_huge_fl3",
            "focalnet_huge_fl4",
        ),
        converter=checkpoint_filter_fn,
        params_m={
            "focalnet_test": 1.72,
            "focalnet_tiny_srf": 28.43,
            "focalnet_tiny_lrf": 28.65,
            "focalnet_small_srf": 49.89,
            "focalnet_small_lrf": 50.34,
            "focalnet_base_srf": 88.15,
            "focalnet_base_lrf": 88.75,
            "focalnet_large_fl3": 239.13,
            "focalnet_large_fl4": 239.32,
            "focalnet_large_fl4_official": 239.32,
            "focalnet_xlarge_fl3": 408.79,
            "focalnet_xlarge_fl4": 409.03,
            "focalnet_huge_fl3": 745.28,
            "focalnet_huge_fl4": 686.46,
        },
        card="model_cards/focalnet.md",
        min_input_size=MIN_INPUT_SIZE,
        layout="hierarchical",
        num_stages=4,
        # focalnet_test is already small (timm's entrypoints refuse depths / embed_dim overrides)
        test_kwargs={},
        # the official dense backbones: an nn.LayerNorm (eps 1e-5) on each output. Their focal window 9
        # (DENSE_FOCAL_WINDOWS) is set by the configs, not here: timm's large / xlarge / huge_fl3 entrypoints fix
        # focal_windows themselves and refuse it as an argument
        dense=DenseRecipe(out_norm="ln2d", out_norm_eps=1e-5),
        onnx_dynamic_size=True,
    )
)
