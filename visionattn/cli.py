"""Command-line helpers shared by ``tools/*.py``: one syntax for model keyword arguments.

Every tool that builds a model takes ``--model-kwargs KEY=VALUE [KEY=VALUE ...]``; each value is a Python
literal (``num_classes=10``, ``depths=(1,1,1,1)``, ``mask_padding=False``) and falls back to a plain string
(``global_pool=avg``).
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Sequence
from typing import Any

__all__ = ["add_model_kwargs_argument", "parse_model_kwargs"]

HELP = "model keyword arguments as KEY=VALUE (Python literals, e.g. num_classes=10 depths=(1,1,1,1))"


def parse_model_kwargs(items: Sequence[str] | None) -> dict[str, Any]:
    """``["num_classes=10", "depths=(1,1,1,1)"]`` -> ``{"num_classes": 10, "depths": (1, 1, 1, 1)}``."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise ValueError(f"model kwarg {item!r} is not KEY=VALUE; write e.g. num_classes=10 or depths=(1,1,1,1)")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word such as avg or ln2d
        out[key] = value
    return out


def add_model_kwargs_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-kwargs", nargs="*", default=[], metavar="KEY=VALUE", help=HELP)
