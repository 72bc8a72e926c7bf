"""The ``largest-first`` proposer: the space's architectures in descending MACs order, no search at all.

A baseline for table benchmarks: on a table without a cost cap, evaluating the largest networks first is often as
good as a search (bigger networks score higher), so every proposer must beat it. Under hard constraints (a MACs
cap) it proposes the largest networks inside them. Ties in MACs go to more parameters, then to the parameters'
canonical text. The space must be finite and small enough to enumerate (categorical and integer parameters).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from automl_kd.hookspecs import hookimpl
from automl_kd.proposer import HistoryEntry, Proposer
from automl_kd.space import Candidate, SearchSpace, enumerate_space


class LargestFirst(Proposer):
    """Proposes the space's architectures from the most MACs down, inside the hard constraints."""

    name = "largest-first"

    def __init__(self, space: SearchSpace, constraints: Any = None) -> None:
        costs = [(space.cost(c.params), c) for c in enumerate_space(space)]
        if constraints is not None:
            costs = [(cost, c) for cost, c in costs if constraints.check(cost) is None]
        costs.sort(key=lambda pc: (-pc[0].macs, -pc[0].params, pc[1].key()))
        self.order = [c for _, c in costs]

    def propose(self, space: SearchSpace, history: Sequence[HistoryEntry], n: int) -> list[Candidate]:
        seen = {space.candidate(h.params).key() for h in history}
        out = []
        for cand in self.order:
            if cand.key() not in seen:
                out.append(space.candidate(cand.params, rationale="the largest network not evaluated yet"))
                if len(out) == n:
                    break
        if not out:
            raise ValueError("largest-first: every architecture inside the constraints has been evaluated")
        return out


@hookimpl
def register_proposers(register: Any) -> None:
    register(
        "largest-first",
        LargestFirst,
        description="baseline: the space's networks in descending MACs order (inside the constraints); no search",
    )
