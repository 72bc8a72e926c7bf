"""The structured-output forms, one table: how each kind of server is asked to constrain an answer to a JSON
schema. A new form is one :class:`Form` in :data:`TABLE` (its name, the servers that take it, the request fields
that carry the schema, and the request field an error names when a server rejects it); the client's ``auto``
negotiation, the ``structured_output`` option of the client and the ``llm`` proposer, and the recognition of a
rejection all follow from the table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .replies import strict_schema


@dataclass(frozen=True)
class Form:
    name: str
    #: the servers that take it (the option's documentation)
    servers: str
    #: the request fields that carry ``schema`` in this form
    fields: Callable[[dict[str, Any]], dict[str, Any]]
    #: the form's own request field, which an error answer names when the server rejects the form
    word: str | None = None
    #: whether ``auto`` tries it (in the table's order); a form that carries no schema is only ever forced
    auto: bool = True


TABLE: tuple[Form, ...] = (
    Form(
        "json_schema",
        "OpenAI response_format json_schema, strict (OpenAI, Azure, vLLM, Ollama >= 0.5, llama-server)",
        lambda schema: {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": strict_schema(schema), "strict": True},
            }
        },
    ),
    Form(
        "json_object_schema",
        "response_format json_object with a schema (llama-cpp-python's server)",
        lambda schema: {"response_format": {"type": "json_object", "schema": schema}},
    ),
    Form(
        "guided_json",
        "guided_json request field (vLLM)",
        lambda s: {"extra_body": {"guided_json": s}},
        "guided_json",
    ),
    Form("ollama_format", "format request field (Ollama)", lambda s: {"extra_body": {"format": s}}, "format"),
    Form(
        "json_object",
        "response_format json_object without a schema (any JSON; the parser checks the rest)",
        lambda schema: {"response_format": {"type": "json_object"}},
        auto=False,
    ),
)
BY_NAME: dict[str, Form] = {f.name: f for f in TABLE}
#: the forms ``auto`` tries, in order, and the servers that take each
FORMS: dict[str, str] = {f.name: f.servers for f in TABLE if f.auto}
#: every value of ``structured_output``: negotiate, one form forced, or none
STRUCTURED_MODES: tuple[str, ...] = ("auto", *(f.name for f in TABLE), "off")

if TYPE_CHECKING:
    StructuredMode = str
else:  # the options check of the client and the proposer reads the table's names from this Literal
    StructuredMode = Literal[STRUCTURED_MODES]
