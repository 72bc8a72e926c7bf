"""A real PostgreSQL server for tests: Debian's binaries, a temporary data directory, a loopback port.

PostgreSQL refuses to run as root, so when the tests run as root (CI) the server runs as the `postgres` user
that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import optuna


@contextlib.contextmanager
def storage(url: str) -> Iterator[optuna.storages.RDBStorage]:
    """An RDBStorage whose engine is disposed on leaving. Tests poll the server many times a second, and a storage
    left to the garbage collector keeps its pooled connections open until PostgreSQL refuses more ("too many
    clients already")."""
    st = optuna.storages.RDBStorage(url)
    try:
        yield st
    finally:
        st.engine.dispose()


def read_trials(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    with storage(url) as st:
        return optuna.load_study(study_name=study, storage=st).get_trials()


def study_names(url: str) -> list[str]:
    """The names of the server's studies; none before the first one creates the tables."""
    try:
        with storage(url) as st:
            return [s.study_name for s in optuna.get_all_study_summaries(st)]
    except Exception:  # the tables do not exist yet
        return []


def _bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    which = shutil.which("initdb")
    return Path(which).parent if which else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """``start()``, ``stop()``, ``url``; the data directory is removed by ``cleanup()``. With ``password`` the
    cluster asks for it (scram-sha-256 for every connection) and ``url`` carries it."""

    def __init__(self, password: str | None = None) -> None:
        bindir = _bindir()
        if bindir is None:
            raise RuntimeError(
                "PostgreSQL is not installed: apt-get install postgresql (make test does this)"
            )
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="automl-kd-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.password = password
        auth = ["--auth=trust"]
        if password is not None:
            pwfile = self.root / "pwfile"
            pwfile.write_text(password + "\n")
            if self.as_root:
                shutil.chown(pwfile, "postgres", "postgres")
            auth = ["--auth=scram-sha-256", f"--pwfile={pwfile}"]
        self._run(["initdb", "-D", str(self.data), "-U", "postgres", *auth, "-E", "UTF8"])

    def _run(self, cmd: list[str]) -> None:
        full = [str(self.bindir / cmd[0]), *cmd[1:]]
        if self.as_root:
            full = ["runuser", "-u", "postgres", "--", *full]
        subprocess.run(full, check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        user = "postgres" if self.password is None else f"postgres:{self.password}"
        return f"postgresql+psycopg2://{user}@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run(["pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.running:
                return
            time.sleep(0.1)
        raise RuntimeError("PostgreSQL did not start")

    @property
    def running(self) -> bool:
        """Whether the server accepts connections now."""
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def cleanup(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
