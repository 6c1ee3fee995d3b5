"""The input-size check every family runs on its input: one rule (a minimum side, a multiple), one error.

``check_input_size(x, min_size, multiple)`` returns ``x`` unchanged or raises a ValueError that names the size,
the rule and the nearest size that works. It compiles with TorchScript, and FX records it as one call (it is a
timm notrace function) so that a traced model still checks its input at run time.
"""

# No `from __future__ import annotations`: TorchScript compiles this module's functions from their annotations.
import torch
from timm.layers import register_notrace_function

__all__ = ["check_input_size", "nearest_input_side"]


def nearest_input_side(side: int, min_size: int, multiple: int = 1) -> int:
    """The smallest side >= ``side`` that is >= ``min_size`` and a multiple of ``multiple``."""
    side = max(side, min_size)
    return (side + multiple - 1) // multiple * multiple


@register_notrace_function
def check_input_size(x: torch.Tensor, min_size: int, multiple: int = 1) -> torch.Tensor:
    """(B, C, H, W) -> the same tensor; ValueError when H or W is below ``min_size`` or not a multiple of
    ``multiple``."""
    h, w = x.shape[-2], x.shape[-1]
    if h < min_size or w < min_size or h % multiple != 0 or w % multiple != 0:
        rule = f"each side at least {min_size} px"
        if multiple > 1:
            rule = rule + f" and a multiple of {multiple}"
        fix_h, fix_w = nearest_input_side(h, min_size, multiple), nearest_input_side(w, min_size, multiple)
        raise ValueError(f"input {h}x{w} is not a size this model takes ({rule}); resize or pad it to {fix_h}x{fix_w}")
    return x
