"""Content-addressed artifact cache: teacher checkpoints, IG maps, teacher outputs.

An artifact is a dict of tensors plus JSON metadata, stored under ``<root>/<kind>/<key>.art``. The key is the
sha256 of everything that determines the artifact (:meth:`ArtifactCache.key`), so one entry serves every trial and
every run that shares those inputs, and changing any input simply misses.

File format (one file per artifact, written to a temporary file and renamed into place, so a reader never sees a
half-written entry)::

    b"AKDART01"  | 8-byte little-endian header length | header JSON | payload (torch.save of the tensors)

The header holds the kind, the key, the metadata, and the payload's length and sha256. :meth:`ArtifactCache.load`
checks all of them: a truncated, corrupt or mismatched file (another key's artifact renamed into place, a file of
another format) is never used; it is removed with a logged warning and the caller rebuilds it.

Example::

    cache = ArtifactCache.default()          # $AUTOML_KD_CACHE or ~/.cache/automl-kd
    key = cache.key("ig-maps", {"teacher": fp, "data": data.fingerprint, "steps": 32})
    art = cache.load("ig-maps", key)
    if art is None:
        cache.save("ig-maps", key, {"maps": maps}, meta={"images": len(maps)})
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import struct
import tempfile
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import CacheError

log = logging.getLogger("automl_kd")

MAGIC = b"AKDART01"
FORMAT_VERSION = 1
ENV_VAR = "AUTOML_KD_CACHE"
_KIND_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_")


@dataclass
class Artifact:
    """A loaded cache entry: its tensors (on the CPU), metadata and file."""

    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) for hashing; tuples become lists."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def encode_artifact(
    kind: str, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> bytes:
    """The bytes of an artifact file (header + payload)."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buf)
    payload = buf.getvalue()
    header = canonical_json(
        {
            "format": FORMAT_VERSION,
            "kind": kind,
            "key": key,
            "meta": dict(meta),
            "payload_bytes": len(payload),
            "payload_sha256": hashlib.sha256(payload).hexdigest(),
        }
    ).encode()
    return MAGIC + struct.pack("<Q", len(header)) + header + payload


