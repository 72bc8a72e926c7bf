"""Helpers of the fault suite: the real ``automl-kd`` console script in a subprocess, one-line error checks,
small configs, read-only files, unsafe pickles, a CPU hog.

Everything here goes through the command line as a user would type it, so the suite does not depend on where
the code lives inside the package.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import small_mbv2_options

#: the console script of the environment running the tests (``python -m automl_kd.cli`` where there is none)
_SCRIPT = Path(sys.executable).with_name("automl-kd")
AUTOML_KD = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "automl_kd.cli"]


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float

    def __str__(self) -> str:
        head = f"exit {self.rc} after {self.seconds:.1f} s"
        return f"{head}\n--- stdout\n{self.out[-3000:]}\n--- stderr\n{self.err[-4000:]}"


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"COLUMNS": "160", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}, **extra)
    return env


def cli(*args: str, cwd: Path, timeout: float = 180, env: dict[str, str] | None = None) -> Result:
    t0 = time.monotonic()
    p = subprocess.run(
        [*AUTOML_KD, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or cli_env(),
        errors="replace",
    )
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def cli_in_process(*args: str, cwd: Path, capfd: pytest.CaptureFixture[str]) -> Result:
    """The same command through the console script's own entry point, ``automl_kd.cli:main``, in this process
    (a few hundred milliseconds instead of seconds of interpreter start-up). An exception escaping ``main`` is
    what a user would see as a traceback: it is returned in stderr as one, so the checks catch it."""
    from automl_kd.cli import main

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    old = os.getcwd()
    capfd.readouterr()
    t0 = time.monotonic()
    trace = ""
    try:
        os.chdir(cwd)
        rc = main(list(args))
    except SystemExit as exc:  # argparse
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        rc = -1
        trace = "Traceback (escaped from main):\n" + traceback.format_exc()
    finally:
        os.chdir(old)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    out, err = capfd.readouterr()
    return Result(rc, out, err + trace, time.monotonic() - t0)


def spawn(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*AUTOML_KD, *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env or cli_env(),
        errors="replace",
    )


def assert_no_traceback(res: Result) -> None:
    for name, text in (("stdout", res.out), ("stderr", res.err)):
        assert "Traceback" not in text, f"a traceback on {name}:\n{res}"
        assert "Exception in thread" not in text, f"a thread's traceback on {name}:\n{res}"


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def assert_one_error(res: Result, code: int, pattern: str) -> str:
    """Exit ``code``, no traceback, exactly one ``error:`` line, the last line of stderr, matching ``pattern``."""
    assert_no_traceback(res)
    assert res.rc == code, f"expected exit {code}:\n{res}"
    lines = error_lines(res.err)
    assert len(lines) == 1, f"expected one error: line, got {lines}:\n{res}"
    assert res.err.strip().splitlines()[-1] == lines[0], f"the error line is not the last line:\n{res}"
    assert re.search(pattern, lines[0]), f"{lines[0]!r} does not match {pattern!r}"
    return lines[0]


def small_space() -> dict[str, Any]:
    return {"name": "mbv2", "options": small_mbv2_options()}


def base_config(name: str = "base", **top: Any) -> dict[str, Any]:
    """The fault suite's base.yaml: quick.yaml, 1000 training and 500 test images, one trial of one epoch."""
    cfg: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "data": {
            "dataset": "fashion-mnist",
            "train_size": 1000,
            "test_size": 500,
            "val_fraction": 0.2,
            "crop_padding": 0,
            "flip": False,
        },
        "space": small_space(),
        "search": {"proposer": {"name": "random"}, "n_trials": 1},
        "evaluator": {
            "name": "train",
            "options": {"epochs": 1, "batch_size": 128, "lr": 0.004, "latency": False},
        },
    }
    cfg.update(top)
    return cfg


def synthetic_config(name: str, n_trials: int, sleep: float = 0.2, **storage: Any) -> dict[str, Any]:
    """Instant trials (the ``synthetic`` evaluator) for storage and worker tests."""
    return {
        "name": name,
        "space": small_space(),
        "search": {"n_trials": n_trials, "proposer": {"name": "random"}},
        "evaluator": {"name": "synthetic", "options": {"sleep": sleep, "epochs": 2}},
        "storage": {"heartbeat_interval": 1, "grace_period": 3, **storage},
    }


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Payload:
    """Pickles as a call of ``os.system``: loading it unsafely would create ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def finished_run(w: Path) -> Path:
    """A real one-trial run of base.yaml in ``w/run`` and its finalized trial 0, through the CLI's entry point."""
    from automl_kd.cli import main

    base = write_yaml(w / "base.yaml", base_config())
    run = w / "run"
    previous = signal.getsignal(signal.SIGTERM)
    try:
        assert main(["run", str(base), "--run-dir", str(run)]) == 0
        assert main(["finalize", "--run-dir", str(run), "--trial", "0", "--epochs", "1"]) == 0
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (run / "final" / "trial-0" / "check_images.pt").is_file()
    return run


