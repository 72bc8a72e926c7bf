"""What the distillation benchmarks share: the augmenters of a method, the summary of its runs, a portable config,
and the cells of their markdown tables (the tables themselves: :func:`automl_kd.compare.report.markdown_table`).

``distill_cifar10.py`` and ``kd_ablation.py`` import it from beside them (a benchmark runs as a script, so its own
folder is on ``sys.path``).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from automl_kd.compare.report import markdown_table
from automl_kd.compare.stats import bootstrap_ci, holm, welch

__all__ = ["augmenters", "markdown_table", "mean_ci", "portable", "summarise", "welch_cell"]

JPEG_ROOT = "CIFAR-10 (JPEG) archive, extracted"


def augmenters(
    method: str, kd: dict[str, Any], ig: dict[str, Any], at: dict[str, Any]
) -> list[dict[str, Any]]:
    """The augmenters of a method named by its parts joined with ``+`` (``kd+ig+at``; the baseline has none), in
    the order kd, ig-overlay, attention, each with its options."""
    parts = method.split("+")
    named = (("kd", "kd", kd), ("ig", "ig-overlay", ig), ("at", "attention", at))
    return [{"name": name, "options": options} for part, name, options in named if part in parts]


def summarise(runs: dict[str, list[dict[str, Any]]], baseline: str) -> dict[str, Any]:
    """Per method: n, mean, std and 95 % bootstrap interval of test accuracy, mean val accuracy; Welch's t-test
    against ``baseline``'s runs (``welch_vs_<baseline>``), Holm-adjusted over the methods tested (one family)."""
    key = f"welch_vs_{baseline}"
    rng = np.random.default_rng(0)
    base = np.array([x["test_acc"] for x in runs[baseline]]) if baseline in runs else None
    out: dict[str, Any] = {}
    for method, recs in runs.items():
        test = np.array([x["test_acc"] for x in recs])
        lo, hi = bootstrap_ci(test, rng)
        row: dict[str, Any] = {
            "n": len(recs),
            "test_mean": float(test.mean()),
            "test_std": float(test.std(ddof=1)) if len(test) > 1 else 0.0,
            "test_ci95": [lo, hi],
            "val_mean": float(np.mean([x["val_acc"] for x in recs])),
        }
        if base is not None and method != baseline:
            row[key] = welch(test, base)
        out[method] = row
    tested = [m for m in out if key in out[m] and not np.isnan(out[m][key]["p"])]
    for m, adj in zip(tested, holm([out[m][key]["p"] for m in tested]), strict=True):
        out[m][key]["p_holm"] = adj
    return out


def portable(cfg: dict[str, Any], checkpoint: str | None = None) -> dict[str, Any]:
    """A config as a result JSON records it: a temporary image folder named by where it comes from (the CIFAR-10
    JPEG archive), and the teacher's checkpoint, if any, by ``checkpoint``."""
    out = json.loads(json.dumps(cfg))
    if out.get("data", {}).get("dataset") == "imagefolder":
        out["data"]["root"] = JPEG_ROOT
    if checkpoint is not None and "checkpoint" in out.get("teacher", {}):
        out["teacher"]["checkpoint"] = checkpoint
    return out


def mean_ci(row: dict[str, Any]) -> str:
    """A summary row's test accuracy: ``mean ± std [95 % CI]``, or the single run's value."""
    if row["n"] < 2:
        return f"{row['test_mean']:.2f} (one run: no spread yet)"
    lo, hi = row["test_ci95"]
    return f"{row['test_mean']:.2f} ± {row['test_std']:.2f} [{lo:.2f}, {hi:.2f}]"


def welch_cell(w: dict[str, Any] | None, holm_digits: int = 3, missing: str = "—") -> str:
    """A Welch test as ``t / p / p Holm`` (``t / p`` before Holm's adjustment), ``missing`` without a test."""
    if not w or np.isnan(w["p"]):
        return missing
    cell = f"{w['t']:+.2f} / {w['p']:.3f}"
    return cell + (f" / {w['p_holm']:.{holm_digits}f}" if "p_holm" in w else "")
