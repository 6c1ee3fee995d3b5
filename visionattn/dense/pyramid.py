"""A simple feature pyramid for isotropic backbones (ViTDet style), in plain PyTorch.

A plain ViT returns maps of one stride (16 for a 16 px patch stem). Detection and segmentation heads want a
pyramid (strides 4, 8, 16, 32), so, as in ViTDet (Li et al., "Exploring Plain Vision Transformer Backbones for
Object Detection", 2022), each level is resampled from the last map alone: 2x2 stride-2 transposed convolutions
(with LayerNorm2d + GELU between two of them) to go finer, max pooling to go coarser; each level then ends in a
1x1 and a 3x3 convolution, each followed by a LayerNorm2d.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from timm.layers import LayerNorm2d

__all__ = ["SimplePyramid"]


def _log2_exact(value: float) -> int | None:
    """``k`` if ``value == 2**k`` for an integer ``k``, else None."""
    for k in range(-8, 9):
        if value == 2.0**k:
            return k
    return None


class SimplePyramid(nn.Module):
    """One map of stride ``in_stride`` -> one map per entry of ``strides``.

    Args:
        in_channels: channels of the input map.
        in_stride: stride of the input map (relative to the image).
        strides: output strides; each ``in_stride / stride`` must be a power of two (up- or down-sampling).
        channels: output channels, one per stride (or one int for all).

    Forward: ``(B, in_channels, H, W)`` -> list of ``(B, channels[i], H * in_stride / strides[i], ...)``
    (coarser levels round up: ``ceil(H / 2**k)``, as a stride-2 convolution with padding 1 does).
    """

    def __init__(self, in_channels: int, in_stride: int, strides: Sequence[int], channels: int | Sequence[int]):
        super().__init__()
        strides = tuple(int(s) for s in strides)
        if not strides or any(s < 1 for s in strides):
            raise ValueError(f"pyramid strides={strides!r} must be a non-empty sequence of positive ints")
        if isinstance(channels, int):
            channels = (channels,) * len(strides)
        channels = tuple(int(c) for c in channels)
        if len(channels) != len(strides) or any(c < 1 for c in channels):
            raise ValueError(
                f"pyramid channels={channels!r} must be one positive int or one per stride ({len(strides)} strides: "
                f"{strides})"
            )
        self.in_stride = in_stride
        self.strides = strides
        self.channels = channels
        self.levels = nn.ModuleList()
        for stride, out in zip(strides, channels):
            steps = _log2_exact(in_stride / stride)
            if steps is None:
                raise ValueError(
                    f"pyramid stride {stride} is not a power-of-two multiple or fraction of the trunk's stride "
                    f"{in_stride}; pick pyramid_strides whose ratios to {in_stride} are powers of two"
                )
            layers: list[nn.Module] = []
            dim = in_channels
            if steps > 0:  # finer: transposed convolutions, halving the width each time (ViTDet)
                for i in range(steps):
                    if i > 0:
                        layers += [LayerNorm2d(dim), nn.GELU()]
                    layers.append(nn.ConvTranspose2d(dim, max(dim // 2, 1), kernel_size=2, stride=2))
                    dim = max(dim // 2, 1)
            elif steps < 0:
                k = 2**-steps
                layers.append(nn.MaxPool2d(kernel_size=k, stride=k, ceil_mode=True))
            layers += [
                nn.Conv2d(dim, out, kernel_size=1, bias=False),
                LayerNorm2d(out),
                nn.Conv2d(out, out, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(out),
            ]
            self.levels.append(nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, C, H, W) -> one (B, C_i, H_i, W_i) per stride."""
        return [level(x) for level in self.levels]
