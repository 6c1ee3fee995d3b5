"""The family registry: one :class:`Family` record per model family, declared once by its model file.

Registration with timm, checkpoint conversion, the shared tests, the dense adapter, ONNX export and the
benchmarks read these records; none of them names a family. A family's code lives either here
(``source="visionattn"``: the model file registers its names with timm's ``@register_model``) or in timm
(``source="timm"``: the record lists timm's existing names; nothing is re-registered or shadowed).

``register_family(Family(...))`` checks the record, registers its aliases with timm and makes its models
visible to ``visionattn.list_models()``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.nn as nn

Converter = Callable[[dict, nn.Module], dict]

__all__ = [
    "Checkpoint",
    "DenseRecipe",
    "Family",
    "register_family",
    "unregister_family",
    "get_family",
    "families",
    "list_models",
    "family_of",
    "resolve_alias",
]

_LAYOUTS = ("hierarchical", "isotropic")
_SOURCES = ("visionattn", "timm")
_OUT_NORMS = ("none", "ln2d")
_FORMATS = ("NCHW", "NHWC")
_CKPT_TASKS = ("cls", "det", "seg")
_CKPT_FORMATS = ("", "state_dict", "model", "mmcv", "safetensors")
_CKPT_STATUSES = ("ok", "dead", "unknown", "none")


@dataclass(frozen=True)
class DenseRecipe:
    """How the official dense (detection / segmentation) code wraps the backbone.

    Args:
        out_norm: ``"none"`` (the maps as the model returns them) or ``"ln2d"`` (a LayerNorm2d on each
            returned map, not fed forward).
        model_kwargs: model arguments the official dense backbones change (e.g. a window count).
        out_norm_eps: the epsilon of the output LayerNorms (``nn.LayerNorm``'s 1e-5 where the official code uses
            it; the difference shows at 1e-5 on maps of small variance).
        neck: the official neck that replaces FPN, as an mm config (``type`` registered by ``visionattn.dense``,
            and the arguments other than ``in_channels`` / ``out_channels`` / ``num_outs``), for backbones whose
            levels a standard FPN cannot use (e.g. three stages at strides 16 / 32 / 64); empty: FPN.
        out_norm_levels: the trunk levels (``feature_info`` indices) that get the output norm; None: every level.
            Some official detection backbones leave the first level un-normed (``(1, 2, 3)``).
    """

    out_norm: str = "none"
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    out_norm_eps: float = 1e-6
    neck: Mapping[str, Any] = field(default_factory=dict)
    out_norm_levels: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.out_norm not in _OUT_NORMS:
            raise ValueError(f"DenseRecipe.out_norm={self.out_norm!r} is not one of {_OUT_NORMS}")
        if self.neck and not isinstance(self.neck.get("type"), str):
            raise ValueError(f"DenseRecipe.neck={dict(self.neck)!r} needs a 'type' naming a registered neck")
        if not self.out_norm_eps > 0:
            raise ValueError(f"DenseRecipe.out_norm_eps={self.out_norm_eps!r} must be a positive float")
        if self.out_norm_levels is not None:
            levels = tuple(self.out_norm_levels)
            if not all(isinstance(i, int) and i >= 0 for i in levels):
                raise ValueError(f"DenseRecipe.out_norm_levels={levels!r} must be feature-level indices >= 0 or None")
            object.__setattr__(self, "out_norm_levels", levels)


@dataclass(frozen=True)
class Checkpoint:
    """One released checkpoint, as the checkpoint index (``visionattn.hub``) lists it.

    An entry whose ``model`` and ``tag`` name one of the model's timm pretrained cfgs completes that cfg (status,
    format, paper result, more download links); any other entry (a detection or segmentation checkpoint, a
    release timm has no tag for) is listed on its own, under ``model.tag``.

    Args:
        model: one of the family's models (the classification model, or the backbone of a dense checkpoint).
        tag: the pretrained tag (``"in1k"``); for a new entry a new tag (``"coco_maskrcnn_1x"``); ``""`` for a
            model released without weights (with ``status="none"``).
        task: ``"cls"``, ``"det"`` or ``"seg"``.
        urls: download links besides the cfg's (the official release, mirrors), tried in this order after it.
        format: how the file holds the weights: ``"state_dict"`` (bare), ``"model"`` (``{'model': ...}``),
            ``"mmcv"`` (mmdet / mmseg ``{'state_dict': ...}``, keys prefixed ``backbone.`` / ``neck.`` / ...),
            ``"safetensors"``; ``""``: not known.
        size: file size in bytes, when known.
        sha256: full hex sha256 of the file, when known (checked by ``hub fetch`` and ``hub convert``).
        license: license of the weights (default: the cfg's ``license``).
        status: ``"ok"`` (downloaded on ``checked``), ``"dead"`` (the links fail; say how in ``evidence``),
            ``"unknown"`` (not checked), ``"none"`` (no weights were released).
        evidence: what the status rests on (the answer the link gave, an issue URL).
        checked: the date the status was observed, ``YYYY-MM-DD`` (or ``YYYY-MM`` when only the month is known).
        top1: ImageNet-1k top-1 (%) the paper / official README reports for these weights.
        result: the official result of a dense checkpoint, as text (``"box AP 45.0 / mask AP 41.1"``).
        notes: what else a user must know (layout, what the converter does not cover).
        converter: dotted name of the function that converts this file when the family converter does not (a
            dense checkpoint's converter, ``"visionattn.models.davit.convert_dense_checkpoint"``).
    """

    model: str
    tag: str
    task: str = "cls"
    urls: tuple[str, ...] = ()
    format: str = ""
    size: int | None = None
    sha256: str = ""
    license: str = ""
    status: str = "unknown"
    evidence: str = ""
    checked: str = ""
    top1: float | None = None
    result: str = ""
    notes: str = ""
    converter: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(self.urls))
        where = f"Checkpoint({self.model!r}, {self.tag!r})"
        for attr, allowed in (("task", _CKPT_TASKS), ("format", _CKPT_FORMATS), ("status", _CKPT_STATUSES)):
            if getattr(self, attr) not in allowed:
                raise ValueError(f"{where}: {attr}={getattr(self, attr)!r} is not one of {allowed}")
        if self.sha256 and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"{where}: sha256={self.sha256!r} is not a full lower-case hex sha256 digest")
        if self.checked and not re.fullmatch(r"\d{4}-\d{2}(-\d{2})?", self.checked):
            raise ValueError(f"{where}: checked={self.checked!r} is not a date YYYY-MM-DD (or YYYY-MM)")
        if self.status in ("ok", "dead") and not (self.checked and self.evidence):
            raise ValueError(f"{where}: status={self.status!r} needs the date it was seen (checked=) and evidence=")
        if self.size is not None and self.size <= 0:
            raise ValueError(f"{where}: size={self.size!r} must be a positive number of bytes")
        if self.converter and not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)+", self.converter):
            raise ValueError(f"{where}: converter={self.converter!r} is not a dotted name (module.function)")
        if self.tag and not re.fullmatch(r"[a-z0-9_][a-z0-9_.-]*", self.tag):
            raise ValueError(f"{where}: tag {self.tag!r} must be lower-case letters, digits, '_', '.' or '-'")


@dataclass(frozen=True)
class Family:
    """Everything the shared code needs to know about one model family.

    Args:
        name: family name, lower case (``"biformer"``).
        models: the official timm names of its models (registered by the model file, or timm's own).
        aliases: short name -> official name; ``register_family`` registers them with timm.
        source: ``"visionattn"`` (our model file) or ``"timm"`` (timm's implementation).
        converter: ``converter(state_dict, model) -> state_dict`` mapping the official checkpoint layout to
            the model's (timm's ``checkpoint_filter_fn`` for a timm family); None: loaded as is.
        params_m: parameter count in millions per model, as the family's card states it (the tests check
            every model against it within 0.5 %).
        card: the model card, relative to the repository root.
        min_input_size: smallest input side the models accept.
        input_multiple: input sides must be multiples of this (1: any size above the minimum).
        fixed_input_size: only the pretrained cfg's ``input_size`` works (every model of the family).
        fixed_size_models: the models that, unlike the rest of the family, take only their pretrained cfg's
            ``input_size`` (e.g. a hybrid with a fixed position table); see :meth:`is_fixed`.
        layout: ``"hierarchical"`` (a pyramid of feature maps, strides 4 ... 32) or ``"isotropic"`` (one
            stride throughout, as a plain ViT).
        num_stages: number of entries in ``feature_info``.
        feature_fmt: layout of ``forward_intermediates`` / ``features_only`` maps.
        test_kwargs: small model arguments that keep the structure (every stage, every block type) for the
            heavy shared tests (export, dense, training); applied to the family's smallest model.
        dense: the official dense recipe.
        scriptable: the models compile with ``torch.jit.script``.
        drop_path: the models take ``drop_path_rate`` (stochastic depth); False for a family whose official
            models have none (timm's constructor then refuses the argument).
        onnx_dynamic_size: one exported ONNX graph serves every input size (dynamic height / width axes);
            False: the export bakes the size in (sizes computed in Python), so one graph is exported per size.
        kernel_cases: kernel-benchmark cases at this family's real shapes, one mapping each: ``op`` (a
            ``visionattn.kernels`` op name), ``name`` (a label), the op's shape arguments.
        kernel_baselines: op name -> (label, function) of the official implementation of that op, benchmarked
            beside our kernels and usable as a test reference.
        checkpoints: what the checkpoint index needs beyond the pretrained cfgs: status, format and paper result
            of the released weights, their official links, and the dense checkpoints as entries of their own.
    """

    name: str
    models: tuple[str, ...]
    aliases: Mapping[str, str] = field(default_factory=dict)
    source: str = "visionattn"
    converter: Converter | None = None
    params_m: Mapping[str, float] = field(default_factory=dict)
    card: str = ""
    min_input_size: int = 32
    input_multiple: int = 1
    fixed_input_size: bool = False
    fixed_size_models: tuple[str, ...] = ()
    layout: str = "hierarchical"
    num_stages: int = 4
    feature_fmt: str = "NCHW"
    test_kwargs: Mapping[str, Any] = field(default_factory=dict)
    dense: DenseRecipe = field(default_factory=DenseRecipe)
    scriptable: bool = True
    drop_path: bool = True
    onnx_dynamic_size: bool = False
    kernel_cases: tuple[Mapping[str, Any], ...] = ()
    kernel_baselines: Mapping[str, tuple[str, Callable[..., Any]]] = field(default_factory=dict)
    checkpoints: tuple[Checkpoint, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or self.name != self.name.lower():
            raise ValueError(f"Family.name={self.name!r} must be a non-empty lower-case name")
        if not self.models:
            raise ValueError(f"family {self.name!r} declares no models")
        object.__setattr__(self, "models", tuple(self.models))
        for attr, allowed in (("source", _SOURCES), ("layout", _LAYOUTS), ("feature_fmt", _FORMATS)):
            if getattr(self, attr) not in allowed:
                raise ValueError(f"family {self.name!r}: {attr}={getattr(self, attr)!r} is not one of {allowed}")
        if self.converter is not None and not callable(self.converter):
            raise TypeError(f"family {self.name!r}: converter must be callable, got {type(self.converter).__name__}")
        for alias, target in self.aliases.items():
            if target not in self.models:
                raise ValueError(f"family {self.name!r}: alias {alias!r} points at {target!r}, not one of its models")
        missing = [m for m in self.models if m not in self.params_m]
        if missing:
            raise ValueError(f"family {self.name!r}: params_m lacks {missing}; give the card's figure for each model")
        if self.min_input_size < 1 or self.input_multiple < 1:
            raise ValueError(f"family {self.name!r}: min_input_size and input_multiple must be positive")
        object.__setattr__(self, "fixed_size_models", tuple(self.fixed_size_models))
        strays = [m for m in self.fixed_size_models if m not in self.models]
        if strays:
            raise ValueError(f"family {self.name!r}: fixed_size_models names {strays}, which are not its models")
        object.__setattr__(self, "checkpoints", tuple(self.checkpoints))
        seen = set()
        for ckpt in self.checkpoints:
            if not isinstance(ckpt, Checkpoint):
                raise TypeError(f"family {self.name!r}: checkpoints holds a {type(ckpt).__name__}, not a Checkpoint")
            if ckpt.model not in self.models:
                raise ValueError(f"family {self.name!r}: Checkpoint model {ckpt.model!r} is not one of {self.models}")
            if (ckpt.model, ckpt.tag) in seen:
                raise ValueError(f"family {self.name!r}: two Checkpoint entries for {ckpt.model}.{ckpt.tag}")
            seen.add((ckpt.model, ckpt.tag))

    @property
    def smallest(self) -> str:
        """The model with the fewest parameters (the one the heavy shared tests run)."""
        return min(self.models, key=lambda m: self.params_m[m])

    def accepts(self, height: int, width: int) -> bool:
        """Whether a ``height`` x ``width`` input is within the family's size rule (not checked for fixed-size
        families, whose size is the pretrained cfg's)."""
        return min(height, width) >= self.min_input_size and height % self.input_multiple == 0 == width % (
            self.input_multiple
        )

    def is_fixed(self, model: str) -> bool:
        """Whether ``model`` (a name of this family) takes only its pretrained cfg's input size."""
        return self.fixed_input_size or model in self.fixed_size_models

    def fit_size(self, side: int) -> int:
        """The smallest input side >= ``side`` that the size rule accepts (fixed-size families: see their cfg)."""
        side = max(side, self.min_input_size)
        return -(-side // self.input_multiple) * self.input_multiple


_FAMILIES: dict[str, Family] = {}
_MODEL_FAMILY: dict[str, str] = {}  # official name -> family
_ALIASES: dict[str, str] = {}  # alias -> official name


def _timm_has(name: str) -> bool:
    from timm.models import is_model

    return is_model(name)


def _register_alias(alias: str, target: str) -> None:
    """Register ``alias`` with timm as an entrypoint that builds ``target`` (same model, same pretrained cfg)."""
    from timm.models import model_entrypoint, register_model

    target_fn = model_entrypoint(target)

    def entrypoint(pretrained: bool = False, **kwargs: Any) -> nn.Module:
        return target_fn(pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = alias
    entrypoint.__doc__ = f"Alias of {target}."
    # timm files the entrypoint under its module (for pretrained tags); use the visionattn module that
    # declares the family so `timm.list_models(module=...)` groups the alias with its target.
    entrypoint.__module__ = target_fn.__module__ if target_fn.__module__.startswith("visionattn") else __name__
    register_model(entrypoint)


def register_family(family: Family) -> Family:
    """Record ``family``: check its names against timm, register its aliases, list its models.

    A visionattn family's models must already be registered (``@register_model`` in its model file); a timm
    family's models must be timm's own names. Re-registering a family of the same name replaces it.
    """
    if family.name in _FAMILIES:
        unregister_family(family.name)
    missing = [m for m in family.models if not _timm_has(m)]
    if missing:
        where = (
            "register them with @register_model in the model file first"
            if family.source == "visionattn"
            else ("these are not timm models in the installed timm")
        )
        raise ValueError(f"family {family.name!r}: {missing} are not registered with timm; {where}")
    for model in family.models:
        owner = _MODEL_FAMILY.get(model)
        if owner is not None and owner != family.name:
            raise ValueError(f"model {model!r} already belongs to family {owner!r}")
    for alias, target in family.aliases.items():
        if alias in _ALIASES and _ALIASES[alias] != target:
            raise ValueError(f"alias {alias!r} already points at {_ALIASES[alias]!r}")
        if alias not in _ALIASES and _timm_has(alias):
            raise ValueError(f"alias {alias!r} of family {family.name!r} is already a timm model; pick another")
    for alias, target in family.aliases.items():
        if alias not in _ALIASES:
            _register_alias(alias, target)
        _ALIASES[alias] = target
    for model in family.models:
        _MODEL_FAMILY[model] = family.name
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget a family (its timm registrations stay: timm has no way to remove a name)."""
    family = _FAMILIES.pop(name)
    for model in family.models:
        _MODEL_FAMILY.pop(model, None)
    for alias in family.aliases:
        _ALIASES.pop(alias, None)


def get_family(name: str) -> Family:
    """The family of a family name, a model name or an alias."""
    if name in _FAMILIES:
        return _FAMILIES[name]
    model = _ALIASES.get(name, name)
    if model in _MODEL_FAMILY:
        return _FAMILIES[_MODEL_FAMILY[model]]
    raise KeyError(
        f"{name!r} is neither a visionattn family nor one of its models; see visionattn.list_families() and "
        "visionattn.list_models()"
    )


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())


def list_models(family: str | None = None, aliases: bool = False) -> list[str]:
    """Registered model names (optionally of one family; aliases included on request)."""
    if family is not None and family not in _FAMILIES:
        raise ValueError(f"family={family!r} is not registered; pick one of {sorted(_FAMILIES)}")
    names = [n for n, f in _MODEL_FAMILY.items() if family is None or f == family]
    if aliases:
        names += [a for a, t in _ALIASES.items() if t in names]
    return sorted(names)


def family_of(name: str) -> str:
    """Family name of a model name or alias (KeyError for names no family declares)."""
    return _MODEL_FAMILY[_ALIASES.get(name, name)]


def resolve_alias(name: str) -> str:
    return _ALIASES.get(name, name)
