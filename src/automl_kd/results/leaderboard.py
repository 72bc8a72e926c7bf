"""Reading results out of a study: the leaderboard, the Pareto front, the JSON summary.

The plots are in :mod:`automl_kd.results.plots`; the HTML page that puts them together is
:mod:`automl_kd.results.html`.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from automl_kd.engine.outcome import ATTR_OUTCOME, TrialOutcome
from automl_kd.storage.urls import display_url
from automl_kd.trial_attrs import SCREEN_PROXY_CPU_S, SCREENED, metrics_of

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


#: the study user attribute holding ``{trial number: CE-alone result}`` (:mod:`automl_kd.results.baseline`)
ATTR_CE_BASELINE = "ce_baseline"
#: the study user attribute holding the teacher's params and validation/test accuracy (written with the baselines)
ATTR_TEACHER = "teacher"


def ce_baselines(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """The stored CE-alone results of ``study``, by trial number (empty when none was run)."""
    raw = study.user_attrs.get(ATTR_CE_BASELINE)
    if not isinstance(raw, dict):
        return {}
    return {int(k): v for k, v in raw.items() if isinstance(v, dict) and str(k).isdigit()}


def trial_state(t: FrozenTrial) -> str:
    """complete, pruned, failed, rejected, running, waiting, or interrupted (see :class:`TrialOutcome`)."""
    return str(TrialOutcome.of(t))


def trial_record(t: FrozenTrial) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "number": t.number,
        "state": trial_state(t),
        "params": dict(t.params),
        "values": list(t.values) if t.values else None,
        "metrics": {k: v for k, v in metrics_of(t.user_attrs).items() if k != ATTR_OUTCOME},
    }
    reason = t.user_attrs.get("fail_reason") or t.system_attrs.get("fail_reason")
    if reason:
        rec["fail_reason"] = reason
    meta = t.system_attrs.get("automl_kd:proposal_meta")
    if isinstance(meta, dict):
        rec["llm"] = {k: v for k, v in meta.items() if k.startswith("llm_")}
    return rec


def leaderboard(study: optuna.Study, top: int | None = None) -> list[dict[str, Any]]:
    """Completed trials, best validation accuracy first (test accuracy is shown, never used to rank).

    When the study holds CE-alone baselines, each row also has ``ce_val_acc`` and ``kd_gain`` (None for a trial
    without one)."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    done.sort(key=lambda t: -float(t.user_attrs.get("val_acc", t.values[0] if t.values else 0.0)))
    rows = []
    baselines = ce_baselines(study)
    for rank, t in enumerate(done[:top] if top else done, start=1):
        row = {"rank": rank, "trial": t.number, "proposer": t.user_attrs.get("proposer", "")}
        row.update({k: metrics_of(t.user_attrs).get(k) for k in METRIC_KEYS})
        if baselines:
            # the same architecture, seed and settings trained with cross-entropy alone (search.ce_baseline)
            kd = kd_result(baselines, t.number)
            row["ce_val_acc"] = kd["ce_val_acc"]
            row["kd_gain"] = kd["kd_gain"]
        rows.append(row)
    return rows


def kd_result(baselines: dict[int, dict[str, Any]], number: int) -> dict[str, Any]:
    """What distillation gave trial ``number``, from :func:`ce_baselines`: ``ce_val_acc`` (the CE-alone
    retraining's validation accuracy), ``ce_test_acc`` (report only), ``kd_gain`` (distilled minus CE alone,
    points), ``noise_band`` (two standard errors of that difference, points) and ``n_val`` (validation images);
    each None when not stored."""
    base = baselines.get(number) or {}
    return {
        "ce_val_acc": base.get("val_acc"),
        "ce_test_acc": base.get("test_acc"),
        "kd_gain": base.get("kd_gain"),
        "noise_band": base.get("noise_band"),
        "n_val": base.get("n_val"),
    }


def kd_verdict(gain: float, band: float | None) -> str:
    """What a KD gain shows beside its noise band: ``KD helped``, ``KD hurt`` or ``no difference shown``."""
    band = band or 0.0
    if gain > band:
        return "KD helped"
    if gain < -band:
        return "KD hurt"
    return "no difference shown"


def teacher_record(study: optuna.Study) -> dict[str, Any] | None:
    """The teacher's params and validation/test accuracy stored with the CE-alone baselines (None without)."""
    teacher = study.user_attrs.get(ATTR_TEACHER)
    return teacher if isinstance(teacher, dict) else None


def pareto_numbers(study: optuna.Study) -> list[int]:
    if len(study.directions) < 2:
        return []
    return [t.number for t in study.best_trials]


def summary(study: optuna.Study, storage: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON summary printed by ``automl-kd run --json`` (and ``show``, ``worker``): the storage URL with its
    password hidden."""
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
        "storage": display_url(storage),
        "directions": [d.name.lower() for d in study.directions],
        "counts": counts,
        "best": board[0] if board else None,
        "pareto_front": pareto_numbers(study),
        "trials": [trial_record(t) for t in trials],
    }
    if llm_tokens:
        out["llm_tokens"] = llm_tokens
    screened = [t for t in trials if SCREENED in t.user_attrs]
    if screened:  # the screen proposer: the candidates its proxy scored and their CPU seconds, over the run
        out["screening"] = {
            "trials": len(screened),
            "screened": sum(int(t.user_attrs[SCREENED]) for t in screened),
            "proxy_cpu_s": round(
                sum(float(t.user_attrs.get(SCREEN_PROXY_CPU_S) or 0.0) for t in screened), 4
            ),
        }
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
        if t.state == TrialState.COMPLETE
        and finite_number(t.user_attrs.get("val_acc", _first(t))) is not None
    ]


def val_acc(t: FrozenTrial) -> float:
    """A completed trial's validation accuracy (the user attr, or the first objective value)."""
    v = finite_number(t.user_attrs.get("val_acc", _first(t)))
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
        cost = finite_number(metrics_of(t.user_attrs).get(key))
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


def finite_number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v) if math.isfinite(v) else None
