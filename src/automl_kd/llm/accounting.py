"""Token and cost accounting for LLM calls, with a budget that stops the search cleanly.

Prices are USD per million tokens, ``(prompt, completion)``, looked up by the longest matching model-name
prefix in :data:`DEFAULT_PRICES` merged with the user's ``prices`` option. Answers served from the response
cache are charged as if they had been requested, so that a replayed run stops at exactly the same point as the
recorded one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from automl_kd.errors import BudgetExhausted, ConfigError

#: USD per 1M tokens (prompt, completion); list prices of OpenAI's API for common chat models. Local servers
#: (vLLM, Ollama, llama.cpp) cost nothing: give their model a price of [0, 0] or leave the cost budget unset.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4-turbo": (10.00, 30.00),
    "gpt-4": (30.00, 60.00),
    "gpt-3.5-turbo": (0.50, 1.50),
    "o4-mini": (1.10, 4.40),
    "o3-mini": (1.10, 4.40),
    "o3": (2.00, 8.00),
}


@dataclass(frozen=True)
class Usage:
    """Tokens, cost and request counts of one call or a sum of calls."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    requests: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
            self.cost_usd + other.cost_usd,
            self.requests + other.requests,
        )

    def as_dict(self) -> dict[str, float | int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 8),
            "requests": self.requests,
        }


def price_for(
    model: str, prices: Mapping[str, tuple[float, float]] | None = None
) -> tuple[float, float] | None:
    """``(prompt, completion)`` USD per 1M tokens for ``model``: exact name first, then the longest prefix."""
    table = {**DEFAULT_PRICES, **(prices or {})}
    if model in table:
        return table[model]
    matches = [k for k in table if model.startswith(k)]
    return table[max(matches, key=len)] if matches else None


@dataclass
class Accountant:
    """Sums usage over a proposer's life and enforces the budget.

    Example::

        acct = Accountant("gpt-4o-mini", max_cost_usd=0.50)
        acct.check()                       # raises BudgetExhausted once the budget is spent
        acct.charge(prompt_tokens=1200, completion_tokens=300)
    """

    model: str
    prices: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    max_total_tokens: int | None = None
    max_cost_usd: float | None = None
    max_requests: int | None = None
    spent: Usage = field(default_factory=Usage)

    def __post_init__(self) -> None:
        for name in ("max_total_tokens", "max_cost_usd", "max_requests"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigError(f"{name} must be > 0 or unset, got {value}")
        for name, pair in self.prices.items():
            if len(pair) != 2 or min(pair) < 0:
                raise ConfigError(f"prices.{name}: give [prompt, completion] USD per 1M tokens, both >= 0")
        self.price = price_for(self.model, self.prices)
        if self.max_cost_usd is not None and self.price is None:
            raise ConfigError(
                f"max_cost_usd is set but no price is known for model {self.model!r}; add it to the 'prices' "
                f"option as {self.model}: [prompt_usd_per_1M_tokens, completion_usd_per_1M_tokens]"
            )

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        if self.price is None:
            return 0.0
        return (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6

    def charge(self, prompt_tokens: int, completion_tokens: int) -> Usage:
        """Record one answered request; return its usage."""
        usage = Usage(prompt_tokens, completion_tokens, self.cost(prompt_tokens, completion_tokens), 1)
        self.spent = self.spent + usage
        return usage

    def exhausted(self) -> str | None:
        """The reason the budget is spent, or None while there is budget left."""
        s = self.spent
        if self.max_total_tokens is not None and s.total_tokens >= self.max_total_tokens:
            return (
                f"LLM token budget spent: {s.total_tokens:,} tokens used of max_total_tokens="
                f"{self.max_total_tokens:,}"
            )
        if self.max_cost_usd is not None and s.cost_usd >= self.max_cost_usd:
            return f"LLM cost budget spent: ${s.cost_usd:.4f} used of max_cost_usd=${self.max_cost_usd:.4f}"
        if self.max_requests is not None and s.requests >= self.max_requests:
            return f"LLM request budget spent: {s.requests} requests made of max_requests={self.max_requests}"
        return None

    def check(self) -> None:
        """Raise :class:`BudgetExhausted` when the budget is spent (called before every request)."""
        reason = self.exhausted()
        if reason:
            raise BudgetExhausted(
                f"{reason} (model {self.model!r}, {self.spent.requests} requests, "
                f"{self.spent.total_tokens:,} tokens, ${self.spent.cost_usd:.4f}); the search stops here. "
                "Raise the budget in search.proposer.options to continue; a rerun resumes the study."
            )
