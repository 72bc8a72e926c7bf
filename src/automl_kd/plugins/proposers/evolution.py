"""The ``evolution`` proposer: regularised (aging) evolution, Real et al. 2019, written as a :class:`Proposer`.

Population of the most recent ``population`` completed trials; each proposal mutates one parameter of the best of
``sample_size`` random members. Works on any space with categorical or integer parameters, where CMA-ES does not.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from automl_kd.errors import InvalidCandidate
from automl_kd.hookspecs import hookimpl
from automl_kd.proposer import HistoryEntry, Proposer
from automl_kd.space import Candidate, SearchSpace


class RegularizedEvolution(Proposer):
    """Aging evolution: tournament selection of a parent, one-parameter mutation, oldest dies."""

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        seed: int | None = None,
        directions: Any = None,
        population: int = 20,
        sample_size: int = 5,
    ) -> None:
        if population < 2 or not 1 <= sample_size <= population:
            raise ValueError("need population >= 2 and 1 <= sample_size <= population")
        self.population = population
        self.sample_size = sample_size
        self.maximize = not directions or str(directions[0]).lower().endswith("maximize")
        self.rng = random.Random(seed)

    def propose(self, space: SearchSpace, history: Sequence[HistoryEntry], n: int) -> list[Candidate]:
        done = [h for h in history if h.state == "complete" and h.value is not None]
        seen = {space.candidate(h.params).key() for h in history if h.state != "rejected"}
        out: list[Candidate] = []
        for _ in range(n):
            if len(done) < self.population:
                params = space.sample(self.rng)
                out.append(space.candidate(params, rationale="random initial population"))
                continue
            parent = self.select_parent(done)
            child = self.mutate(space, parent.params, seen)
            out.append(space.candidate(child, rationale=f"mutation of trial {parent.number}"))
            seen.add(out[-1].key())
        return out

    def select_parent(self, done: Sequence[HistoryEntry]) -> HistoryEntry:
        """The best of ``sample_size`` random members of the population (the most recent completed trials)."""
        pop = list(done[-self.population :])
        tournament = self.rng.sample(pop, min(self.sample_size, len(pop)))
        sign = 1.0 if self.maximize else -1.0
        return max(tournament, key=lambda h: sign * float(h.value or 0.0))

    def mutate(self, space: SearchSpace, parent: dict[str, Any], seen: set[str]) -> dict[str, Any]:
        """``parent`` with one parameter changed at random, not in ``seen`` (a random sample after 100 tries)."""
        dists = space.distributions()
        for _ in range(100):
            child = dict(parent)
            key = self.rng.choice(list(dists))
            d = dists[key]
            if isinstance(d, CategoricalDistribution):
                options = [c for c in d.choices if c != parent[key]]
                if not options:
                    continue
                child[key] = self.rng.choice(options)
            elif isinstance(d, IntDistribution):
                child[key] = self.rng.randrange(d.low, d.high + 1, d.step)
            elif isinstance(d, FloatDistribution):
                child[key] = self.rng.uniform(d.low, d.high)
            try:
                cand = space.candidate(child)
            except InvalidCandidate:
                continue
            if cand.key() not in seen:
                return cand.params
        return space.sample(self.rng)


@hookimpl
def register_proposers(register: Any) -> None:
    register("evolution", RegularizedEvolution, description="regularised (aging) evolution, Real et al. 2019")
