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
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

log = logging.getLogger("automl_kd")
ATTR_BEAT = "automl_kd:heartbeat"
# the trial whose seed a queued trial takes (a retry's origin); the name predates its second use, and studies on
# disk carry it, so it stays
ATTR_SEED_OF = "failed_trial"


def seed_origin(system_attrs: dict[str, Any], number: int) -> int:
    """The trial number that seeds a trial: its retry origin when it was queued with one, else its own."""
    origin = system_attrs.get(ATTR_SEED_OF)
    return int(origin) if origin is not None else number


def queue_trial(
    study: optuna.Study,
    params: dict[str, Any],
    distributions: dict[str, BaseDistribution],
    *,
    seed_of: int,
    retry_history: list[int] | None = None,
) -> None:
    """Queue a WAITING trial with these parameters that the engine seeds as trial ``seed_of``.

    The one way a trial is queued with another's seed: the heartbeat's retry of a dead trial, the engine's retry
    of an interrupted one (SIGTERM, Ctrl-C), and ``Search.enqueue`` (run k of a fixed configuration with the seed
    of trial k). A parameter without a distribution is a ValueError, as is a value outside it.
    """
    unknown = sorted(set(params) - set(distributions))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} not among the search's parameters")
    system: dict[str, Any] = {ATTR_SEED_OF: int(seed_of)}
    if retry_history is not None:
        system["retry_history"] = list(retry_history)
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=params,
            distributions={name: distributions[name] for name in params},
            system_attrs=system,
        )
    )


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
        queue_trial(
            study,
            t.params,
            t.distributions,
            seed_of=seed_origin(t.system_attrs, t.number),
            retry_history=history,
        )
    if failed:
        log.warning("trials %s had no heartbeat for %.0f s: marked failed and queued again", failed, grace)
    return failed
