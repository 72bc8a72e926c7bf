"""A chat client for any OpenAI-compatible endpoint: retries, timeouts, structured output, caching.

It wraps the official ``openai`` client (imported only when a request is really sent, so replay and the rest
of automl-kd work without it). The key comes only from ``OPENAI_API_KEY``; it is kept in the ``openai`` client
object and is never part of a cache key, a cache file, a transcript, a log line or an error message. The
endpoint is ``base_url``, else ``OPENAI_BASE_URL``, else OpenAI's.

Retries are ours (the ``openai`` client runs with ``max_retries=0``) so that every attempt is counted and
recorded: 429, 408, 409 and 5xx answers, timeouts and connection errors are retried with exponential backoff
(or the server's ``Retry-After``), up to ``max_retries`` times; any other error stops with
:class:`LLMUnavailable`. ``timeout_s`` bounds the whole answer of each attempt, and ``should_stop()`` (the
host's stop flag) abandons a request or a backoff at once (:mod:`automl_kd.llm.transport`). An answer longer
than the request's ``max_tokens`` allows is cut before anything stores it (:mod:`automl_kd.llm.bounds`).

Structured output comes in the form each kind of server accepts (one table, :mod:`.forms`): OpenAI's ``json_schema``
(strict; also vLLM, Ollama >= 0.5 and the C++ ``llama-server``), llama.cpp's ``json_object`` with a ``schema``
(``llama-cpp-python``'s server, which answers ``json_schema`` with HTTP 500), vLLM's ``guided_json`` and
Ollama's ``format``. In ``auto`` mode they are tried in that order: an answer that rejects the form, in any
status (400, 422 or 500), is recognised by what it says (it names ``response_format``, the schema or the
form's field) and the next form is tried, then none at all (the tolerant parser reads the prose); what worked
is remembered for the rest of the run. A form forced with ``structured_output`` that the endpoint rejects
stops with :class:`LLMUnavailable` naming the form.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from automl_kd.errors import AutomlKdError

from . import replies
from .bounds import cut_answer
from .cache import ResponseCache, cache_key
from .forms import BY_NAME, FORMS, STRUCTURED_MODES, StructuredMode
from .transport import DeadlineExceeded, Requests

# words by which an error answer says it rejects the structured-output request (any status)
API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"
_RETRY_STATUS = frozenset({408, 409, 429})
log = logging.getLogger("automl_kd.llm")


class LLMUnavailable(AutomlKdError):
    """The endpoint refused the request, or gave no answer after every retry."""


class ContextOverflow(LLMUnavailable):
    """The endpoint refused the request because the conversation does not fit the model's context."""


def require_openai() -> ModuleType:
    """Import ``openai`` or fail with the install hint (the deferred-import guard)."""
    try:
        import openai
    except ImportError:
        raise ImportError("the llm proposer needs the openai client: pip install 'automl-kd[llm]'") from None
    return openai


def safe_url(url: str | None) -> str:
    """``url`` without user info, query or fragment (for transcripts and messages)."""
    if not url:
        return "https://api.openai.com/v1"
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


@dataclass
class ChatResult:
    """One answered chat request, as stored in the transcript (never contains the key)."""

    content: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    key: str
    cached: bool = False
    attempts: int = 0
    retries: int = 0
    latency_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    structured: bool = False
    usage_estimated: bool = False
    model: str = ""
    structured_form: str | None = None
    #: set when the answer was longer than the request's max_tokens allows: ``{"chars": ..., "kept": ...}``
    truncated: dict[str, int] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "request_key": self.key,
            "cached": self.cached,
            "attempts": self.attempts,
            "retries": self.retries,
            "latency_s": round(self.latency_s, 4),
            "errors": list(self.errors),
            "structured": self.structured,
            "structured_form": self.structured_form,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "usage_estimated": self.usage_estimated,
            "model": self.model,
            "truncated": self.truncated,
        }


