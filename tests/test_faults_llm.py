"""Faults of the ``llm`` proposer and of config loading, through the real command line.

Each test starts a small OpenAI-compatible server on 127.0.0.1 that misbehaves on purpose (an answer nested
thousands of levels deep, an answer of megabytes, a server that drips one byte a second, one that never answers)
and runs a 3-trial ``nasbench-macro`` search with the ``llm`` proposer pointed at it (``timeout_s: 5``,
``max_retries: 1``). It checks the exit code, the one line the user sees, that no traceback is printed, and what
is left on disk. A config whose YAML aliases expand to billions of values is refused before anything runs.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import MACRO_JSON
from fault_support import (
    Result,
    Watched,
    assert_no_traceback,
    assert_one_error,
    cli,
    cli_in_process,
    error_lines,
    write_yaml,
)
from llm_server import ChatServer, Hang, Reply

#: a stop after SIGTERM or Ctrl-C takes at most this long (the fault suite's bound for a training trial is 10 s;
#: an LLM request has nothing to finish)
STOP_WITHIN = 5.0


def macro_config(name: str, base_url: str, **options: Any) -> dict[str, Any]:
    """The ``macro`` config of these faults: NAS-Bench-Macro, the ``llm`` proposer at ``base_url``, 3 trials."""
    opts = {
        "model": "test-model",
        "base_url": base_url,
        "timeout_s": 5,
        "max_retries": 1,
        "backoff_s": 0,
        **options,
    }
    return {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "space": {"name": "nasbench-macro"},
        "search": {"n_trials": 3, "proposer": {"name": "llm", "options": opts}},
        "evaluator": {"name": "nasbench-macro", "options": {"path": str(MACRO_JSON)}},
    }


def trial_rows(run: Path) -> list[tuple[int, str, dict[str, Any]]]:
    """``(number, state, user attributes)`` of every trial in ``run/study.db``, read with plain SQLite."""
    con = sqlite3.connect(f"file:{run / 'study.db'}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT trial_id, number, state FROM trials ORDER BY number").fetchall()
        out = []
        for trial_id, number, state in rows:
            attrs = con.execute(
                "SELECT key, value_json FROM trial_user_attributes WHERE trial_id = ?", (trial_id,)
            ).fetchall()
            out.append((number, state, {k: json.loads(v) for k, v in attrs}))
        return out
    finally:
        con.close()


def last_json(res: Result) -> Any:
    return json.loads(res.out.strip().splitlines()[-1])


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture
def server() -> Iterator[ChatServer]:
    with ChatServer() as s:
        yield s


# -- YAML alias expansion ("billion laughs") ---------------------------------------------------------------------
def laughs_yaml(levels: int = 9, width: int = 9) -> str:
    """A config whose ``extra_body`` holds ``width ** levels`` strings through ``levels`` nested aliases."""
    lines = ["name: laughs", "search:", "  proposer:", "    name: llm", "    options:", "      extra_body:"]
    lines.append('        l0: &l0 ["lol"]')
    for i in range(1, levels + 1):
        lines.append(f"        l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


def test_a_config_whose_aliases_expand_to_billions_of_values_is_refused_at_once(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``check`` used to say ok after seconds and ``run`` exhausted the memory; both refuse it, in one line."""
    path = tmp_path / "laughs.yaml"
    path.write_text(laughs_yaml())
    res = cli_in_process("check", str(path), cwd=tmp_path, capfd=capfd)
    line = assert_one_error(res, 2, r"laughs\.yaml.*alias")
    assert "over the limit of 10000" in line, line
    assert res.seconds < 2, res
    run = tmp_path / "r"
    res = cli("run", str(path), "--run-dir", str(run), cwd=tmp_path, timeout=60)
    assert_one_error(res, 2, r"laughs\.yaml.*alias")
    assert not run.exists(), list(run.rglob("*"))


