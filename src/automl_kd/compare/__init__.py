"""Comparing proposers on table benchmarks: the runner, the statistics, the report, the ``compare`` command.

The benchmarks come from plugins (the ``register_benchmarks`` hook; the nasbench plugin registers the NAS
benchmarks); the core names none.
"""

from __future__ import annotations

from .cli import add_compare_arguments, compare_main, run_from_args, specs_from_args
from .report import write_outputs
from .runner import (
    _WORKER_CACHE as _WORKER_CACHE,  # the per-process plugin manager; tests put their own in
)
from .runner import (
    BENCHMARKS,
    PROPOSERS,
    BenchmarkSpec,
    ProposerSpec,
    bench_info,
    benchmarks_of,
    compare,
    plugin_manager,
    run_one,
    skip_reason,
)
from .stats import random_best_of_k

__all__ = [
    "BENCHMARKS",
    "PROPOSERS",
    "BenchmarkSpec",
    "ProposerSpec",
    "add_compare_arguments",
    "bench_info",
    "benchmarks_of",
    "compare",
    "compare_main",
    "plugin_manager",
    "random_best_of_k",
    "run_from_args",
    "run_one",
    "skip_reason",
    "specs_from_args",
    "write_outputs",
]
