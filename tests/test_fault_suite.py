"""The fault suite: every fault a user can meet, through the real command line, on real resources.

Each row of ``FAULTS`` is one fault: its set-up (real files: a truncated SQLite database, a read-only run
directory, an unsafe pickle, random bytes as YAML), the command as a user types it, the exit code (2 for bad
input; the documented fault codes otherwise, see docs/cli.md) and the one ``error:`` line it must print. No
output may hold a traceback. Faults that need a process to be watched while it runs (signals, an unreachable
LLM endpoint, odd run directory names) follow the table as their own tests. A later fault joins the table.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest
from fault_support import (
    TRAINING,
    Payload,
    Result,
    Watched,
    assert_no_traceback,
    assert_one_error,
    base_config,
    cli,
    cli_env,
    cli_in_process,
    closed_port,
    finished_run,
    read_only,
    synthetic_config,
    wait_until_stale,
    write_cifar10,
    write_unsafe_pickle,
    write_yaml,
)
from pgserver import storage as pg_storage


@dataclass
class Ctx:
    """What a row's set-up and command can refer to: ``{w}`` (an empty folder), ``{base}`` (base.yaml in it),
    ``{run}`` (a copy of a finished one-trial run, without its final/ folder), ``{final}`` (a copy of that run's
    finalized trial), ``{port}`` (a closed loopback port)."""

    w: Path
    finished: Path
    port: int = field(default_factory=closed_port)

    @property
    def base(self) -> Path:
        return self.w / "base.yaml"

    @property
    def run(self) -> Path:
        return self.w / "r"

    @property
    def final(self) -> Path:
        return self.w / "final"

    @property
    def marker(self) -> Path:
        return self.w / "PWNED"

    def fmt(self, text: str) -> str:
        return text.format(w=self.w, base=self.base, run=self.run, final=self.final, port=self.port)

    # -- set-ups -------------------------------------------------------------------------------------------
    def copy_run(self) -> None:
        shutil.copytree(self.finished, self.run, ignore=shutil.ignore_patterns("final", "report"))

    def truncated_db(self) -> None:
        self.copy_run()
        db = self.run / "study.db"
        assert db.stat().st_size > 57344
        with db.open("r+b") as f:
            f.truncate(57344)

    def copy_final(self) -> None:
        shutil.copytree(self.finished / "final" / "trial-0", self.final)

    def unsafe_check_images(self) -> None:
        self.copy_final()
        write_unsafe_pickle(self.final / "check_images.pt", self.marker)

    def unsafe_model(self) -> None:
        self.copy_final()
        write_unsafe_pickle(self.final / "model.pt", self.marker)

    def random_bytes(self) -> None:
        (self.w / "b.yaml").write_bytes(random.Random(12).randbytes(2000))

    def teacher(self, checkpoint: Path) -> None:
        cfg = base_config("teach")
        cfg["teacher"] = {
            "space": "mbv2",
            "space_options": cfg["space"]["options"],
            "checkpoint": str(checkpoint),
        }
        cfg["augmenters"] = [{"name": "kd", "options": {"temperature": 4.0, "alpha": 0.5}}]
        write_yaml(self.base, cfg)

    def teacher_missing(self) -> None:
        self.teacher(self.w / "nope.pt")

    def teacher_unsafe(self) -> None:
        write_unsafe_pickle(self.w / "teacher.pt", self.marker)
        self.teacher(self.w / "teacher.pt")

    def cifar_unsafe_meta(self) -> None:
        import pickle

        write_cifar10(self.w / "c", meta=pickle.dumps({"label_names": [Payload(self.marker)]}, protocol=2))

    def cifar_random_meta(self) -> None:
        write_cifar10(self.w / "c", meta=random.Random(3).randbytes(4000))

    def duplicate_keys(self) -> None:
        (self.w / "dup.yaml").write_text("name: a\nseed: 1\nname: b\n")

    def no_study_db_here(self) -> None:
        assert not (self.w / "study.db").exists(), "a study database was written into the working folder"


@dataclass(frozen=True)
class Fault:
    id: str
    #: the group of faults this row belongs to (the numbers of the comments above the rows)
    item: int
    args: tuple[str, ...]
    code: int
    error: str
    setup: Callable[[Ctx], None] | None = None
    #: paths made read-only (chattr +i as root) while the command runs
    read_only: tuple[str, ...] = ()
    #: text that must not appear in stdout or stderr
    absent: tuple[str, ...] = ()
    after: Callable[[Ctx], None] | None = None
    timeout: float = 120
    #: run as its own process (the console script); other rows go through the same entry point in-process
    subprocess: bool = False


RUN = ("run", "{base}", "--run-dir", "{w}/r")
PG = "u:sekret@127.0.0.1:{port}/x"
FAULTS = [
    # 2: docs/scaling.md's URL form, the server unreachable: the documented retries, then exit 5 (no secret shown)
    Fault(
        "postgresql-unreachable",
        2,
        (*RUN, "--storage", f"postgresql://{PG}", "--set", "storage.retry_timeout=2"),
        5,
        r"^error: storage postgresql://u:\*\*\*@127\.0\.0\.1:\d+/x unreachable for \d+ s",
        absent=("sekret", "driver"),
        subprocess=True,
    ),
    Fault(
        "psycopg2-unreachable",
        2,
        (*RUN, "--storage", f"postgresql+psycopg2://{PG}", "--set", "storage.retry_timeout=2"),
        5,
        r"^error: storage postgresql\+psycopg2://u:\*\*\*@127\.0\.0\.1:\d+/x unreachable for \d+ s",
        absent=("sekret",),
    ),
    # 5: one error line for each
    Fault(
        "truncated-db-run",
        5,
        ("run", "{base}", "--run-dir", "{run}"),
        6,
        r"^error: study database .*/r/study\.db.* (is corrupt|is not a database)",
        setup=Ctx.truncated_db,
    ),
    Fault(
        "truncated-db-show",
        5,
        ("show", "--run-dir", "{run}"),
        6,
        r"^error: study database .*/r/study\.db.* (is corrupt|is not a database)",
        setup=Ctx.truncated_db,
    ),
    Fault(
        "read-only-run",
        5,
        ("run", "{base}", "--run-dir", "{run}", "--set", "search.n_trials=2"),
        6,
        r"^error: .*study\.db.* (is read-only|cannot be written)",
        setup=Ctx.copy_run,
        read_only=("{run}", "{run}/study.db"),
        subprocess=True,
    ),
    Fault(
        "read-only-report",
        5,
        ("report", "--run-dir", "{run}"),
        6,
        r"^error: cannot write .*/r/report",
        setup=Ctx.copy_run,
        read_only=("{run}", "{run}/study.db"),
    ),
    Fault(
        "read-only-finalize",
        5,
        ("finalize", "--run-dir", "{run}", "--epochs", "1"),
        6,
        r"^error: cannot write .*/r/final",
        setup=Ctx.copy_run,
        read_only=("{run}", "{run}/study.db"),
    ),
    Fault(
        "url-not-parsable",
        5,
        (*RUN, "--storage", "postgresql://::::"),
        2,
        r"^error: storage URL 'postgresql://::::' is not valid",
    ),
    Fault(
        "url-unknown-dialect",
        5,
        (*RUN, "--storage", "foo://bar/baz"),
        2,
        r"^error: storage URL 'foo://bar/baz': unknown database 'foo'",
    ),
    Fault(
        "worker-missing-sqlite",
        5,
        ("worker", "--storage", "sqlite:///nonexist/s.db", "--study", "base"),
        2,
        r"^error: .*/nonexist/s\.db does not exist",
    ),
    Fault(
        "random-bytes-config",
        5,
        ("run", "{w}/b.yaml"),
        2,
        r"^error: config file '.*b\.yaml' (is not UTF-8 text|is not valid YAML)",
        setup=Ctx.random_bytes,
        subprocess=True,
    ),
    Fault(
        "unsafe-check-images",
        5,
        ("export", "--checkpoint", "{final}"),
        1,
        r"^error: .*check_images\.pt.* refused",
        setup=Ctx.unsafe_check_images,
        absent=("weights_only=False", "WeightsUnpickler"),
    ),
    Fault(
        "unsafe-model",
        10,
        ("export", "--checkpoint", "{final}"),
        1,
        r"^error: .*model\.pt.* refused",
        setup=Ctx.unsafe_model,
        absent=("weights_only=False", "WeightsUnpickler"),
    ),
    # 11: a CIFAR file is plain data: a crafted one is refused before it can run code, a broken one a data error
    Fault(
        "cifar-meta-runs-code",
        11,
        (*RUN, "--set", "data.dataset=cifar10", "--set", "data.root={w}/c"),
        4,
        r"^error: cannot read CIFAR meta file .*batches\.meta: UnpicklingError: refused to load posix\.system",
        setup=Ctx.cifar_unsafe_meta,
        absent=("target reached",),
    ),
    Fault(
        "cifar-meta-random-bytes",
        11,
        (*RUN, "--set", "data.dataset=cifar10", "--set", "data.root={w}/c"),
        4,
        r"^error: cannot read CIFAR meta file .*batches\.meta",
        setup=Ctx.cifar_random_meta,
        absent=("target reached",),
    ),
    # 7: the teacher's checkpoint is checked before the search starts
    Fault(
        "teacher-checkpoint-missing",
        7,
        RUN,
        2,
        r"^error: teacher\.checkpoint '.*nope\.pt' does not exist",
        setup=Ctx.teacher_missing,
        absent=("trial 0", "target reached"),
    ),
    Fault(
        "teacher-checkpoint-unsafe",
        7,
        RUN,
        2,
        r"^error: teacher\.checkpoint '.*teacher\.pt' .*refused",
        setup=Ctx.teacher_unsafe,
        absent=("trial 0", "target reached", "weights_only=False"),
        subprocess=True,
    ),
    # 8: in-memory SQLite keeps nothing
    Fault(
        "sqlite-in-memory", 8, (*RUN, "--storage", "sqlite://"), 2, r"^error: .*in-memory", subprocess=True
    ),
    Fault("sqlite-memory-path", 8, (*RUN, "--storage", "sqlite:///:memory:"), 2, r"^error: .*in-memory"),
    # 10: silent or misleading
    Fault(
        "name-dot-dot",
        10,
        ("run", "{base}", "--set", "name=.."),
        2,
        r"^error: config key 'name': .*plain",
        after=Ctx.no_study_db_here,
        subprocess=True,
    ),
    Fault("name-dot", 10, ("run", "{base}", "--set", "name=."), 2, r"^error: config key 'name': .*plain"),
    Fault(
        "duplicate-keys",
        10,
        ("run", "{w}/dup.yaml"),
        2,
        r"^error: config file '.*dup\.yaml': key 'name' .*twice",
        setup=Ctx.duplicate_keys,
    ),
    Fault("config-is-a-directory", 10, ("run", "{w}"), 2, r"^error: config '.*' is a directory"),
    Fault(
        "epochs-zero",
        10,
        (*RUN, "--set", "evaluator.options.epochs=0"),
        2,
        r"^error: evaluator 'train': epochs must be >= 1 \(got 0\)",
    ),
    Fault(
        "lr-zero",
        10,
        (*RUN, "--set", "evaluator.options.lr=0"),
        2,
        r"^error: evaluator 'train': lr must be > 0 \(got 0",
    ),
    Fault(
        "batch-size-negative",
        10,
        (*RUN, "--set", "evaluator.options.batch_size=-1"),
        2,
        r"^error: evaluator 'train': batch_size must be >= 1 \(got -1\)",
    ),
]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real run of base.yaml (one trial) and its finalized trial 0, through the CLI's entry point."""
    return finished_run(tmp_path_factory.mktemp("finished"))


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest) -> Ctx:
    needs_run = request.node.callspec.params["fault"].setup in (
        Ctx.truncated_db,
        Ctx.copy_run,
        Ctx.unsafe_check_images,
        Ctx.unsafe_model,
    )
    finished = request.getfixturevalue("finished") if needs_run else tmp_path / "no-run"
    c = Ctx(tmp_path, finished)
    write_yaml(c.base, base_config())
    return c


