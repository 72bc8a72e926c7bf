"""A real OpenAI-compatible chat-completions server for tests: threaded HTTP on 127.0.0.1, a free port.

It speaks ``POST /v1/chat/completions`` (and ``GET /v1/models``) with scripted behaviour, so tests drive the
real ``openai`` client over real HTTP. Each request takes the next scripted action, or asks
``responder(body)`` when the script is empty:

- :class:`Reply`: a 200 chat completion with ``content`` and usage token counts (none with ``usage=False``);
- :class:`Status`: an error status (429 with ``Retry-After``, 500, 401, ...) and an OpenAI-style error body;
- :class:`Hang`: no answer for ``seconds`` (longer than the client's timeout), then nothing.

Every request (path, headers, JSON body) is recorded in :attr:`ChatServer.requests`.

Example::

    with ChatServer([Status(429, retry_after=0.01), Reply("[1, 2]")]) as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """A successful answer."""

    content: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str = "stop"
    usage: bool = True


@dataclass
class Status:
    """An HTTP error answer, optionally with ``Retry-After`` (seconds)."""

    code: int
    message: str = "scripted error"
    retry_after: float | None = None


@dataclass
class Hang:
    """Accept the request and answer nothing for ``seconds``."""

    seconds: float = 5.0


Action = Reply | Status | Hang


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    time: float = field(default_factory=time.time)


class ChatServer:
    """The scripted server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(
        self,
        script: Iterable[Action] = (),
        responder: Callable[[dict[str, Any]], Action] | None = None,
        reject_response_format: bool = False,
        reject: Callable[[dict[str, Any]], Status | None] | None = None,
    ) -> None:
        self.script: deque[Action] = deque(script)
        self.responder = responder
        self.reject_response_format = reject_response_format
        self.reject = (
            reject  # answers a request before the script does (e.g. a server's structured-output rule)
        )
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": "test-model", "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    self._json(
                        400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
                    )
                    return
                with server._lock:
                    server.requests.append(Recorded(self.path, dict(self.headers.items()), body))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(
                        404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}}
                    )
                    return
                if server.reject_response_format and "response_format" in body:
                    self._json(
                        400,
                        {
                            "error": {
                                "message": "response_format is not supported by this server",
                                "type": "invalid_request_error",
                                "param": "response_format",
                            }
                        },
                    )
                    return
                refusal = server.reject(body) if server.reject is not None else None
                action = refusal if refusal is not None else server._next(body)
                if isinstance(action, Hang):
                    server._stop.wait(action.seconds)
                    return  # the client has given up; answer nothing
                if isinstance(action, Status):
                    headers = (
                        {"Retry-After": f"{action.retry_after:g}"} if action.retry_after is not None else {}
                    )
                    self._json(
                        action.code,
                        {"error": {"message": action.message, "type": "server_error", "code": action.code}},
                        headers,
                    )
                    return
                self._json(200, _completion(body, action, len(server.requests)))

            def _json(self, code: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="llm-test-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- scripting -------------------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def push(self, *actions: Action) -> None:
        with self._lock:
            self.script.extend(actions)

    def _next(self, body: dict[str, Any]) -> Action:
        with self._lock:
            if self.script:
                return self.script.popleft()
        if self.responder is not None:
            return self.responder(body)
        return Status(500, "no scripted response left")

    @property
    def chat_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path.rstrip("/") == "/v1/chat/completions"]


def _completion(body: dict[str, Any], reply: Reply, n: int) -> dict[str, Any]:
    prompt_chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
    out: dict[str, Any] = {
        "id": f"chatcmpl-test-{n}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", "test-model"),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": reply.finish_reason,
            }
        ],
    }
    if reply.usage:
        p = reply.prompt_tokens if reply.prompt_tokens is not None else prompt_chars // 4 + 1
        c = reply.completion_tokens if reply.completion_tokens is not None else len(reply.content) // 4 + 1
        out["usage"] = {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}
    return out


# -- answers for scripted tests ------------------------------------------------------------------------------
def genius_designs(space: Any, n: int, macs: tuple[float, float], seed: int = 0) -> list[list[list[int]]]:
    """``n`` distinct genius-imagenet designs (op ids per stage) whose MACs lie inside ``macs``."""
    import random

    rng = random.Random(seed)
    out: list[list[list[int]]] = []
    while len(out) < n:
        arch = [[0 if rng.random() < 0.5 else rng.randrange(1, 7) for _ in range(6)] for _ in range(5)]
        cost = space.cost(space.params_from_answer(arch))
        if macs[0] <= cost.macs <= macs[1] and arch not in out:
            out.append(arch)
    return out


def json_answer(space: Any, *designs: list[list[int]], rationale: str = "a scripted design") -> str:
    """The default strategy's structured answer holding ``designs``, each in the space's text form."""
    cands = [
        {"architecture": space.encode(space.params_from_answer(d)), "rationale": rationale} for d in designs
    ]
    return json.dumps({"candidates": cands})


def prose_answer(design: list[list[int]], window: str = "[270, 330]") -> str:
    """GENIUS-style prose: per-stage lists with commentary and an unrelated list (the FLOPs window)."""
    stages = "\n".join(f"Stage {i + 1} (Layers {2 + 6 * i}-{7 + 6 * i}): {s}" for i, s in enumerate(design))
    return (
        f"Based on the analysis, I propose the following design:\n\n{stages}\n\nThis keeps the total within "
        f"{window} while using deeper late stages."
    )
