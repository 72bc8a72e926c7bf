"""Objects every trial of one process shares, built on first use: the data, the teacher, the artifact cache.

An evaluator asks for them by name through ``context.resource(name)``; nothing is loaded that no trial needs (a
table-look-up evaluator never loads data).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from automl_kd.cache import ArtifactCache
from automl_kd.config import Config
from automl_kd.data import load_data
from automl_kd.distill.teacher import get_teacher
from automl_kd.manager import PluginManager
from automl_kd.space import SearchSpace


class Resources:
    """``resources("data")``, ``"data_config"``, ``"precision"`` (the config's), ``"cache"``, ``"teacher"`` (None
    without ``teacher:``) and
    ``"reference_params"`` (the teacher's parameter count, else the space's reference network's, else None)."""

    def __init__(
        self,
        config: Config,
        device: torch.device,
        pm: PluginManager,
        space: Callable[[], SearchSpace],
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config, self.device, self.pm = config, device, pm
        # a stop request (SIGTERM) also ends a teacher's training, which runs inside the first trial
        self._should_stop = should_stop
        self._space = space  # the space is built after the data shape is known, so it is fetched late
        self._built: dict[str, Any] = {}
        self._builders: dict[str, Callable[[], Any]] = {
            "data": lambda: load_data(self.config.data).to(self.device),
            "data_config": lambda: self.config.data,
            "precision": lambda: self.config.precision,
            "cache": ArtifactCache.default,
            "teacher": self._teacher,
            "reference_params": self._reference_params,
        }

    def __call__(self, name: str) -> Any:
        if name not in self._built:
            if name not in self._builders:
                raise KeyError(f"unknown resource {name!r}")
            self._built[name] = self._builders[name]()
        return self._built[name]

    def _teacher(self) -> Any:
        if self.config.teacher is None:
            return None
        return get_teacher(
            self.config.teacher,
            self("data"),
            self.device,
            self("cache"),
            pm=self.pm,
            precision=self.config.precision,
            should_stop=self._should_stop,
        )

    def _reference_params(self) -> int | None:
        teacher = self("teacher") if self.config.teacher else None
        if teacher is not None:
            return sum(p.numel() for p in teacher.parameters())
        space = self._space()
        ref = space.reference()
        return space.cost(ref).params if ref else None
