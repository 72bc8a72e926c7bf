"""The automl-kd plugin: registers the benchmark spaces and their table evaluators.

Loaded through the entry point ``nasbench = "automl_kd_nasbench.plugin"`` in the ``automl_kd`` group,
exactly like any third-party plugin.
"""

from __future__ import annotations

from typing import Any

from automl_kd.hookspecs import hookimpl

from .evaluators import MacroTableEvaluator, NB201TableEvaluator
from .macro import NASBenchMacroSpace
from .nb201 import NASBench201Space
from .permuted import PermutedMacroSpace, PermutedNB201Space


@hookimpl
def register_search_spaces(register: Any) -> None:
    register(
        "nasbench-macro",
        NASBenchMacroSpace,
        description="NAS-Bench-Macro: 8 layers x 3 ops, 6,561 CIFAR-10 networks (buildable)",
    )
    register(
        "nasbench-macro-permuted",
        PermutedMacroSpace,
        description="NAS-Bench-Macro with op labels shuffled by perm_seed (memorisation control)",
    )
    register(
        "nasbench201",
        NASBench201Space,
        description="NAS-Bench-201 cell: 6 edges x 5 ops, 15,625 networks (dataset: cifar10, cifar100, "
        "imagenet16-120)",
    )
    register(
        "nasbench201-permuted",
        PermutedNB201Space,
        description="NAS-Bench-201 with op names shuffled by perm_seed (memorisation control)",
    )


@hookimpl
def register_evaluators(register: Any) -> None:
    register(
        "nasbench-macro",
        MacroTableEvaluator,
        description="NAS-Bench-Macro table look-up (test accuracy only: the table has no validation split)",
    )
    register(
        "nasbench201",
        NB201TableEvaluator,
        description="NAS-Bench-201 table look-up (validation accuracy, size, latency; no test accuracy)",
    )
