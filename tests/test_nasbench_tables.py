"""NAS-Bench-Macro and NAS-Bench-201 tables: loading, validation, clear errors, and that they read right."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from automl_kd_nasbench import tables
from automl_kd_nasbench.nb201 import EDGE_NAMES, nb201_cost
from automl_kd_nasbench.tables import (
    NB201_OPS,
    download_macro,
    load_macro_table,
    load_nb201_table,
    nb201_dataset,
    resolve_macro_path,
)
from conftest import MACRO_JSON

from automl_kd.errors import DataError

ROOT = Path(__file__).resolve().parent.parent
MACRO = MACRO_JSON


@pytest.fixture(scope="module")
def macro_path() -> Path:
    assert MACRO.is_file(), f"test data missing: {MACRO} (see shared/data/nas-bench-macro/README.md)"
    return MACRO


def test_macro_table_has_6561_entries_and_the_published_statistics(macro_path: Path) -> None:
    table = load_macro_table(macro_path)
    assert len(table.entries) == 6561
    accs = table.mean_accs()
    # the data README: mean accuracy 45.36 .. 93.13 %, average 90.25 %
    assert accs.min() == pytest.approx(45.36, abs=0.01)
    assert accs.max() == pytest.approx(93.13, abs=0.01)
    assert accs.mean() == pytest.approx(90.25, abs=0.01)
    best = max(table.entries, key=lambda k: table.entries[k].mean_acc)
    assert best == "22212220"
    assert len(table.entries[best].test_acc) == 3


def test_macro_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(DataError, match=r"nope\.json"):
        load_macro_table(missing)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"00000000": {"test_acc": [1', "not readable JSON"),
        ("[1, 2, 3]", "object of 6561 entries"),
        (json.dumps({"0000000": {}}), "6561 entries, got 1"),
    ],
)
def test_macro_corrupt_file_gives_a_clear_error(tmp_path: Path, content: str, match: str) -> None:
    bad = tmp_path / "corrupt.json"
    bad.write_text(content)
    with pytest.raises(DataError, match=match) as info:
        load_macro_table(bad)
    assert str(bad) in str(info.value)


def test_macro_malformed_entry_is_named(tmp_path: Path, macro_path: Path) -> None:
    raw = json.loads(macro_path.read_text())
    del raw["01201120"]["mean_acc"]
    bad = tmp_path / "entry.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(DataError, match="'01201120' is malformed"):
        load_macro_table(bad)


def test_macro_path_resolution_env_cache_and_no_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, macro_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv(tables.MACRO_ENV, raising=False)
    with pytest.raises(DataError, match="allow the download"):
        resolve_macro_path(None, download=False)
    monkeypatch.setenv(tables.MACRO_ENV, str(macro_path))
    assert resolve_macro_path(None, download=False) == macro_path
    monkeypatch.setenv(tables.MACRO_ENV, str(tmp_path / "gone.json"))
    with pytest.raises(DataError, match=r"gone\.json"):
        resolve_macro_path(None)


def test_macro_download_checks_the_hash(tmp_path: Path, macro_path: Path) -> None:
    # file:// stands in for the public URL, so the download path is tested offline
    dest = download_macro(tmp_path / "cache" / tables.MACRO_FILENAME, url=macro_path.as_uri())
    assert load_macro_table(dest).entries.keys() == load_macro_table(macro_path).entries.keys()
    tampered = tmp_path / "tampered.json"
    tampered.write_bytes(macro_path.read_bytes().replace(b"93.12666320800781", b"99.12666320800781", 1))
    with pytest.raises(DataError, match="SHA-256"):
        download_macro(tmp_path / "other.json", url=tampered.as_uri())
    assert not (tmp_path / "other.json").exists()
    with pytest.raises(DataError, match="cannot download"):
        download_macro(tmp_path / "x.json", url=(tmp_path / "absent.json").as_uri())


@pytest.mark.parametrize(
    ("dataset", "best"), [("cifar10", 91.61), ("cifar100", 73.49), ("imagenet16-120", 46.73)]
)
def test_nb201_tables_load_with_the_published_optimum(dataset: str, best: float) -> None:
    table = load_nb201_table(dataset)
    assert len(table.entries) == 5**6
    # NAS-Bench-201's best validation accuracies (Dong & Yang 2020, table 5)
    assert table.mean_val_accs().max() == pytest.approx(best, abs=0.01)


def test_nb201_dataset_names() -> None:
    assert nb201_dataset("ImageNet16-120") == nb201_dataset("imagenet") == "imagenet16-120"
    with pytest.raises(ValueError, match="choose one of"):
        nb201_dataset("mnist")


def test_nb201_edge_order_matches_the_arch_string() -> None:
    # If node 3 (the output) gets 'none' on all three of its edges, the network outputs zeros: chance
    # accuracy. That only holds if digits 4-6 are the edges into node 3, as EDGE_NAMES says.
    table = load_nb201_table("cifar10")
    dead = [float(np.mean(e.val_acc)) for k, e in table.entries.items() if k[3:] == "000"]
    assert max(dead) < 10.5
    assert EDGE_NAMES[3:] == ("edge_0_3", "edge_1_3", "edge_2_3")


def test_nb201_analytic_params_match_the_table() -> None:
    for dataset in ("cifar10", "imagenet16-120"):
        table = load_nb201_table(dataset)
        diffs = np.array(
            [
                nb201_cost([NB201_OPS[int(c)] for c in key], dataset).params - round(e.model_size_mb * 1e6)
                for key, e in table.entries.items()
            ]
        )
        # 150 of 15,625 table entries carry the size of a cell with one conv edge more or fewer
        # (docs/nasbench.md)
        assert (diffs == 0).sum() == 15625 - 150
        assert set(np.abs(diffs[diffs != 0])) <= {28000, 243040}  # exactly one 1x1 or one 3x3 conv edge