@pytest.mark.parametrize("fault", FAULTS, ids=[f.id for f in FAULTS])
def test_fault(fault: Fault, ctx: Ctx, capfd: pytest.CaptureFixture[str]) -> None:
    if fault.setup:
        fault.setup(ctx)
    args = [ctx.fmt(a) for a in fault.args]
    with read_only(*(Path(ctx.fmt(p)) for p in fault.read_only)):
        if fault.subprocess:
            res = cli(*args, cwd=ctx.w, timeout=fault.timeout)
        else:
            res = cli_in_process(*args, cwd=ctx.w, capfd=capfd)
    assert_one_error(res, fault.code, fault.error)
    for text in fault.absent:
        assert text not in res.out + res.err, f"{text!r} printed:\n{res}"
    assert not ctx.marker.exists(), "an unsafe pickle was loaded and ran its code"
    if fault.after:
        fault.after(ctx)


# -- faults watched while they happen ----------------------------------------------------------------------------
def last_json(res: Result) -> Any:
    return json.loads(res.out.strip().splitlines()[-1])


def test_a_storage_password_is_never_printed_nor_written(tmp_path: Path) -> None:
    """A password-auth PostgreSQL cluster: run, show and worker print the URL with ``***`` (their JSON included),
    the report and the study's stored config never hold the password."""
    from pgserver import PostgresServer

    secret = "S3cretPw"
    server = PostgresServer(password=secret)
    try:
        server.start()
        url = server.url
        # the URL in the config (it is stored with the study) and on the command line
        cfg = write_yaml(tmp_path / "synth.yaml", synthetic_config("synth", 2, sleep=0.0, url=url))
        outputs = [
            cli("run", str(cfg), "--run-dir", str(tmp_path / "r"), "--json", cwd=tmp_path),
            cli("show", "--storage", url, "--study", "synth", "--json", cwd=tmp_path),
            cli("show", "--storage", url, "--study", "synth", cwd=tmp_path),
            cli("worker", "--storage", url, "--study", "synth", "--json", cwd=tmp_path),
            cli("report", "--storage", url, "--study", "synth", "--out", str(tmp_path / "rep"), cwd=tmp_path),
        ]
        for res in outputs:
            assert_no_traceback(res)
            assert res.rc == 0, res
            assert secret not in res.out + res.err, f"the password was printed:\n{res}"
        for res in (outputs[0], outputs[1], outputs[3]):
            assert last_json(res)["storage"].startswith("postgresql+psycopg2://postgres:***@127.0.0.1:")
        written = [p for p in (tmp_path / "rep").rglob("*") if p.is_file()]
        assert any(p.name == "index.html" for p in written)
        for path in written:
            assert secret.encode() not in path.read_bytes(), f"the password is written into {path}"
        with pg_storage(url) as st:
            stored = json.dumps(st.get_study_user_attrs(st.get_study_id_from_name("synth")))
        assert "postgres:***@127.0.0.1" in stored
        assert secret not in stored, "the study keeps the password in its stored config"
    finally:
        server.cleanup()


