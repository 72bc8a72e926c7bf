"""A complete third-party automl-kd plugin: one module, one entry-point line in pyproject.toml.

It registers a tiny search space (``example-mlp``: a width and a depth for a small MLP), a proposer
(``example-sweep``: tries the candidates in a fixed order), and observes finished trials.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from torch import nn

from automl_kd import Candidate, Cost, HistoryEntry, Proposer, SearchSpace, hookimpl

FINISHED: list[int] = []  # trial numbers seen by on_trial_end, for the plugin's own tests


class MLPSpace(SearchSpace):
    """A multilayer perceptron with a searched width and depth."""

    name = "example-mlp"

    def __init__(
        self, num_classes: int = 10, in_chans: int = 1, input_size: int = 28, widths: list[int] | None = None
    ) -> None:
        self.num_classes, self.in_features = num_classes, in_chans * input_size * input_size
        self.widths = widths or [32, 64, 128]

    def distributions(self) -> dict[str, BaseDistribution]:
        return {"width": CategoricalDistribution(self.widths), "depth": CategoricalDistribution([1, 2, 3])}

    def cost(self, params: Any) -> Cost:
        dims = [self.in_features] + [params["width"]] * params["depth"] + [self.num_classes]
        n = sum(a * b for a, b in itertools.pairwise(dims))
        return Cost(params=n + sum(dims[1:]), macs=n)

    def build(self, params: Any) -> nn.Module:
        layers: list[nn.Module] = [nn.Flatten()]
        dims = [self.in_features] + [params["width"]] * params["depth"]
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU()]
        layers.append(nn.Linear(dims[-1], self.num_classes))
        return nn.Sequential(*layers)


class Sweep(Proposer):
    """Proposes the space's candidates in a fixed order, skipping those already tried."""

    name = "example-sweep"

    def __init__(self, space: SearchSpace, seed: int | None = None) -> None:
        self.order = list(itertools.product(*(d.choices for d in space.distributions().values())))  # type: ignore[attr-defined]

    def propose(self, space: SearchSpace, history: Sequence[HistoryEntry], n: int) -> list[Candidate]:
        tried = {tuple(h.params[k] for k in space.distributions()) for h in history}
        keys = list(space.distributions())
        fresh = [c for c in self.order if c not in tried] or self.order
        return [
            space.candidate(dict(zip(keys, c, strict=True)), rationale="next in sweep order")
            for c in fresh[:n]
        ]


@hookimpl
def register_search_spaces(register: Any) -> None:
    register("example-mlp", MLPSpace)


@hookimpl
def register_proposers(register: Any) -> None:
    register("example-sweep", Sweep)


@hookimpl
def on_trial_end(
    study_name: str, trial_number: int, state: str, values: list[float] | None, attrs: dict[str, Any]
) -> None:
    FINISHED.append(trial_number)
