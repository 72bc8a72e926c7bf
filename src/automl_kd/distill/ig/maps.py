"""IG maps of a dataset split: computed once per (teacher weights, data and split, IG settings), cached by dataset
index, resumable, shared by every trial and run.

Example::

    maps = precompute_ig_maps(teacher, data, IGSettings(steps=16), ArtifactCache.default(), log=print)
    m = maps.lookup(batch_index)   # n x H x W float maps of those dataset images, on the maps' device
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from automl_kd.cache import ArtifactCache
from automl_kd.data import Split
from automl_kd.distill.ig.attribution import IGSettings
from automl_kd.distill.ig.pieces import MapStore
from automl_kd.distill.taps import model_fingerprint
from automl_kd.distill.teacher_info import teacher_input


class IGMaps:
    """One H x W map per image of a split, looked up by dataset index.

    Stored as maps scaled to a per-image maximum of 1 (fp16 or fp32) times a per-image fp32 ``scale``, so fp16
    keeps 3 significant digits on every map whatever its magnitude.
    """

    def __init__(
        self,
        maps: torch.Tensor,
        scale: torch.Tensor,
        index: torch.Tensor,
        meta: dict[str, Any],
        key: str = "",
    ) -> None:
        self.maps, self.scale, self.index, self.meta, self.key = maps, scale.float(), index.long(), meta, key
        self._rows = torch.full((int(self.index.max()) + 1 if len(self.index) else 0,), -1, dtype=torch.long)
        self._rows[self.index.cpu()] = torch.arange(len(self.index))
        self._rows = self._rows.to(self.maps.device)

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def to(self, device: torch.device) -> IGMaps:
        return IGMaps(self.maps.to(device), self.scale.to(device), self.index.to(device), self.meta, self.key)

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """The float32 maps of the images with these dataset indices (KeyError for an index without a map)."""
        idx = index.to(self._rows.device)
        rows = self._rows[idx.clamp(0, len(self._rows) - 1)]
        bad = (rows < 0) | (idx >= len(self._rows)) | (idx < 0)
        if bool(bad.any()):
            raise KeyError(f"no IG map for dataset index {int(idx[bad][0])}")
        return self.maps[rows].float() * self.scale[rows].view(-1, 1, 1)

    def prefetch(self, index: torch.Tensor, chunk: int = 512) -> None:
        """Make sure these dataset indices have maps before they are looked up; complete maps: nothing to do."""


def ig_cache_key(
    teacher_fingerprint: str, data_fingerprint: str, split: str, s: IGSettings, teacher_input: Any = "dataset"
) -> str:
    parts = {"teacher": teacher_fingerprint, "data": data_fingerprint, "split": split, **s.key_parts()}
    if teacher_input != "dataset":  # the same weights fed another way are another function
        parts["input"] = teacher_input
    return ArtifactCache.key("ig-maps", parts)


def _split_key(teacher: nn.Module, data: Any, split: str, settings: IGSettings) -> str:
    return ig_cache_key(model_fingerprint(teacher), data.fingerprint, split, settings, teacher_input(teacher))


def _load(cache: Any, key: str, part: Split, say: Callable[[str], None]) -> IGMaps | None:
    """The whole split's maps from the cache (verified once per process), or None."""
    device = part.x.device
    path = cache.path("ig-maps", key)
    stamp = _stamp(path)
    memo = _MEMO.get((str(path), str(device)))
    if memo is not None and stamp is not None and memo[0] == stamp:  # verified earlier in this process
        say(f"IG maps: reusing cache entry {key[:12]} ({len(part)} images, no recomputation)")
        return memo[1]
    art = cache.load("ig-maps", key)
    if art is None:
        return None
    if not torch.equal(art.tensors["index"], part.index.cpu()):
        cache.discard("ig-maps", key, "its dataset indices differ from the split's")
        return None
    say(f"IG maps: reusing cache entry {key[:12]} ({len(part)} images, no recomputation)")
    t = art.tensors
    return _remember(path, device, IGMaps(t["maps"], t["scale"], t["index"], art.meta, key).to(device))


def _store_whole(store: MapStore, cache: Any, split: str, say: Callable[[str], None]) -> IGMaps:
    """Store a complete split's maps as one cache entry (and drop its pieces)."""
    key, part = store.key, store.part
    quality = store.completeness_meta()
    meta: dict[str, Any] = {
        "images": len(part),
        "split": split,
        "settings": store.settings.key_parts(),
        **quality,
    }
    cache.save("ig-maps", key, {"maps": store.maps, "scale": store.scale, "index": part.index.cpu()}, meta)
    cache.clear_partial("ig-maps", key)
    say(
        f"IG maps: computed and cached as {key[:12]} (completeness error {quality['completeness_error_mean']:.3g}, "
        f"{100 * quality['completeness_error_relative']:.2g} %)"
    )
    maps = IGMaps(store.maps, store.scale, part.index.cpu(), meta, key).to(part.x.device)
    return _remember(cache.path("ig-maps", key), part.x.device, maps)


def _lookup(
    teacher: nn.Module,
    data: Any,
    settings: IGSettings,
    cache: Any,
    split: str,
    log: Callable[[str], None] | None,
) -> tuple[Callable[[str], None], Split, str, IGMaps | None]:
    """(the logger, the split, its cache key, its complete cached maps or None)."""
    say = log or (lambda msg: None)
    part: Split = getattr(data, split)
    key = _split_key(teacher, data, split, settings)
    return say, part, key, _load(cache, key, part, say)


