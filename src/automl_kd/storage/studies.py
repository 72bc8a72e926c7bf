"""Storage URLs and studies: opening Optuna storage from a URL (SQLite by default, PostgreSQL/MySQL, a Journal
file) and opening an existing study for reading, both under the outage rule (:mod:`.outage`).

Every storage gets automl-kd's own heartbeat (:mod:`.heartbeat`), so a trial whose process died is marked failed
after the grace period and its parameters are retried once.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend

from automl_kd.config import Config, StorageConfig
from automl_kd.errors import ConfigError, StorageError

from .outage import retrying
from .urls import DEFAULT_DB, default_url, display_url, rdb_url

__all__ = [
    "DEFAULT_DB",
    "DEFAULT_JOURNAL",
    "default_url",
    "journal_url",
    "load_study",
    "open_storage",
    "open_study",
    "run_dir_url",
]

log = logging.getLogger("automl_kd")

#: the Journal file of a run directory: where ``run --workers N`` keeps its trials (one machine, many processes)
DEFAULT_JOURNAL = "journal.log"


def journal_url(run_dir: Path) -> str:
    """The URL of the run directory's Journal file: safe for many processes on one machine, no server needed."""
    return f"journal:{(run_dir / DEFAULT_JOURNAL).resolve()}"


def run_dir_url(run_dir: Path, workers: int = 1) -> str | None:
    """The storage a run directory holds, for every command given ``--run-dir`` and no ``--storage``: its
    Journal file when it has one (a run with ``--workers``), else its SQLite ``study.db`` (None: the default).
    A new run with ``workers > 1`` starts a Journal file; a run directory that holds both is a
    :class:`ConfigError` (two studies side by side: the user picks one)."""
    db, journal = run_dir / DEFAULT_DB, run_dir / DEFAULT_JOURNAL
    if db.is_file() and journal.is_file():
        raise ConfigError(
            f"run directory {run_dir} holds two storages, {DEFAULT_DB} and {DEFAULT_JOURNAL}; pick one with "
            f"--storage {default_url(run_dir)} or --storage {journal_url(run_dir)}"
        )
    if journal.is_file() or (workers > 1 and not db.is_file()):
        return journal_url(run_dir)
    return None


def open_storage(url: str | None, run_dir: Path, cfg: StorageConfig, *, create: bool = True) -> BaseStorage:
    """An Optuna storage for ``url`` (None: the run directory's own, :func:`run_dir_url`: its Journal file if it
    has one, else SQLite ``study.db``; ``journal:PATH`` or ``*.log``: a Journal file).

    The storage is opened under the outage rule (:func:`retrying`): an unreachable server is retried for
    ``cfg.retry_timeout`` seconds, then :class:`StorageUnavailable`; a corrupt or read-only database is a
    :class:`StorageError` at once.
    """
    url = url or run_dir_url(run_dir)
    if url is None:
        path = run_dir / DEFAULT_DB
        if not create and not path.is_file():
            raise ConfigError(
                f"no study database at {path} (nor a {DEFAULT_JOURNAL}); pass --storage or --run-dir"
            )
        url = default_url(run_dir)
    if url.startswith("journal:") or url.endswith(".log") or url.endswith(".journal"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        if not create and not path.is_file():
            raise ConfigError(f"journal file {path} does not exist")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"journal file {path} cannot be used: {exc.strerror or exc}") from None
    if "://" not in url:
        raise ConfigError(
            f"storage URL {display_url(url)!r} is not understood; use sqlite:///path.db, postgresql://..., "
            "mysql://..., or journal:PATH"
        )
    u = rdb_url(url, create=create)
    if u.get_backend_name() == "sqlite" and create:
        folder = Path(u.database or "").expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create the folder {folder} of {display_url(url)}: {exc.strerror}"
            ) from None

    def connect() -> BaseStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(
                u.render_as_string(hide_password=False),
                engine_kwargs={"pool_pre_ping": True} if u.get_backend_name() != "sqlite" else None,
            )

    try:
        return retrying(connect, url, cfg.retry_timeout)
    except ImportError as exc:
        raise ConfigError(f"storage URL {display_url(url)!r} needs a database driver: {exc}") from None


def open_study(
    storage: BaseStorage,
    url: str,
    name: str,
    directions: list[Any],
    pruner: optuna.pruners.BasePruner,
    config: Config,
    sampler_for: Callable[[int], optuna.samplers.BaseSampler],
) -> optuna.Study:
    """Create or load a search's study under the outage rule; ``sampler_for(n)`` gives the sampler of a study
    that already holds ``n`` trials. A new study keeps its config (workers read it from there)."""

    def attempt() -> optuna.Study:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=sampler_for(0),
            pruner=pruner,
            directions=directions,
            load_if_exists=True,
        )
        existing = len(study.get_trials(deepcopy=False))
        if existing:
            study.sampler = sampler_for(existing)
        if "config" not in study.user_attrs:
            stored = config.to_dict()
            if config.storage.url:  # the study keeps its config, not the password of the storage it lives in
                stored["storage"]["url"] = display_url(config.storage.url)
            study.set_user_attr("config", stored)
            study.set_user_attr("objectives", list(config.search.objectives))
        if study.metric_names is None:  # optuna-dashboard and trials_dataframe() name the objectives
            with warnings.catch_warnings():  # experimental in Optuna 4
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([str(o) for o in config.search.objectives])
        return study

    return retrying(attempt, url, config.storage.retry_timeout, log.warning)


def load_study(storage: str | None, run_dir: Path, study_name: str | None) -> optuna.Study:
    """Open an existing study for reading (``show``, ``report``); its only study if no name is given."""
    cfg = StorageConfig()
    st = open_storage(storage, run_dir, cfg, create=False)
    url = storage or run_dir_url(run_dir) or default_url(run_dir)

    def names_of() -> list[str]:
        return [s.study_name for s in optuna.get_all_study_summaries(st)]

    names = retrying(names_of, url, cfg.retry_timeout, log.warning)
    if not names:
        raise ConfigError(f"no study found in {display_url(storage) if storage else run_dir}")
    if study_name is None:
        if len(names) > 1:
            raise ConfigError(f"several studies in this storage ({', '.join(names)}); pick one with --study")
        study_name = names[0]
    if study_name not in names:
        raise ConfigError(f"study {study_name!r} not found; studies: {', '.join(names)}")
    name = study_name
    return retrying(
        lambda: optuna.load_study(study_name=name, storage=st), url, cfg.retry_timeout, log.warning
    )
