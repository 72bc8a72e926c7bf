"""Reading results out of a study: the leaderboard, the Pareto front, the JSON summary, and the report's plots.

The HTML page that puts them together is :mod:`automl_kd.html_report`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

#: columns of the leaderboard, in order
METRIC_KEYS = (
    "val_acc",
    "test_acc",
    "params",
    "macs",
    "compression_factor",
    "latency_ms_b1",
    "latency_ms_b64",
    "wall_clock_s",
    "seed",
)


def trial_state(t: FrozenTrial) -> str:
    """complete, pruned, failed, rejected, running, waiting, or interrupted (a failed trial with no outcome: the
    process died and the heartbeat closed it)."""
    if t.state == TrialState.FAIL:
        return str(t.user_attrs.get("outcome") or "interrupted")
    return t.state.name.lower()


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "number": t.number,
        "state": trial_state(t),
        "params": dict(t.params),
        "values": list(t.values) if t.values else None,
        "metrics": {k: v for k, v in t.user_attrs.items() if k not in ("outcome",)},
    }
    reason = t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason")
    if reason:
        rec["fail_reason"] = reason
    meta = t.system_attrs.get("automl_kd:proposal_meta")
    if isinstance(meta, dict):
        rec["llm"] = {k: v for k, v in meta.items() if k.startswith("llm_")}
    return rec


def leaderboard(study: optuna.Study, top: int | None = None) -> list[dict[str, Any]]:
    """Completed trials, best validation accuracy first (test accuracy is shown, never used to rank)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: -float(t.user_attrs.get("val_acc", t.values[0] if t.values else 0.0)))
    rows = []
    for rank, t in enumerate(done[:top] if top else done, start=1):
        row = {"rank": rank, "trial": t.number, "proposer": t.user_attrs.get("proposer", "")}
        row.update({k: t.user_attrs.get(k) for k in METRIC_KEYS})
        rows.append(row)
    return rows


def pareto_numbers(study: optuna.Study) -> list[int]:
    if len(study.directions) < 2:
        return []
    return [t.number for t in study.best_trials]


def summary(study: optuna.Study, storage: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary printed by ``automl-kd run --json``."""
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[trial_state(t)] = counts.get(trial_state(t), 0) + 1
    board = leaderboard(study, top=1)
    llm_tokens = sum(
        int((t.system_attrs.get("automl_kd:proposal_meta") or {}).get("llm_tokens_prompt", 0) or 0)
        + int((t.system_attrs.get("automl_kd:proposal_meta") or {}).get("llm_tokens_completion", 0) or 0)
        for t in trials
    )
    out: dict[str, Any] = {
        "study": study.study_name,
        "storage": storage,
        "directions": [d.name.lower() for d in study.directions],
        "counts": counts,
        "best": board[0] if board else None,
        "pareto_front": pareto_numbers(study),
        "trials": [trial_record(t) for t in trials],
    }
    if llm_tokens:
        out["llm_tokens"] = llm_tokens
    if extra:
        out.update(extra)
    return out


# -- what the HTML report and its plots show ----------------------------------------------------------------------
#: the three cost axes of the Pareto plots: (user attr, axis label, log scale)
COST_AXES = (
    ("params", "parameters", True),
    ("macs", "multiply-adds (MACs)", True),
    ("latency_ms_b1", "latency at batch 1 (ms)", False),
)


def completed(study: optuna.Study) -> list[FrozenTrial]:
    """Completed trials with a validation accuracy, in trial order."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state == TrialState.COMPLETE and _num(t.user_attrs.get("val_acc", _first(t))) is not None
    ]


def val_acc(t: FrozenTrial) -> float:
    """A completed trial's validation accuracy (the user attr, or the first objective value)."""
    v = _num(t.user_attrs.get("val_acc", _first(t)))
    return float("nan") if v is None else v


def front_2d(points: list[tuple[int, float, float]]) -> list[int]:
    """Trial numbers on the two-objective front of ``(number, accuracy, cost)``: higher accuracy, lower cost.

    A point is on the front when no other point is at least as good on both axes and better on one.
    """
    front: list[int] = []
    best_acc, best_cost = float("-inf"), float("nan")
    # sweep from cheapest to dearest (most accurate first at equal cost): a point is on the front when it beats
    # every cheaper point's accuracy, or exactly ties the last front point on both axes
    for n, acc, cost in sorted(points, key=lambda p: (p[2], -p[1], p[0])):
        if acc > best_acc or (acc == best_acc and cost == best_cost):
            front.append(n)
            best_acc, best_cost = acc, cost
    return front


def cost_points(study: optuna.Study, key: str) -> list[tuple[int, float, float]]:
    """``(number, val_acc, cost)`` of completed trials that recorded the cost ``key``."""
    out = []
    for t in completed(study):
        cost = _num(t.user_attrs.get(key))
        if cost is not None:
            out.append((t.number, val_acc(t), cost))
    return out


def best_so_far(study: optuna.Study) -> dict[str, list[tuple[int, float]]]:
    """Per proposer (and ``"all"``): ``(trial number, best validation accuracy so far)`` at each completed trial.

    The x axis is the study's trial number, so curves of proposers that took turns in one study line up.
    """
    curves: dict[str, list[tuple[int, float]]] = {}
    best: dict[str, float] = {}
    for t in completed(study):
        for name in (str(t.user_attrs.get("proposer") or "?"), "all"):
            best[name] = max(best.get(name, float("-inf")), val_acc(t))
            curves.setdefault(name, []).append((t.number, best[name]))
    if len([k for k in curves if k != "all"]) <= 1:
        curves.pop("all", None)  # one proposer: its curve is the study's curve
    return curves


