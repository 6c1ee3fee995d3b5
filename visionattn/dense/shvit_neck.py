"""EfficientViT's FPN: an FPN over a 3-stage pyramid (strides 16 / 32 / 64) that adds finer levels (strides 8, 4)
by transposed convolutions of the finest lateral.

A standard FPN over three maps at strides 16 / 32 / 64 gives no level finer than stride 16, and RetinaNet /
Mask R-CNN then fail to learn small objects. The official detection code of such backbones uses
``EfficientViTFPN`` (from EfficientViT, Liu et al., CVPR 2023): mmdet's FPN plus ``num_extra_trans_convs`` levels,
each a 2x2 stride-2 transposed convolution of the previous (finer) lateral followed by a 3x3 convolution. This
module reproduces it for mmdet 3.x / mmseg 1.x with the official parameter names (``lateral_convs``,
``fpn_convs``, ``extra_trans_convs``, ``extra_fpn_convs``), so the official detection checkpoints' ``neck.*``
weights load as they are. It is registered as ``EfficientViTFPN`` in mmengine's root ``MODELS`` and in mmdet's and
mmseg's; a family record names it in ``DenseRecipe.neck``.

Official settings: RetinaNet ``num_extra_trans_convs=1, add_extra_convs='on_input'`` (strides 8 ... 128), Mask
R-CNN ``num_extra_trans_convs=2`` (strides 4 ... 64), both ``num_outs=5, start_level=0``.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS as MMENGINE_MODELS

_logger = logging.getLogger(__name__)

__all__ = ["EfficientViTFPN"]

_EXTRA_SOURCES = ("on_input", "on_lateral", "on_output")


def _conv_module(*args, **kwargs) -> nn.Module:
    try:
        from mmcv.cnn import ConvModule
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            f"EfficientViTFPN needs mmcv ({e}); install it with pip install visionattn[mm] and tools/install_mmcv.py"
        ) from e
    return ConvModule(*args, **kwargs)


class EfficientViTFPN(BaseModule):
    """FPN with extra transposed-conv levels below the backbone's finest stride.

    Args:
        in_channels: channels of each backbone map (finest first).
        out_channels: channels of every output level.
        num_outs: number of output levels, transposed-conv levels included.
        start_level: first backbone map used.
        end_level: last backbone map used (exclusive); -1: the last one.
        add_extra_convs: False (coarser extra levels by max pooling) or the source of stride-2 3x3 convolutions:
            ``"on_input"`` (the last backbone map), ``"on_lateral"``, ``"on_output"``; True means ``"on_input"``.
        relu_before_extra_convs: ReLU before every extra convolution after the first.
        no_norm_on_lateral: no norm on the lateral and transposed convolutions.
        num_extra_trans_convs: finer levels built by 2x2 stride-2 transposed convolutions (2: strides 8 and 4
            under a stride-16 map).
        conv_cfg, norm_cfg, act_cfg: as mmcv's ``ConvModule``.
        upsample_cfg: ``F.interpolate`` arguments of the top-down path.
        init_cfg: default Xavier-uniform on the 3x3 / 1x1 convolutions (mmdet's FPN); the transposed
            convolutions keep ``ConvModule``'s Kaiming init, as in the official neck.

    Forward: tuple of ``(B, C_i, H_i, W_i)`` backbone maps -> tuple of ``num_outs`` maps of ``out_channels``,
    finest first (the transposed-conv levels, then the FPN levels).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        num_outs: int,
        start_level: int = 0,
        end_level: int = -1,
        add_extra_convs: bool | str = False,
        relu_before_extra_convs: bool = False,
        no_norm_on_lateral: bool = False,
        num_extra_trans_convs: int = 0,
        conv_cfg: dict | None = None,
        norm_cfg: dict | None = None,
        act_cfg: dict | None = None,
        upsample_cfg: dict | None = None,
        init_cfg: dict | list | None = None,
    ) -> None:
        if init_cfg is None:
            init_cfg = dict(type="Xavier", layer="Conv2d", distribution="uniform")
        super().__init__(init_cfg=init_cfg)
        if isinstance(in_channels, int) or not all(isinstance(c, int) and c > 0 for c in in_channels):
            raise TypeError(f"in_channels={in_channels!r} must be a list of positive ints, one per backbone map")
        self.in_channels = list(in_channels)
        self.out_channels = out_channels
        self.num_ins = len(self.in_channels)
        self.num_outs = num_outs
        self.relu_before_extra_convs = relu_before_extra_convs
        self.no_norm_on_lateral = no_norm_on_lateral
        self.num_extra_trans_convs = num_extra_trans_convs
        self.upsample_cfg = dict(mode="nearest") if upsample_cfg is None else dict(upsample_cfg)
        if end_level == -1:
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ValueError(
                    f"num_outs={num_outs} is fewer than the {self.num_ins - start_level} backbone maps from "
                    f"start_level={start_level}; raise num_outs or start_level"
                )
        else:  # exclusive, as in the official neck; no extra level then
            self.backbone_end_level = end_level
            if not 0 < end_level <= self.num_ins or num_outs != end_level - start_level:
                raise ValueError(
                    f"end_level={end_level} with num_outs={num_outs}: end_level (exclusive) must be in "
                    f"1..{self.num_ins} and num_outs must equal end_level - start_level"
                )
        if not 0 <= start_level < self.backbone_end_level:
            raise ValueError(f"start_level={start_level} must index in_channels (0..{self.num_ins - 1})")
        self.start_level = start_level
        self.end_level = end_level
        if add_extra_convs is True:
            add_extra_convs = "on_input"
        if add_extra_convs is not False and add_extra_convs not in _EXTRA_SOURCES:
            raise ValueError(f"add_extra_convs={add_extra_convs!r} must be a bool or one of {_EXTRA_SOURCES}")
        self.add_extra_convs = add_extra_convs
        extra_levels = num_outs - self.backbone_end_level + start_level
        if not 0 <= num_extra_trans_convs <= extra_levels:
            raise ValueError(
                f"num_extra_trans_convs={num_extra_trans_convs} must be between 0 and the {extra_levels} levels "
                f"num_outs={num_outs} adds to the {self.backbone_end_level - start_level} backbone maps"
            )
        extra_levels -= num_extra_trans_convs
        lateral_norm = None if no_norm_on_lateral else norm_cfg
        common = dict(conv_cfg=conv_cfg, act_cfg=act_cfg, inplace=False)

        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(
                _conv_module(self.in_channels[i], out_channels, 1, norm_cfg=lateral_norm, **common)
            )
            self.fpn_convs.append(_conv_module(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, **common))
        if add_extra_convs:
            for i in range(extra_levels):
                chs = (
                    self.in_channels[self.backbone_end_level - 1]
                    if i == 0 and add_extra_convs == "on_input"
                    else out_channels
                )
                self.fpn_convs.append(
                    _conv_module(chs, out_channels, 3, stride=2, padding=1, norm_cfg=norm_cfg, **common)
                )
        self.extra_trans_convs = nn.ModuleList()
        self.extra_fpn_convs = nn.ModuleList()
        deconv = dict(conv_cfg or {}, type="deconv")
        for _ in range(num_extra_trans_convs):
            self.extra_trans_convs.append(
                _conv_module(
                    out_channels,
                    out_channels,
                    2,
                    stride=2,
                    padding=0,
                    conv_cfg=deconv,
                    norm_cfg=lateral_norm,
                    act_cfg=act_cfg,
                    inplace=False,
                )
            )
            self.extra_fpn_convs.append(
                _conv_module(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, **common)
            )

    def forward(self, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"EfficientViTFPN got {len(inputs)} maps; in_channels declares {len(self.in_channels)}")
        laterals = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        used = len(laterals)
        for i in range(used - 1, 0, -1):
            if "scale_factor" in self.upsample_cfg:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], **self.upsample_cfg)
            else:
                laterals[i - 1] = laterals[i - 1] + F.interpolate(
                    laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg
                )
        # finer levels: each transposed conv doubles the previous one, the finest ends up first
        extra_laterals: list[torch.Tensor] = []
        prev = laterals[0]
        for trans in self.extra_trans_convs:
            prev = trans(prev)
            extra_laterals.insert(0, prev)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        coarser = self.num_outs - len(extra_laterals) - used
        if coarser > 0:
            if not self.add_extra_convs:
                for _ in range(coarser):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                if self.add_extra_convs == "on_input":
                    source = inputs[self.backbone_end_level - 1]
                elif self.add_extra_convs == "on_lateral":
                    source = laterals[-1]
                else:
                    source = outs[-1]
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, used + coarser):
                    x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](x))
        extra_outs = [conv(x) for conv, x in zip(self.extra_fpn_convs, extra_laterals)]
        return tuple(extra_outs + outs)


def _register() -> None:
    """Register in mmengine's root registry, and in mmdet's / mmseg's when they import."""
    MMENGINE_MODELS.register_module(module=EfficientViTFPN, force=True)
    for package in ("mmdet", "mmseg"):
        if importlib.util.find_spec(package) is None:
            continue
        try:
            registry = importlib.import_module(f"{package}.registry")
        except Exception as e:  # a broken mmcv makes mmdet fail at import; the root registry still works
            _logger.debug("not registering EfficientViTFPN in %s: %s", package, e)
            continue
        registry.MODELS.register_module(module=EfficientViTFPN, force=True)


_register()
