"""``automl-kd check``: everything a search validates before its first trial, without running one."""

from __future__ import annotations

from typing import Any

from automl_kd.config import Config
from automl_kd.manager import PluginManager
from automl_kd.storage.urls import rdb_url

from .search import Search


def check_config(config: Config, pm: PluginManager | None = None) -> dict[str, Any]:
    """Validate ``config`` as ``Search(config)`` does (plugins and their options, searched augmenter options, the
    device, the teacher checkpoint, the storage URL's form) without reading data, opening a storage or writing
    anything; return what it names. Every problem is a :class:`~automl_kd.errors.ConfigError`."""
    url = config.storage.url
    if url is not None and "://" in url and not url.startswith("journal:"):
        rdb_url(url, create=True)
    search = Search(config, pm=pm, check_only=True)
    return {
        "name": config.name,
        "space": config.space.name,
        "proposer": config.search.proposer.name,
        "evaluator": config.evaluator.name,
        "augmenters": [a.name for a in config.augmenters],
        "n_trials": config.search.n_trials,
        "device": str(search.device),
    }
