"""One mmdet / mmseg backbone for every registered visionattn (timm) model.

``VisionAttnBackbone`` builds the trunk with timm's ``features_only`` machinery (``FeatureListNet`` for
models with a sequential feature layout, ``FeatureGetterNet`` for models that implement
``forward_intermediates``), so every family plugs in without code here. It adds what the dense frameworks
expect of a backbone: a tuple of NCHW maps, an optional LayerNorm2d on each output, a simple feature pyramid
for isotropic models (strides 4/8/16/32 from one map, ViTDet style), frozen stages, BatchNorm kept in eval
mode, and ``init_cfg=dict(type='Pretrained', ...)`` loading through the family's official-checkpoint converter.

Defaults are neutral; what a family's official dense code changes (an output norm, model arguments) comes
from its record (``visionattn.get_family(name).dense``), so nothing here names a family.

The class is registered in mmengine's root ``MODELS`` registry (which mmdet's and mmseg's registries fall
back to) and, when those packages import, in ``mmdet.registry.MODELS`` and ``mmseg.registry.MODELS`` too.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import operator
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

from .pyramid import SimplePyramid

MM_HINT = (
    "pip install visionattn[mm] (mmengine, mmdet, mmsegmentation); mmdet and mmseg need mmcv 2.1.0 with "
    "compiled ops, which `python tools/install_mmcv.py` builds for the installed torch"
)

try:
    from mmengine.model import BaseModule
    from mmengine.registry import MODELS as MMENGINE_MODELS
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"visionattn.dense needs mmengine: {MM_HINT}") from e

_logger = logging.getLogger(__name__)
_OUT_NORMS = ("none", "ln2d")


def require_mm(package: str) -> Any:
    """Import ``package`` ("mmdet" or "mmseg") or raise an ImportError that says how to install it."""
    try:
        return importlib.import_module(package)
    except ImportError as e:
        raise ImportError(f"{package} is not usable ({e}); install it with {MM_HINT}") from e


def _feature_module(trunk: nn.Module, name: str) -> nn.Module:
    """The trunk's module for a feature_info module name (timm renames or nests it per wrapper)."""
    candidates = [name, name.replace(".", "_"), f"model.{name}"]
    for cand in candidates:
        try:
            return trunk.get_submodule(cand)
        except AttributeError:
            continue
    raise ValueError(f"feature module {name!r} is not part of the trunk (looked for {candidates})")


def dense_recipe(model_name: str):
    """The family record's dense recipe for ``model_name`` (a model name or alias), or None for a timm model that
    no visionattn family declares."""
    from visionattn.models import get_family

    try:
        return get_family(model_name).dense
    except KeyError:
        return None


def resolve_dense_args(
    model_name: str, model_kwargs: dict | None = None, out_norm: str | None = None, recipe: bool = True
) -> tuple[dict, str]:
    """The model kwargs and output norm the adapter uses for ``model_name``.

    With ``recipe=True`` the family's dense recipe fills in what the caller leaves open: its ``model_kwargs``
    (the arguments the official dense code changes) under the caller's ``model_kwargs`` (the caller wins), and
    its ``out_norm`` when ``out_norm`` is None. Models outside any family, and ``recipe=False``, get the neutral
    defaults: no extra kwargs, no output norm.
    """
    found = dense_recipe(model_name) if recipe else None
    kwargs = dict(found.model_kwargs) if found is not None else {}
    kwargs.update(model_kwargs or {})
    if out_norm is None:
        out_norm = found.out_norm if found is not None else "none"
    if out_norm not in _OUT_NORMS:
        raise ValueError(
            f"out_norm={out_norm!r} is not one of {_OUT_NORMS}; use 'ln2d', 'none' or None (the family's recipe)"
        )
    return kwargs, out_norm


def _feature_info(model_name: str, model_kwargs: dict) -> list[dict]:
    """The classification model's ``feature_info``, read before building the trunk: on the meta device (no memory,
    no initialisation) where the model allows it; some constructors read tensor values, which meta tensors lack."""
    try:
        with torch.device("meta"):
            return list(timm.create_model(model_name, **model_kwargs).feature_info)
    except (RuntimeError, NotImplementedError):
        return list(timm.create_model(model_name, **model_kwargs).feature_info)


def _is_isotropic(model_name: str, info: Sequence[dict]) -> bool:
    from visionattn.models import get_family

    try:
        if get_family(model_name).layout == "isotropic":
            return True
    except KeyError:
        pass
    return len({f["reduction"] for f in info}) == 1


