"""One fixed configuration run N times with the seeds of its places, resumable after an interruption.

Run k of a repeated configuration is queued with the seed of trial k (``Search.enqueue(params, seed_of=k)``), so
every repetition runs the same seeds whatever was interrupted: a run left RUNNING by a killed process is failed by
the heartbeat rule and queued again with its own seed, and the next run is queued only when nothing waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from automl_kd.errors import AutomlKdError
from automl_kd.storage.heartbeat import fail_stale_trials, seed_origin

from .outcome import TrialOutcome, is_claimed

if TYPE_CHECKING:
    from .search import Search


def run_index(t: FrozenTrial) -> int:
    """The place of a trial among the runs: the trial whose seed it has (its own number unless queued with one)."""
    return seed_origin(t.system_attrs, t.number)


def repeat(
    search: Search,
    params: dict[str, Any],
    runs: int,
    *,
    first: int = 0,
    on_run: Callable[[FrozenTrial], Any] | None = None,
) -> list[FrozenTrial]:
    """Run ``params`` until the study holds runs ``first`` .. ``runs - 1`` complete; return them in run order.

    Run k has the seed of trial k. ``first`` is the number of runs recorded elsewhere (a study lost with its
    machine, started again): they are not run. ``on_run(trial)`` is called after each run this call completes, so
    a caller can save its results at once. A run that ends without completing on its own merits (it failed, was
    pruned or rejected) raises :class:`~automl_kd.errors.AutomlKdError`: run k would fail again with the same seed.
    A stop request (``search.stop()``, SIGTERM) ends the loop early with the runs complete so far.
    """
    study = search.study

    def complete() -> list[FrozenTrial]:
        done: dict[int, FrozenTrial] = {}
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            k = run_index(t)
            if first <= k < runs:
                done.setdefault(k, t)
        return [done[k] for k in sorted(done)]

    while True:
        before = complete()
        if len(before) >= runs - first or search._stop:
            return before
        # a run left RUNNING by a killed process is failed here and queued again with its own seed
        fail_stale_trials(study, search.config.storage.grace_period)
        trials = study.get_trials(deepcopy=False)
        if not any(t.state == TrialState.WAITING for t in trials):
            taken = {run_index(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING)}
            free = [k for k in range(first, runs) if k not in taken]
            if free:  # else the missing runs are running in other processes: run() waits for them
                search.enqueue(params, seed_of=free[0])
        ids = {t._trial_id for t in trials}
        # the target counts the runs of other processes too (the engine's count leaves interrupted trials out):
        # the queued run is not surplus to a run still RUNNING elsewhere, and a dead one's retry is waited for
        search.run(n_trials=sum(is_claimed(t) for t in study.get_trials(deepcopy=False)))
        for t in study.get_trials(deepcopy=False):
            outcome = TrialOutcome.of(t)
            if t._trial_id not in ids and outcome.counts and outcome != TrialOutcome.COMPLETE:
                reason = t.user_attrs.get("fail_reason") or "no reason recorded"
                raise AutomlKdError(
                    f"run {run_index(t)} of {search.study_name!r} (trial {t.number}) ended {outcome}: {reason}"
                )
        done_ids = {t._trial_id for t in before}
        for t in complete():
            if t._trial_id not in done_ids and on_run is not None:
                on_run(t)
