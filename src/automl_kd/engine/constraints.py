"""Hard constraints on a candidate's analytic cost, checked before any training."""

from __future__ import annotations

from dataclasses import dataclass

from automl_kd.config import ConstraintsConfig
from automl_kd.space import Cost


@dataclass(frozen=True)
class Constraints:
    """Hard constraints checked on the analytic cost, before any training."""

    max_params: int | None = None
    macs: tuple[float, float] | None = None

    @classmethod
    def from_config(cls, c: ConstraintsConfig) -> Constraints:
        return cls(c.max_params, c.macs)

    def check(self, cost: Cost) -> str | None:
        """The reason ``cost`` breaks a constraint, with the exact margin, or None."""
        if self.max_params is not None and cost.params > self.max_params:
            return (
                f"params {cost.params:,} exceed the limit {self.max_params:,} "
                f"by {cost.params - self.max_params:,}"
            )
        if self.macs is not None:
            lo, hi = self.macs
            macs = f"MACs {cost.macs / 1e6:.1f}M"
            if cost.macs > hi:
                return f"{macs} exceed the upper bound {hi / 1e6:.1f}M by {(cost.macs - hi) / 1e6:.1f}M"
            if cost.macs < lo:
                return f"{macs} are below the lower bound {lo / 1e6:.1f}M by {(lo - cost.macs) / 1e6:.1f}M"
        return None
