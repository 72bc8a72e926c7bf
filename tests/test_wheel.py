"""The package as a user gets it: the built wheel (and the nasbench plugin's), installed into a fresh virtual
environment of the oldest and of the newest supported Python found on this machine, then ``automl-kd plugins``,
``automl-kd init`` and a one-trial search, run from a folder outside the repository. Also what the wheel and the
sdist hold (licence, metadata, the example config; no test files in the sdist).

torch and torchvision (the Makefile's pins) come from a wheelhouse outside the repository, ``AUTOML_KD_WHEELHOUSE``
or ``~/.cache/automl-kd/wheelhouse``, one folder per Python: a Python other than the one the project's venv uses has
no torch on this machine's disk, and pip's HTTP cache keeps none of it here, so the first run downloads about 2.9 GB
per Python into it (half a minute to a minute here) and later runs download nothing. Each venv takes about 5.7 GB
while the test runs, in /dev/shm where that has room (else under pytest's temporary folder); both are removed at
its end.
"""

from __future__ import annotations

import email.parser
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import REPO

#: the Python versions the project supports (requires-python, the classifiers and the README say the same)
SUPPORTED = ((3, 10), (3, 11), (3, 12), (3, 13))
#: the torch build the Makefile installs, the same in every venv
TORCH = re.search(r"^TORCH := (.+)$", (REPO / "Makefile").read_text(), re.M)
#: what one venv with torch needs on disk, with room for its wheels in the wheelhouse
NEEDS_GB = 10
WHEELHOUSE = Path(
    os.environ.get("AUTOML_KD_WHEELHOUSE") or Path("~/.cache/automl-kd/wheelhouse").expanduser()
)


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (int(out[0]), int(out[1])) if len(out) == 2 else None


def supported_pythons() -> dict[tuple[int, int], str]:
    """Every supported Python on this machine (pyenv's, Debian's, on PATH) that has venv: version -> path."""
    candidates = sorted(str(p) for p in Path("~/.pyenv/versions").expanduser().glob("3.*/bin/python3"))
    candidates += [shutil.which(f"python{a}.{b}") or "" for a, b in SUPPORTED]
    candidates += [f"/usr/bin/python{a}.{b}" for a, b in SUPPORTED]
    found: dict[tuple[int, int], str] = {}
    for path in candidates:
        if not path or not os.access(path, os.X_OK):
            continue
        v = _version_of(path)
        if v in SUPPORTED and v not in found:
            ok = subprocess.run([path, "-c", "import venv, ensurepip"], capture_output=True, timeout=60)
            if ok.returncode == 0:
                found[v] = path
    return found


def oldest_and_newest() -> list[tuple[tuple[int, int], str]]:
    found = supported_pythons()
    versions = sorted(found)
    picked = {versions[0], versions[-1]} if versions else set()
    return [(v, found[v]) for v in sorted(picked)]


def clean_env() -> dict[str, str]:
    """The environment of a user's shell: nothing points into this repository or the project's venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({"COLUMNS": "80", "NO_COLOR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    return env


def run(*cmd: str | Path, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    p = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=clean_env()
    )
    assert p.returncode == 0, (
        f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    )
    return p


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The two wheels and the sdist, built from this checkout as a release would build them."""
    out = tmp_path_factory.mktemp("dist")
    run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        out,
        REPO,
        REPO / "plugins" / "automl-kd-nasbench",
        cwd=out,
    )
    run(
        sys.executable, "-c", f"from setuptools import build_meta as b; b.build_sdist({str(out)!r})", cwd=REPO
    )
    return {
        "core": next(out.glob("automl_kd-*.whl")),
        "nasbench": next(out.glob("automl_kd_nasbench-*.whl")),
        "sdist": next(out.glob("automl_kd-*.tar.gz")),
    }


def _metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(name).decode())


def test_the_wheels_carry_the_licence_the_classifiers_and_the_example_config(wheels: dict[str, Path]) -> None:
    meta = _metadata(wheels["core"])
    assert meta["License-Expression"] == "Apache-2.0" and meta.get_all("License-File") == ["LICENSE"]
    assert meta["Requires-Python"] == ">=3.10"
    listed = {
        c.rsplit(":: ", 1)[-1] for c in meta.get_all("Classifier") if c.startswith("Programming Language")
    }
    assert {f"{a}.{b}" for a, b in SUPPORTED} <= listed
    with zipfile.ZipFile(wheels["core"]) as z:
        names = z.namelist()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
        assert "Apache License" in z.read(next(n for n in names if n.endswith("licenses/LICENSE"))).decode()
        shipped = yaml.safe_load(z.read("automl_kd/configs/quick.yaml"))
    assert shipped == yaml.safe_load((REPO / "examples" / "configs" / "quick.yaml").read_text())
    plugin = _metadata(wheels["nasbench"])
    assert plugin["License-Expression"] == "Apache-2.0"
    assert any(r.replace(" ", "").startswith("automl-kd>=") for r in plugin.get_all("Requires-Dist"))


