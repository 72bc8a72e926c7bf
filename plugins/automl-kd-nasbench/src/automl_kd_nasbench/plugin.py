"""The automl-kd plugin: registers the benchmark spaces, their table evaluators, the benchmarks ``automl-kd
compare`` runs, and the ``automl-kd nasbench`` command.

Loaded through the entry point ``nasbench = "automl_kd_nasbench.plugin"`` in the ``automl_kd`` group,
exactly like any third-party plugin.
"""

from __future__ import annotations

import argparse
import functools
import json
from dataclasses import asdict
from typing import Any

from automl_kd.compare import BenchmarkSpec
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


#: the table benchmarks ``automl-kd compare`` runs: name -> (space, evaluator, space options)
BENCHMARKS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "nasbench-macro": ("nasbench-macro", "nasbench-macro", {}),
    "nb201-cifar10": ("nasbench201", "nasbench201", {"dataset": "cifar10"}),
    "nb201-cifar100": ("nasbench201", "nasbench201", {"dataset": "cifar100"}),
    "nb201-imagenet16-120": ("nasbench201", "nasbench201", {"dataset": "imagenet16-120"}),
    "nasbench-macro-permuted": ("nasbench-macro-permuted", "nasbench-macro", {"perm_seed": 0}),
    "nb201-cifar10-permuted": ("nasbench201-permuted", "nasbench201", {"dataset": "cifar10", "perm_seed": 0}),
    # under the table's median MACs (FLOPs): without a cap both tables reward size
    "nasbench-macro-capped": ("nasbench-macro", "nasbench-macro", {}),
    "nb201-cifar10-capped": ("nasbench201", "nasbench201", {"dataset": "cifar10"}),
    "nasbench-macro-capped-permuted": ("nasbench-macro-permuted", "nasbench-macro", {"perm_seed": 0}),
    "nb201-cifar10-capped-permuted": (
        "nasbench201-permuted",
        "nasbench201",
        {"dataset": "cifar10", "perm_seed": 0},
    ),
}


def _spec(name: str) -> BenchmarkSpec:
    space, evaluator, options = BENCHMARKS[name]
    # `automl-kd compare --macro-path FILE` points the NAS-Bench-Macro evaluator at a local table
    path_argument = "macro_path" if evaluator == "nasbench-macro" else None
    cap = "median" if "-capped" in name else None
    return BenchmarkSpec(name, space, evaluator, dict(options), path_argument=path_argument, macs_cap=cap)


@hookimpl
def register_benchmarks(register: Any) -> None:
    for name, (space, _, options) in BENCHMARKS.items():
        register(name, functools.partial(_spec, name), description=f"{space} {options or ''}".strip())


def cmd_benchmarks(args: argparse.Namespace) -> int:
    """``automl-kd nasbench benchmarks``: the benchmarks this plugin registers (no table is loaded)."""
    rows = [asdict(_spec(name)) for name in BENCHMARKS]
    if args.json:
        print(json.dumps(rows, separators=(",", ":")))
        return 0
    for r in rows:
        options = ", ".join(f"{k}={v}" for k, v in r["space_options"].items())
        print(
            f"{r['name']}: space {r['space']}{f' ({options})' if options else ''}, evaluator {r['evaluator']}"
        )
    return 0


@hookimpl
def register_commands(cli: Any) -> None:
    sp = cli.add_parser("nasbench", help="NAS-Bench-Macro and NAS-Bench-201 tools (automl-kd-nasbench)")
    sub = sp.add_subparsers(dest="nasbench_command", required=True)
    bp = sub.add_parser("benchmarks", help="list the table benchmarks that `automl-kd compare` can run")
    bp.add_argument("--json", action="store_true")
    bp.set_defaults(func=cmd_benchmarks)
