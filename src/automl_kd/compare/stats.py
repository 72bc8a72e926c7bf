"""Statistics of :mod:`automl_kd.compare.runner`: summaries, bootstrap bands, pairwise tests, run aggregation.

Only numpy: the Mann-Whitney U test is the normal approximation with tie and continuity correction, the same
as ``scipy.stats.mannwhitneyu(..., method="asymptotic")`` (a test checks it), so the core package does not
need scipy. Intervals are percentile bootstraps with a fixed seed, so reruns agree.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

N_BOOT = 2000
_BOOT_SEED = 20240611


def _r(x: float) -> float | None:
    return None if not np.isfinite(x) else round(float(x), 4)


def summary_stats(x: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """n, mean, std, median and a 95 % bootstrap interval of the median (NaN entries are ignored)."""
    a = np.asarray(x, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0, "mean": None, "std": None, "median": None, "ci_lo": None, "ci_hi": None}
    rng = np.random.default_rng(_BOOT_SEED)
    meds = np.median(a[rng.integers(0, a.size, (N_BOOT, a.size))], axis=1)
    lo, hi = np.percentile(meds, [2.5, 97.5])
    return {
        "n": int(a.size),
        "mean": _r(a.mean()),
        "std": _r(a.std(ddof=1)) if a.size > 1 else 0.0,
        "median": _r(np.median(a)),
        "ci_lo": _r(lo),
        "ci_hi": _r(hi),
    }


def curve_band(m: np.ndarray) -> dict[str, list[float | None]]:
    """Per column of ``m`` (seeds x budget): median, mean and the 95 % bootstrap interval of the median."""
    rng = np.random.default_rng(_BOOT_SEED)
    n = m.shape[0]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before a first valid proposal
        meds = np.nanmedian(m[rng.integers(0, n, (N_BOOT, n))], axis=1)
        lo, hi = np.nanpercentile(meds, [2.5, 97.5], axis=0)
        med, mean = np.nanmedian(m, axis=0), np.nanmean(m, axis=0)
    return {
        k: [_r(v) for v in arr] for k, arr in (("median", med), ("mean", mean), ("ci_lo", lo), ("ci_hi", hi))
    }


def mann_whitney_u(
    x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray
) -> tuple[float, float, float]:
    """Two-sided Mann-Whitney U test of ``x`` against ``y``: ``(U of x, p, A12)``.

    ``A12 = U / (n_x n_y)`` is the probability that a random ``x`` beats a random ``y`` (ties count half):
    0.5 means no difference. p uses the normal approximation with tie and continuity corrections.
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        return float("nan"), float("nan"), float("nan")
    both = np.concatenate([a, b])
    order = np.argsort(both, kind="mergesort")
    ranks = np.empty(both.size)
    sorted_vals = both[order]
    i = 0
    while i < both.size:  # average ranks over ties
        j = i
        while j + 1 < both.size and sorted_vals[j + 1] == sorted_vals[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    n = n1 + n2
    _, counts = np.unique(both, return_counts=True)
    tie = float((counts**3 - counts).sum())
    var = n1 * n2 / 12 * ((n + 1) - tie / (n * (n - 1)))
    if var <= 0:
        return u, 1.0, 0.5
    z = max(abs(u - n1 * n2 / 2) - 0.5, 0.0) / math.sqrt(var)
    p = min(1.0, math.erfc(z / math.sqrt(2)))
    return u, p, u / (n1 * n2)


def bootstrap_ci(x: np.ndarray, rng: np.random.Generator, n: int = 10_000) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of the mean of ``x`` (the mean twice for fewer than 2 values)."""
    if len(x) < 2:
        return float(x.mean()), float(x.mean())
    means = rng.choice(x, size=(n, len(x)), replace=True).mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def welch(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Welch's t-test of ``a`` against ``b`` (unequal variances): ``{"t", "p"}``, NaN for fewer than 2 each."""
    # imported here: scipy is an optional dependency (the bench and dev extras), used only by the benchmarks
    from scipy import stats

    if len(a) < 2 or len(b) < 2:
        return {"t": float("nan"), "p": float("nan")}
    res = stats.ttest_ind(a, b, equal_var=False)
    return {"t": float(res.statistic), "p": float(res.pvalue)}


def holm(pvals: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the pairs of one benchmark and budget)."""
    m = len(pvals)
    order = sorted(range(m), key=lambda i: pvals[i])
    adj = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvals[i]))
        adj[i] = running
    return adj


def random_best_of_k(
    values: Sequence[float] | np.ndarray, k: int = 10, draws: int = 10000, seed: int = 0
) -> dict[str, float]:
    """Best of ``k`` architectures drawn uniformly without replacement, ``draws`` times: mean, std, sem.

    The check that a table is read correctly: on NAS-Bench-Macro the published figure is 92.43 +- 0.33 %.
    """
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    best = np.array([v[rng.choice(v.size, k, replace=False)].max() for _ in range(draws)])
    return {
        "k": k,
        "draws": draws,
        "mean": round(float(best.mean()), 4),
        "std": round(float(best.std(ddof=1)), 4),
        "sem": round(float(best.std(ddof=1) / math.sqrt(draws)), 5),
    }


# -- aggregation ------------------------------------------------------------------------------------------
def aggregate_runs(
    info: dict[str, Any], runs: list[dict[str, Any]], budget: int, checkpoints: Sequence[int]
) -> dict[str, Any]:
    table: np.ndarray = info["_table"]
    n_table = len(table)
    best = np.full((len(runs), budget), np.nan)
    for i, r in enumerate(runs):
        inc, obs_best = np.nan, -np.inf
        for t in range(budget):
            if t < len(r["observed"]) and r["observed"][t] is not None and r["observed"][t] > obs_best:
                obs_best, inc = r["observed"][t], r["values"][t]
            best[i, t] = inc
    regret = info["optimum"] - best
    final = best[:, -1]
    ascending = table[::-1]
    better = n_table - np.searchsorted(ascending, final, side="right")
    to_top = [
        next((t + 1 for t in range(budget) if best[i, t] >= info["top1pct_threshold"]), None)
        for i in range(len(runs))
    ]
    reached = sorted(v for v in to_top if v is not None)
    # the median of a censored sample exists only when more than half the seeds reached the top 1 %
    median_top = float(np.median([v if v is not None else math.inf for v in to_top])) if to_top else math.inf
    props = [s for r in runs for s in r["propose_s"]]
    usage: dict[str, float] = {}
    for r in runs:
        for key, val in (r["usage"] or {}).items():
            usage[key] = usage.get(key, 0) + val
    at = {
        str(c): {**summary_stats(best[:, c - 1]), "regret_median": float(np.nanmedian(regret[:, c - 1]))}
        for c in sorted({*checkpoints, budget})
        if c <= budget
    }
    return {
        "status": "ok",
        "seeds": [r["seed"] for r in runs],
        "curve": curve_band(best),
        "regret_curve": curve_band(regret),
        "at": at,
        "per_seed_best": {c: [round(float(v), 4) for v in best[:, int(c) - 1]] for c in at},
        "rank_percentile": summary_stats(100.0 * better / n_table),
        "evals_to_top1pct": {
            "per_seed": to_top,
            "reached": f"{len(reached)}/{len(runs)}",
            "median": None if math.isinf(median_top) else median_top,
        },
        "duplicates": {
            "total": sum(r["duplicates"] for r in runs),
            "mean_per_run": float(np.mean([r["duplicates"] for r in runs])),
        },
        "invalid": {
            "total": sum(r["invalid"] for r in runs),
            "mean_per_run": float(np.mean([r["invalid"] for r in runs])),
        },
        "seconds_per_proposal": {
            "mean": float(np.mean(props)) if props else None,
            "median": float(np.median(props)) if props else None,
        },
        "rejected_over_cap": {
            "total": sum(int(r.get("rejected") or 0) for r in runs),
            "mean_per_run": float(np.mean([int(r.get("rejected") or 0) for r in runs])),
        },
        "screening": _screening_totals(runs),
        "usage": usage or None,
        "llm_answers": _llm_totals(runs),
        "run_seconds_total": float(sum(r["wall_s"] for r in runs)),
        "errors": [f"seed {r['seed']}: {r['error']}" for r in runs if r["error"]],
    }


def _screening_totals(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    """The ``screen`` proposer's candidates scored and proxy CPU seconds per run (None for other proposers)."""
    done = [r for r in runs if r.get("screened") is not None]
    if not done:
        return None
    return {
        "screened_per_run": float(np.mean([r["screened"] for r in done])),
        "proxy_cpu_s_per_run": round(float(np.mean([r["proxy_cpu_s"] for r in done])), 3),
        "proxy_cpu_s_total": round(float(sum(r["proxy_cpu_s"] for r in done)), 3),
    }


def _llm_totals(runs: list[dict[str, Any]]) -> dict[str, float] | None:
    answers = [r["llm"] for r in runs if r.get("llm")]
    if not answers:
        return None
    return {
        "reasks_per_run": float(np.mean([a["reasks"] for a in answers])),
        "fallbacks_total": int(sum(a["fallbacks"] for a in answers)),
    }


def pair_tests(
    rows: dict[str, Any],
    checkpoints: Sequence[str],
    pairs: Sequence[tuple[str, str]] | None = None,
) -> list[dict[str, Any]]:
    """Mann-Whitney U of the per-seed best values of each pair of rows at each checkpoint, Holm-adjusted over
    the pairs at that checkpoint. ``pairs`` defaults to every pair of rows with status "ok"; a pair that lacks a
    checkpoint is left out of that checkpoint's family."""
    if pairs is None:
        ok = [label for label, row in rows.items() if row["status"] == "ok"]
        pairs = [(a, b) for i, a in enumerate(ok) for b in ok[i + 1 :]]
    tests: list[dict[str, Any]] = []
    for c in checkpoints:
        block: list[dict[str, Any]] = []
        for a, b in pairs:
            if c not in rows[a]["per_seed_best"] or c not in rows[b]["per_seed_best"]:
                continue
            x, y = np.asarray(rows[a]["per_seed_best"][c]), np.asarray(rows[b]["per_seed_best"][c])
            u, p, a12 = mann_whitney_u(x, y)
            block.append(
                {
                    "at": int(c),
                    "a": a,
                    "b": b,
                    "U": u,
                    "p": p,
                    "a12": a12,
                    "n_a": len(x),
                    "n_b": len(y),
                    "median_a": float(np.median(x)),
                    "median_b": float(np.median(y)),
                }
            )
        for t, p_adj in zip(block, holm([float(t["p"]) for t in block]), strict=True):
            t["p_holm"] = p_adj
            winner = t["a"] if t["a12"] > 0.5 else t["b"]
            t["verdict"] = f"{winner} better" if p_adj < 0.05 else "no significant difference"
        tests += block
    return tests
