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
CLI: :mod:`automl_kd.compare.cli`.
"""

from __future__ import annotations

import importlib
import math
import os
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch
from optuna.distributions import CategoricalDistribution

from automl_kd.compare.stats import aggregate_runs, pair_tests
from automl_kd.errors import ConfigError, InfeasibleCandidate, InvalidCandidate
from automl_kd.evaluator import TrialContext
from automl_kd.manager import PluginManager, get_plugin_manager
from automl_kd.proposer import ATTR_META, Proposer
from automl_kd.space import Cost, enumerate_space
from automl_kd.trial_attrs import SCREEN_PROXY_CPU_S, SCREENED, stored_name


@dataclass(frozen=True)
class BenchmarkSpec:
    """A table benchmark: a registered space and a registered table evaluator, with their options."""

    name: str
    space: str
    evaluator: str
    space_options: dict[str, Any] = field(default_factory=dict)
    evaluator_options: dict[str, Any] = field(default_factory=dict)
    #: the ``compare`` option whose value (a local table file) becomes the evaluator's ``path`` option
    path_argument: str | None = None
    #: a cap on the analytic MACs (``space.cost``): a number, or ``"median"`` (the median over the table's
    #: architectures). The proposers get it as the search's hard constraint; the optimum and the top 1 % are
    #: computed inside it; a proposal over it is rejected without using an evaluation.
    macs_cap: float | str | None = None


@dataclass(frozen=True)
class ProposerSpec:
    """A row of the comparison: a registered proposer with options; ``max_seeds`` caps costly ones.

    ``scorer``: ``"module:function"`` of a function ``(bench, space) -> scorer`` whose result is passed as the
    proposer's ``scorer`` option (the ``screen`` proposer's proxy scores, e.g. read from a precomputed store); an
    import path, so that the comparison's worker processes build their own.
    """

    label: str
    proposer: str
    options: dict[str, Any] = field(default_factory=dict)
    max_seeds: int | None = None
    needs_llm: bool = False
    numeric_only: bool = False  # CMA-ES: would silently sample categorical spaces at random
    scorer: str | None = None


class _RegisteredBenchmarks(Mapping[str, BenchmarkSpec]):
    """The table benchmarks that plugins register (``register_benchmarks``), read on first use."""

    def _specs(self) -> dict[str, BenchmarkSpec]:
        return benchmarks_of(plugin_manager())

    def __getitem__(self, name: str) -> BenchmarkSpec:
        return self._specs()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._specs())

    def __len__(self) -> int:
        return len(self._specs())


def benchmarks_of(pm: PluginManager) -> dict[str, BenchmarkSpec]:
    """Name -> spec of every benchmark registered with ``pm`` (the core knows none by name)."""
    return {e.name: e.factory() for e in pm.benchmarks}


#: the registered benchmarks of this process's plugin manager (the nasbench plugin registers the NAS benchmarks)
BENCHMARKS: Mapping[str, BenchmarkSpec] = _RegisteredBenchmarks()
PROPOSERS: dict[str, ProposerSpec] = {
    "random": ProposerSpec("random", "random"),
    "tpe": ProposerSpec("tpe", "optuna", {"sampler": "tpe"}),
    "evolution": ProposerSpec("evolution", "evolution"),
    "largest-first": ProposerSpec("largest-first", "largest-first"),
    "gp": ProposerSpec("gp", "optuna", {"sampler": "gp"}, max_seeds=10),
    "cmaes": ProposerSpec("cmaes", "optuna", {"sampler": "cmaes"}, numeric_only=True),
    "llm": ProposerSpec("llm", "llm", {}, max_seeds=5, needs_llm=True),
}


# -- one run ------------------------------------------------------------------------------------------------
_WORKER_CACHE: dict[str, Any] = {}


def plugin_manager() -> PluginManager:
    """This process's plugin manager, built once (the comparison's worker processes each build their own)."""
    if "pm" not in _WORKER_CACHE:  # one manager per process: entry points are scanned once
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
    metas = [t.system_attrs.get(ATTR_META) for t in study.get_trials(deepcopy=False)]
    metas = [m for m in metas if isinstance(m, dict) and "llm_reasks" in m]
    if not metas:
        return None
    return {
        "reasks": sum(int(m["llm_reasks"] or 0) for m in metas),
        "fallbacks": sum(bool(m.get("llm_fallback")) for m in metas),
    }


def _context(space: Any, number: int, seed: int) -> Any:
    # table evaluators need no device or run directory; nothing is trained or written
    return TrialContext(number=number, seed=seed, device=None, run_dir=Path("."), space=space)  # type: ignore[arg-type]


def _load(path: str) -> Any:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


def table_rows(bench: BenchmarkSpec, pm: Any) -> list[tuple[dict[str, Any], float, int]]:
    """Every architecture of the benchmark's table: (parameters, table value, analytic MACs), enumerated from the
    space's choices (kept per process)."""
    key = f"rows:{bench.name}:{sorted(bench.space_options.items())}"
    if key not in _WORKER_CACHE:
        space = pm.spaces.create(bench.space, bench.space_options)
        evaluator = pm.evaluators.create(bench.evaluator, bench.evaluator_options)
        rows = []
        for cand in enumerate_space(space):
            try:
                rec = evaluator.evaluate(cand, _context(space, 0, 0))
            except (InvalidCandidate, InfeasibleCandidate):
                continue
            value = float(rec.get("table_value", rec["val_acc"]))
            rows.append((dict(cand.params), value, int(space.cost(cand.params).macs)))
        _WORKER_CACHE[key] = rows
    return _WORKER_CACHE[key]


