"""Proposer comparison on table benchmarks: proposers x seeds x budget, with honest statistics.

Each run is an in-memory Optuna study driven by ask/tell with the proposer's sampler and a table evaluator (no
SQLite, no training), so thousands of runs take minutes. Per benchmark and proposer the result holds
best-so-far curves (median and 95 % bootstrap interval of the median over seeds), regret against the table's
optimum, the rank percentile of the final incumbent, evaluations needed to reach the table's top 1 %,
duplicate and invalid proposals, seconds per proposal, LLM tokens and cost, and a Mann-Whitney U test between
every pair of proposers.

The budget counts proposals: a duplicate or an invalid proposal uses one evaluation, as it would cost one
trial in a real search. "Best-so-far" is the table value (mean over the table's runs) of the incumbent, the
architecture with the best observed objective so far. Output: :func:`write_outputs` (JSON, PNG, markdown);
CLI: :func:`add_compare_arguments` and :func:`compare_main`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from .compare_report import write_outputs
from .compare_stats import aggregate_runs, pair_tests, random_best_of_k
from .errors import ConfigError, InfeasibleCandidate, InvalidCandidate

__all__ = [
    "BENCHMARKS",
    "PROPOSERS",
    "BenchmarkSpec",
    "ProposerSpec",
    "add_compare_arguments",
    "compare",
    "compare_main",
    "random_best_of_k",
    "run_one",
    "write_outputs",
]


@dataclass(frozen=True)
class BenchmarkSpec:
    """A table benchmark: a registered space and a registered table evaluator, with their options."""

    name: str
    space: str
    evaluator: str
    space_options: dict[str, Any] = field(default_factory=dict)
    evaluator_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProposerSpec:
    """A row of the comparison: a registered proposer with options; ``max_seeds`` caps costly ones."""

    label: str
    proposer: str
    options: dict[str, Any] = field(default_factory=dict)
    max_seeds: int | None = None
    needs_llm: bool = False
    numeric_only: bool = False  # CMA-ES: would silently sample categorical spaces at random


_NB = "nasbench201"
BENCHMARKS: dict[str, BenchmarkSpec] = {
    "nasbench-macro": BenchmarkSpec("nasbench-macro", "nasbench-macro", "nasbench-macro"),
    "nb201-cifar10": BenchmarkSpec("nb201-cifar10", _NB, _NB, {"dataset": "cifar10"}),
    "nb201-cifar100": BenchmarkSpec("nb201-cifar100", _NB, _NB, {"dataset": "cifar100"}),
    "nb201-imagenet16-120": BenchmarkSpec("nb201-imagenet16-120", _NB, _NB, {"dataset": "imagenet16-120"}),
    "nasbench-macro-permuted": BenchmarkSpec(
        "nasbench-macro-permuted", "nasbench-macro-permuted", "nasbench-macro", {"perm_seed": 0}
    ),
    "nb201-cifar10-permuted": BenchmarkSpec(
        "nb201-cifar10-permuted", "nasbench201-permuted", _NB, {"dataset": "cifar10", "perm_seed": 0}
    ),
}
PROPOSERS: dict[str, ProposerSpec] = {
    "random": ProposerSpec("random", "random"),
    "tpe": ProposerSpec("tpe", "optuna", {"sampler": "tpe"}),
    "evolution": ProposerSpec("evolution", "evolution"),
    "gp": ProposerSpec("gp", "optuna", {"sampler": "gp"}, max_seeds=10),
    "cmaes": ProposerSpec("cmaes", "optuna", {"sampler": "cmaes"}, numeric_only=True),
    "llm": ProposerSpec("llm", "llm", {}, max_seeds=5, needs_llm=True),
}


# -- one run ------------------------------------------------------------------------------------------------
_WORKER_CACHE: dict[str, Any] = {}


def _plugin_manager() -> Any:
    if "pm" not in _WORKER_CACHE:  # one manager per process: entry points are scanned once
        from .manager import get_plugin_manager

        _WORKER_CACHE["pm"] = get_plugin_manager()
    return _WORKER_CACHE["pm"]


def _usage_of(obj: Any) -> dict[str, Any] | None:
    """Token/cost usage of an LLM proposer or sampler (duck-typed: usage, accountant.spent, spent)."""
    for target in (obj, getattr(obj, "proposer", None)):
        if target is None:
            continue
        for path in ("usage", "accountant.spent", "spent"):
            value: Any = target
            for part in path.split("."):
                value = getattr(value, part, None)
            if callable(value):
                value = value()
            if value is not None and hasattr(value, "as_dict"):
                value = value.as_dict()
            if isinstance(value, dict):
                return {k: v for k, v in value.items() if isinstance(v, int | float)}
    return None


def _llm_answers(study: Any) -> dict[str, int] | None:
    """Re-asks (invalid or duplicate answers sent back) and random fallbacks an LLM proposer recorded."""
    from .proposer import ATTR_META

    metas = [t.system_attrs.get(ATTR_META) for t in study.get_trials(deepcopy=False)]
    metas = [m for m in metas if isinstance(m, dict) and "llm_reasks" in m]
    if not metas:
        return None
    return {
        "reasks": sum(int(m["llm_reasks"] or 0) for m in metas),
        "fallbacks": sum(bool(m.get("llm_fallback")) for m in metas),
    }


def _context(space: Any, number: int, seed: int) -> Any:
    from .evaluator import TrialContext

    # table evaluators need no device or run directory; nothing is trained or written
    return TrialContext(number=number, seed=seed, device=None, run_dir=Path("."), space=space)  # type: ignore[arg-type]


def run_one(bench: BenchmarkSpec, prop: ProposerSpec, seed: int, budget: int) -> dict[str, Any]:
    """One search of ``budget`` proposals; returns per-trial table values and proposal statistics."""
    import optuna

    from .proposer import Proposer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pm = _plugin_manager()
    space = pm.spaces.create(bench.space, bench.space_options)
    evaluator = pm.evaluators.create(bench.evaluator, bench.evaluator_options)
    made = pm.proposers.create(prop.proposer, prop.options, space=space, seed=seed, directions=["maximize"])
    sampler = made.as_sampler(space, seed) if isinstance(made, Proposer) else made
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dists = space.distributions()
    values: list[float | None] = []  # table value of each proposal (None: invalid or infeasible)
    observed: list[float | None] = []
    propose_s: list[float] = []
    seen: set[str] = set()
    duplicates = invalid = 0
    error = None
    t_run = time.perf_counter()
    for number in range(budget):
        t0 = time.perf_counter()
        try:
            trial = study.ask(fixed_distributions=dists)
        except Exception as exc:  # an LLM budget or endpoint failure ends this run, recorded, not fatal
            error = f"{type(exc).__name__}: {exc}"
            break
        propose_s.append(time.perf_counter() - t0)
        try:
            cand = space.candidate(trial.params)
            key = cand.key()
            duplicates += key in seen
            seen.add(key)
            rec = evaluator.evaluate(cand, _context(space, number, seed * 1_000_003 + number))
        except (InvalidCandidate, InfeasibleCandidate) as exc:
            invalid += 1
            trial.set_user_attr("fail_reason", str(exc))  # proposers read the reason from the history
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            values.append(None)
            observed.append(None)
            continue
        for k in ("val_acc", "params", "macs"):  # what a history-reading proposer may see (validation only)
            if k in rec:
                trial.set_user_attr(k, rec[k])
        study.tell(trial, float(rec["val_acc"]))
        observed.append(float(rec["val_acc"]))
        values.append(float(rec.get("table_value", rec["val_acc"])))
    return {
        "seed": seed,
        "llm": _llm_answers(study),
        "values": values,
        "observed": observed,
        "propose_s": propose_s,
        "duplicates": duplicates,
        "invalid": invalid,
        "usage": _usage_of(sampler),
        "error": error,
        "wall_s": time.perf_counter() - t_run,
    }


def _run_task(task: tuple[BenchmarkSpec, ProposerSpec, int, int]) -> tuple[str, str, dict[str, Any]]:
    bench, prop, seed, budget = task
    return bench.name, prop.label, run_one(bench, prop, seed, budget)


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; GP's torch ops would otherwise oversubscribe


# -- skip reasons -------------------------------------------------------------------------------------------
def skip_reason(
    prop: ProposerSpec, bench: BenchmarkSpec, pm: Any, env: dict[str, str] | None = None
) -> str | None:
    """Why ``prop`` cannot run on ``bench`` here (None when it can)."""
    env = dict(os.environ) if env is None else env
    if prop.proposer not in pm.proposers:
        return f"proposer {prop.proposer!r} is not registered (registered: {', '.join(pm.proposers.names())})"
    if prop.numeric_only:
        from optuna.distributions import CategoricalDistribution

        space = pm.spaces.create(bench.space, bench.space_options)
        if any(isinstance(d, CategoricalDistribution) for d in space.distributions().values()):
            return (
                "CMA-ES handles numeric parameters only; this space is categorical (it would sample randomly)"
            )
    if prop.needs_llm:
        o = prop.options
        endpoint = o.get("base_url") or env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_KEY")
        cache_dir = o.get("cache_dir")
        replay = o.get("cache") == "replay" and cache_dir and Path(str(cache_dir)).is_dir()
        if not (endpoint or replay):
            return (
                "no LLM endpoint configured (set OPENAI_BASE_URL or OPENAI_API_KEY, or pass base_url) and no "
                "replay cache given (cache: replay with an existing cache_dir)"
            )
    return None


# -- the comparison -----------------------------------------------------------------------------------------
def _bench_info(bench: BenchmarkSpec, pm: Any) -> dict[str, Any]:
    space = pm.spaces.create(bench.space, bench.space_options)
    evaluator = pm.evaluators.create(bench.evaluator, bench.evaluator_options)
    if not callable(getattr(evaluator, "table_values", None)):
        raise ConfigError(
            f"benchmark {bench.name!r}: evaluator {bench.evaluator!r} is not a table evaluator "
            "(it has no table_values(), so there is no optimum to measure regret against)"
        )
    table = np.sort(np.asarray(evaluator.table_values(space), dtype=float))[::-1]
    k = max(1, math.ceil(len(table) / 100))  # the top 1 % are the best ceil(N / 100) architectures
    # one look-up, to copy the evaluator's own statement of which split its accuracy is
    rng, source = random.Random(0), None
    for _ in range(20):
        try:
            cand = space.candidate(space.sample(rng))
            source = evaluator.evaluate(cand, _context(space, 0, 0)).get("accuracy_source")
            break
        except (InvalidCandidate, InfeasibleCandidate):
            continue
    return {
        "space": bench.space,
        "evaluator": bench.evaluator,
        "space_options": bench.space_options,
        "accuracy_source": source,
        "table_size": len(table),
        "optimum": float(table[0]),
        "top1pct_threshold": float(table[k - 1]),
        "table_mean": float(table.mean()),
        "_table": table,
    }


def compare(
    benchmarks: Sequence[BenchmarkSpec],
    proposers: Sequence[ProposerSpec],
    seeds: int,
    budget: int,
    *,
    checkpoints: Sequence[int] = (10, 50),
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run every proposer on every benchmark for ``seeds`` seeds (0 .. seeds-1) and ``budget`` proposals.

    Returns a JSON-serialisable dict: ``settings``, and per benchmark its ``info``, one row per proposer
    (``status`` "ok" or "not run" with a ``reason``) and the pairwise ``tests``.

    Example::

        props = [PROPOSERS["random"], PROPOSERS["tpe"]]
        res = compare([BENCHMARKS["nasbench-macro"]], props, seeds=3, budget=20)
        res["benchmarks"]["nasbench-macro"]["proposers"]["tpe"]["at"]["20"]["median"]
    """
    if budget < 1 or seeds < 1:
        raise ConfigError("compare: seeds and budget must be >= 1")
    pm = _plugin_manager()
    out: dict[str, Any] = {"benchmarks": {}}
    tasks: list[tuple[BenchmarkSpec, ProposerSpec, int, int]] = []
    for bench in benchmarks:
        for name in (bench.space, bench.evaluator):
            if name not in pm.spaces and name not in pm.evaluators:
                raise ConfigError(
                    f"benchmark {bench.name!r} needs {name!r}: pip install -e plugins/automl-kd-nasbench"
                )
        info = _bench_info(bench, pm)
        rows: dict[str, Any] = {}
        for prop in proposers:
            reason = skip_reason(prop, bench, pm)
            rows[prop.label] = {"status": "not run", "reason": reason} if reason else {"status": "pending"}
            if not reason:
                n = min(seeds, prop.max_seeds or seeds)
                tasks += [(bench, prop, s, budget) for s in range(n)]
        out["benchmarks"][bench.name] = {"info": info, "proposers": rows}
    # slow proposers first, so that the pool's last tasks are short ones
    tasks.sort(key=lambda t: (not t[1].needs_llm, t[1].label != "gp"))
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    t0 = time.perf_counter()
    if workers > 1 and len(tasks) > 1:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init) as pool:
            for done, (b, p, res) in enumerate(pool.map(_run_task, tasks, chunksize=4), start=1):
                results.setdefault((b, p), []).append(res)
                if progress:
                    progress(done, len(tasks))
    else:
        for done, task in enumerate(tasks, start=1):
            b, p, res = _run_task(task)
            results.setdefault((b, p), []).append(res)
            if progress:
                progress(done, len(tasks))
    elapsed = time.perf_counter() - t0
    marks = [str(c) for c in sorted({*checkpoints, budget}) if c <= budget]
    for bench in benchmarks:
        entry = out["benchmarks"][bench.name]
        for label, row in entry["proposers"].items():
            if row["status"] == "pending":
                runs = sorted(results[(bench.name, label)], key=lambda r: r["seed"])
                entry["proposers"][label] = aggregate_runs(entry["info"], runs, budget, checkpoints)
        entry["tests"] = pair_tests(entry["proposers"], marks)
        entry["info"].pop("_table")
    out["settings"] = {
        "seeds": seeds,
        "budget": budget,
        "checkpoints": marks,
        "workers": workers,
        "benchmarks": [asdict(b) for b in benchmarks],
        "proposers": [asdict(p) for p in proposers],
        "elapsed_s": round(elapsed, 2),
        "tasks": len(tasks),
    }
    for b in out["settings"]["benchmarks"]:
        b["evaluator_options"].pop("path", None)  # a local path is not a result
    return out


# -- command line -------------------------------------------------------------------------------------------
def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``automl-kd compare`` (also used by ``benchmarks/compare_proposers.py``)."""
    parser.add_argument(
        "--benchmarks",
        default="nasbench-macro,nb201-cifar10",
        help=f"comma-separated, from: {', '.join(BENCHMARKS)}",
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
        if args.macro_path and b.evaluator == "nasbench-macro":
            b = BenchmarkSpec(
                b.name,
                b.space,
                b.evaluator,
                b.space_options,
                {**b.evaluator_options, "path": args.macro_path},
            )
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
        from .manager import DISABLE_ENV

        # through the environment, so that the worker processes block the same plugins
        os.environ[DISABLE_ENV] = ",".join(filter(None, [os.environ.get(DISABLE_ENV, ""), *blocked]))
        _WORKER_CACHE.pop("pm", None)
    results = run_from_args(args, reports=20)
    for path in write_outputs(results, args.out, args.name, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0