def test_aliases_in_a_set_value_are_bounded_too(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    value = "[" + ", ".join(levels) + "]"
    write_yaml(tmp_path / "c.yaml", {"name": "c", "search": {"proposer": {"name": "llm"}}})
    res = cli_in_process(
        "check", str(tmp_path / "c.yaml"), "--set", f"search.proposer.options.extra_body.x={value}",
        cwd=tmp_path, capfd=capfd,
    )  # fmt: skip
    assert_one_error(res, 2, r"--set .*alias")
    assert res.seconds < 2, res


def test_a_set_value_nested_too_deep_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    write_yaml(tmp_path / "c.yaml", {"name": "c"})
    value = "[" * 5000 + "]" * 5000
    res = cli_in_process("check", str(tmp_path / "c.yaml"), "--set", f"x={value}", cwd=tmp_path, capfd=capfd)
    assert_one_error(res, 2, r"--set .*nested too deep")


def test_a_config_with_a_few_aliases_still_loads(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """Anchors that repeat a block (the usual use) are well inside the bound."""
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "name: anchors\n"
        "space: {name: mbv2, options: &opts {stem_stride: 1, stem_channels: 16, widths: [1.0],"
        " stages: [[16, 1, 1], [24, 2, 2]], ops: [ir_k3_e3], head_channels: 64}}\n"
        "teacher: {space: mbv2, space_options: *opts, params: null}\n"
    )
    res = cli_in_process("check", str(path), cwd=tmp_path, capfd=capfd)
    assert_no_traceback(res)
    assert res.rc == 0 and not error_lines(res.err), res


# -- answers nested thousands of levels deep ---------------------------------------------------------------------
def test_deeply_nested_answers_are_unusable_and_cost_little(tmp_path: Path, server: ChatServer) -> None:
    """1,500 levels stopped the search with RecursionError; 100,000 kept a core busy for minutes. Both are an
    unusable answer now: the proposer re-asks, then falls back to a random candidate, and the run ends at once."""
    deep = ["[" * 1500 + "]" * 1500, "[" * 100_000 + "]" * 100_000, "{" * 100_000]
    server.responder = lambda body: Reply(deep[len(server.chat_requests) % len(deep)])
    base = write_yaml(tmp_path / "macro.yaml", macro_config("deep", server.base_url))
    run = tmp_path / "r"
    res = cli("run", str(base), "--run-dir", str(run), "--json", cwd=tmp_path, timeout=300)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert not error_lines(res.err), res
    assert res.seconds < 120, res  # with the start of the process; it used to run for more than 10 minutes
    rows = trial_rows(run)
    assert [state for _, state, _ in rows] == ["COMPLETE"] * 3, rows
    rounds = [json.loads(line) for line in (run / "llm_transcripts.jsonl").read_text().splitlines()]
    assert len(rounds) == 3 and all(r["outcome"] == "no valid candidate" for r in rounds), rounds
    reasons = [reason for r in rounds for c in r["calls"] for reason in c["reasons"]]
    assert reasons and all("levels deep" in reason for reason in reasons), reasons
    assert len(server.chat_requests) >= 6  # re-asked before falling back


def test_llm_parse_of_a_deeply_nested_answer_says_why_it_is_unusable(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``automl-kd llm parse`` on such a file was an internal error."""
    answer = tmp_path / "deep.txt"
    answer.write_text("[" * 100_000 + "]" * 100_000)
    res = cli_in_process("llm", "parse", "--space", "nasbench-macro", str(answer), cwd=tmp_path, capfd=capfd)
    assert_no_traceback(res)
    assert res.rc == 1 and not error_lines(res.err), res
    assert "not usable: " in res.err and "levels deep" in res.err, res
    assert res.seconds < 5, res


# -- answers far larger than max_tokens allows -------------------------------------------------------------------
def test_answers_far_over_max_tokens_are_cut_before_anything_stores_them(
    tmp_path: Path, server: ChatServer
) -> None:
    """2 MB answers against a bound of a few hundred tokens: what reaches the study, the transcript, the
    response cache and the report is cut at the bound derived from the request's max_tokens, and the transcript
    says so."""
    big = "This design is excellent. " * 80_000  # 2 MB of prose
    server.responder = lambda body: Reply(big, completion_tokens=400)
    # one candidate, one re-ask: two calls a round (re-asks sample, so every re-ask is sent; 4 candidates with
    # 3 re-asks each would send 13, each a longer conversation of cut answers, and the bounds are for 2)
    base = write_yaml(
        tmp_path / "macro.yaml", macro_config("big", server.base_url, candidates_per_call=1, max_reasks=1)
    )
    run = tmp_path / "r"
    res = cli("run", str(base), "--run-dir", str(run), "--json", cwd=tmp_path, timeout=300)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert [state for _, state, _ in trial_rows(run)] == ["COMPLETE"] * 3
    max_tokens = server.chat_requests[0].body["max_tokens"]
    assert (run / "study.db").stat().st_size < 1_000_000
    assert (run / "llm_transcripts.jsonl").stat().st_size < 1_000_000
    assert folder_size(run / "llm_cache") < 1_000_000
    rounds = [json.loads(line) for line in (run / "llm_transcripts.jsonl").read_text().splitlines()]
    calls = [c for r in rounds for c in r["calls"]]
    assert calls and all(c["truncated"]["chars"] == len(big) for c in calls), calls[0]
    assert all(c["truncated"]["kept"] <= 16 * max_tokens for c in calls)
    answers = [m["content"] for r in rounds for m in r["messages"] if m["role"] == "assistant"]
    assert answers and all(len(a) <= 16 * max_tokens for a in answers)
    report = cli("report", "--run-dir", str(run), cwd=tmp_path, timeout=300)
    assert_no_traceback(report)
    assert report.rc == 0, report
    assert (run / "report" / "index.html").stat().st_size < 2_000_000


# -- timeout_s is a deadline for the whole answer; SIGTERM and Ctrl-C stop a request -------------------------------
class DripServer:
    """Accepts chat requests and answers one byte a second, forever: no read ever waits ``timeout_s``."""

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self.requests: list[float] = []  # when each request came (time.monotonic)
        self._stop = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"

    def __enter__(self) -> DripServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.requests.append(time.monotonic())
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        body = b'{"choices": [' + b" " * 100_000
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        data = head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        with conn:
            conn.recv(65536)
            for i in range(len(data)):
                if self._stop.wait(self.interval if i else 0):
                    return
                try:
                    conn.sendall(data[i : i + 1])
                except OSError:
                    return  # the client gave up


def test_a_server_that_drips_bytes_cannot_outlast_timeout_s(tmp_path: Path) -> None:
    """One byte a second kept a run with ``timeout_s: 5`` going for minutes, its trial left RUNNING: now each
    attempt ends at 5 s, and after the retry the search stops with the reason in one line."""
    with DripServer() as drip:
        base = write_yaml(tmp_path / "macro.yaml", macro_config("drip", drip.base_url))
        run = tmp_path / "r"
        res = cli("run", str(base), "--run-dir", str(run), cwd=tmp_path, timeout=300)
        end = time.monotonic()
        assert_one_error(res, 1, r"no answer from http://127\.0\.0\.1:\d+/v1 after 2 attempts.*timeout_s=5")
        first, second = drip.requests
    assert 4.5 <= second - first < 5 + 3, drip.requests  # the first attempt ended at its deadline
    assert end - second < 5 + 10, (end - second, res)  # the second too, and the process exited
    rows = trial_rows(run)
    assert [state for _, state, _ in rows] == ["FAIL"], rows
    assert "timeout_s=5" in rows[0][2]["fail_reason"], rows


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_a_request_that_is_never_answered_within_seconds(
    tmp_path: Path, server: ChatServer, signum: int
) -> None:
    """With a server that never answers and ``timeout_s: 120``, SIGTERM took effect after the whole timeout and
    exited 1. Now the request is abandoned at once: SIGTERM ends the run as "stopped" (exit 0), Ctrl-C with 130;
    the trial is recorded as interrupted, nothing is left RUNNING."""
    server.responder = lambda body: Hang(600)
    base = write_yaml(tmp_path / "macro.yaml", macro_config("hang", server.base_url, timeout_s=120))
    run = tmp_path / "r"
    w = Watched("run", str(base), "--run-dir", str(run), "--json", cwd=tmp_path)
    try:
        wait_until(lambda: server.chat_requests, 120, "the run sent no request")
        t_sig = w.signal(signum)
        res = w.finish(timeout=60)
        seconds = time.monotonic() - t_sig
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
    assert_no_traceback(res)
    assert not error_lines(res.err), res
    assert seconds < STOP_WITHIN, f"{seconds:.1f} s from the signal to the exit\n{res}"
    if signum == signal.SIGTERM:
        assert res.rc == 0, res
        assert last_json(res)["stop_reason"] == "stopped by SIGTERM", res
    else:
        assert res.rc == 130, res
        assert "interrupted (SIGINT)" in res.err, res
    rows = trial_rows(run)
    assert [state for _, state, _ in rows] == ["FAIL"], rows
    assert rows[0][2]["outcome"] == "interrupted", rows
    assert len(server.chat_requests) == 1