class ChatClient:
    """Chat completions with our own retry loop, structured-output negotiation and the response cache.

    Example::

        client = ChatClient("gpt-4o-mini", base_url="http://127.0.0.1:8000/v1", timeout_s=30)
        result = client.complete([{"role": "user", "content": "Say hi"}], temperature=0.0)
        print(result.content, result.prompt_tokens, result.retries)
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        structured_output: StructuredMode = "auto",
        cache: ResponseCache | None = None,
        extra_body: dict[str, Any] | None = None,
        jitter_seed: int | None = 0,
        sleep: Callable[[float], None] = time.sleep,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        if timeout_s <= 0 or max_retries < 0 or backoff_s < 0 or backoff_max_s < 0:
            raise ValueError("timeout_s must be > 0; max_retries, backoff_s and backoff_max_s must be >= 0")
        if structured_output not in STRUCTURED_MODES:
            raise ValueError(
                f"structured_output: unknown mode {structured_output!r}; use one of {', '.join(STRUCTURED_MODES)}"
            )
        self.model = model
        self.base_url = base_url or os.environ.get(BASE_URL_ENV) or None
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.structured_output = structured_output
        self.cache = cache
        self.extra_body = dict(extra_body or {})
        self._rng = random.Random(jitter_seed)
        self._sleep = sleep
        self.should_stop = should_stop
        self._client: Requests | None = None
        self._secret: str | None = None
        self._forms: list[str] = list(FORMS)  # "auto": the forms not yet rejected, in the order to try them
        self._form_ok = False  # "auto": the first form has been accepted; no more negotiation
        self.rejected_forms: list[str] = []
        self.http_requests = 0

    @property
    def endpoint(self) -> str:
        return safe_url(self.base_url)

    # -- the openai client -----------------------------------------------------------------------------------
    def _openai(self) -> Requests:
        if self._client is None:
            openai = require_openai()
            key = os.environ.get(API_KEY_ENV)
            if not key:
                if self.base_url is None:
                    raise LLMUnavailable(
                        f"{API_KEY_ENV} is not set: export your OpenAI key, or set base_url (or "
                        f"{BASE_URL_ENV}) to a local OpenAI-compatible server"
                    )
                key = "no-key"  # local servers (vLLM, Ollama, llama.cpp) accept any key
            self._secret = key
            connect = {"api_key": key, "base_url": self.base_url, "timeout": self.timeout_s, "max_retries": 0}
            self._client = Requests(openai, connect, self.should_stop)
        return self._client

    def _scrub(self, text: str) -> str:
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "***")
        return text[:500]

    # -- requests --------------------------------------------------------------------------------------------
    @property
    def structured_form(self) -> str | None:
        """The form the next structured request uses (None: none, the tolerant parser reads the answer)."""
        mode = self.structured_output
        if mode == "off":
            return None
        if mode == "auto":
            return self._forms[0] if self._forms else None
        return mode

    def _format_fields(self, schema: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
        """The form to use and the request fields that carry ``schema`` in it (:mod:`.forms`)."""
        form = self.structured_form if schema is not None else None
        if form is None or schema is None:
            return None, {}
        return form, BY_NAME[form].fields(schema)

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        max_tokens: int | None = None,
        seed: int | None = None,
        schema: dict[str, Any] | None = None,
    ) -> ChatResult:
        """Ask for one answer to ``messages``; ``schema`` requests JSON-schema structured output where
        possible.

        Raises :class:`LLMUnavailable` when the endpoint refuses or never answers, and
        :class:`~automl_kd.llm.cache.ReplayMiss` in replay mode for a request that was not recorded.
        """
        sampling: dict[str, Any] = {
            "temperature": temperature,
            "top_p": top_p,
            "max_tokens": max_tokens,
            "seed": seed,
            "extra_body": self.extra_body or None,
        }
        sampling = {k: v for k, v in sampling.items() if v is not None}
        key_params = dict(sampling)
        if schema is not None and self.structured_output != "off":
            key_params["structured_output"] = self.structured_output
            key_params["schema"] = schema
        key = cache_key(self.model, messages, key_params)
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                usage = hit.get("usage", {})
                content, truncated = cut_answer(str(hit.get("content", "")), max_tokens)
                return ChatResult(
                    content=content,
                    truncated=hit.get("truncated") or truncated,
                    prompt_tokens=int(usage.get("prompt_tokens", 0)),
                    completion_tokens=int(usage.get("completion_tokens", 0)),
                    finish_reason=hit.get("finish_reason"),
                    key=key,
                    cached=True,
                    structured=bool(hit.get("structured")),
                    structured_form=hit.get("structured_form"),
                    model=str(hit.get("model", "")),
                    usage_estimated=bool(usage.get("estimated")),
                )
        result = self._request(messages, sampling, schema, key)
        if self.cache is not None:
            self.cache.put(
                key,
                {"model": self.model, "messages": messages, "params": key_params},
                {
                    "content": result.content,
                    "finish_reason": result.finish_reason,
                    "model": result.model,
                    "structured": result.structured,
                    "structured_form": result.structured_form,
                    "truncated": result.truncated,
                    "usage": {
                        "prompt_tokens": result.prompt_tokens,
                        "completion_tokens": result.completion_tokens,
                        "estimated": result.usage_estimated,
                    },
                },
            )
        return result

    def _request(
        self,
        messages: list[dict[str, Any]],
        sampling: dict[str, Any],
        schema: dict[str, Any] | None,
        key: str,
    ) -> ChatResult:
        openai = require_openai()
        client = self._openai()
        errors: list[str] = []
        attempts = retries = 0
        start = time.perf_counter()
        while True:
            kwargs: dict[str, Any] = {k: v for k, v in sampling.items() if k != "extra_body"}
            form, fields = self._format_fields(schema)
            extra = {**self.extra_body, **fields.get("extra_body", {})}
            if extra:
                kwargs["extra_body"] = extra
            if "response_format" in fields:
                kwargs["response_format"] = fields["response_format"]
            attempts += 1
            self.http_requests += 1
            retry_after: float | None = None
            try:  # timeout_s bounds the whole answer, not only each wait for its next bytes
                request = {"model": self.model, "messages": messages, "timeout": self.timeout_s, **kwargs}
                resp = client.create(request, deadline_s=self.timeout_s)
            except (openai.APITimeoutError, DeadlineExceeded):
                errors.append(f"attempt {attempts}: no answer within timeout_s={self.timeout_s:g}")
            except openai.APIConnectionError as exc:
                errors.append(f"attempt {attempts}: connection error: {self._scrub(replies.cause(exc))}")
            except openai.APIStatusError as exc:
                status = exc.status_code
                detail = self._scrub(str(exc))
                if form is not None and replies.rejects_form(BY_NAME[form].word, status, detail):
                    if self.structured_output != "auto":
                        raise LLMUnavailable(
                            f"the endpoint {self.endpoint} rejected structured_output={form} (HTTP {status}: "
                            f"{detail}); set structured_output: auto to use a form it accepts, or off"
                        ) from None
                    # not this form: the next one (or none, and the tolerant parser), for the rest of the run
                    self._forms.remove(form)
                    self.rejected_forms.append(form)
                    nxt = (
                        self.structured_form or "no structured output (the tolerant parser reads the answer)"
                    )
                    errors.append(
                        f"attempt {attempts}: HTTP {status}: the endpoint rejected structured output form "
                        f"{form}; trying {nxt} ({replies.one_line(detail)})"
                    )
                    log.info("%s rejected structured output form %s; using %s", self.endpoint, form, nxt)
                    continue
                if status == 400 and replies.overflows(detail):
                    raise ContextOverflow(
                        f"the conversation does not fit the model's context at {self.endpoint}: {detail}"
                    ) from None
                if status not in _RETRY_STATUS and status < 500:
                    hint = {
                        401: "; check OPENAI_API_KEY",
                        403: "; check OPENAI_API_KEY and the model's access",
                        404: "; check the model name and base_url",
                    }.get(status, "")
                    raise LLMUnavailable(
                        f"the endpoint {self.endpoint} refused the request (HTTP {status}): {detail}{hint}"
                    ) from None
                errors.append(f"attempt {attempts}: HTTP {status}: {detail}")
                retry_after = replies.retry_after(exc)
            else:
                if form is not None and self.structured_output == "auto" and not self._form_ok:
                    self._forms = [form]  # accepted: keep it for the rest of the run
                    self._form_ok = True
                result = self._result(resp, messages, key, attempts, retries, errors, start, form is not None)
                result.structured_form = form
                result.content, result.truncated = cut_answer(result.content, sampling.get("max_tokens"))
                return result
            if retries >= self.max_retries:
                raise LLMUnavailable(
                    f"no answer from {self.endpoint} after {attempts} attempts ({retries} retries): "
                    + "; ".join(errors[-3:])
                )
            retries += 1
            if self.should_stop is None:
                self._sleep(self._delay(retries, retry_after))
            else:  # a stop request ends the backoff too
                client.pause(self._delay(retries, retry_after), time.sleep)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.backoff_max_s)
        base = min(self.backoff_max_s, self.backoff_s * 2 ** (retry - 1))
        return base * (0.5 + 0.5 * self._rng.random())  # jitter, so parallel workers do not retry in step

    def _result(
        self,
        resp: Any,
        messages: list[dict[str, Any]],
        key: str,
        attempts: int,
        retries: int,
        errors: list[str],
        start: float,
        structured: bool,
    ) -> ChatResult:
        choice = resp.choices[0] if getattr(resp, "choices", None) else None
        content = ""
        finish = None
        if choice is not None:
            content = choice.message.content or getattr(choice.message, "refusal", None) or ""
            finish = choice.finish_reason
        usage = getattr(resp, "usage", None)
        if usage is None or getattr(usage, "prompt_tokens", None) is None:
            estimated = True
            # some servers omit usage; estimate ~4 characters a token so that token budgets still bind
            prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages) // 4 + 1
            completion_tokens = len(content) // 4 + 1
        else:
            estimated = False
            prompt_tokens = int(usage.prompt_tokens or 0)
            completion_tokens = int(usage.completion_tokens or 0)
        return ChatResult(
            content=content,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            finish_reason=finish,
            key=key,
            cached=False,
            attempts=attempts,
            retries=retries,
            latency_s=time.perf_counter() - start,
            errors=errors,
            structured=structured,
            usage_estimated=estimated,
            model=str(getattr(resp, "model", "") or ""),
        )
