"""Robustness fuzz over the registry: each family's smallest model (its record's test kwargs) on random inputs.

Per family, a fixed number of seeded cases draws: height and width (1-320 px: from the sizes the record accepts,
uniformly, or at the edges of its rule: its minimum, its multiple, the default size), batch 1-3, fp32 / bf16 /
fp64, 1 / 3 / 4 input channels (``in_chans``), normal / zero / huge / NaN values, contiguous or channels-last
memory. The record decides what must happen:

* a size the record accepts works: logits of the right shape, finite for finite input; a batch equals its items run
  one by one; channels-last memory gives the contiguous result;
* a size it rejects raises ValueError naming the size and what to do (never a convolution's RuntimeError).

All failures of a family are collected and reported together. Slow: about 5-20 s per family on one thread.
"""

from __future__ import annotations

import random
import re
import zlib

import pytest
import timm
import torch

from visionattn.models import _registry

CASES = 150  # per family
MAX_SIDE = 320
DTYPES = (torch.float32, torch.bfloat16, torch.float64)
CHANNELS = (1, 3, 4)
KINDS = ("normal", "zero", "huge", "nan")
# batch-consistency and memory-format tolerance per dtype (batched kernels may sum in another order)
TOL = {torch.float32: 1e-4, torch.float64: 1e-9, torch.bfloat16: 5e-2}
SMALLEST = sorted(f.smallest for f in _registry.families())


pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def _accepts(family: _registry.Family, default_hw: tuple[int, int], h: int, w: int) -> bool:
    if family.fixed_input_size:
        return (h, w) == default_hw
    return family.accepts(h, w)


def _sides(rng: random.Random, family: _registry.Family, default_hw: tuple[int, int]) -> tuple[int, int]:
    """Two sides: 40 % drawn from the sizes the rule accepts, 30 % uniform, 30 % at the rule's edges."""
    m, lo = family.input_multiple, family.min_input_size
    draw = rng.random()

    def one(default: int) -> int:
        if draw < 0.4:
            if family.fixed_input_size:
                return default
            first = -(-max(lo, 1) // m)
            return m * rng.randint(first, max(first, MAX_SIDE // m))
        if draw < 0.7:
            return rng.randint(1, MAX_SIDE)
        edges = [lo - 1, lo, lo + 1, default, default - 1, m * rng.randint(1, 4) + 1, m * rng.randint(1, 4) - 1]
        return min(max(rng.choice(edges), 1), MAX_SIDE)

    return one(default_hw[0]), one(default_hw[1])


def _input(rng: random.Random, gen: torch.Generator, shape, dtype: torch.dtype, kind: str) -> torch.Tensor:
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if kind == "zero":
        x = torch.zeros(shape, dtype=torch.float64)
    elif kind == "huge":
        x = x * 1e4
    elif kind == "nan":
        x.view(-1)[rng.randrange(x.numel())] = float("nan")
    return x.to(dtype)


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    tol = TOL[dtype]
    a, b = a.double(), b.double()
    return bool(((a - b).abs() <= tol * (1 + b.abs().max())).all())


@pytest.mark.parametrize("name", SMALLEST)
def test_fuzz(name):
    family = _registry.get_family(name)
    default_hw = tuple(timm.models.get_pretrained_cfg(name).input_size[1:])
    rng = random.Random(zlib.crc32(name.encode()))
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    models: dict[tuple[int, torch.dtype], torch.nn.Module] = {}

    def model_for(chans: int, dtype: torch.dtype) -> torch.nn.Module:
        if (chans, dtype) not in models:
            torch.manual_seed(0)
            model = timm.create_model(name, in_chans=chans, **dict(family.test_kwargs)).eval()
            models[(chans, dtype)] = model.to(dtype)
        return models[(chans, dtype)]

    failures, counts = [], {"ok": 0, "rejected": 0}
    for case in range(CASES):
        h, w = _sides(rng, family, default_hw)
        b, dtype, chans = rng.randint(1, 3), rng.choice(DTYPES), rng.choice(CHANNELS)
        kind, channels_last = rng.choice(KINDS), rng.random() < 0.3
        what = f"case {case}: {b}x{chans}x{h}x{w} {str(dtype)[6:]} {kind}{' channels-last' if channels_last else ''}"
        model = model_for(chans, dtype)
        x = _input(rng, gen, (b, chans, h, w), dtype, kind)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        try:
            with torch.no_grad():
                out = model(x)
        except ValueError as e:
            if _accepts(family, default_hw, h, w):
                failures.append(f"{what}: the record accepts {h}x{w} but the model raised ValueError: {e}")
            elif not (re.search(rf"\b{h}x{w}\b", str(e)) and re.search(r"resize|pad|crop", str(e))):
                failures.append(f"{what}: the ValueError does not name {h}x{w} and what to do: {e}")
            else:
                counts["rejected"] += 1
            continue
        except Exception as e:  # noqa: BLE001  (any other error is a failure, reported with its type)
            failures.append(f"{what}: {type(e).__name__}: {str(e)[:200]}")
            continue
        if not _accepts(family, default_hw, h, w):
            failures.append(
                f"{what}: the record rejects {h}x{w} (min {family.min_input_size}, multiple "
                f"{family.input_multiple}) but the model ran; the record's rule is too strict"
            )
            continue
        if out.shape != (b, model.num_classes):
            failures.append(f"{what}: output shape {tuple(out.shape)}, expected {(b, model.num_classes)}")
            continue
        if kind != "nan" and not torch.isfinite(out).all():
            failures.append(f"{what}: non-finite output for a finite input")
            continue
        if kind == "normal" and b > 1:
            with torch.no_grad():
                items = torch.cat([model(x[i : i + 1]) for i in range(b)])
            if not _close(out, items, dtype):
                diff = (out.double() - items.double()).abs().max().item()
                failures.append(f"{what}: the batch differs from its items run one by one (max abs diff {diff:.3g})")
                continue
        if channels_last and kind != "nan":
            with torch.no_grad():
                plain = model(x.contiguous())
            if not _close(out, plain, dtype):
                diff = (out.double() - plain.double()).abs().max().item()
                failures.append(f"{what}: channels-last differs from contiguous (max abs diff {diff:.3g})")
                continue
        counts["ok"] += 1
    summary = f"{name}: {counts['ok']} ok, {counts['rejected']} clear errors, {len(failures)} failures"
    print(summary)
    assert not failures, summary + "\n" + "\n".join(failures)