def test_the_sdist_has_the_licence_and_no_tests(wheels: dict[str, Path]) -> None:
    with tarfile.open(wheels["sdist"]) as tar:
        names = [n.split("/", 1)[1] for n in tar.getnames() if "/" in n]
    assert "LICENSE" in names and "src/automl_kd/configs/quick.yaml" in names
    assert not [n for n in names if n.startswith("tests/")]


def _one_trial_config(folder: Path) -> Path:
    cfg = {
        "name": "wheel",
        "seed": 0,
        "space": {
            "name": "mbv2",
            "options": {"stages": [[16, 1, 1], [32, 1, 2]], "widths": [1.0], "ops": ["ir_k3_e1", "ir_k3_e3"]},
        },
        "search": {"n_trials": 1, "proposer": {"name": "random"}, "objectives": ["val_acc", "params"]},
        "evaluator": {"name": "synthetic", "options": {"sleep": 0, "epochs": 1}},
    }
    path = folder / "one.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def venv_dir(tmp_path: Path) -> Iterator[Path]:
    """A venv folder, removed after the test (pytest keeps the temporary folders of its last runs). In memory
    (/dev/shm) where it has room: writing and removing 5.7 GB of torch on a shared disk took minutes here."""
    shm = Path("/dev/shm")
    in_memory = shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > NEEDS_GB * 1e9
    folder = Path(tempfile.mkdtemp(prefix="automl-kd-wheel-", dir=shm)) if in_memory else tmp_path
    try:
        yield folder / "venv"
    finally:
        shutil.rmtree(folder / "venv", ignore_errors=True)
        if in_memory:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.parametrize(
    "version,python", oldest_and_newest(), ids=lambda v: ".".join(map(str, v)) if isinstance(v, tuple) else ""
)
def test_the_wheel_installs_and_runs_on_a_supported_python(
    version: tuple[int, int], python: str, wheels: dict[str, Path], venv_dir: Path, tmp_path: Path
) -> None:
    assert TORCH, "the Makefile names no TORCH pins"
    free_gb = shutil.disk_usage(venv_dir.parent).free / 1e9
    assert free_gb > NEEDS_GB, (
        f"{free_gb:.1f} GB free in {venv_dir.parent}; a venv with torch needs {NEEDS_GB} GB"
    )
    run(python, "-m", "venv", venv_dir, cwd=tmp_path)
    bin_ = venv_dir / "bin"
    run(bin_ / "python", "-m", "pip", "install", "-q", "--upgrade", "pip", cwd=tmp_path)
    # torch first, at the Makefile's pins, from the wheelhouse (filled on the first run), then the wheels and the rest
    house = WHEELHOUSE / f"cp{version[0]}{version[1]}"
    pins = TORCH.group(1).split()
    run(bin_ / "python", "-m", "pip", "download", "-q", "-d", house, *pins, cwd=tmp_path)
    run(
        bin_ / "python",
        "-m",
        "pip",
        "install",
        "-q",
        "--no-index",
        "--find-links",
        house,
        *pins,
        cwd=tmp_path,
    )
    run(bin_ / "python", "-m", "pip", "install", "-q", wheels["core"], wheels["nasbench"], cwd=tmp_path)
    work = tmp_path / "work"  # outside the repository: only the installed package can be imported
    work.mkdir()
    got = run(
        bin_ / "python",
        "-c",
        "import sys, automl_kd; print(*sys.version_info[:2], automl_kd.__file__)",
        cwd=work,
    )
    major, minor, where = got.stdout.split()
    assert (int(major), int(minor)) == version and str(venv_dir) in where

    plugins = run(bin_ / "automl-kd", "plugins", cwd=work)
    assert "nasbench  (automl-kd-nasbench" in plugins.stdout and "error" not in plugins.stdout
    assert max(len(line) for line in plugins.stdout.splitlines()) <= 80
    listed = json.loads(run(bin_ / "automl-kd", "plugins", "--json", cwd=work).stdout.splitlines()[-1])
    assert not listed["errors"] and "nasbench201" in {s["name"] for s in listed["spaces"]}

    run(bin_ / "automl-kd", "init", cwd=work)
    assert "ok" in run(bin_ / "automl-kd", "check", "quick.yaml", cwd=work).stdout

    res = run(bin_ / "automl-kd", "run", _one_trial_config(work), "--json", cwd=work)
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["counts"] == {"complete": 1} and summary["best"]["trial"] == 0
