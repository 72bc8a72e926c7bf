"""The artifact cache: content keys, atomic writes, and corrupt/truncated/mismatched entries never used."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest
import torch

from automl_kd.cache import ArtifactCache, decode_artifact, encode_artifact
from automl_kd.errors import CacheError


@pytest.fixture
def cache(tmp_path: Path) -> ArtifactCache:
    return ArtifactCache(tmp_path / "cache")


def test_default_root_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOML_KD_CACHE", str(tmp_path / "here"))
    assert ArtifactCache.default().root == tmp_path / "here"
    monkeypatch.delenv("AUTOML_KD_CACHE")
    assert ArtifactCache.default().root == Path.home() / ".cache" / "automl-kd"


def test_keys_hash_everything_and_nothing_else() -> None:
    a = ArtifactCache.key("ig-maps", {"steps": 8, "data": "x", "nested": {"b": 1, "a": [1, 2]}})
    b = ArtifactCache.key("ig-maps", {"nested": {"a": [1, 2], "b": 1}, "data": "x", "steps": 8})
    assert a == b and len(a) == 64  # order does not matter
    assert a != ArtifactCache.key("ig-maps", {"steps": 9, "data": "x", "nested": {"b": 1, "a": [1, 2]}})
    assert a != ArtifactCache.key("teacher", {"steps": 8, "data": "x", "nested": {"b": 1, "a": [1, 2]}})


def test_round_trip(cache: ArtifactCache) -> None:
    key = cache.key("thing", {"v": 1})
    tensors = {"a": torch.arange(10, dtype=torch.float16), "b": torch.ones(2, 3, dtype=torch.bool)}
    cache.save("thing", key, tensors, {"note": "hello"})
    art = cache.load("thing", key)
    assert art is not None and art.meta == {"note": "hello"}
    assert all(torch.equal(art.tensors[k], v) for k, v in tensors.items())
    assert not list(cache.path("thing", key).parent.glob("*.tmp"))  # the temporary file was renamed away


def _corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # a flipped byte inside the payload
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not an artifact at all")


@pytest.mark.parametrize("damage", [_corrupt, _truncate, _garbage], ids=["corrupt", "truncated", "garbage"])
def test_damaged_entries_are_detected_removed_and_rebuilt(
    cache: ArtifactCache, damage: object, caplog: pytest.LogCaptureFixture
) -> None:
    key = cache.key("thing", {"v": 2})
    cache.save("thing", key, {"a": torch.randn(100)})
    damage(cache.path("thing", key))  # type: ignore[operator]
    with caplog.at_level(logging.WARNING, logger="automl_kd"):
        assert cache.load("thing", key) is None
    assert "unusable" in caplog.text and "rebuilt" in caplog.text
    assert not cache.path("thing", key).exists()
    cache.save("thing", key, {"a": torch.zeros(3)})  # the caller rebuilds it
    art = cache.load("thing", key)
    assert art is not None and torch.equal(art.tensors["a"], torch.zeros(3))


def test_an_entry_stored_under_another_key_is_not_used(cache: ArtifactCache) -> None:
    k1, k2 = cache.key("thing", {"v": 1}), cache.key("thing", {"v": 2})
    cache.save("thing", k1, {"a": torch.ones(3)})
    cache.path("thing", k2).write_bytes(cache.path("thing", k1).read_bytes())  # e.g. copied by hand
    assert cache.load("thing", k2) is None
    with pytest.raises(CacheError, match="mismatched"):
        decode_artifact(encode_artifact("thing", k1, {"a": torch.ones(1)}, {}), "thing", k2)


def test_an_interrupted_write_leaves_the_old_entry(
    cache: ArtifactCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = cache.key("thing", {"v": 3})
    cache.save("thing", key, {"a": torch.ones(3)})

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    cache.save("thing", key, {"a": torch.zeros(3)})  # a failed write is a warning: the cache stops writing
    assert cache.unusable == "disk full"
    monkeypatch.undo()
    art = cache.load("thing", key)
    assert art is not None and torch.equal(art.tensors["a"], torch.ones(3))
    assert not list(cache.path("thing", key).parent.glob("*.tmp"))


def test_lock_serialises_builders(cache: ArtifactCache) -> None:
    inside: list[int] = []
    overlap = threading.Event()

    def build(i: int) -> None:
        with cache.lock("thing", "abc"):
            if inside:
                overlap.set()
            inside.append(i)
            threading.Event().wait(0.05)
            inside.remove(i)

    threads = [threading.Thread(target=build, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlap.is_set()
