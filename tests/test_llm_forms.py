"""The structured-output forms are one table (automl_kd.llm.forms): every form in it is a valid
``structured_output`` of the client and of the ``llm`` proposer, ``auto`` tries its forms in the table's order,
and each form's request fields reach a real HTTP server as the table says."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from automl_kd.errors import ConfigError
from automl_kd.llm import ChatClient
from automl_kd.llm.forms import BY_NAME, FORMS, STRUCTURED_MODES, TABLE
from automl_kd.llm.proposer import LLMProposer
from automl_kd.llm.replies import rejects_form
from automl_kd.options import validate_options

try:
    from llm_server import ChatServer, Reply
except ImportError:  # tests/ is a package
    from tests.llm_server import ChatServer, Reply

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer", "maxItems": 3}}, "required": ["x"]}
MESSAGES = [{"role": "user", "content": "Propose a design."}]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    yield


def test_the_modes_are_the_table_and_auto_tries_its_forms_in_order() -> None:
    assert ("auto", *(f.name for f in TABLE), "off") == STRUCTURED_MODES
    assert (
        list(FORMS)
        == [f.name for f in TABLE if f.auto]
        == ["json_schema", "json_object_schema", "guided_json", "ollama_format"]
    )
    assert ChatClient("m")._forms == list(FORMS)


@pytest.mark.parametrize("mode", STRUCTURED_MODES)
def test_every_mode_is_a_valid_option_of_the_client_and_the_proposer(mode: str) -> None:
    assert ChatClient("m", structured_output=mode).structured_output == mode
    assert validate_options(LLMProposer, {"structured_output": mode}, "proposer 'llm'") == {
        "structured_output": mode
    }


def test_a_mode_outside_the_table_is_one_config_error_naming_the_table() -> None:
    with pytest.raises(ConfigError) as err:
        validate_options(LLMProposer, {"structured_output": "grammar"}, "proposer 'llm'")
    assert all(name in str(err.value) for name in BY_NAME) and "\n" not in str(err.value)
    with pytest.raises(ValueError, match="unknown mode 'grammar'"):
        ChatClient("m", structured_output="grammar")


@pytest.mark.parametrize("form", list(BY_NAME))
def test_each_forced_form_sends_the_tables_fields(form: str) -> None:
    with ChatServer([Reply('{"x": 1}')]) as server:
        client = ChatClient("m", base_url=server.base_url, structured_output=form, max_retries=0)
        result = client.complete(MESSAGES, schema=SCHEMA)
        assert result.structured_form == form
        (request,) = server.chat_requests
        expected = BY_NAME[form].fields(SCHEMA)
        sent = {k: v for k, v in request.body.items() if k in ("response_format", "guided_json", "format")}
        assert sent == {
            **expected.get("extra_body", {}),
            **{k: v for k, v in expected.items() if k != "extra_body"},
        }
    if form == "json_schema":  # OpenAI's strict mode: the keywords it rejects are taken out
        assert "maxItems" not in str(sent)


def test_a_rejection_is_recognised_by_the_forms_own_field() -> None:
    assert rejects_form(BY_NAME["guided_json"].word, 400, "unknown field guided_json")
    assert not rejects_form(BY_NAME["json_schema"].word, 400, "unknown field guided_json")
    assert rejects_form(None, 500, "Input should be 'text' or 'json_object'")
    assert not rejects_form(
        BY_NAME["ollama_format"].word, 429, "format: slow down"
    )  # a rate limit, not a form
