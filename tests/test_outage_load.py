"""The storage-outage rule under load: wherever the database goes away (while the process
starts, while a trial runs and beats, when it asks for a trial or tells its result) the process retries for
``storage.retry_timeout`` seconds, then stops with one line ``error: storage ... unreachable for N s`` and exit 5;
never a traceback, from the main thread or the heartbeat's. CPU hogs run beside it, as another CI job would.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fault_support import Watched, assert_one_error, cli, cpu_hog, synthetic_config, write_yaml
from pgserver import PostgresServer

from automl_kd import Search, load_config

ERROR = r"^error: storage postgresql\+psycopg2://postgres@127\.0\.0\.1:\d+/postgres unreachable for \d+ s"
RETRY = 3


@pytest.fixture
def up(postgres: PostgresServer) -> Iterator[PostgresServer]:
    """The server, running at the start of the test (a test leaves it stopped)."""
    if not postgres.running:
        postgres.start()
    yield postgres


@pytest.mark.slow
def test_an_outage_at_start_up_is_exit_5(tmp_path: Path, up: PostgresServer) -> None:
    cfg = write_yaml(tmp_path / "c.yaml", synthetic_config("startup", 5, retry_timeout=RETRY))
    up.stop()
    with cpu_hog():
        res = cli("run", str(cfg), "--storage", up.url, "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert_one_error(res, 5, ERROR)


@pytest.mark.slow
def test_an_outage_while_trials_run_under_load_is_exit_5(tmp_path: Path, up: PostgresServer) -> None:
    """The server stops 0.1 s into a 0.5 s trial: the heartbeat beats into the outage, the result's tell and
    the next ask fail; the retry window passes and the worker says so in one line."""
    name = "load"
    cfg = load_config(
        {**synthetic_config(name, 1, sleep=0.5, retry_timeout=RETRY), "run_dir": str(tmp_path / "r")}
    )
    Search(cfg, storage=up.url)  # creates the study and stores its config for the worker
    with cpu_hog():
        w = Watched("worker", "--storage", up.url, "--study", name, "--n-trials", "200", cwd=tmp_path)
        try:
            w.wait_for(r"trial [1-9]: started", timeout=120)
            time.sleep(0.1)
            up.stop()
            res = w.finish(timeout=RETRY + 90)
        finally:
            if w.proc.poll() is None:
                w.proc.kill()
    assert_one_error(res, 5, ERROR)