def loss_term_rows(study: optuna.Study) -> tuple[list[str], list[dict[str, Any]]]:
    """The loss-term names in first-seen order and one row per trial that recorded ``loss_terms``."""
    names: list[str] = []
    rows = []
    for t in study.get_trials(deepcopy=False):
        terms = t.user_attrs.get("loss_terms")
        if not isinstance(terms, dict) or not terms:
            continue
        for k in terms:
            if k not in names:
                names.append(k)
        augs = [str(a.get("name")) for a in t.user_attrs.get("augmenters") or [] if isinstance(a, dict)]
        rows.append({"trial": t.number, "state": trial_state(t), "augmenters": augs, "terms": dict(terms)})
    # "total" last, the rest as they came
    names.sort(key=lambda k: k == "total")
    return names, rows


def _first(t: FrozenTrial) -> Any:
    return t.values[0] if t.values else None


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None


# -- plots (matplotlib, Agg) ------------------------------------------------------------------------------------
def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: never open a window, works without a display
    import matplotlib.pyplot as plt

    return plt


def _proposer_colors(study: optuna.Study) -> dict[str, Any]:
    plt = _pyplot()
    names = sorted({str(t.user_attrs.get("proposer") or "?") for t in completed(study)})
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def plot_pareto(study: optuna.Study, path: Path) -> Path:
    """Validation accuracy against params, MACs and latency: every completed trial, coloured by proposer, with
    each panel's two-objective front as a step line. Trials on the study's own (multi-objective) front are ringed.
    """
    plt = _pyplot()
    colors = _proposer_colors(study)
    proposer = {t.number: str(t.user_attrs.get("proposer") or "?") for t in completed(study)}
    study_front = set(pareto_numbers(study))
    fig, axes = plt.subplots(1, len(COST_AXES), figsize=(5 * len(COST_AXES), 4.2), squeeze=False)
    for ax, (key, label, log) in zip(axes[0], COST_AXES, strict=True):
        pts = cost_points(study, key)
        ax.set(xlabel=label, ylabel="validation accuracy (%)")
        if not pts:
            ax.text(0.5, 0.5, f"no {label} recorded", ha="center", va="center", transform=ax.transAxes)
            continue
        for name, color in colors.items():
            mine = [(c, a) for n, a, c in pts if proposer[n] == name]
            if mine:
                ax.scatter(
                    [c for c, _ in mine], [a for _, a in mine], s=22, color=color, label=name, alpha=0.8
                )
        ringed = [(c, a) for n, a, c in pts if n in study_front]
        if ringed:
            ax.scatter(
                [c for c, _ in ringed],
                [a for _, a in ringed],
                s=90,
                facecolors="none",
                edgecolors="black",
                linewidths=1.2,
                label="study's Pareto front",
            )
        front = sorted((c, a, n) for n, a, c in pts if n in set(front_2d(pts)))
        ax.step([c for c, _, _ in front], [a for _, a, _ in front], where="post", color="black", linewidth=1)
        for c, a, n in front:
            ax.annotate(str(n), (c, a), textcoords="offset points", xytext=(3, 3), fontsize=7)
        if log and min(c for _, _, c in pts) > 0:
            ax.set_xscale("log")
        ax.set_title(f"accuracy vs {label.split(' (')[0]}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_curves(study: optuna.Study, path: Path) -> Path:
    """Left: best validation accuracy so far per proposer, by trial number. Right: each trial's validation
    accuracy per epoch (``val_acc_curve``), coloured by proposer."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    colors = _proposer_colors(study)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    curves = best_so_far(study)
    for name, pts in curves.items():
        style = {"color": "black", "linestyle": "--"} if name == "all" else {"color": colors.get(name)}
        ax1.step(
            [n for n, _ in pts],
            [b for _, b in pts],
            where="post",
            marker="o",
            markersize=3,
            label=f"{name} ({len(pts)} trials)",
            **style,
        )
    if not curves:
        ax1.text(0.5, 0.5, "no completed trials", ha="center", va="center", transform=ax1.transAxes)
    ax1.set(xlabel="trial number", ylabel="best validation accuracy so far (%)", title="best so far")
    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax1.grid(alpha=0.3)
    if curves:
        ax1.legend(fontsize=8, loc="lower right")
    longest = 0
    for t in study.get_trials(deepcopy=False):
        curve = t.user_attrs.get("val_acc_curve")
        if isinstance(curve, list) and curve:
            color = colors.get(str(t.user_attrs.get("proposer") or "?"), "gray")
            ax2.plot(range(1, len(curve) + 1), curve, color=color, alpha=0.6, marker=".", linewidth=1)
            longest = max(longest, len(curve))
    if longest:
        ax2.set_xlim(0.5, longest + 0.5)  # one-epoch trials would otherwise get a meaningless fractional axis
    else:
        ax2.text(0.5, 0.5, "no per-epoch curves recorded", ha="center", va="center", transform=ax2.transAxes)
    ax2.set(xlabel="epoch", ylabel="validation accuracy (%)", title="per-trial learning curves")
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_loss_terms(study: optuna.Study, path: Path) -> Path | None:
    """Grouped bars: each trial's named loss terms (unweighted means over its last epoch); None if none recorded."""
    names, rows = loss_term_rows(study)
    if not rows:
        return None
    plt = _pyplot()
    shown = rows[-40:]  # a readable number of bars; the table in the HTML has them all
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(shown) * len(names)), 3.8))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(shown))]
        ax.bar(xs, [_num(r["terms"].get(name)) or 0.0 for r in shown], width=width, label=name)
    ax.set_xticks(
        [j + 0.4 - width / 2 for j in range(len(shown))], [str(r["trial"]) for r in shown], fontsize=7
    )
    ax.set(xlabel="trial", ylabel="loss (last-epoch mean)", title="loss terms per trial")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