def write_cifar10(root: Path, meta: bytes | None = None, n_train: int = 250, n_test: int = 500) -> Path:
    """A small CIFAR-10 in the torchvision (python pickle) layout under ``root/cifar-10-batches-py``; ``meta``
    replaces the bytes of ``batches.meta`` (a crafted or broken file)."""
    import pickle

    import numpy as np

    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), np.uint8), "labels": [j % 10 for j in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(meta or pickle.dumps({"label_names": names}, protocol=2))
    return root


#: the debug line (``-v``) of a fit's first optimizer step: the process is training now
TRAINING = r"^DEBUG training: first step done"


def wait_until_stale(db: Path, grace_period: float, timeout: float = 60) -> None:
    """Wait until every RUNNING trial of the SQLite study ``db`` is stale by the heartbeat rule (its last beat, or
    its start, more than ``grace_period`` seconds ago), so the next run fails it and queues it again."""
    import optuna

    from automl_kd.storage.heartbeat import ATTR_BEAT

    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    try:
        deadline = time.monotonic() + timeout
        while True:
            ages = []
            for study in storage.get_all_studies():
                for t in storage.get_all_trials(study._study_id, states=(optuna.trial.TrialState.RUNNING,)):
                    started = t.datetime_start.timestamp() if t.datetime_start else time.time()
                    ages.append(time.time() - float(t.system_attrs.get(ATTR_BEAT, started)))
            if all(age > grace_period for age in ages):
                return
            assert time.monotonic() < deadline, f"running trials still beating after {timeout} s: {ages}"
            time.sleep(0.1)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def write_unsafe_pickle(path: Path, marker: Path) -> None:
    """A torch checkpoint whose unpickling would run code (what ``weights_only=True`` must refuse)."""
    import torch

    torch.save({"x": Payload(marker)}, path)


@contextlib.contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make ``paths`` unwritable for real: ``chattr +i`` as root (permissions do not stop root), else chmod.

    Skips the test, with the reason, where neither works.
    """
    if os.geteuid() == 0:
        if shutil.which("chattr") is None:
            pytest.skip(
                "running as root and chattr is not installed: nothing makes a file read-only for root"
            )
        done: list[Path] = []
        try:
            for p in paths:
                r = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
                if r.returncode != 0:
                    pytest.skip(f"chattr +i does not work on this filesystem ({r.stderr.strip()})")
                done.append(p)
            yield
        finally:
            for p in done:
                subprocess.run(["chattr", "-i", str(p)], check=False)
    else:
        modes = {p: p.stat().st_mode for p in paths}
        try:
            for p in paths:
                p.chmod(0o555 if p.is_dir() else 0o444)
            yield
        finally:
            for p, m in modes.items():
                p.chmod(m)


@contextlib.contextmanager
def cpu_hog(n: int | None = None) -> Iterator[None]:
    """``n`` busy processes (default: one per core) beside the test, as another CI job would be."""
    n = n or os.cpu_count() or 2
    code = "while True: pass"
    procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGKILL)
            p.wait()


class Watched:
    """A running ``automl-kd`` process whose stderr is read by a thread, so a test can wait for a line with a
    deadline (a blocking ``readline`` could hang the test)."""

    def __init__(self, *args: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.proc = spawn(*args, cwd=cwd, env=env)
        self.lines: list[str] = []
        self.out_lines: list[str] = []
        self._reader = threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True)
        self._out = threading.Thread(target=self._read, args=(self.proc.stdout, self.out_lines), daemon=True)
        self._reader.start()
        self._out.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)

    def wait_for(self, pattern: str, timeout: float, nth: int = 1) -> str:
        """The ``nth`` stderr line matching ``pattern``, as soon as it is written."""
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        checked = 0
        seen = 0
        while time.monotonic() < deadline:
            while checked < len(self.lines):
                if rx.search(self.lines[checked]):
                    seen += 1
                    if seen == nth:
                        return self.lines[checked]
                checked += 1
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(
            f"no line {nth} matching {pattern!r} within {timeout} s (exit {self.proc.poll()}); stderr:\n"
            + "".join(self.lines)
        )

    def signal(self, signum: int) -> float:
        self.proc.send_signal(signum)
        return time.monotonic()

    def finish(self, timeout: float) -> Result:
        """Wait for the process (killing it after ``timeout`` s); ``seconds`` is the time this wait took."""
        t0 = time.monotonic()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        seconds = time.monotonic() - t0
        self._reader.join(5)
        self._out.join(5)
        return Result(self.proc.returncode, "".join(self.out_lines), "".join(self.lines), seconds)
