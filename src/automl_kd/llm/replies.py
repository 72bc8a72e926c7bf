"""What an OpenAI-compatible server's answers and errors say: the root cause of a connection error, a rejected
structured-output form (recognised by its content in any status), a context overflow, ``Retry-After``, and the
strict form of an answer schema. Plain functions of text, apart from the HTTP client in :mod:`.client`."""

from __future__ import annotations

import os
from typing import Any

FORM_WORDS = ("response_format", "json_schema", "json_object", "schema", "grammar")


def cause(exc: BaseException) -> str:
    """The root of a connection error ("[Errno 111] Connection refused"), not only openai's "Connection
    error."."""
    text = str(exc)
    root = exc.__cause__ or exc.__context__
    while root is not None and (root.__cause__ or root.__context__) is not None:
        root = root.__cause__ or root.__context__
    errno = root.errno if isinstance(root, OSError) else None
    if errno and errno > 0 and getattr(root, "strerror", None) != os.strerror(errno):
        root_text = f"[Errno {errno}] {os.strerror(errno)}"  # not asyncio's "Connect call failed (...)"
    else:
        root_text = str(root or "")
    if root_text and root_text not in text:
        text = f"{text.rstrip('.')}: {root_text}"
    return text


def overflows(detail: str) -> bool:
    text = detail.lower()
    return "context length" in text or "context window" in text or "too many tokens" in text


def one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def rejects_form(word: str | None, status: int, detail: str) -> bool:
    """Whether an error answer rejects a structured-output request, judged by what it says, in any status:
    llama-cpp-python answers 500 ("Input should be 'text' or 'json_object'"), others 400 or 422. ``word`` is the
    form's own request field (``guided_json``), which a rejection may name instead of the usual words."""
    if status in (401, 403, 404, 408, 409, 429):
        return False
    text = detail.lower()
    words = (*FORM_WORDS, word) if word else FORM_WORDS
    return any(word in text for word in words)


#: JSON-schema keywords OpenAI's strict mode does not take (they bound the answer for grammar-based servers)
_NOT_STRICT = ("maxItems", "minItems", "maxLength", "minLength")


def strict_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` without the keywords OpenAI's strict mode rejects (recursively)."""

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: walk(v) for k, v in node.items() if k not in _NOT_STRICT}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    out: dict[str, Any] = walk(schema)
    return out


def retry_after(exc: Any) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            return float(raw) * scale
        except ValueError:
            return None  # an HTTP date: fall back to our own backoff
    return None
