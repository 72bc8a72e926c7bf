"""``LLMSampler``: the ``llm`` proposer as an Optuna sampler, for a plain ``optuna.create_study``."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
)
from optuna.trial import FrozenTrial

from automl_kd.proposer import ProposerSampler
from automl_kd.space import SearchSpace, suggest

from .proposer import LLMProposer


class LLMSampler(ProposerSampler):
    """An Optuna sampler whose trials are proposed by an LLM over a :class:`~automl_kd.SearchSpace`.

    Keyword options are those of :class:`~automl_kd.llm.proposer.LLMProposer` (docs/llm.md). The study's
    directions are used when ``directions`` is not given. The objective must suggest every parameter of the
    space (Optuna samples relative parameters on the first ``suggest_*`` call); :meth:`suggest` does that.

    Example::

        space = GeniusImageNetSpace()
        sampler = LLMSampler(space, model="gpt-4o-mini", base_url="http://127.0.0.1:8000/v1", seed=0)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        study.optimize(lambda trial: evaluate(space.build(sampler.suggest(trial))), n_trials=10)
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        seed: int | None = None,
        directions: Any = None,
        constraints: Any = None,
        run_dir: Any = None,
        **options: Any,
    ) -> None:
        self.llm = LLMProposer(
            space, seed=seed, directions=directions, constraints=constraints, run_dir=run_dir, **options
        )
        super().__init__(self.llm, space, seed=seed)

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Suggest every parameter of the space on ``trial``: the LLM's candidate, as a parameter mapping."""
        return {name: suggest(trial, name, dist) for name, dist in self.space.distributions().items()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self.llm.directions is None:
            self.llm.directions = [d.name.lower() for d in study.directions]
        return super().sample_relative(study, trial, search_space)
