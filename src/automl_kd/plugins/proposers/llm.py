"""The ``llm`` proposer plugin: GENIUS-style search with any OpenAI-compatible endpoint (see docs/llm.md).

Importing this module imports no ``openai``: the client is imported when the first request is sent, so
``automl-kd plugins`` lists ``llm`` on an install without the ``llm`` extra.
"""

from __future__ import annotations

from typing import Any

from automl_kd.hookspecs import hookimpl
from automl_kd.llm.proposer import LLMProposer


@hookimpl
def register_proposers(register: Any) -> None:
    register(
        "llm",
        LLMProposer,
        description="LLM proposer (GENIUS): any OpenAI-compatible endpoint, validated, cached, budgeted",
    )
