"""automl-kd: find small, fast student networks and train them by knowledge distillation.

The public API is re-exported here; everything else is internal.
"""

from __future__ import annotations

from typing import Any

from ._version import __version__
from .config import Config, load_config
from .distill.augmenter import Augmenter, Outputs, PrepareContext, Progress, StepBatch
from .engine.constraints import Constraints
from .engine.outcome import TrialOutcome
from .engine.search import Search
from .errors import (
    AutomlKdError,
    BudgetExhausted,
    CacheError,
    CandidateRejected,
    ConfigError,
    DataError,
    DuplicateNameError,
    InfeasibleCandidate,
    InvalidCandidate,
    NoTrialCompleted,
    PluginError,
    StorageError,
    StorageUnavailable,
    TrainingDiverged,
    TrialInterrupted,
    UnknownNameError,
)
from .evaluator import Evaluator, TrialContext
from .hookspecs import hookimpl
from .manager import PluginManager, get_plugin_manager
from .proposer import HistoryEntry, Proposer, ProposerSampler
from .space import Candidate, Cost, SearchSpace

__all__ = [
    "Augmenter",
    "AutomlKdError",
    "BudgetExhausted",
    "CacheError",
    "Candidate",
    "CandidateRejected",
    "Config",
    "ConfigError",
    "Constraints",
    "Cost",
    "DataError",
    "DuplicateNameError",
    "Evaluator",
    "HistoryEntry",
    "InfeasibleCandidate",
    "InvalidCandidate",
    "LLMSampler",
    "NoTrialCompleted",
    "Outputs",
    "PluginError",
    "PluginManager",
    "PrepareContext",
    "Progress",
    "Proposer",
    "ProposerSampler",
    "Search",
    "SearchSpace",
    "StepBatch",
    "StorageError",
    "StorageUnavailable",
    "TrainingDiverged",
    "TrialContext",
    "TrialInterrupted",
    "TrialOutcome",
    "UnknownNameError",
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