def precompute_ig_maps(
    teacher: nn.Module,
    data: Any,
    settings: IGSettings,
    cache: Any,
    *,
    split: str = "train",
    chunk: int = 512,
    progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> IGMaps:
    """The IG maps of every image of ``data.<split>``, from the cache or computed once and cached.

    The key is (teacher weights, data fingerprint and split, IG settings). Computation runs in chunks of
    ``chunk`` images, each stored as it finishes (:mod:`automl_kd.distill.ig.pieces`), so an interrupted
    precompute resumes where it stopped, and maps computed on demand earlier are not computed again.
    ``progress(done, total)`` is called after every chunk.
    """
    say, part, key, found = _lookup(teacher, data, settings, cache, split, log)
    if found is not None:
        return found
    with cache.lock("ig-maps", key):
        found = _load(cache, key, part, say)  # another worker may have finished it while this one waited
        if found is not None:
            return found
        store = MapStore(teacher, data, part, settings, cache, key, say)
        if store.refresh():
            say(
                f"IG maps: resumed an interrupted precompute ({store.done} of {len(part)} images were already done)"
            )
        todo = (~store.have).nonzero().squeeze(1)
        for start in range(0, len(todo), chunk):
            store.compute(todo[start : start + chunk])
            if progress:
                progress(store.done, len(part))
        return _store_whole(store, cache, split, say)


class OnDemandIGMaps(IGMaps):
    """The maps of a split computed when first looked up, stored as pieces that later runs and other workers
    read; once every image has one, the whole is stored as the usual cache entry."""

    def __init__(self, store: MapStore, cache: Any, split: str) -> None:
        meta = {
            "images": len(store),
            "split": split,
            "settings": store.settings.key_parts(),
            "on_demand": True,
        }
        super().__init__(store.maps, store.scale, store.part.index.cpu(), meta, store.key)
        self.store, self.cache, self.split = store, cache, split
        self.whole: IGMaps | None = None
        self._told = store.done * 10 // max(len(store), 1)

    def to(self, device: torch.device) -> IGMaps:
        return self  # kept on the CPU; lookup answers on the device of the indices it is given

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """The float32 maps of these dataset indices, computing the ones that do not exist yet."""
        if self.whole is not None:
            return self.whole.lookup(index)
        rows = self.store.positions(index)
        self._ensure(rows, len(rows))
        return (self.maps[rows].float() * self.scale[rows].view(-1, 1, 1)).to(index.device)

    def prefetch(self, index: torch.Tensor, chunk: int = 512) -> None:
        """Compute now, ``chunk`` images at a time, the maps of these dataset indices that do not exist yet (the
        images the cached teacher views overlay): large batches run IG faster than a training batch's few."""
        if self.whole is None:
            self._ensure(self.store.positions(index), chunk)

    def _ensure(self, rows: torch.Tensor, chunk: int) -> None:
        store = self.store
        if bool(store.have[rows].all()):
            return
        store.refresh()  # another worker may have computed them
        missing = rows[~store.have[rows]].unique()
        step = max(chunk, 1)
        for start in range(0, len(missing), step):
            store.compute(missing[start : start + step])
            self._report()
        if store.done == len(store):
            self.whole = _store_whole(store, self.cache, self.split, store.say)

    def _report(self) -> None:
        tenth = self.store.done * 10 // max(len(self.store), 1)
        if tenth > self._told:
            self._told = tenth
            self.store.say(
                f"IG maps: {self.store.done} of {len(self.store)} images computed on demand so far"
            )


def on_demand_ig_maps(
    teacher: nn.Module,
    data: Any,
    settings: IGSettings,
    cache: Any,
    *,
    split: str = "train",
    log: Callable[[str], None] | None = None,
) -> IGMaps:
    """The split's maps from the cache when they are complete, else maps computed as they are looked up (with
    what earlier runs computed); the same key as :func:`precompute_ig_maps`, and equal maps."""
    say, part, key, found = _lookup(teacher, data, settings, cache, split, log)
    if found is not None:
        return found
    memo = _ON_DEMAND.get(key)
    if memo is not None and memo.store.teacher is teacher and memo.store.part is part:
        return memo
    store = MapStore(teacher, data, part, settings, cache, key, say)
    store.refresh()
    say(
        f"IG maps: computed on demand as training needs them ({store.done} of {len(part)} images already done)"
    )
    maps = OnDemandIGMaps(store, cache, split)
    _ON_DEMAND.clear()
    _ON_DEMAND[key] = maps
    return maps


#: the on-demand maps of this process (one split), so the trials of a search share what they computed
_ON_DEMAND: dict[str, OnDemandIGMaps] = {}


#: maps verified in this process, so the trials of a search don't re-read and re-hash the file: path -> (the
#: file's size and mtime when it was verified, maps). A changed file is read and verified again.
_MEMO: dict[tuple[str, str], tuple[tuple[int, int], IGMaps]] = {}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _remember(path: Path, device: torch.device, maps: IGMaps) -> IGMaps:
    stamp = _stamp(path)
    if stamp is not None:
        while len(_MEMO) >= 2:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[(str(path), str(device))] = (stamp, maps)
    return maps