def test_a_run_dir_named_with_url_characters_keeps_its_database(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """3: ``#``, ``?`` and ``%`` in a path are escaped into the SQLite URL, so run and show use one file."""
    base = write_yaml(tmp_path / "base.yaml", base_config())
    odd = tmp_path / "odd#dir?x=1%41"
    res = cli("run", str(base), "--run-dir", str(odd), "--json", cwd=tmp_path)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert (odd / "study.db").is_file() and not (tmp_path / "odd").exists(), sorted(tmp_path.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", odd.name]
    shown = cli_in_process("show", "--run-dir", str(odd), "--json", cwd=tmp_path, capfd=capfd)
    assert_no_traceback(shown)
    assert shown.rc == 0, shown
    assert last_json(shown)["counts"] == {"complete": 1}


#: seconds from the signal to the process's exit: a few on an idle machine, with room for shared CI cores (the
#: old code took over 100 s here)
STOP_WITHIN = 10


def slow_trial_config(name: str) -> dict[str, Any]:
    """One long trial whose every pass (training, validation, test, latency) takes many seconds on a CPU."""
    cfg = base_config(name)
    cfg["data"].update(train_size=30000, test_size=10000, val_fraction=0.5)
    cfg["space"] = {
        "name": "mbv2",
        "options": {
            "stem_stride": 1,
            "stem_channels": 32,
            "stages": [[32, 1, 1], [48, 2, 1], [64, 2, 2]],
            "widths": [1.0],
            "ops": ["ir_k5_e6"],
            "head_channels": 256,
        },
    }
    # small batches: a stop waits for one cheap step, while every full pass (validation of 15000 images, test
    # of 10000, latency) takes many seconds, which is what a late stop used to cost
    cfg["evaluator"]["options"].update(epochs=50, batch_size=16, latency=True)
    return cfg


@pytest.fixture
def interrupted_trial(tmp_path: Path) -> Iterator[Callable[[int], tuple[Result, float, Path]]]:
    procs: list[Watched] = []

    def start(signum: int, again: bool = False) -> tuple[Result, float, Path]:
        """Send ``signum`` to a training trial; ``again``: a second one once the first is acknowledged."""
        base = write_yaml(tmp_path / "slow.yaml", slow_trial_config("slow"))
        run = tmp_path / "run"
        w = Watched("-v", "run", str(base), "--run-dir", str(run), "--json", cwd=tmp_path)
        procs.append(w)
        w.wait_for(TRAINING, timeout=120)  # the data is loaded and the trial is training
        t_sig = w.signal(signum)
        if again:
            w.wait_for(r"Ctrl-C again: stop now", timeout=60)
            w.signal(signum)
        res = w.finish(timeout=240)
        assert t_sig
        return res, res.seconds, run

    yield start
    for w in procs:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()


def assert_interrupted_and_queued(run: Path) -> None:
    study = optuna.load_study(study_name="slow", storage=f"sqlite:///{run / 'study.db'}")
    trials = study.get_trials()
    first = trials[0]
    assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["outcome"] == "interrupted", first
    again = [t for t in trials if t.state == optuna.trial.TrialState.WAITING]
    assert len(again) == 1 and again[0].params == first.params
    assert again[0].system_attrs.get("failed_trial") == 0


@pytest.mark.slow
def test_sigterm_stops_within_seconds_records_and_requeues(interrupted_trial: Any) -> None:
    """4: Kubernetes and SLURM give a few seconds between SIGTERM and SIGKILL; no validation pass after it."""
    res, seconds, run = interrupted_trial(signal.SIGTERM)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert seconds < STOP_WITHIN, f"the process took {seconds:.1f} s to stop after SIGTERM\n{res}"
    assert "target reached" not in res.err, res
    assert "stopped by SIGTERM" in last_json(res)["stop_reason"]
    assert_interrupted_and_queued(run)


@pytest.mark.slow
def test_sigterm_during_the_teachers_training_stops_within_seconds_and_caches_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4: the teacher trains inside the first trial (a shared resource); a stop request ends its training too, and
    a teacher cut short is never cached."""
    monkeypatch.setenv("AUTOML_KD_CACHE", str(tmp_path / "own-cache"))  # this test's cache alone
    cfg = slow_trial_config("slow")
    cfg["teacher"] = {
        "space": "mbv2",
        "space_options": cfg["space"]["options"],
        "params": None,
        "train": {"epochs": 50, "batch_size": 16},
    }
    cfg["augmenters"] = [{"name": "kd"}]
    base = write_yaml(tmp_path / "teacher.yaml", cfg)
    w = Watched("-v", "run", str(base), "--run-dir", str(tmp_path / "run"), "--json", cwd=tmp_path)
    try:
        w.wait_for(r"teacher: no cached weights", timeout=120)
        w.wait_for(TRAINING, timeout=120)  # the teacher is training
        assert w.signal(signal.SIGTERM)
        res = w.finish(timeout=240)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert res.seconds < STOP_WITHIN, f"the process took {res.seconds:.1f} s to stop after SIGTERM\n{res}"
    assert "stopped by SIGTERM" in last_json(res)["stop_reason"]
    cache = Path(os.environ["AUTOML_KD_CACHE"])
    stored = [p for p in (cache / "teacher").rglob("*") if p.is_file() and p.suffix != ".lock"]
    assert not stored, (stored, res)  # only the training lock is left, no weights


@pytest.mark.slow
def test_sigint_exits_130_at_once_and_never_says_target_reached(interrupted_trial: Any) -> None:
    """10: Ctrl-C records the trial as interrupted, queues it again and exits 130 without a traceback."""
    res, seconds, run = interrupted_trial(signal.SIGINT)
    assert_no_traceback(res)
    assert res.rc == 130, res
    assert seconds < STOP_WITHIN, f"the process took {seconds:.1f} s to stop after SIGINT\n{res}"
    assert "target reached" not in res.err, res
    assert_interrupted_and_queued(run)


@pytest.mark.slow
def test_a_second_ctrl_c_stops_at_once_and_still_exits_130(interrupted_trial: Any) -> None:
    """10: the first Ctrl-C asks the trial to stop at its next batch; a second one does not wait for it."""
    res, _, _ = interrupted_trial(signal.SIGINT, again=True)
    assert_no_traceback(res)
    assert res.rc == 130, res
    assert "target reached" not in res.err, res


#: a ``run`` whose Ctrl-C lands in a ``__del__`` (Python swallows it there and prints "Exception ignored in" with a
#: traceback: what a second Ctrl-C in SQLAlchemy's weakref callbacks did on a loaded CI machine)
_CTRL_C_IN_DEL = """
import sys
from automl_kd.cli import main
from automl_kd.engine.search import Search

class Dropped:
    def __del__(self):
        raise KeyboardInterrupt

step = Search._step

def dropping_step(self, *args, **kwargs):
    Dropped()
    return step(self, *args, **kwargs)

Search._step = dropping_step
sys.exit(main(sys.argv[1:]))
"""


def test_a_ctrl_c_swallowed_by_a_del_still_stops_the_run(tmp_path: Path) -> None:
    """10: no "Exception ignored" traceback, and the interrupt is not lost: exit 130 with the interrupt line."""
    base = write_yaml(tmp_path / "s.yaml", synthetic_config("s", 3, sleep=0.0))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _CTRL_C_IN_DEL,
            "run",
            str(base),
            "--run-dir",
            str(tmp_path / "run"),
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    res = Result(proc.returncode, proc.stdout, proc.stderr, 0.0)
    assert_no_traceback(res)
    assert "Exception ignored" not in res.err, res
    assert res.rc == 130, res
    assert "interrupted (SIGINT)" in res.err, res


#: a ``run`` whose Ctrl-C lands inside optuna's own bookkeeping of a finished trial (``Study.tell``, which the engine
#: calls; inside ``study.optimize`` it once surfaced as an ``UnboundLocalError`` from ``_run_trial``'s ``finally``:
#: what a loaded CI machine hit with two quick Ctrl-Cs)
_CTRL_C_IN_OPTUNA = """
import sys
import optuna.study.study as study
from automl_kd.cli import main

def tell(*args, **kwargs):
    raise KeyboardInterrupt

study._tell_with_warning = tell
sys.exit(main(sys.argv[1:]))
"""


def test_a_ctrl_c_inside_optunas_bookkeeping_is_still_a_ctrl_c(tmp_path: Path) -> None:
    """10: exit 130 and the interrupt line, not "a bug in automl-kd"; the next run fails the abandoned trial
    as stale and runs its parameters again."""
    base = write_yaml(tmp_path / "s.yaml", synthetic_config("s", 2, sleep=0.0))
    run = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-c", _CTRL_C_IN_OPTUNA, "run", str(base), "--run-dir", str(run), "--json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    res = Result(proc.returncode, proc.stdout, proc.stderr, 0.0)
    assert_no_traceback(res)
    assert res.rc == 130, res
    assert "interrupted (SIGINT)" in res.err and "a bug in automl-kd" not in res.err, res
    assert last_json(res)["stop_reason"] == "interrupted by SIGINT (Ctrl-C)", res
    wait_until_stale(run / "study.db", grace_period=3)  # the abandoned trial's heartbeat has expired
    again = cli("run", str(base), "--run-dir", str(run), "--json", cwd=tmp_path)
    assert_no_traceback(again)
    assert again.rc == 0, again
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{run / 'study.db'}")
    first, retry = study.trials[:2]
    assert first.state == optuna.trial.TrialState.FAIL, study.trials
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == first.params, study.trials
    assert retry.system_attrs.get("failed_trial") == 0, retry.system_attrs


def test_an_unreachable_llm_endpoint_is_one_line_with_its_reason(tmp_path: Path) -> None:
    """6 (the engine's part): the proposer's real reason reaches the trial record, the progress line and the
    error; the search does not claim "target reached"; --json still prints its summary."""
    port = closed_port()
    cfg = base_config("llm")
    cfg["search"] = {
        "n_trials": 3,
        "proposer": {
            "name": "llm",
            "options": {
                "base_url": f"http://127.0.0.1:{port}/v1",
                "model": "test",
                "max_retries": 0,
                "backoff_s": 0,
                "timeout_s": 5,
                "fallback": "error",
            },
        },
    }
    cfg["evaluator"] = {"name": "synthetic", "options": {"epochs": 1}}
    base = write_yaml(tmp_path / "llm.yaml", cfg)
    res = cli("run", str(base), "--run-dir", str(tmp_path / "r"), "--json", cwd=tmp_path, timeout=120)
    line = assert_one_error(res, 1, rf"127\.0\.0\.1:{port}")
    assert "None" not in line and "target reached" not in res.err, res
    summary = last_json(res)
    assert f"127.0.0.1:{port}" in summary["stop_reason"]
    failed = [t for t in summary["trials"] if t["state"] != "complete"]
    assert failed and all(f"127.0.0.1:{port}" in t["metrics"].get("fail_reason", "") for t in failed), failed


@pytest.mark.slow
def test_a_train_size_beyond_the_dataset_is_said_once(tmp_path: Path) -> None:
    """10: ``data.train_size: 10000000`` uses the whole training set, and says so, once."""
    cfg = base_config("big")
    cfg["data"]["train_size"] = 10_000_000
    cfg["evaluator"]["options"]["max_steps_per_epoch"] = 1
    base = write_yaml(tmp_path / "big.yaml", cfg)
    res = cli("run", str(base), "--run-dir", str(tmp_path / "r"), cwd=tmp_path)
    assert_no_traceback(res)
    assert res.rc == 0, res
    said = [line for line in res.err.splitlines() if "10000000" in line]
    assert len(said) == 1 and "60000" in said[0], res


def test_an_empty_config_says_it_means_all_defaults(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """10: an empty file is every default; the check says so instead of starting a default search silently."""
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    res = cli_in_process("check", str(tmp_path / "empty.yaml"), cwd=tmp_path, capfd=capfd)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert any("empty" in line and "default" in line for line in res.err.splitlines()), res
