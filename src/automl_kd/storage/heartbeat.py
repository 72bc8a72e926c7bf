"""Heartbeats for every storage (SQLite, PostgreSQL, MySQL, Journal files).

Optuna's own RDB heartbeat thread has no error handling: in a storage outage it died with a traceback. So
automl-kd beats for every storage itself: each running trial writes a
timestamp into a system attribute every ``interval`` seconds from a thread; before each new trial a worker fails
the running trials whose timestamp is older than ``grace`` seconds and queues their parameters once more, exactly
like Optuna's ``RetryHeartbeatStaleTrialCallback`` does for RDB storages.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import optuna
from optuna.trial import TrialState

log = logging.getLogger("automl_kd")
ATTR_BEAT = "automl_kd:heartbeat"


@contextlib.contextmanager
def beating(study: optuna.Study, trial_id: int, interval: float) -> Iterator[None]:
    """Write the trial's heartbeat every ``interval`` seconds while the block runs."""
    stop = threading.Event()

    def run() -> None:
        while True:
            try:
                study._storage.set_trial_system_attr(trial_id, ATTR_BEAT, time.time())
            except Exception as exc:  # a finished trial, or storage trouble: the main loop will notice
                log.debug("heartbeat of trial %d not written: %s", trial_id, exc)
            if stop.wait(interval):
                return

    thread = threading.Thread(target=run, name=f"automl-kd-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale_trials(study: optuna.Study, grace: float, max_retry: int = 1) -> list[int]:
    """Fail running trials whose heartbeat is older than ``grace`` seconds; queue their parameters again once.

    Returns the numbers of the trials it failed. Safe when several workers do it at once: only the worker whose
    state change succeeds queues the retry.
    """
    now = time.time()
    failed: list[int] = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.system_attrs.get(ATTR_BEAT)
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if now - float(beat if beat is not None else started) <= grace:
            continue
        try:
            if not study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL):
                continue
        except Exception:  # another worker failed it first
            continue
        failed.append(t.number)
        history = [*t.system_attrs.get("retry_history", []), t.number]
        if len(history) > max_retry:
            continue
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                params=t.params,
                distributions=t.distributions,
                system_attrs={
                    "failed_trial": t.system_attrs.get("failed_trial", t.number),
                    "retry_history": history,
                },
            )
        )
    if failed:
        log.warning("trials %s had no heartbeat for %.0f s: marked failed and queued again", failed, grace)
    return failed
