"""Opening Optuna storage from a URL: SQLite (default), PostgreSQL/MySQL, or a Journal file.

RDB storages get heartbeats, so a trial whose process died is marked failed after the grace period and its
parameters are retried once (Optuna's ``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from .config import StorageConfig
from .errors import ConfigError

DEFAULT_DB = "study.db"


def default_url(run_dir: Path) -> str:
    return f"sqlite:///{(run_dir / DEFAULT_DB).resolve()}"


def open_storage(url: str | None, run_dir: Path, cfg: StorageConfig, *, create: bool = True) -> BaseStorage:
    """An Optuna storage for ``url`` (None: SQLite in ``run_dir``; ``journal:PATH`` or ``*.log``: a Journal file)."""
    if url is None:
        path = run_dir / DEFAULT_DB
        if not create and not path.is_file():
            raise ConfigError(f"no study database at {path}; pass --storage or --run-dir")
        url = default_url(run_dir)
    if url.startswith("journal:") or url.endswith(".log") or url.endswith(".journal"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        if not create and not path.is_file():
            raise ConfigError(f"journal file {path} does not exist")
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(
            f"storage URL {url!r} is not understood; use sqlite:///path.db, postgresql://..., "
            "mysql://..., or journal:PATH"
        )
    try:
        with warnings.catch_warnings():
            # heartbeats have been "experimental" in Optuna since 2.8; they are what makes resume safe here
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                url,
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
    except optuna.exceptions.StorageInternalError as exc:
        raise ConfigError(f"cannot open storage {url!r}: {exc}") from None
    except ImportError as exc:
        raise ConfigError(f"storage {url!r} needs a database driver: {exc}") from None
