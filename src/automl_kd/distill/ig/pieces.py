"""The resumable store behind the IG maps of one split: a file per computed batch of images, in the cache entry's
partial folder, and the maps read so far in memory.

Both ways of computing maps write the same pieces: the whole-split precompute (``precompute: all``, and
``automl-kd ig precompute``) and the maps computed when a training image first needs one (``precompute: needed``).
So either one resumes, or finishes, what the other started, and several workers share their work. A piece holds
the dataset indices of its images, their maps scaled to a peak of 1 (fp16 or fp32), the peaks, and each image's
completeness error and output gap. Pieces named ``START-STOP.art`` (written before pieces held indices) hold the
split's positions START to STOP.

Example::

    store = MapStore(teacher, data, data.train, settings, cache, key, say=print)
    store.refresh()                      # read what earlier runs and other workers computed
    store.compute(store.positions(idx))  # compute (and store) the maps of these dataset indices
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from automl_kd.cache import atomic_write, decode_artifact, encode_artifact
from automl_kd.data import Split
from automl_kd.distill.ig.attribution import IGSettings, attribution_maps
from automl_kd.distill.ig.inference import inference_copy
from automl_kd.distill.teacher_info import teacher_normalizer

PIECE_KIND = "ig-piece"
_FIELDS = {"maps", "scale", "err", "gap"}


class MapStore:
    """The maps of one split (CPU tensors in split order), which of them exist, and their pieces on disk."""

    def __init__(
        self,
        teacher: nn.Module,
        data: Any,
        part: Split,
        settings: IGSettings,
        cache: Any,
        key: str,
        say: Callable[[str], None] = lambda msg: None,
    ) -> None:
        n = len(part)
        self.teacher, self.data, self.part, self.settings, self.key, self.say = (
            teacher,
            data,
            part,
            settings,
            key,
            say,
        )
        self.folder = cache.partial_dir("ig-maps", key)
        dtype = torch.float16 if settings.fp16 else torch.float32
        self.maps = torch.zeros(n, *part.x.shape[-2:], dtype=dtype)
        self.scale, self.err, self.gap = torch.zeros(n), torch.zeros(n), torch.zeros(n)
        self.have = torch.zeros(n, dtype=torch.bool)
        index = part.index.cpu().long()
        self._rows = torch.full((int(index.max()) + 1 if n else 0,), -1, dtype=torch.long)
        self._rows[index] = torch.arange(n)
        self._read: set[str] = set()
        self._fast: nn.Module | None = None

    def __len__(self) -> int:
        return int(self.have.shape[0])

    @property
    def done(self) -> int:
        return int(self.have.sum())

    def positions(self, index: torch.Tensor) -> torch.Tensor:
        """The split positions of these dataset indices (KeyError for an index that is not in the split)."""
        idx = index.cpu().long()
        rows = (
            self._rows[idx.clamp(0, max(len(self._rows) - 1, 0))]
            if len(self._rows)
            else idx.new_full(idx.shape, -1)
        )
        bad = (rows < 0) | (idx >= len(self._rows)) | (idx < 0)
        if bool(bad.any()):
            raise KeyError(f"no IG map for dataset index {int(idx[bad][0])}")
        return rows

    # -- pieces on disk --------------------------------------------------------------------------------------
    def refresh(self) -> int:
        """Read the pieces not read yet (earlier runs', other workers'); return how many new images they hold."""
        if not self.folder.is_dir():
            return 0
        added = 0
        for path in sorted(self.folder.glob("*.art")):
            if path.name in self._read:
                continue
            self._read.add(path.name)
            try:
                pos, piece = self._decode(path.name, path.read_bytes())
            except FileNotFoundError:  # removed by the worker that stored the finished whole
                continue
            except Exception as exc:
                self.say(f"IG maps: piece {path.name} is unusable ({exc}); its images are computed again")
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            new = ~self.have[pos]
            self._put(pos[new], {k: v[new] for k, v in piece.items()})
            added += int(new.sum())
        return added

    def _decode(self, name: str, raw: bytes) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stem = name.removesuffix(".art")
        if "-" in stem and stem.replace("-", "").isdigit():  # an older piece: split positions START-STOP
            start, stop = (int(v) for v in stem.split("-"))
            tensors = decode_artifact(raw, PIECE_KIND, f"{self.key}:{start}:{stop}").tensors
            pos = torch.arange(start, stop)
        else:
            tensors = decode_artifact(raw, PIECE_KIND, f"{self.key}:{stem}").tensors
            pos = self.positions(tensors.pop("index"))
        if set(tensors) != _FIELDS:
            raise ValueError(f"holds {sorted(tensors)}")
        if (len(pos) and int(pos.max()) >= len(self)) or any(len(t) != len(pos) for t in tensors.values()):
            raise ValueError("its images do not fit the split")
        if tuple(tensors["maps"].shape[1:]) != tuple(self.maps.shape[1:]):
            raise ValueError(
                f"maps of shape {tuple(tensors['maps'].shape[1:])}, not {tuple(self.maps.shape[1:])}"
            )
        return pos, tensors

    def _put(self, pos: torch.Tensor, piece: dict[str, torch.Tensor]) -> None:
        self.maps[pos] = piece["maps"].to(self.maps.dtype)
        self.scale[pos], self.err[pos], self.gap[pos] = piece["scale"], piece["err"], piece["gap"]
        self.have[pos] = True

    # -- computing -------------------------------------------------------------------------------------------
    def compute(self, pos: torch.Tensor) -> None:
        """Compute the maps of these split positions, store them as one piece and keep them."""
        pos = pos.cpu().long().unique()
        if len(pos) == 0:
            return
        if self._fast is None:
            self._fast = inference_copy(self.teacher)
        part, device = self.part, self.part.x.device
        normalize = teacher_normalizer(self.teacher, self.data)  # IG in the teacher's own input space
        mean = torch.tensor(self.data.mean, device=device)
        at = pos.to(device)
        x01 = part.x[at].float().div(255)
        maps, err, gap = attribution_maps(self._fast, x01, part.y[at], normalize, mean, self.settings)
        peak = maps.flatten(1).amax(1).clamp_min(1e-30)
        piece = {
            "maps": (maps / peak.view(-1, 1, 1)).to(self.maps.dtype).cpu(),
            "scale": peak.float().cpu(),
            "err": err.float().cpu(),
            "gap": gap.float().cpu(),
        }
        stem = f"i{uuid.uuid4().hex[:20]}"
        self.folder.mkdir(parents=True, exist_ok=True)
        stored = {"index": part.index[at].cpu().long(), **piece}
        atomic_write(
            self.folder / f"{stem}.art", encode_artifact(PIECE_KIND, f"{self.key}:{stem}", stored, {})
        )
        self._read.add(f"{stem}.art")
        self._put(pos, piece)

    def completeness_meta(self) -> dict[str, float]:
        """Completeness of the maps there are: mean and max absolute error, and the mean error relative to the
        mean ``|f(x) - f(baseline)|`` (the share of the output change the attributions miss)."""
        err, gap = self.err[self.have], self.gap[self.have]
        if len(err) == 0:
            return {
                "completeness_error_mean": 0.0,
                "completeness_error_max": 0.0,
                "completeness_error_relative": 0.0,
            }
        return {
            "completeness_error_mean": float(err.mean()),
            "completeness_error_max": float(err.max()),
            "completeness_error_relative": float(err.mean() / gap.mean().clamp_min(1e-12)),
        }
