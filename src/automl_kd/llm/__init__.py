"""The LLM proposer (GENIUS-style), usable as the ``llm`` plugin or as :class:`LLMSampler` in plain Optuna.

Nothing here imports ``openai`` until a request is really sent (``pip install 'automl-kd[llm]'``).
"""

from __future__ import annotations

from .accounting import DEFAULT_PRICES, Accountant, Usage, price_for
from .cache import ReplayMiss, ResponseCache, cache_key
from .client import FORMS, ChatClient, ChatResult, ContextOverflow, LLMUnavailable, require_openai
from .parser import ParsedCandidate, ParseResult, loads_tolerant, parse_answer, parse_answer_file
from .prompts import STRATEGIES, TEMPLATES, PromptStrategy, Templates
from .proposer import LLMProposer, NoValidCandidate
from .sampler import LLMSampler

__all__ = [
    "DEFAULT_PRICES",
    "FORMS",
    "STRATEGIES",
    "TEMPLATES",
    "Accountant",
    "ChatClient",
    "ChatResult",
    "ContextOverflow",
    "LLMProposer",
    "LLMSampler",
    "LLMUnavailable",
    "NoValidCandidate",
    "ParseResult",
    "ParsedCandidate",
    "PromptStrategy",
    "ReplayMiss",
    "ResponseCache",
    "Templates",
    "Usage",
    "cache_key",
    "loads_tolerant",
    "parse_answer",
    "parse_answer_file",
    "price_for",
    "require_openai",
]
