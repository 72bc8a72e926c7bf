"""Reading results out of a study: the leaderboard, the Pareto front, and the JSON summary."""

from __future__ import annotations

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
