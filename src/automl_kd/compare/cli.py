"""``automl-kd compare``: its options (shared with ``benchmarks/compare_proposers.py``) and its command."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import replace
from typing import Any

from automl_kd.errors import ConfigError
from automl_kd.manager import DISABLE_ENV

from .report import write_outputs
from .runner import _WORKER_CACHE, BENCHMARKS, PROPOSERS, BenchmarkSpec, ProposerSpec, compare


# -- command line -------------------------------------------------------------------------------------------
def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``automl-kd compare`` (also used by ``benchmarks/compare_proposers.py``)."""
    parser.add_argument(
        "--benchmarks",
        default="nasbench-macro,nb201-cifar10",
        help="comma-separated registered benchmarks (nasbench-macro, nb201-cifar10, ... from the nasbench plugin)",
    )
    parser.add_argument(
        "--proposers",
        default="random,tpe,evolution,gp,llm",
        help=f"comma-separated, from: {', '.join(PROPOSERS)}",
    )
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--budget", type=int, default=100, help="proposals (evaluations) per run")
    parser.add_argument("--checkpoints", default="10,50", help="budgets at which to test and tabulate")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument(
        "--macro-path", default=None, help="NAS-Bench-Macro JSON (default: env, cache or download)"
    )
    parser.add_argument(
        "--llm-options",
        default="{}",
        help="JSON options of the llm proposer (model, base_url, cache: replay, cache_dir, ...)",
    )
    parser.add_argument("--llm-seeds", type=int, default=5)
    parser.add_argument("--gp-seeds", type=int, default=10)
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--name", default="compare_proposers")
    parser.add_argument("--no-plots", action="store_true")


def specs_from_args(args: argparse.Namespace) -> tuple[list[BenchmarkSpec], list[ProposerSpec]]:
    """The benchmark and proposer specs named on the command line, with the path and LLM options applied."""
    benches, props = [], []
    for name in filter(None, (s.strip() for s in args.benchmarks.split(","))):
        if name not in BENCHMARKS:
            raise ConfigError(f"--benchmarks: unknown {name!r}; choose from {', '.join(BENCHMARKS)}")
        b = BENCHMARKS[name]
        path = getattr(args, b.path_argument, None) if b.path_argument else None
        if path:
            b = replace(b, evaluator_options={**b.evaluator_options, "path": path})
        benches.append(b)
    try:
        llm_options = json.loads(args.llm_options)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--llm-options is not JSON: {exc}") from None
    for name in filter(None, (s.strip() for s in args.proposers.split(","))):
        if name not in PROPOSERS:
            raise ConfigError(f"--proposers: unknown {name!r}; choose from {', '.join(PROPOSERS)}")
        p = PROPOSERS[name]
        if name == "llm":
            p = ProposerSpec(
                p.label, p.proposer, {**p.options, **llm_options}, args.llm_seeds, needs_llm=True
            )
        elif name == "gp":
            p = ProposerSpec(p.label, p.proposer, p.options, args.gp_seeds)
        props.append(p)
    return benches, props


def run_from_args(args: argparse.Namespace, reports: int = 20) -> dict[str, Any]:
    """Run the comparison the parsed ``add_compare_arguments`` options describe, printing about ``reports``
    progress lines."""
    benches, props = specs_from_args(args)
    checkpoints = [int(c) for c in args.checkpoints.split(",") if c.strip()]

    def progress(done: int, total: int) -> None:
        if done == total or done % max(1, total // reports) == 0:
            print(f"compare: {done}/{total} runs", flush=True)

    return compare(
        benches,
        props,
        args.seeds,
        args.budget,
        checkpoints=checkpoints,
        workers=args.workers,
        progress=progress,
    )


def compare_main(args: argparse.Namespace) -> int:
    """``automl-kd compare``: run the comparison, write JSON/markdown/PNG, print where they went."""
    blocked = list(getattr(args, "disable_plugin", None) or [])
    if blocked:
        # through the environment, so that the worker processes block the same plugins
        os.environ[DISABLE_ENV] = ",".join(filter(None, [os.environ.get(DISABLE_ENV, ""), *blocked]))
        _WORKER_CACHE.pop("pm", None)
    results = run_from_args(args, reports=20)
    for path in write_outputs(results, args.out, args.name, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0
