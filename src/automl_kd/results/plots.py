"""The report's plots (matplotlib, Agg): Pareto panels, search curves, loss terms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from automl_kd.plotting import pyplot

from .leaderboard import (
    COST_AXES,
    best_so_far,
    completed,
    cost_points,
    finite_number,
    front_2d,
    loss_term_rows,
    pareto_numbers,
)


def _proposer_colors(study: optuna.Study) -> dict[str, Any]:
    plt = pyplot()
    names = sorted({str(t.user_attrs.get("proposer") or "?") for t in completed(study)})
    cmap = plt.get_cmap("tab10")
    return {n: cmap(i % 10) for i, n in enumerate(names)}


def plot_pareto(study: optuna.Study, path: Path) -> Path:
    """Validation accuracy against params, MACs and latency: every completed trial, coloured by proposer, with
    each panel's two-objective front as a step line. Trials on the study's own (multi-objective) front are ringed.
    """
    plt = pyplot()
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
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator  # after pyplot(): matplotlib is imported on first plot only

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
    plt = pyplot()
    shown = rows[-40:]  # a readable number of bars; the table in the HTML has them all
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(shown) * len(names)), 3.8))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        xs = [j + i * width for j in range(len(shown))]
        ax.bar(xs, [finite_number(r["terms"].get(name)) or 0.0 for r in shown], width=width, label=name)
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
