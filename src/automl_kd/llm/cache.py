"""Content-addressed response cache: exact replay of an LLM-driven search with zero HTTP requests.

An entry is one JSON file ``<dir>/<key[:2]>/<key>.json``; the key is the sha256 of the canonical JSON of the
model, the messages and every sampling parameter sent (never the API key, the URL or the timeout). Writes are
atomic (temp file + ``os.replace``), so a crash never leaves half an entry; a corrupt entry is reported, not
served.

Modes:

- ``off``: no cache.
- ``record``: every answer is stored; a request identical to a stored one is answered from the store, so that
  repeated prompts get the same answer in the recorded run and in its replay.
- ``replay``: answers come only from the store; a request that is not there raises :class:`ReplayMiss`.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from automl_kd.errors import CacheError

CacheMode = Literal["off", "record", "replay"]
MODES: tuple[str, ...] = ("off", "record", "replay")
FORMAT = 1


class ReplayMiss(CacheError):
    """Replay mode met a request that the recorded run never made."""


def cache_key(model: str, messages: list[dict[str, Any]], params: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of ``(model, messages, params)``."""
    blob = json.dumps(
        {"model": model, "messages": messages, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """Stored answers, one JSON file per request key.

    Example::

        cache = ResponseCache("runs/r1/llm_cache", mode="record")
        key = cache_key("gpt-4o", messages, {"temperature": 0})
        entry = cache.get(key)            # None on a miss
        cache.put(key, {"model": "gpt-4o", ...}, {"content": "...", "usage": {...}})
    """

    def __init__(self, directory: str | os.PathLike[str], mode: CacheMode = "record") -> None:
        if mode not in MODES:
            raise CacheError(f"unknown cache mode {mode!r}; use one of {', '.join(MODES)}")
        self.dir = Path(directory)
        self.mode = mode
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        """The stored response for ``key``, or None; a corrupt or mismatched file raises
        :class:`CacheError`."""
        if self.mode == "off":
            return None
        p = self.path(key)
        if not p.exists():
            self.misses += 1
            if self.mode == "replay":
                raise ReplayMiss(
                    f"replay: no recorded answer for request {key[:12]} in {self.dir}; the prompt, model or "
                    "sampling parameters differ from the recorded run (a changed history, template or "
                    "option?). Run with cache: record to ask the endpoint."
                )
            return None
        try:
            entry = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"corrupt response-cache entry {p}: {exc}; delete it to ask again") from None
        if not isinstance(entry, dict) or entry.get("key") != key or "response" not in entry:
            raise CacheError(f"response-cache entry {p} does not belong to request {key[:12]}; delete it")
        self.hits += 1
        response: dict[str, Any] = entry["response"]
        return response

    def put(self, key: str, request: dict[str, Any], response: dict[str, Any]) -> Path | None:
        """Store ``response`` for ``key`` atomically (record mode only); return the file written."""
        if self.mode != "record":
            return None
        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        entry = {"format": FORMAT, "key": key, "request": request, "response": response}
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{key[:12]}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f, ensure_ascii=False, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p
