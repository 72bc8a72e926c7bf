"""The chat client's HTTP requests, bounded in time: a deadline for the whole answer and a stop request.

An HTTP client's timeout bounds each wait for the next bytes, so a server that sends one byte a second holds a
request for ever. Each request here runs on an ``openai.AsyncOpenAI`` client in an event loop of its own thread
and is cancelled when its deadline passes or when ``should_stop()`` turns true (SIGTERM, Ctrl-C: the engine's
stop flag), which closes its connection. The caller's thread only waits, in steps of :data:`POLL_S` seconds, so
its signal handlers run and a stop takes effect within a fraction of a second.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from automl_kd.errors import TrialInterrupted

#: how often a waiting request looks at the stop flag
POLL_S = 0.05


class DeadlineExceeded(Exception):
    """The whole answer did not arrive within the request's deadline."""


class Requests:
    """Chat-completion requests through one ``AsyncOpenAI`` client, each under a deadline and a stop flag.

    Example::

        requests = Requests(openai, {"api_key": "x", "base_url": url}, should_stop=lambda: False)
        resp = requests.create({"model": "m", "messages": msgs}, deadline_s=30)
    """

    def __init__(
        self, openai: Any, connect: dict[str, Any], should_stop: Callable[[], bool] | None = None
    ) -> None:
        self._openai = openai
        self._connect = connect
        self.should_stop = should_stop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or not self._loop.is_running():
                loop = asyncio.new_event_loop()
                started = threading.Event()
                loop.call_soon(started.set)
                threading.Thread(target=loop.run_forever, name="automl-kd-llm-requests", daemon=True).start()
                started.wait()
                weakref.finalize(self, _stop_loop, loop)  # its thread ends with this object
                self._loop, self._client = loop, None
            return self._loop

    async def _create(self, request: dict[str, Any], deadline_s: float) -> Any:
        if self._client is None:  # made on the loop that uses it (its connections belong to that loop)
            self._client = self._openai.AsyncOpenAI(**self._connect)
        try:
            return await asyncio.wait_for(self._client.chat.completions.create(**request), deadline_s)
        except asyncio.TimeoutError:  # on Python 3.10 not yet the builtin TimeoutError
            raise DeadlineExceeded(f"no whole answer within {deadline_s:g} s") from None

    def stopped(self) -> bool:
        return self.should_stop is not None and bool(self.should_stop())

    def create(self, request: dict[str, Any], deadline_s: float) -> Any:
        """``chat.completions.create(**request)``: its answer or its error, :class:`DeadlineExceeded` after
        ``deadline_s`` seconds, :class:`~automl_kd.errors.TrialInterrupted` as soon as a stop is asked for."""
        if self.stopped():
            raise TrialInterrupted("a stop was requested before the LLM request was sent")
        future = asyncio.run_coroutine_threadsafe(self._create(request, deadline_s), self._running_loop())
        try:
            while True:
                try:
                    return future.result(timeout=POLL_S)
                except concurrent.futures.TimeoutError:
                    if self.stopped():
                        raise TrialInterrupted("a stop was requested during the LLM request") from None
        finally:
            future.cancel()  # a stop, a second Ctrl-C: the request is abandoned and its connection closed

    def pause(self, seconds: float, sleep: Callable[[float], None]) -> None:
        """Wait ``seconds`` (a retry's backoff), ended by a stop request."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if self.stopped():
                raise TrialInterrupted("a stop was requested while waiting to retry the LLM request")
            sleep(min(POLL_S, left))


def _stop_loop(loop: asyncio.AbstractEventLoop) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
