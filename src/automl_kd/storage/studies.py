"""Storage URLs and studies: opening Optuna storage from a URL (SQLite by default, PostgreSQL/MySQL, a Journal
file) and opening an existing study for reading.

RDB storages get heartbeats, so a trial whose process died is marked failed after the grace period and its
parameters are retried once (Optuna's ``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from automl_kd.config import StorageConfig
from automl_kd.errors import ConfigError

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


def load_study(storage: str | None, run_dir: Path, study_name: str | None) -> optuna.Study:
    """Open an existing study for reading (``show``, ``report``); its only study if no name is given."""
    st = open_storage(storage, run_dir, StorageConfig(), create=False)
    names = [s.study_name for s in optuna.get_all_study_summaries(st)]
    if not names:
        raise ConfigError(f"no study found in {storage or run_dir}")
    if study_name is None:
        if len(names) > 1:
            raise ConfigError(f"several studies in this storage ({', '.join(names)}); pick one with --study")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"study {study_name!r} not found; studies: {', '.join(names)}")
    return optuna.load_study(study_name=study_name, storage=st)
