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

from automl_kd.cache import ArtifactCache, atomic_write, decode_artifact, encode_artifact
from automl_kd.data import Split
from automl_kd.distill.ig.attribution import IGSettings, attribution_maps
from automl_kd.distill.ig.inference import inference_copy
from automl_kd.distill.taps import model_fingerprint
from automl_kd.distill.teacher_info import teacher_input, teacher_normalizer


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


def ig_cache_key(
    teacher_fingerprint: str, data_fingerprint: str, split: str, s: IGSettings, teacher_input: Any = "dataset"
) -> str:
    parts = {"teacher": teacher_fingerprint, "data": data_fingerprint, "split": split, **s.key_parts()}
    if teacher_input != "dataset":  # the same weights fed another way are another function
        parts["input"] = teacher_input
    return ArtifactCache.key("ig-maps", parts)


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
    ``chunk`` images, each stored as it finishes, so an interrupted precompute resumes where it stopped.
    ``progress(done, total)`` is called after every chunk.
    """
    say = log or (lambda msg: None)
    part: Split = getattr(data, split)
    key = ig_cache_key(model_fingerprint(teacher), data.fingerprint, split, settings, teacher_input(teacher))
    device = part.x.device

    def load() -> IGMaps | None:
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

    found = load()
    if found is not None:
        return found
    with cache.lock("ig-maps", key):
        found = load()  # another worker may have finished it while this one waited
        if found is not None:
            return found
        maps, scale, err, gap = _compute_chunks(
            teacher, data, part, settings, cache, key, chunk, progress, say
        )
        err_mean = float(err.mean()) if len(err) else 0.0
        # relative to the mean |f(x) - f(baseline)|: the share of the output change the attributions miss
        rel = float(err.mean() / gap.mean().clamp_min(1e-12)) if len(err) else 0.0
        meta = {
            "images": len(part),
            "split": split,
            "settings": settings.key_parts(),
            "completeness_error_mean": err_mean,
            "completeness_error_max": float(err.max()) if len(err) else 0.0,
            "completeness_error_relative": rel,
        }
        cache.save("ig-maps", key, {"maps": maps, "scale": scale, "index": part.index.cpu()}, meta)
        cache.clear_partial("ig-maps", key)
        say(
            f"IG maps: computed and cached as {key[:12]} (completeness error {err_mean:.3g}, {100 * rel:.2g} %)"
        )
        path = cache.path("ig-maps", key)
        return _remember(path, device, IGMaps(maps, scale, part.index.cpu(), meta, key).to(device))


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


def _compute_chunks(
    teacher: nn.Module,
    data: Any,
    part: Split,
    s: IGSettings,
    cache: Any,
    key: str,
    chunk: int,
    progress: Callable[[int, int], None] | None,
    say: Callable[[str], None],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    folder = cache.partial_dir("ig-maps", key)
    folder.mkdir(parents=True, exist_ok=True)
    fast = inference_copy(teacher)
    normalize = teacher_normalizer(teacher, data)  # IG in the teacher's own input space (teacher.input)
    mean = torch.tensor(data.mean, device=part.x.device)
    n = len(part)
    pieces: list[dict[str, torch.Tensor]] = []
    resumed = 0
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        path, piece_key = folder / f"{start:09d}-{stop:09d}.art", f"{key}:{start}:{stop}"
        piece = None
        if path.is_file():
            try:
                stored = decode_artifact(path.read_bytes(), "ig-piece", piece_key).tensors
                if set(stored) != {"maps", "scale", "err", "gap"}:
                    raise ValueError(f"holds {sorted(stored)}")
                piece = stored
                resumed += stop - start
            except Exception as exc:
                say(f"IG maps: piece {path.name} is unusable ({exc}); recomputing it")
        if piece is None:
            x01 = part.x[start:stop].float().div(255)
            maps, err, gap = attribution_maps(fast, x01, part.y[start:stop], normalize, mean, s)
            peak = maps.flatten(1).amax(1).clamp_min(1e-30)
            dtype = torch.float16 if s.fp16 else torch.float32
            piece = {
                "maps": (maps / peak.view(-1, 1, 1)).to(dtype).cpu(),
                "scale": peak.cpu(),
                "err": err.cpu(),
                "gap": gap.cpu(),
            }
            atomic_write(path, encode_artifact("ig-piece", piece_key, piece, {}))
        pieces.append(piece)
        if progress:
            progress(stop, n)
    if resumed:
        say(f"IG maps: resumed an interrupted precompute ({resumed} of {n} images were already done)")
    if not pieces:
        empty = torch.zeros(0, *part.x.shape[-2:])
        return empty, torch.zeros(0), torch.zeros(0), torch.zeros(0)
    return (
        torch.cat([p["maps"] for p in pieces]),
        torch.cat([p["scale"] for p in pieces]),
        torch.cat([p["err"] for p in pieces]),
        torch.cat([p["gap"] for p in pieces]),
    )
