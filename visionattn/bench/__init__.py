"""Benchmarks: whole models (images/s, latency, peak memory) and attention ops at the real models' shapes.

* :mod:`~visionattn.bench.timing`: sync, timed calls, peak memory, thread / environment context, ceilings;
* :mod:`~visionattn.bench.model`: model specs and :func:`bench_models` (interleaved, timm names or external builders);
* :mod:`~visionattn.bench.opspec` and :mod:`~visionattn.bench.ops`: one spec per op (inputs, cost, impls);
* :mod:`~visionattn.bench.kernel`: :func:`bench_kernels` over the family records' cases and baselines;
* :mod:`~visionattn.bench.report`: CSV, markdown, plots.

``tools/benchmark.py`` is the command line over these.
"""

from .kernel import GENERIC_IMPLS, KernelResult, baselines, bench_kernels, impl_names, kernel_cases
from .model import (
    MODEL_RATIO_FIELDS,
    ModelResult,
    ModelSpec,
    bench_model,
    bench_models,
    build_external,
    compare_ratio,
    parse_spec,
)
from .opspec import (
    REQUIRED,
    Cost,
    KernelCase,
    OpInputs,
    OpSpec,
    Unavailable,
    attention_cost,
    make_case,
    op_spec,
    op_specs,
    register_op,
    unregister_op,
)
from .report import KERNEL_MD_COLUMNS, MODEL_MD_COLUMNS, plot, to_csv, to_markdown
from .timing import Ceilings, cpu_peak_bytes, measure_ceilings, peak_bytes, time_calls, time_ms

__all__ = [
    "GENERIC_IMPLS",
    "KERNEL_MD_COLUMNS",
    "MODEL_MD_COLUMNS",
    "MODEL_RATIO_FIELDS",
    "REQUIRED",
    "Ceilings",
    "Cost",
    "KernelCase",
    "KernelResult",
    "ModelResult",
    "ModelSpec",
    "OpInputs",
    "OpSpec",
    "Unavailable",
    "attention_cost",
    "baselines",
    "bench_kernels",
    "bench_model",
    "bench_models",
    "build_external",
    "compare_ratio",
    "cpu_peak_bytes",
    "impl_names",
    "kernel_cases",
    "make_case",
    "measure_ceilings",
    "op_spec",
    "op_specs",
    "parse_spec",
    "peak_bytes",
    "plot",
    "register_op",
    "time_calls",
    "time_ms",
    "to_csv",
    "to_markdown",
    "unregister_op",
]
