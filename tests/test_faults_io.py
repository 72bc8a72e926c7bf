"""Faults at the edges of a run, through the real command line: an unusable artifact cache, runs with local
workers and the commands that read them afterwards, text the report must not interpret, images that are not
plain 8-bit pictures, crafted checkpoints and cache entries, a locked study database, two ``finalize`` at once.

Each test states the command, the exit code, the one line the user sees (no traceback) and what is on disk
afterwards, in the style of ``test_fault_suite.py`` (helpers in ``fault_support.py``).
"""

from __future__ import annotations

import contextlib
import html.parser
import json
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from fault_support import (
    Result,
    Watched,
    assert_no_traceback,
    assert_one_error,
    base_config,
    cli,
    cli_env,
    cli_in_process,
    error_lines,
    finished_run,
    read_only,
    synthetic_config,
    write_unsafe_pickle,
    write_yaml,
)
from PIL import Image

from automl_kd.cache import ArtifactCache, decode_artifact, encode_artifact
from automl_kd.data import read_class_folders
from automl_kd.errors import DataError

EVIL = "<script>window.pwned = 1</script>"
MATH = r"$\undefinedcmd{x}$"


def last_json(res: Result) -> Any:
    return json.loads(res.out.strip().splitlines()[-1])


def warnings_of(res: Result) -> list[str]:
    return [line for line in res.err.splitlines() if line.startswith("WARNING")]


# -- an unusable artifact cache ------------------------------------------------------------------------------------
def teacher_config(name: str = "teach") -> dict[str, Any]:
    """base.yaml with a teacher trained for one epoch (cached in the artifact cache) and plain KD."""
    cfg = base_config(name)
    cfg["teacher"] = {
        "space": "mbv2",
        "space_options": cfg["space"]["options"],
        "params": None,
        "train": {"epochs": 1, "batch_size": 128},
    }
    cfg["augmenters"] = [{"name": "kd", "options": {"temperature": 4.0, "alpha": 0.5}}]
    return cfg


@contextlib.contextmanager
def nearly_full_disk(folder: Path) -> Iterator[Path]:
    """A small tmpfs at ``folder``, filled up to a few KB (a probe file fits, a teacher's weights do not).

    Skips where tmpfs cannot be mounted (not root, no CAP_SYS_ADMIN)."""
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip()}): no full disk to test with")
    try:
        filler = folder / "filler"
        with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with filler.open("r+b") as f:
            f.truncate(max(0, filler.stat().st_size - 16384))
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def run_with_cache(tmp_path: Path, cache: Path) -> Result:
    base = write_yaml(tmp_path / "teach.yaml", teacher_config())
    env = cli_env(AUTOML_KD_CACHE=str(cache))
    return cli(
        "run", str(base), "--run-dir", str(tmp_path / "r"), "--json", cwd=tmp_path, env=env, timeout=300
    )


def assert_went_on_without_the_cache(res: Result, cache: Path) -> None:
    """Exit 0, the trial complete, no error line, and one warning naming the cache."""
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert not error_lines(res.err), res
    said = [line for line in warnings_of(res) if str(cache) in line]
    assert len(said) == 1, f"expected one warning naming {cache}:\n{res}"
    assert "without" in said[0] and "cach" in said[0], said[0]
    summary = last_json(res)
    assert summary["counts"] == {"complete": 1}, summary
    assert summary["stop_reason"] == "target reached", summary


@pytest.mark.slow
def test_a_cache_path_that_is_a_file_warns_once_and_trains_without_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder\n")
    res = run_with_cache(tmp_path, cache)
    assert_went_on_without_the_cache(res, cache)
    assert cache.read_text() == "not a folder\n"


