"""Several worker processes on one study: ``automl-kd run --workers N`` and ``automl-kd worker``.

Scale-out is Optuna's: every worker opens the same storage and study, asks for a trial, evaluates it and tells the
result. Workers on one machine share a Journal file by default; workers on many machines share a PostgreSQL or
MySQL database. Nothing else coordinates them, so a worker may join or die at any time.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna

from automl_kd.config import Config, StorageConfig, load_config
from automl_kd.errors import AutomlKdError

from .outage import retrying
from .studies import open_storage
from .urls import display_url

log = logging.getLogger("automl_kd")


def default_parallel_storage(run_dir: Path) -> str:
    """A Journal file in the run directory: safe for many processes on one machine, no server needed."""
    return f"journal:{(run_dir / 'journal.log').resolve()}"


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

    Worker ``i`` gets ``devices[i % len(devices)]`` when devices are given. Returns the worst exit code.
    """
    procs: list[subprocess.Popen[bytes]] = []
    for i in range(n):
        device = devices[i % len(devices)] if devices else None
        procs.append(subprocess.Popen(worker_command(storage, study, device, cfg.search.n_trials, disable)))
        log.info("worker %d started (pid %d%s)", i, procs[-1].pid, f", {device}" if device else "")

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
    bad = [c for c in codes if c != 0]
    if bad:
        log.warning("worker exit codes: %s", codes)
    return max(codes, key=abs) if bad else 0


def config_of_study(storage: str, study: str) -> Config:
    """The config a study was created with (stored in its user attributes), for a worker joining it."""
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
