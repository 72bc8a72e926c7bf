"""automl-kd: find small, fast student networks and train them by knowledge distillation.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

from typing import Any

from .augmenter import Augmenter, Outputs, PrepareContext, StepBatch
from .config import Config, load_config
from .errors import (
    AutomlKdError,
    BudgetExhausted,
    CandidateRejected,
    ConfigError,
    DataError,
    InfeasibleCandidate,
    InvalidCandidate,
    PluginError,
)
from .evaluator import Evaluator, TrialContext
from .hookspecs import hookimpl
from .manager import PluginManager, get_plugin_manager
from .proposer import HistoryEntry, Proposer, ProposerSampler
from .search import Constraints, Search
from .space import Candidate, Cost, SearchSpace

__version__ = "0.1.0"

__all__ = [
    "Augmenter",
    "AutomlKdError",
    "BudgetExhausted",
    "Candidate",
    "CandidateRejected",
    "Config",
    "ConfigError",
    "Constraints",
    "Cost",
    "DataError",
    "Evaluator",
    "HistoryEntry",
    "InfeasibleCandidate",
    "InvalidCandidate",
    "LLMSampler",
    "Outputs",
    "PluginError",
    "PluginManager",
    "PrepareContext",
    "Proposer",
    "ProposerSampler",
    "Search",
    "SearchSpace",
    "StepBatch",
    "TrialContext",
    "__version__",
    "get_plugin_manager",
    "hookimpl",
    "load_config",
]


def __getattr__(name: str) -> Any:
    # LLMSampler needs the optional `openai` extra: import it only when asked for
    if name == "LLMSampler":
        from .llm import LLMSampler

        return LLMSampler
    raise AttributeError(f"module 'automl_kd' has no attribute {name!r}")