@pytest.mark.slow
def test_a_read_only_cache_folder_warns_once_and_trains_without_it(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    with read_only(cache):
        res = run_with_cache(tmp_path, cache)
    assert_went_on_without_the_cache(res, cache)
    assert list(cache.iterdir()) == []


@pytest.mark.slow
def test_a_full_cache_disk_warns_once_and_trains_without_it(tmp_path: Path) -> None:
    with nearly_full_disk(tmp_path / "small") as disk:
        cache = disk / "cache"
        res = run_with_cache(tmp_path, cache)
        assert_went_on_without_the_cache(res, cache)
        assert "No space left on device" in "\n".join(warnings_of(res)), res
        # nothing half-written is left to be read as an entry later
        assert not [p for p in cache.rglob("*.art") if p.is_file()]


def test_the_cache_api_reads_and_writes_nothing_through_a_file(tmp_path: Path) -> None:
    """The same at the API level: a cache rooted at a file misses, stores nothing, locks nothing, and the
    pieces of a resumable build go to a private scratch folder."""
    (tmp_path / "f").write_text("x")
    cache = ArtifactCache(tmp_path / "f")
    key = cache.key("teacher", {"a": 1})
    assert cache.load("teacher", key) is None
    with cache.lock("teacher", key):
        cache.save("teacher", key, {"w": torch.ones(2)})
    assert cache.load("teacher", key) is None
    part = cache.partial_dir("ig-maps", key)
    part.mkdir(parents=True, exist_ok=True)
    assert part.is_dir() and not str(part).startswith(str(tmp_path / "f"))
    cache.discard("teacher", key, "test")
    assert (tmp_path / "f").read_text() == "x"


# -- runs with local workers, and the commands after them ----------------------------------------------------------
@pytest.mark.slow
def test_every_command_finds_a_workers_run_from_its_run_dir(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``run --workers 2`` keeps its trials in r/journal.log; show and report find them from ``--run-dir``, and a
    plain ``run --run-dir r`` continues the same study instead of starting an empty one in r/study.db."""
    base = write_yaml(tmp_path / "synth.yaml", synthetic_config("synth", 3, sleep=0.0))
    run = tmp_path / "r"
    res = cli("run", str(base), "--workers", "2", "--run-dir", str(run), "--json", cwd=tmp_path)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert (run / "journal.log").is_file() and not (run / "study.db").exists()

    shown = cli_in_process("show", "--run-dir", str(run), "--json", cwd=tmp_path, capfd=capfd)
    assert_no_traceback(shown)
    assert shown.rc == 0, shown
    assert last_json(shown)["counts"] == {"complete": 3}
    assert "journal" in last_json(shown)["storage"]

    rep = cli_in_process("report", "--run-dir", str(run), "--json", cwd=tmp_path, capfd=capfd)
    assert_no_traceback(rep)
    assert rep.rc == 0, rep
    assert (run / "report" / "index.html").is_file()

    more = cli_in_process(
        "run",
        str(base),
        "--run-dir",
        str(run),
        "--set",
        "search.n_trials=5",
        "--json",
        cwd=tmp_path,
        capfd=capfd,
    )
    assert_no_traceback(more)
    assert more.rc == 0, more
    assert last_json(more)["counts"] == {"complete": 5}
    assert not (run / "study.db").exists(), "a second, empty study was started in study.db"


def test_a_run_dir_with_both_storages_is_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """A run directory that holds both study.db and journal.log (two studies): say so, do not pick one."""
    base = write_yaml(tmp_path / "synth.yaml", synthetic_config("synth", 1, sleep=0.0))
    run = tmp_path / "r"
    assert cli_in_process("run", str(base), "--run-dir", str(run), cwd=tmp_path, capfd=capfd).rc == 0
    (run / "journal.log").write_text("")
    res = cli_in_process("show", "--run-dir", str(run), cwd=tmp_path, capfd=capfd)
    assert_one_error(res, 2, r"^error: .*study\.db and journal\.log.*--storage")


@pytest.mark.slow
def test_a_killed_worker_is_an_error_naming_it_and_a_rerun_resumes(tmp_path: Path) -> None:
    """kill -9 of one of three workers: the parent exits 1 with one ``error:`` line naming the dead worker; the
    study keeps its trials and a plain rerun finishes it."""
    base = write_yaml(tmp_path / "synth.yaml", synthetic_config("synth", 9, sleep=0.6))
    run = tmp_path / "r"
    w = Watched("run", str(base), "--workers", "3", "--run-dir", str(run), cwd=tmp_path)
    try:
        line = w.wait_for(r"worker 0 started \(pid \d+", timeout=60)
        pid = int(re.search(r"pid (\d+)", line).group(1))  # type: ignore[union-attr]
        w.wait_for(r"trial \d+: started", timeout=120)
        os.kill(pid, signal.SIGKILL)
        res = w.finish(timeout=240)
    finally:
        if w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait()
    assert_one_error(res, 1, rf"^error: worker 0 \(pid {pid}\) was killed by SIGKILL.*rerun")
    again = cli("run", str(base), "--run-dir", str(run), "--json", cwd=tmp_path, timeout=240)
    assert_no_traceback(again)
    assert again.rc == 0, again
    assert last_json(again)["counts"].get("complete", 0) >= 9, again
    assert not (run / "study.db").exists()


@pytest.mark.slow
def test_local_workers_share_the_cores(tmp_path: Path) -> None:
    """Each of N local workers runs with floor(cores / N) torch threads (at least 1), OMP and MKL alike; a
    user's own OMP_NUM_THREADS wins."""
    cores = len(os.sched_getaffinity(0))
    base = write_yaml(tmp_path / "synth.yaml", synthetic_config("synth", 2, sleep=0.0))
    res = cli("run", str(base), "--workers", "2", "--run-dir", str(tmp_path / "a"), cwd=tmp_path)
    assert_no_traceback(res)
    assert res.rc == 0, res
    threads = re.findall(r"worker pid \d+ joins study 'synth' with (\d+) torch threads", res.err)
    assert threads == [str(max(1, cores // 2))] * 2, res

    env = cli_env(OMP_NUM_THREADS="3")
    res = cli("run", str(base), "--workers", "2", "--run-dir", str(tmp_path / "b"), cwd=tmp_path, env=env)
    assert res.rc == 0, res
    # torch caps its pool at the machine's cores, so the user's value shows in what each worker was given
    assert re.findall(r"worker \d started \(pid \d+, (\d+) threads", res.err) == ["3", "3"], res


def test_worker_thread_share_of_the_environment() -> None:
    from automl_kd.storage.workers import worker_env

    env = worker_env(4, {"PATH": "/bin"}, cores=8)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "2" and env["PATH"] == "/bin"
    assert worker_env(3, {}, cores=2)["OMP_NUM_THREADS"] == "1"
    assert worker_env(2, {"OMP_NUM_THREADS": "5"}, cores=8)["OMP_NUM_THREADS"] == "5"
    assert "MKL_NUM_THREADS" not in worker_env(2, {"OMP_NUM_THREADS": "5"}, cores=8)


# -- text the report must show as it is ----------------------------------------------------------------------------
class Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text += data


def hostile_study(run: Path) -> None:
    """A study whose every free text is hostile: its name, a parameter's value, the proposer's name and rationale,
    loss-term names, failure reason and the stored config hold HTML and matplotlib mathtext."""
    run.mkdir()
    name = f"s {EVIL} {MATH}"
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{run / 'study.db'}")
    study.set_user_attr("config", {"name": name, "note": EVIL, "math": MATH})
    study.set_user_attr("objectives", ["val_acc"])
    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "op": optuna.distributions.CategoricalDistribution([EVIL, MATH])
    }
    for i, op in enumerate([EVIL, MATH, EVIL]):
        study.add_trial(
            optuna.trial.create_trial(
                params={"op": op},
                distributions=dist,
                value=50.0 + i,
                user_attrs={
                    "val_acc": 50.0 + i,
                    "params": 1000 * (i + 1),
                    "macs": 10_000 * (i + 1),
                    "latency_ms_b1": 0.1 * (i + 1),
                    "proposer": [MATH, EVIL, f"{MATH}{EVIL}"][i],
                    "outcome": "complete",
                    "loss_terms": {MATH: 1.0, EVIL: 0.5, "total": 1.5},
                    "val_acc_curve": [40.0, 50.0 + i],
                    "augmenters": [{"name": EVIL, "options": {MATH: 1}}],
                },
                system_attrs={
                    "automl_kd:rationale": f"{EVIL} {MATH}",
                    "automl_kd:proposal_meta": {
                        "model": EVIL,
                        "rationale": f"because {EVIL}",
                        "transcript": {"messages": [{"role": EVIL, "content": f"{EVIL} {MATH}"}]},
                    },
                },
            )
        )
    study.add_trial(
        optuna.trial.create_trial(
            state=optuna.trial.TrialState.FAIL,
            params={"op": EVIL},
            distributions=dist,
            user_attrs={"outcome": "failed", "fail_reason": f"{EVIL} {MATH}", "proposer": MATH},
        )
    )


def test_report_text_is_literal_not_mathtext_nor_html(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    hostile_study(run)
    res = cli_in_process("report", "--run-dir", str(run), "--json", cwd=tmp_path, capfd=capfd)
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert not error_lines(res.err), res
    out = run / "report"
    for png in ("pareto.png", "curves.png", "loss_terms.png"):
        assert (out / png).stat().st_size > 1000, png
    page = Page()
    raw = (out / "index.html").read_text()
    page.feed(raw)
    assert "script" not in page.tags, "hostile text became a tag"
    assert EVIL not in raw
    assert EVIL in page.text and MATH in page.text
    for where in ("s " + EVIL, "because " + EVIL):  # the study name, the proposer's rationale, as text
        assert where in page.text


# -- images that are not plain 8-bit pictures ----------------------------------------------------------------------
def test_a_16_bit_png_is_scaled_to_8_bits(tmp_path: Path) -> None:
    """mode I;16 holds 0..65535: 1000 is dark (4 of 255), not saturated white."""
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    a = np.full((8, 8), 1000, np.uint16)
    a[0, 0], a[0, 1] = 65535, 0
    Image.fromarray(a).save(folder / "x.png")
    assert Image.open(folder / "x.png").mode == "I;16"
    x, y = read_class_folders(tmp_path / "train", ["a"], None, "RGB")
    assert x.shape == (1, 3, 8, 8) and y.tolist() == [0]
    assert x[0, :, 1, 1].tolist() == [4, 4, 4]
    assert x[0, :, 0, 0].tolist() == [255, 255, 255] and x[0, :, 0, 1].tolist() == [0, 0, 0]


def test_a_floating_point_image_is_a_data_error(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(folder / "x.tif")
    with pytest.raises(DataError, match=r"x\.tif.*floating-point"):
        read_class_folders(tmp_path / "train", ["a"], None, "RGB")


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def write_bomb(path: Path, side: int = 20000) -> None:
    """A real grey PNG of ``side`` x ``side`` black pixels: a few hundred KB on disk, 400 MB decoded."""
    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b"")
    )


def test_a_decompression_bomb_is_a_data_error_naming_the_file(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(4):
                Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).save(
                    root / split / c / f"{i}.png"
                )
    write_bomb(root / "train" / "a" / "bomb.png")
    assert (root / "train" / "a" / "bomb.png").stat().st_size < 1_000_000
    base = write_yaml(tmp_path / "base.yaml", base_config())
    res = cli_in_process(
        "run", str(base), "--run-dir", str(tmp_path / "r"),
        "--set", "data.dataset=imagefolder", "--set", f"data.root={root}", "--set", "data.image_size=16",
        cwd=tmp_path, capfd=capfd,
    )  # fmt: skip
    assert_one_error(res, 4, r"^error: imagefolder: .*bomb\.png has 400,000,000 pixels, over the limit")
    assert "target reached" not in res.err


# -- crafted checkpoints and cache entries -------------------------------------------------------------------------
def crafted_entry(kind: str, key: str, payload: bytes) -> bytes:
    """A cache file with a valid header (kind, key, length, checksum) around any payload: what an attacker who
    can write the cache folder can make."""
    good = encode_artifact(kind, key, {"x": torch.zeros(1)}, {})
    (hlen,) = struct.unpack("<Q", good[8:16])
    header = json.loads(good[16 : 16 + hlen])
    header.update(
        payload_bytes=len(payload), payload_sha256=__import__("hashlib").sha256(payload).hexdigest()
    )
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"AKDART01" + struct.pack("<Q", len(h)) + h + payload


@pytest.mark.parametrize("kind", ["teacher", "teacher-views", "teacher-feats", "ig-maps", "ig-piece"])
def test_a_crafted_cache_entry_never_runs_code_and_is_not_used(
    tmp_path: Path, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Every cached kind (teacher weights, teacher outputs, IG maps and their resumable pieces): an unsafe
    pickle, a truncated file and wrong contents are refused without running anything."""
    import io
    import pickle

    from fault_support import Payload

    marker = tmp_path / "PWNED"
    unsafe = pickle.dumps({"x": Payload(marker)})
    buf = io.BytesIO()
    torch.save({"x": [1, 2, 3]}, buf)  # not tensors
    wrong = buf.getvalue()
    cache = ArtifactCache(tmp_path / "c")
    key = cache.key(kind, {"k": 1})
    for payload in (unsafe, wrong):
        data = crafted_entry(kind, key, payload)
        if kind == "ig-piece":  # the pieces are read by the same decoder (distill/ig/pieces.py)
            with pytest.raises(Exception, match=r"unreadable payload|not a dict of tensors"):
                decode_artifact(data, kind, key)
            with pytest.raises(Exception, match=r"truncated"):
                decode_artifact(data[: len(data) // 2], kind, key)
            continue
        path = cache.path(kind, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        for damaged in (data, data[: len(data) // 2]):
            path.write_bytes(damaged)
            assert cache.load(kind, key) is None
            assert not path.exists(), "an unusable entry was left to be read again"
    assert not marker.exists(), "a crafted cache entry ran code"


def small_state_dict() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(7)}


@pytest.mark.parametrize("damage", ["truncated", "wrong-tensors"])
def test_a_damaged_teacher_checkpoint_is_one_config_line(
    tmp_path: Path, damage: str, capfd: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / "teacher.pt"
    torch.save(small_state_dict(), ckpt)
    if damage == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[:100])
    cfg = base_config("teach")
    cfg["teacher"] = {"space": "mbv2", "space_options": cfg["space"]["options"], "checkpoint": str(ckpt)}
    cfg["augmenters"] = [{"name": "kd"}]
    base = write_yaml(tmp_path / "t.yaml", cfg)
    res = cli_in_process("run", str(base), "--run-dir", str(tmp_path / "r"), cwd=tmp_path, capfd=capfd)
    assert_one_error(res, 2, r"^error: teacher\.checkpoint '.*teacher\.pt'")
    assert "target reached" not in res.err
    if damage == "truncated":  # unreadable: found before the search; tensors that do not fit: in trial 0
        assert "trial 0" not in res.err, res
    else:
        assert re.search(r"error: .*tensor 0 'conv\.weight' \[3, 3\] does not fit", res.err), res


@pytest.fixture(scope="module")
def finalized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real one-trial run of base.yaml and its finalized trial 0."""
    return finished_run(tmp_path_factory.mktemp("finalized"))


def damage_file(path: Path, how: str, marker: Path) -> None:
    if how == "unsafe":
        write_unsafe_pickle(path, marker)
    elif how == "truncated":
        path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 3)])
    else:
        torch.save(small_state_dict(), path)


@pytest.mark.parametrize("name", ["model.pt", "check_images.pt"])
@pytest.mark.parametrize("how", ["truncated", "wrong-tensors"])
def test_a_damaged_finalized_student_is_one_line(
    finalized: Path, tmp_path: Path, name: str, how: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """``export`` of a finalized folder whose model.pt or check_images.pt is truncated or holds other tensors
    (the unsafe pickles are rows of the fault suite)."""
    import shutil

    final = tmp_path / "final"
    shutil.copytree(finalized / "final" / "trial-0", final)
    damage_file(final / name, how, tmp_path / "PWNED")
    res = cli_in_process("export", "--checkpoint", str(final), cwd=tmp_path, capfd=capfd)
    line = assert_one_error(res, 1, rf"^error: .*{re.escape(name)}")  # a damaged result file: exit 1
    assert "internal error" not in line, line
    assert not (final / "export" / "model.onnx").exists()


@pytest.mark.parametrize("how", ["unsafe", "truncated", "wrong-tensors"])
def test_a_damaged_weights_file_for_evaluate_is_one_line(
    finalized: Path, tmp_path: Path, how: str, capfd: pytest.CaptureFixture[str]
) -> None:
    """``evaluate`` with a plain weights file named by ``model:``: never runs code, one line for each damage."""

    weights = tmp_path / "weights.pt"
    weights.write_bytes((finalized / "final" / "trial-0" / "model.pt").read_bytes())
    damage_file(weights, how, tmp_path / "PWNED")
    stored = optuna.load_study(study_name="base", storage=f"sqlite:///{finalized / 'study.db'}")
    space = stored.user_attrs["config"]["space"]
    cfg = {
        "data": {"dataset": "fashion-mnist", "test_size": 200},
        "model": {
            "space": space["name"],
            "space_options": space["options"],
            "params": stored.trials[0].params,
        },
    }
    evaluate = write_yaml(tmp_path / "eval.yaml", cfg)
    res = cli_in_process(
        "evaluate", "--checkpoint", str(weights), "--config", str(evaluate), cwd=tmp_path, capfd=capfd
    )
    line = assert_one_error(res, 2, r"^error: checkpoint .*weights\.pt")  # the file `model:` names: exit 2
    assert "internal error" not in line, line
    assert not (tmp_path / "PWNED").exists()


# -- a locked study database ---------------------------------------------------------------------------------------
_HOLD = """
import sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
con.execute("COMMIT")
"""


@contextlib.contextmanager
def exclusive_lock(db: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process holding ``BEGIN EXCLUSIVE`` on ``db`` until its stdin gets a line."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(db)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None
    holder.stdin.write("\n")
    holder.stdin.flush()
    holder.wait(timeout=30)


def test_an_exclusively_locked_study_db_is_waited_for_then_read(tmp_path: Path) -> None:
    base = write_yaml(tmp_path / "synth.yaml", synthetic_config("synth", 1, sleep=0.0))
    run = tmp_path / "r"
    assert cli("run", str(base), "--run-dir", str(run), cwd=tmp_path).rc == 0
    with exclusive_lock(run / "study.db") as holder:
        w = Watched("show", "--run-dir", str(run), "--json", cwd=tmp_path)
        try:
            w.wait_for(r"storage unreachable \(OperationalError\); retrying", timeout=60)
            release(holder)
            res = w.finish(timeout=120)
        finally:
            if w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
    assert_no_traceback(res)
    assert res.rc == 0, res
    assert last_json(res)["counts"] == {"complete": 1}


@pytest.mark.slow
def test_an_exclusive_lock_that_stays_is_exit_5_and_loses_nothing(tmp_path: Path) -> None:
    base = write_yaml(tmp_path / "synth.yaml", synthetic_config("synth", 1, sleep=0.0))
    run = tmp_path / "r"
    assert cli("run", str(base), "--run-dir", str(run), cwd=tmp_path).rc == 0
    with exclusive_lock(run / "study.db"):
        res = cli(
            "run", str(base), "--run-dir", str(run), "--set", "search.n_trials=2",
            "--set", "storage.retry_timeout=2", cwd=tmp_path, timeout=120,
        )  # fmt: skip
    assert_one_error(res, 5, r"^error: storage .*study\.db unreachable for \d+ s: OperationalError: .*locked")
    study = optuna.load_study(study_name="synth", storage=f"sqlite:///{run / 'study.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE]


# -- two finalize processes on one trial ---------------------------------------------------------------------------
@pytest.mark.slow
def test_two_finalize_processes_on_one_trial_leave_one_whole_result(finalized: Path, tmp_path: Path) -> None:
    import shutil

    run = tmp_path / "r"
    shutil.copytree(finalized, run, ignore=shutil.ignore_patterns("final", "report"))
    args = ("finalize", "--run-dir", str(run), "--trial", "0", "--epochs", "1")
    a, b = Watched(*args, cwd=tmp_path), Watched(*args, cwd=tmp_path)
    results = [a.finish(timeout=300), b.finish(timeout=300)]
    for res in results:
        assert_no_traceback(res)
        assert res.rc == 0 or len(error_lines(res.err)) == 1, res
    assert any(res.rc == 0 for res in results), results
    final = run / "final" / "trial-0"
    assert not [p.name for p in final.iterdir() if p.name.endswith(".tmp")]
    exported = cli("export", "--checkpoint", str(final), "--format", "safetensors", cwd=tmp_path, timeout=300)
    assert_no_traceback(exported)
    assert exported.rc == 0, exported
