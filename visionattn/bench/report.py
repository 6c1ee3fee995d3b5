"""Benchmark tables and charts: CSV (full precision), markdown (4 significant digits), bar charts."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import asdict, fields

from .kernel import KernelResult
from .model import ModelResult

__all__ = ["KERNEL_MD_COLUMNS", "MODEL_MD_COLUMNS", "plot", "to_csv", "to_markdown"]

MODEL_MD_COLUMNS = (
    "label",
    "mode",
    "device",
    "dtype",
    "batch",
    "height",
    "width",
    "threads",
    "images_per_s",
    "latency_ms",
    "latency_p90_ms",
    "peak_mem_mb",
    "params_m",
)
KERNEL_MD_COLUMNS = (
    "case",
    "impl",
    "path",
    "status",
    "batch",
    "fwd_ms",
    "fwdbwd_ms",
    "fwd_mem_mb",
    "fwdbwd_mem_mb",
    "fwd_speedup",
    "fwdbwd_speedup",
    "fwd_tbps",
    "fwd_tflops",
    "fwd_bw_frac",
    "fwd_flops_frac",
    "fwdbwd_bw_frac",
    "fwdbwd_flops_frac",
)


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "-" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _as_dict(row: object) -> dict:
    return row if isinstance(row, dict) else asdict(row)


def _columns(rows: Sequence[object]) -> list[str]:
    first = next((r for r in rows if not isinstance(r, dict)), None)
    if first is None:
        raise ValueError("a table needs at least one result row (dict rows only fill its columns)")
    return [f.name for f in fields(first)]


def to_csv(rows: Sequence[object]) -> str:
    """CSV (full precision) of result rows in order; dict rows (e.g. ratios) may fill a subset of the columns."""
    if not rows:
        return ""
    cols = _columns(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        d = _as_dict(r)
        w.writerow({c: d.get(c, "") for c in cols})
    return buf.getvalue()


def to_markdown(rows: Sequence[object], columns: Sequence[str] | None = None) -> str:
    """Markdown table (4 significant digits) of result rows in order; dict rows as in :func:`to_csv`."""
    if not rows:
        return ""
    cols = list(columns or _columns(rows))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        d = _as_dict(r)
        lines.append("| " + " | ".join(_fmt(d.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: Sequence[object], path: str, *, title: str = "") -> None:
    """Bar chart: images/s per model row, or forward (and fwd+bwd) ms per kernel case and implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError("--plot needs matplotlib; pip install matplotlib (or visionattn[dev])") from e
    rows = [r for r in rows if not isinstance(r, dict)]
    if not rows:
        raise ValueError("plot needs at least one result row")
    if isinstance(rows[0], ModelResult):
        labels = [f"{r.label} b{r.batch} {r.height}x{r.width} {r.mode}" for r in rows]
        fig, ax = plt.subplots(figsize=(8, 0.5 * len(rows) + 1.5))
        ax.barh(labels, [r.images_per_s for r in rows])
        ax.set_xlabel("images / s")
    else:
        kr = [r for r in rows if isinstance(r, KernelResult)]
        case_names = list(dict.fromkeys(r.case for r in kr))
        impl_names = list(dict.fromkeys(r.impl for r in kr))
        fig, axes = plt.subplots(1, 2, figsize=(14, 0.6 * len(case_names) + 2), sharey=True)
        width = 0.8 / max(len(impl_names), 1)
        for ax, key in zip(axes, ("fwd_ms", "fwdbwd_ms")):
            for j, impl in enumerate(impl_names):
                vals = {r.case: getattr(r, key) for r in kr if r.impl == impl}
                ys = [i + j * width for i in range(len(case_names))]
                ax.barh(ys, [vals.get(c, math.nan) for c in case_names], height=width, label=impl)
            ax.set_xscale("log")
            ax.set_xlabel(key.replace("_ms", " ms").replace("fwdbwd", "fwd+bwd"))
            ax.set_yticks([i + 0.4 - width / 2 for i in range(len(case_names))], case_names)
        axes[0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
