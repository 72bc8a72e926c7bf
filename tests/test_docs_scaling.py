"""docs/scaling.md's commands, run as written, against a real PostgreSQL server.

The commands are read from the page itself. Only what names the reader's own machine is replaced: the
database URL's user, password, host and database (the scheme stays ``postgresql://`` as written), the config
file, and CUDA devices on a machine without them. Lines for other programs (optuna-dashboard) are left out.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from conftest import REPO
from fault_support import AUTOML_KD, Result, assert_no_traceback, cli_env, synthetic_config, write_yaml
from pgserver import PostgresServer, read_trials, study_names

DOC = REPO / "docs" / "scaling.md"
DOC_URL = "postgresql://user:pass@db-host/automl"
N_TRIALS = 6


def doc_commands() -> list[str]:
    """Every ``automl-kd ...`` line of the page's console, bash and inline code, in order, without comments."""
    text = DOC.read_text()
    out = []
    for block in re.findall(r"```(?:console|bash)\n(.*?)```", text, flags=re.S):
        for line in block.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("automl-kd "):
                out.append(line)
    out += [m for m in re.findall(r"`(automl-kd worker [^`]+)`", text) if m not in out]
    return out


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count()


def as_written(line: str, url: str, config: Path) -> str | None:
    """The doc's line for this machine, or None for a line that needs more GPUs than there are."""
    needed = max((int(n) for n in re.findall(r"cuda:(\d+)", line)), default=-1) + 1
    if "--devices" in line and needed > cuda_devices():
        return None
    line = re.sub(r"\[(--device [^\]]+)\]", r"\1", line)  # an optional argument: take it
    if needed > cuda_devices():
        line = re.sub(r"cuda:\d+", "cpu", line)
    line = line.replace("$(AUTOML_KD_DB)", '"$AUTOML_KD_DB"')  # Kubernetes' env syntax, in a shell
    line = line.replace(DOC_URL, url).replace("config.yaml", str(config))
    return line.replace("automl-kd", " ".join(AUTOML_KD), 1)


@pytest.mark.slow
def test_the_scaling_page_runs_as_written(tmp_path: Path, postgres: PostgresServer) -> None:
    commands = doc_commands()
    assert any("--storage postgresql://" in c for c in commands), commands
    assert any(c.startswith("automl-kd worker") for c in commands), commands
    # the URL as the page writes it: postgresql:// (SQLAlchemy's default driver is not what is installed)
    url = postgres.url.replace("postgresql+psycopg2://", "postgresql://")
    config = write_yaml(tmp_path / "config.yaml", synthetic_config("scale", N_TRIALS, sleep=0.5))
    env = cli_env(AUTOML_KD_DB=url)
    lines = [(line, as_written(line, url, config)) for line in commands]
    runnable = [(line, cmd) for line, cmd in lines if cmd is not None]
    assert len(runnable) >= 4, lines
    # the first machine's commands start at once; "every other machine" joins once the study exists
    first = [(line, cmd) for line, cmd in runnable if not line.startswith("automl-kd worker")]
    others = [(line, cmd) for line, cmd in runnable if line.startswith("automl-kd worker")]
    procs = [(line, start(cmd, tmp_path, env)) for line, cmd in first]
    deadline = time.monotonic() + 120
    while "nas-1" not in study_names(postgres.url):
        assert time.monotonic() < deadline, "the study was never created"
        assert all(p.poll() in (None, 0) for _, p in procs), [p.communicate() for _, p in procs]
        time.sleep(0.2)
    procs += [(line, start(cmd, tmp_path, env)) for line, cmd in others]
    for line, p in procs:
        out, err = p.communicate(timeout=240)
        res = Result(p.returncode, out, err, 0.0)
        assert_no_traceback(res)
        assert res.rc == 0, f"{line}\n{res}"
    states = [t.state for t in read_trials(postgres.url, "nas-1")]
    assert states.count(optuna.trial.TrialState.COMPLETE) == N_TRIALS, states
    journal = tmp_path / "runs" / "scale" / "journal.log"
    assert journal.is_file() and os.path.getsize(journal) > 0


def start(cmd: str, cwd: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["bash", "-c", cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