def macs_cap(bench: BenchmarkSpec, pm: Any) -> float | None:
    """The benchmark's MACs cap in MACs (``"median"``: the median over its table's architectures), or None."""
    if bench.macs_cap is None:
        return None
    if bench.macs_cap == "median":
        return float(np.median([macs for _, _, macs in table_rows(bench, pm)]))
    try:
        return float(bench.macs_cap)
    except ValueError:
        raise ConfigError(f"benchmark {bench.name!r}: macs_cap must be a number or 'median'") from None


@dataclass(frozen=True)
class MacsCap:
    """A benchmark's cap as a search's hard constraint: ``check(cost)`` gives the reason a cost breaks it, or None."""

    macs: float

    def check(self, cost: Cost) -> str | None:
        if cost.macs <= self.macs:
            return None
        return f"MACs {cost.macs / 1e6:.1f}M exceed the cap {self.macs / 1e6:.1f}M"


#: proposals over a benchmark's cap in a row, for one evaluation, before the evaluation counts as invalid (a
#: proposer that does not see the cap, such as Optuna's TPE, which ignores failed trials, can get stuck over it)
MAX_REJECTED = 100


def run_one(bench: BenchmarkSpec, prop: ProposerSpec, seed: int, budget: int) -> dict[str, Any]:
    """One search of ``budget`` proposals; returns per-trial table values and proposal statistics."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    pm = plugin_manager()
    space = pm.spaces.create(bench.space, bench.space_options)
    evaluator = pm.evaluators.create(bench.evaluator, bench.evaluator_options)
    cap = macs_cap(bench, pm)
    constraints = MacsCap(cap) if cap is not None else None
    options = dict(prop.options)
    if prop.scorer:
        options["scorer"] = _load(prop.scorer)(bench, space)
    made = pm.proposers.create(
        prop.proposer, options, space=space, seed=seed, directions=["maximize"], constraints=constraints
    )
    sampler = made.as_sampler(space, seed) if isinstance(made, Proposer) else made
    study = optuna.create_study(direction="maximize", sampler=sampler)
    dists = space.distributions()
    values: list[float | None] = []  # table value of each proposal (None: invalid or infeasible)
    observed: list[float | None] = []
    propose_s: list[float] = []
    seen: set[str] = set()
    duplicates = invalid = rejected = 0
    error = None
    t_run = time.perf_counter()
    for number in range(budget):
        t0 = time.perf_counter()
        try:
            for _ in range(MAX_REJECTED):
                trial = study.ask(fixed_distributions=dists)
                reason = constraints.check(space.cost(trial.params)) if constraints is not None else None
                if reason is None:
                    break
                # over the cap: rejected before any evaluation, as a search's hard constraint rejects it
                rejected += 1
                trial.set_user_attr("fail_reason", f"rejected: {reason}")
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except Exception as exc:  # an LLM budget or endpoint failure ends this run, recorded, not fatal
            error = f"{type(exc).__name__}: {exc}"
            break
        propose_s.append(time.perf_counter() - t0)
        if reason is not None:  # stuck over the cap: this evaluation is spent on nothing (its trial is told)
            invalid += 1
            values.append(None)
            observed.append(None)
            continue
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
                trial.set_user_attr(stored_name(k), rec[k])
        study.tell(trial, float(rec["val_acc"]))
        observed.append(float(rec["val_acc"]))
        values.append(float(rec.get("table_value", rec["val_acc"])))
    screened = [t.user_attrs for t in study.get_trials(deepcopy=False) if SCREENED in t.user_attrs]
    return {
        "seed": seed,
        "llm": _llm_answers(study),
        "values": values,
        "observed": observed,
        "propose_s": propose_s,
        "duplicates": duplicates,
        "invalid": invalid,
        "rejected": rejected,
        "screened": sum(int(a[SCREENED]) for a in screened) if screened else None,
        "proxy_cpu_s": sum(float(a.get(SCREEN_PROXY_CPU_S) or 0.0) for a in screened) if screened else None,
        "usage": _usage_of(sampler),
        "error": error,
        "wall_s": time.perf_counter() - t_run,
    }


def _run_task(task: tuple[BenchmarkSpec, ProposerSpec, int, int]) -> tuple[str, str, dict[str, Any]]:
    bench, prop, seed, budget = task
    return bench.name, prop.label, run_one(bench, prop, seed, budget)


def _worker_init() -> None:
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
def bench_info(bench: BenchmarkSpec, pm: Any) -> dict[str, Any]:
    """What a benchmark's table holds: its size, optimum, top-1 % threshold, mean and the split its accuracy is
    (``_table``: every accuracy, best first), from ``pm``'s space and table evaluator."""
    space = pm.spaces.create(bench.space, bench.space_options)
    evaluator = pm.evaluators.create(bench.evaluator, bench.evaluator_options)
    if not callable(getattr(evaluator, "table_values", None)):
        raise ConfigError(
            f"benchmark {bench.name!r}: evaluator {bench.evaluator!r} is not a table evaluator "
            "(it has no table_values(), so there is no optimum to measure regret against)"
        )
    cap = macs_cap(bench, pm)
    if cap is None:
        table = np.sort(np.asarray(evaluator.table_values(space), dtype=float))[::-1]
    else:  # the optimum, the top 1 % and the rank percentiles inside the cap
        rows = table_rows(bench, pm)
        table = np.sort(np.asarray([v for _, v, macs in rows if macs <= cap], dtype=float))[::-1]
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
    capped = {} if cap is None else {"macs_cap": cap, "table_size_uncapped": len(table_rows(bench, pm))}
    return {
        "space": bench.space,
        "evaluator": bench.evaluator,
        "space_options": bench.space_options,
        **capped,
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
    pm = plugin_manager()
    out: dict[str, Any] = {"benchmarks": {}}
    tasks: list[tuple[BenchmarkSpec, ProposerSpec, int, int]] = []
    for bench in benchmarks:
        for name in (bench.space, bench.evaluator):
            if name not in pm.spaces and name not in pm.evaluators:
                raise ConfigError(
                    f"benchmark {bench.name!r} needs {name!r}: pip install -e plugins/automl-kd-nasbench"
                )
        info = bench_info(bench, pm)
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
