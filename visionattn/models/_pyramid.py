"""timm's feature API, written once for the pyramid models of this package.

A pyramid model here is laid out as ``stem`` -> ``stages`` (an ``nn.Sequential``, one stage per ``feature_info``
entry, strides 4 ... 32) -> an optional final norm -> ``head`` (timm's ``ClassifierHead``). ``PyramidContract``
gives such a model ``forward_intermediates``, ``prune_intermediate_layers``, ``get_classifier`` and
``reset_classifier``, the methods timm's ``features_only`` wrapper, ``timm.create_model(..., features_only=True)``
and the dense adapter call; the model keeps its own ``forward_features`` / ``forward_head`` / ``forward`` (those
are what TorchScript compiles), and names the attributes where they differ (the official checkpoint layouts fix
the names: ``patch_embed``, ``layers``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import checkpoint
from timm.models._features import feature_take_indices

__all__ = ["PyramidContract"]


class PyramidContract:
    """Mixin (before ``nn.Module`` in the bases) for ``stem -> stages -> final norm -> head`` models.

    Class attributes a model may override:
        pyramid_stem: the attribute holding the stem (``"stem"``; ``"patch_embed"`` where the official keys say so).
        pyramid_stages: the attribute holding the stages (``"stages"``; Swin's ``"layers"``).
        pyramid_final_norm: the model has a final norm, ``self.norm``, applied after the last stage by
            ``_final_norm`` (override ``_final_norm`` for a norm that needs another layout); False: none (every
            stage ends in its own norm, or the official model has none).
        pyramid_checkpoint_stages: ``forward_intermediates`` wraps each stage in a gradient checkpoint when
            ``grad_checkpointing`` is set (False where the stages checkpoint their blocks themselves).
    """

    pyramid_stem: str = "stem"
    pyramid_stages: str = "stages"
    pyramid_final_norm: bool = True
    pyramid_checkpoint_stages: bool = True

    def _final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x) if self.pyramid_final_norm else x

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """New classifier with ``num_classes`` outputs (0: none); ``global_pool`` 'avg' or '' if given."""
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool, in_features=self.num_features, **get_device_dtype(self))
        self.head_hidden_size = self.head.num_features

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | list[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Stage outputs (B, C_i, H_i, W_i) for ``indices`` (None: all, int: last n, list: those stages).

        ``norm`` applies the final norm (where the model has one) to the last stage's output; ``stop_early`` skips
        stages after the last requested one; returns the intermediates, or ``(final_features, intermediates)``.
        """
        if output_fmt != "NCHW":
            raise ValueError(
                f"output_fmt={output_fmt!r} is not supported; {type(self).__name__} returns 'NCHW' intermediates"
            )
        stages = getattr(self, self.pyramid_stages)
        take_indices, max_index = feature_take_indices(len(stages), indices)
        intermediates = []
        x = getattr(self, self.pyramid_stem)(x)
        last_idx = len(stages) - 1
        run = stages if torch.jit.is_scripting() or not stop_early else stages[: max_index + 1]
        feat_idx = 0
        wrap = self.pyramid_checkpoint_stages and self.grad_checkpointing and not torch.jit.is_scripting()
        for feat_idx, stage in enumerate(run):
            x = checkpoint(stage, x) if wrap else stage(x)
            if feat_idx in take_indices:
                intermediates.append(self._final_norm(x) if norm and feat_idx == last_idx else x)
        if intermediates_only:
            return intermediates
        if feat_idx == last_idx:
            x = self._final_norm(x)
        return x, intermediates

    def prune_intermediate_layers(
        self, indices: int | list[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop the stages (and final norm / head) not needed for ``indices``; returns the kept indices."""
        stages = getattr(self, self.pyramid_stages)
        take_indices, max_index = feature_take_indices(len(stages), indices)
        prune_end = max_index < len(stages) - 1
        if self.pyramid_final_norm and (prune_norm or prune_end):
            self.norm = nn.Identity()  # the final norm is sized for the last stage only
        setattr(self, self.pyramid_stages, stages[: max_index + 1])
        if prune_end:
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
        if prune_head or prune_end:
            self.reset_classifier(0, "")
        return take_indices