def decode_artifact(data: bytes, kind: str, key: str) -> Artifact:
    """Parse and verify artifact bytes; raise :class:`CacheError` saying what is wrong."""
    if len(data) < len(MAGIC) + 8 or not data.startswith(MAGIC):
        raise CacheError("not an automl-kd artifact (bad magic bytes)")
    (hlen,) = struct.unpack("<Q", data[len(MAGIC) : len(MAGIC) + 8])
    start = len(MAGIC) + 8
    if start + hlen > len(data):
        raise CacheError("truncated header")
    try:
        header = json.loads(data[start : start + hlen].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CacheError(f"unreadable header: {exc}") from None
    if header.get("format") != FORMAT_VERSION:
        raise CacheError(f"format {header.get('format')!r}, expected {FORMAT_VERSION}")
    if header.get("kind") != kind or header.get("key") != key:
        raise CacheError(
            f"mismatched entry: holds {header.get('kind')}/{str(header.get('key'))[:12]}, "
            f"expected {kind}/{key[:12]}"
        )
    payload = data[start + hlen :]
    if len(payload) != header.get("payload_bytes"):
        raise CacheError(f"truncated payload: {len(payload)} of {header.get('payload_bytes')} bytes")
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CacheError("checksum mismatch (corrupt payload)")
    try:
        tensors = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except (
        Exception
    ) as exc:  # a checksum-valid payload that torch cannot read: a writer bug, still never used
        raise CacheError(f"unreadable payload: {type(exc).__name__}: {exc}") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CacheError("payload is not a dict of tensors")
    return Artifact(tensors, dict(header.get("meta") or {}))


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """:func:`atomic_write` of a JSON document (``*.json``) or of anything ``torch.save`` writes (tensors)."""
    if path.suffix == ".json":
        atomic_write(path, (json.dumps(obj, indent=2, default=str) + "\n").encode())
        return
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write(path, buf.getvalue())


class ArtifactCache:
    """A directory of content-addressed artifacts. Safe for several processes: writes are atomic renames, and
    :meth:`lock` serialises the builders of one entry so that it is computed once.

    A cache that cannot be used (its root is a file, a read-only folder, a full disk) is never an error: the first
    failed write says so in one warning, and from then on this cache stores nothing, locks nothing and misses;
    the pieces of a resumable build (:meth:`partial_dir`) go to a private scratch folder removed at exit. The
    search goes on, computing what it would have reused.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        #: why this cache is not written to (set by the first failed write), or None while it works
        self.unusable: str | None = None
        self._scratch: Path | None = None
        self._probed = False

    @classmethod
    def default(cls) -> ArtifactCache:
        """The cache at ``$AUTOML_KD_CACHE``, else ``~/.cache/automl-kd``."""
        return cls(os.environ.get(ENV_VAR) or Path.home() / ".cache" / "automl-kd")

    def __repr__(self) -> str:
        return f"ArtifactCache({str(self.root)!r})"

    # -- keys and paths --------------------------------------------------------------------------------------
    @staticmethod
    def key(kind: str, parts: Mapping[str, Any]) -> str:
        """sha256 (hex) of the kind and everything that determines the artifact."""
        return hashlib.sha256(
            canonical_json({"kind": kind, "format": FORMAT_VERSION, **parts}).encode()
        ).hexdigest()

    def path(self, kind: str, key: str) -> Path:
        if not kind or not set(kind) <= _KIND_CHARS:
            raise ValueError(f"artifact kind {kind!r}: use lower-case letters, digits, '-' and '_'")
        if not key or not all(c in "0123456789abcdefABCDEF-_.:" for c in key):
            raise ValueError(f"artifact key {key!r} is not a hash")
        return self.root / kind / f"{key.replace(':', '_')}.art"

    def partial_dir(self, kind: str, key: str) -> Path:
        """A folder for the pieces of an artifact being built (resumable builds); in a private scratch folder
        when the cache cannot be written."""
        path = self.path(kind, key).with_suffix(".partial")
        if self.unusable is None and self._writable():
            return path
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="automl-kd-cache-"))
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
        return self._scratch / kind / path.name

    # -- an unusable cache -----------------------------------------------------------------------------------
    def _writable(self) -> bool:
        """Whether the root folder can be created and written (checked once, by writing a small probe file)."""
        if self.unusable is not None:
            return False
        if self._probed:
            return True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".probe.", dir=self.root)
            try:
                os.write(fd, b"automl-kd")
                os.fsync(fd)
            finally:
                os.close(fd)
                os.unlink(probe)
        except OSError as exc:
            self._give_up(exc)
            return False
        self._probed = True
        return True

    def _give_up(self, exc: OSError) -> None:
        """Stop writing to this cache, with one warning naming it and why."""
        if self.unusable is not None:
            return
        self.unusable = f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
        log.warning(
            "artifact cache %s cannot be written (%s); going on without caching: teacher weights, IG maps and "
            "teacher outputs are computed again in every process (set %s to a writable folder)",
            self.root,
            self.unusable,
            ENV_VAR,
        )

    # -- read and write --------------------------------------------------------------------------------------
    def save(
        self,
        kind: str,
        key: str,
        tensors: Mapping[str, torch.Tensor],
        meta: Mapping[str, Any] | None = None,
    ) -> Path:
        """Store an artifact atomically; return its path."""
        path = self.path(kind, key)
        if not self._writable():
            return path
        try:
            atomic_write(path, encode_artifact(kind, key, tensors, meta or {}))
        except OSError as exc:  # a full disk: the temporary file is gone, the caller keeps its tensors
            self._give_up(exc)
        return path

    def load(self, kind: str, key: str) -> Artifact | None:
        """The verified artifact, or None when it is missing, or was corrupt/truncated/mismatched (then it is
        removed and a warning says why, so the caller rebuilds it)."""
        path = self.path(kind, key)
        try:
            data = path.read_bytes()
        except OSError:  # missing, or a root that is a file or cannot be read: a miss
            return None
        try:
            art = decode_artifact(data, kind, key)
        except CacheError as exc:
            self.discard(kind, key, str(exc))
            return None
        art.path = path
        return art

    def exists(self, kind: str, key: str) -> bool:
        return self.path(kind, key).is_file()

    def discard(self, kind: str, key: str, reason: str) -> None:
        """Remove an entry that must not be used, with a warning saying why."""
        path = self.path(kind, key)
        log.warning("cache entry %s is unusable (%s); removing it, it will be rebuilt", path, reason)
        with contextlib.suppress(OSError):
            path.unlink()

    def clear_partial(self, kind: str, key: str) -> None:
        shutil.rmtree(self.partial_dir(kind, key), ignore_errors=True)

    @contextlib.contextmanager
    def lock(self, kind: str, key: str) -> Iterator[None]:
        """Hold an exclusive per-entry lock (POSIX ``flock``; a no-op where unavailable) while building it, so
        that concurrent workers compute an entry once and the others then load it."""
        path = self.path(kind, key).with_suffix(".lock")
        try:
            import fcntl  # POSIX only: imported here so that the cache still works without it
        except ImportError:  # Windows: atomic renames still keep readers safe
            yield
            return
        f = None
        if self._writable():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                f = open(path, "a+b")  # noqa: SIM115 (closed below, after the lock is released)
            except OSError as exc:
                self._give_up(exc)
        if f is None:  # nothing is stored, so there is nothing to serialise
            yield
            return
        with f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
