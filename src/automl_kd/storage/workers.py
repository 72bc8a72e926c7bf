"""Several worker processes on one study: ``automl-kd run --workers N`` and ``automl-kd worker``.

Scale-out is Optuna's: every worker opens the same storage and study, asks for a trial, evaluates it and tells the
result. Workers on one machine share a Journal file by default; workers on many machines share a PostgreSQL or
MySQL database. Nothing else coordinates them, so a worker may join or die at any time.

Local workers share the machine's cores: each gets ``floor(cores / N)`` threads (at least one) through
``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` in its environment, which torch's intra-op pool follows, instead of
every worker starting a pool as large as the machine. A user's own ``OMP_NUM_THREADS`` wins.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import torch

from automl_kd.config import Config, StorageConfig, load_config
from automl_kd.errors import AutomlKdError

from .outage import retrying
from .studies import journal_url, open_storage
from .urls import display_url

log = logging.getLogger("automl_kd")


def default_parallel_storage(run_dir: Path) -> str:
    """A Journal file in the run directory: safe for many processes on one machine, no server needed."""
    return journal_url(run_dir)


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or a batch job's share), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def worker_env(n: int, env: Mapping[str, str] | None = None, cores: int | None = None) -> dict[str, str]:
    """The environment of one of ``n`` local workers: ``env`` (default: this process's) with
    ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to ``floor(cores / n)``, at least 1. An
    ``OMP_NUM_THREADS`` already there is the user's choice and is kept, as is a ``MKL_NUM_THREADS``."""
    out = dict(os.environ if env is None else env)
    if "OMP_NUM_THREADS" in out:
        return out
    share = str(max(1, (cores or available_cores()) // max(1, n)))
    out["OMP_NUM_THREADS"] = share
    out.setdefault("MKL_NUM_THREADS", share)
    return out


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def worker_command(
    storage: str,
    study: str,
    device: str | None = None,
    n_trials: int | None = None,
    disable: list[str] | None = None,
) -> list[str]:
    cmd = [sys.executable, "-m", "automl_kd.cli"]
    for name in disable or []:
        cmd += ["--disable-plugin", name]
    cmd += ["worker", "--storage", storage, "--study", study]
    if device:
        cmd += ["--device", device]
    if n_trials:
        cmd += ["--n-trials", str(n_trials)]
    return cmd


def run_workers(
    cfg: Config,
    storage: str,
    study: str,
    n: int,
    devices: list[str] | None = None,
    disable: list[str] | None = None,
) -> int:
    """Start ``n`` worker processes on ``study`` and wait for them; SIGTERM and Ctrl-C are passed on.

    Worker ``i`` gets ``devices[i % len(devices)]`` when devices are given, and its share of the cores
    (:func:`worker_env`). Returns the worst exit code; a worker killed by a signal (``kill -9``, the
    out-of-memory killer) is an :class:`AutomlKdError` naming it: the study keeps its trials, a rerun resumes.
    """
    procs: list[subprocess.Popen[bytes]] = []
    env = worker_env(n)
    for i in range(n):
        device = devices[i % len(devices)] if devices else None
        cmd = worker_command(storage, study, device, cfg.search.n_trials, disable)
        procs.append(subprocess.Popen(cmd, env=env))
        log.info(
            "worker %d started (pid %d, %s threads%s)",
            i,
            procs[-1].pid,
            env["OMP_NUM_THREADS"],
            f", {device}" if device else "",
        )

    def forward(signum: int, frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:
        forward(signal.SIGTERM, None)
        codes = [p.wait() for p in procs]
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    killed = [
        f"worker {i} (pid {p.pid}) was killed by {_signal_name(c)}"
        for i, (p, c) in enumerate(zip(procs, codes, strict=True))
        if c < 0
    ]
    if killed:
        raise AutomlKdError(
            f"{', '.join(killed)}; the study in {display_url(storage)} keeps every finished trial: rerun the "
            "same `automl-kd run` to resume"
        )
    bad = [c for c in codes if c != 0]
    if bad:
        log.warning("worker exit codes: %s", codes)
    return max(bad) if bad else 0


def config_of_study(storage: str, study: str) -> Config:
    """The config a study was created with (stored in its user attributes), for a worker joining it."""
    log.info(
        "worker pid %d joins study %r with %d torch threads", os.getpid(), study, torch.get_num_threads()
    )
    cfg = StorageConfig()  # the study's own storage settings are in the study: the defaults until it is read
    st = open_storage(storage, Path("."), cfg, create=False)

    def load() -> dict[str, Any]:
        return dict(optuna.load_study(study_name=study, storage=st).user_attrs)

    try:
        attrs = retrying(load, storage, cfg.retry_timeout, log.warning)
    except KeyError:
        raise AutomlKdError(
            f"study {study!r} does not exist in {display_url(storage)}; create it with `automl-kd run`"
        ) from None
    raw = attrs.get("config")
    if not isinstance(raw, dict):
        raise AutomlKdError(f"study {study!r} has no automl-kd config; was it created by `automl-kd run`?")
    return load_config(raw)