class VisionAttnBackbone(BaseModule):
    """Any registered timm / visionattn model as an mmdet / mmseg backbone.

    Args:
        model_name: a timm model name (``visionattn.list_models()`` lists ours), e.g. ``"resnet50"``.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``dict(drop_path_rate=0.2)``), over the
            family's dense recipe (``visionattn.get_family(model_name).dense.model_kwargs``).
        out_indices: levels to return, indices into :attr:`level_strides` (the trunk's ``feature_info`` entries,
            or the pyramid's levels when there is a pyramid); None returns every level.
        out_norm: None takes the family's dense recipe (``"none"`` for models outside any family); ``"ln2d"``
            puts a LayerNorm2d on each returned trunk map (applied to the output only, not fed forward);
            ``"none"`` returns the maps as they are. With a pyramid, the norm is on the map the pyramid reads.
        out_norm_eps: epsilon of those LayerNorm2d; None takes the family's recipe (1e-6 outside any family).
        out_norm_levels: the trunk levels (``feature_info`` indices) that get the output norm, the others are
            returned as they are; None takes the family's recipe (every level outside any family).
        recipe: False ignores the family's dense recipe (neutral defaults: no extra kwargs, no output norm).
        pyramid: build a simple feature pyramid (ViTDet style, :class:`~visionattn.dense.pyramid.SimplePyramid`)
            from the trunk's last map. None (default): for isotropic models (the family's ``layout`` is
            ``"isotropic"``, or every ``feature_info`` stride is the same); True / False force it on / off.
        pyramid_strides: the pyramid's levels (strides relative to the image).
        pyramid_channels: the pyramid's output channels, one int for every level or one per level.
        norm_eval: keep every BatchNorm in eval mode (frozen running statistics) while training.
        frozen_stages: ``-1`` freezes nothing; ``0`` freezes the stem (everything before feature 0);
            ``k > 0`` freezes the stem and trunk features ``0 .. k-1`` (parameters get ``requires_grad=False``
            and the modules stay in eval mode).
        init_cfg: ``dict(type='Pretrained', checkpoint=path)`` loads a classification checkpoint (official
            layouts are converted by the family's converter); add ``prefix='backbone.'`` to take this
            backbone's weights out of a full mmdet / mmseg checkpoint. Other mmengine init configs pass through.

    Forward: ``(B, 3, H, W)`` -> tuple of ``(B, C_i, H / s_i, W / s_i)``, one per ``out_indices`` entry
    (:attr:`channels`, :attr:`strides`).
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict | None = None,
        out_indices: Sequence[int] | None = None,
        out_norm: str | None = None,
        out_norm_eps: float | None = None,
        out_norm_levels: Sequence[int] | None = None,
        recipe: bool = True,
        pyramid: bool | None = None,
        pyramid_strides: Sequence[int] = (4, 8, 16, 32),
        pyramid_channels: int | Sequence[int] = 256,
        norm_eval: bool = False,
        frozen_stages: int = -1,
        init_cfg: dict | list | None = None,
    ) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(model_name, str) or not timm.is_model(model_name):
            raise ValueError(
                f"model_name={model_name!r} is not a registered timm model; pick one of visionattn.list_models() "
                f"or timm.list_models() (import visionattn first so its models are registered)"
            )
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise TypeError(f"model_kwargs must be a dict, got {type(model_kwargs).__name__}: {model_kwargs!r}")
        for key in ("features_only", "out_indices", "pretrained"):
            if key in (model_kwargs or {}):
                raise ValueError(
                    f"model_kwargs[{key!r}] is set by VisionAttnBackbone; pass out_indices as its own argument "
                    f"and pretrained weights through init_cfg=dict(type='Pretrained', checkpoint=...)"
                )
        model_kwargs, out_norm = resolve_dense_args(model_name, model_kwargs, out_norm, recipe)
        if out_norm_eps is None:
            found = dense_recipe(model_name) if recipe else None
            out_norm_eps = found.out_norm_eps if found is not None else 1e-6
        if not isinstance(out_norm_eps, (int, float)) or not out_norm_eps > 0:
            raise ValueError(f"out_norm_eps={out_norm_eps!r} must be a positive float (or None for the recipe's)")
        if out_norm_levels is None:
            found = dense_recipe(model_name) if recipe else None
            out_norm_levels = found.out_norm_levels if found is not None else None
        if out_norm_levels is not None:
            try:
                out_norm_levels = tuple(operator.index(i) for i in out_norm_levels)
            except TypeError as e:
                raise TypeError(f"out_norm_levels={out_norm_levels!r} must be a sequence of ints or None") from e
        self.out_norm_levels = out_norm_levels
        self.model_name = model_name
        self.model_kwargs = model_kwargs
        self.out_norm = out_norm
        self.out_norm_eps = float(out_norm_eps)

        info = _feature_info(model_name, model_kwargs)
        self.num_features = len(info)
        if pyramid is None:
            pyramid = _is_isotropic(model_name, info)
        if pyramid:
            self.level_strides = [int(s) for s in pyramid_strides]
            self.trunk_indices: tuple[int, ...] = (len(info) - 1,)
        else:
            self.level_strides = [int(f["reduction"]) for f in info]
        self.out_indices = self._check_out_indices(out_indices, len(self.level_strides))
        if not pyramid:
            self.trunk_indices = self.out_indices
        self.trunk = self._create_trunk(pretrained_file=None)
        self.nhwc = str(getattr(self.trunk, "output_fmt", "NCHW")).endswith("NHWC")

        trunk_channels = list(self.trunk.feature_info.channels())
        self.out_norms = nn.ModuleList(
            LayerNorm2d(c, eps=self.out_norm_eps)
            if out_norm == "ln2d" and (out_norm_levels is None or level in out_norm_levels)
            else nn.Identity()
            for level, c in zip(self.trunk_indices, trunk_channels, strict=True)
        )
        self.pyramid: SimplePyramid | None = None
        if pyramid:
            if isinstance(pyramid_channels, int):
                level_channels = [pyramid_channels] * len(self.level_strides)
            else:
                level_channels = [int(c) for c in pyramid_channels]
                if len(level_channels) != len(self.level_strides):
                    raise ValueError(
                        f"pyramid_channels={pyramid_channels!r} needs one entry per pyramid level "
                        f"({len(self.level_strides)}: strides {self.level_strides}), or one int for all"
                    )
            self.pyramid = SimplePyramid(
                trunk_channels[-1],
                int(info[-1]["reduction"]),
                [self.level_strides[i] for i in self.out_indices],
                [level_channels[i] for i in self.out_indices],
            )
            self.channels: list[int] = list(self.pyramid.channels)
            self.strides: list[int] = list(self.pyramid.strides)
        else:
            # channels / strides of the returned maps, in out_indices order
            self.channels = trunk_channels
            self.strides = list(self.trunk.feature_info.reduction())

        if not isinstance(frozen_stages, int) or not -1 <= frozen_stages <= self.num_features:
            raise ValueError(
                f"frozen_stages={frozen_stages!r} is out of range for {model_name}, which has {self.num_features} "
                f"feature stages; use -1 (nothing), 0 (stem) up to {self.num_features}"
            )
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self._frozen_modules: list[nn.Module] = []
        self._freeze_stages()

    @staticmethod
    def _check_out_indices(out_indices: Sequence[int] | None, n: int) -> tuple[int, ...]:
        if out_indices is None:
            return tuple(range(n))
        try:
            idx = tuple(operator.index(i) for i in out_indices)
        except TypeError as e:
            raise TypeError(f"out_indices={out_indices!r} must be a sequence of ints (or None for every level)") from e
        bad = [i for i in idx if not -n <= i < n]
        if not idx or bad:
            raise ValueError(
                f"out_indices={out_indices!r} is out of range: the backbone has {n} levels (0..{n - 1}); "
                f"pass indices in that range or None for all"
            )
        norm = tuple(i % n for i in idx)
        if list(norm) != sorted(set(norm)):
            raise ValueError(f"out_indices={out_indices!r} must be increasing and without repeats")
        return norm

    # -- construction -------------------------------------------------------------------------------------
    def _create_trunk(self, pretrained_file: str | None) -> nn.Module:
        from visionattn.pretrained import create_model

        kwargs: dict[str, Any] = dict(self.model_kwargs)
        if pretrained_file is not None:
            kwargs["pretrained_cfg_overlay"] = dict(file=pretrained_file)
        # visionattn.create_model: a file is read by the safe loader and mapped by the family's converter, also for a
        # timm-bound family whose converter is not timm's own filter
        return create_model(
            self.model_name,
            pretrained=pretrained_file is not None,
            features_only=True,
            out_indices=self.trunk_indices,
            **kwargs,
        )

    def _freeze_stages(self) -> None:
        """Freeze the stem and the first ``frozen_stages`` feature stages.

        timm's feature wrappers assume modules are registered in the order they run; the same order
        decides here what lies "before" the end of a stage.
        """
        if self.frozen_stages < 0:
            return
        info = self.trunk.feature_info.info
        # Modules in registration order (pre-order: a module's submodules follow it, contiguously); a parameter
        # is frozen when the module owning it comes before feature 0 (frozen_stages=0) or before the end of
        # feature k-1's subtree. Feature modules without parameters (an activation) work the same way.
        modules = [m for _, m in self.trunk.named_modules()]
        position = {id(m): i for i, m in enumerate(modules)}
        if self.frozen_stages == 0:
            end = position[id(_feature_module(self.trunk, info[0]["module"]))]
        else:
            last = _feature_module(self.trunk, info[self.frozen_stages - 1]["module"])
            end = position[id(last)] + sum(1 for _ in last.modules())
        params = [(n, p) for m in modules[:end] for n, p in m.named_parameters(recurse=False)]
        frozen = {id(p) for _, p in params}
        for _, p in params:
            p.requires_grad_(False)
        # A module stays in eval mode when all of its parameters are frozen (BN statistics, dropout, drop path).
        self._frozen_modules = [
            m
            for m in self.trunk.modules()
            if (ps := list(m.parameters())) and all(id(p) in frozen for p in ps) and m is not self.trunk
        ]
        for i in range(self.frozen_stages):
            self._frozen_modules.append(_feature_module(self.trunk, info[i]["module"]))
        for m in self._frozen_modules:
            m.eval()

    # -- weights ------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """Load ``init_cfg``'s checkpoint (or apply other mmengine init configs); timm already initialised
        the trunk in its constructor, so nothing else is re-initialised."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get("type") == "Pretrained":
            checkpoint = cfg.get("checkpoint")
            if not isinstance(checkpoint, str):
                raise ValueError(f"init_cfg.checkpoint={checkpoint!r} must be a file path")
            prefix = cfg.get("prefix")
            if prefix:
                self._load_prefixed(checkpoint, prefix)
            else:
                # Build the same trunk with timm's pretrained path: the family's converter (its
                # pretrained_filter_fn) maps the official layout, then the weights are copied over.
                loaded = self._create_trunk(pretrained_file=checkpoint)
                self.trunk.load_state_dict(loaded.state_dict())
            _logger.info("VisionAttnBackbone(%s): loaded %s", self.model_name, checkpoint)
            self._is_init = True
        elif cfg is not None:
            super().init_weights()
        else:
            self._is_init = True
        self._freeze_stages()

    def _load_prefixed(self, checkpoint: str, prefix: str) -> None:
        from timm.models import load_state_dict

        state = load_state_dict(checkpoint, use_ema=False, weights_only=True)
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if not sub:
            raise ValueError(f"init_cfg.prefix={prefix!r} matches no key of {checkpoint}; check the prefix")
        self.load_state_dict(sub, strict=True)

    # -- forward ------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(B, 3, H, W) -> tuple of (B, C_i, H_i, W_i)."""
        feats = self.trunk(x)
        if isinstance(feats, dict):
            feats = list(feats.values())
        outs = []
        for norm, f in zip(self.out_norms, feats, strict=True):
            if self.nhwc:
                f = f.permute(0, 3, 1, 2)
            outs.append(norm(f))
        if self.pyramid is not None:
            outs = self.pyramid(outs[-1])
        return tuple(o.contiguous() for o in outs)

    def train(self, mode: bool = True) -> VisionAttnBackbone:
        super().train(mode)
        if mode:
            for m in self._frozen_modules:
                m.eval()
            if self.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self


def _register() -> None:
    """Register in mmengine's root registry, and in mmdet's / mmseg's when they import."""
    MMENGINE_MODELS.register_module(module=VisionAttnBackbone, force=True)
    for package in ("mmdet", "mmseg"):
        if importlib.util.find_spec(package) is None:
            continue
        try:
            registry = importlib.import_module(f"{package}.registry")
        except Exception as e:  # a broken mmcv makes mmdet fail at import; the root registry still works
            _logger.debug("not registering VisionAttnBackbone in %s: %s", package, e)
            continue
        registry.MODELS.register_module(module=VisionAttnBackbone, force=True)


_register()
