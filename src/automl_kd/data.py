"""Datasets held as uint8 tensors, seeded stratified splits, index-carrying batches, batched augmentation.

Small image datasets fit in memory (Fashion-MNIST is 47 MB as uint8), so they are loaded once as tensors and moved
to the training device; a batch is a tensor index, not a Python loop over samples. Every batch carries the dataset
indices of its images, which is what index-keyed caches (IG maps, teacher outputs) are looked up by.

Selection uses a validation split carved from the training set; the test split is only for reporting.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import DataConfig
from .errors import DataError
from .images import IMAGE_EXTS as IMAGE_EXTS
from .images import load_imagefolder
from .images import read_class_folders as read_class_folders
from .images import unpack_imagefolder as unpack_imagefolder

log = logging.getLogger("automl_kd")

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
#: known data shapes (classes, channels, image size), so a space can be built before the data is loaded
DATA_SHAPES = {"fashion-mnist": (10, 1, 28), "cifar10": (10, 3, 32), "cifar100": (100, 3, 32)}
#: where Debian's dataset-fashion-mnist package puts the original files
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class Split:
    """One split: images ``x`` (uint8, N x C x H x W), labels ``y`` and ``index``, the images' indices in the
    original dataset (the training set for train and val, the test set for test)."""

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def to(self, device: torch.device) -> Split:
        return Split(self.x.to(device), self.y.to(device), self.index.to(device))


@dataclass
class DataSplits:
    """Train, validation and test splits of one dataset, with what a model needs to know about it."""

    name: str
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    #: hash of the data and the split; part of every cache key that depends on the data
    fingerprint: str
    #: the data config it was loaded with (by :func:`load_data`), so that a teacher can draw a larger training
    #: split from the same dataset (:func:`with_training_pool`)
    source: DataConfig | None = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return int(self.train.x.shape[1])

    @property
    def input_size(self) -> int:
        return int(self.train.x.shape[-1])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return (self.in_chans, self.input_size, self.input_size)

    def to(self, device: torch.device) -> DataSplits:
        return DataSplits(
            self.name,
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.classes,
            self.mean,
            self.std,
            self.fingerprint,
            self.source,
        )

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] float images -> normalised with the training split's per-channel mean and std."""
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
        return (x - mean) / std


# -- readers ---------------------------------------------------------------------------------------------------
def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None
    if len(data) < 8 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, found {body.size} bytes")
    return body.reshape(shape)


def _find_fashion_mnist(root: str | None) -> Path:
    candidates = []
    if root:
        candidates += [Path(root), Path(root) / "FashionMNIST" / "raw"]
    candidates.append(DEBIAN_FASHION_MNIST)
    for c in candidates:
        if (c / "train-images-idx3-ubyte.gz").is_file() or (c / "train-images-idx3-ubyte").is_file():
            return c
    tried = ", ".join(str(c) for c in candidates)
    raise DataError(
        f"Fashion-MNIST not found (looked in {tried}). Install it with `apt-get install dataset-fashion-mnist`, "
        "pass data.root (torchvision layout), or set data.download: true when online"
    )


def _idx_file(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.gz"
    return gz if gz.is_file() else folder / stem


def load_fashion_mnist(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    if cfg.download and cfg.root:
        import torchvision  # only to download: a second of import time that offline loading never pays

        torchvision.datasets.FashionMNIST(cfg.root, train=True, download=True)
        torchvision.datasets.FashionMNIST(cfg.root, train=False, download=True)
    folder = _find_fashion_mnist(cfg.root)
    xtr = _read_idx(_idx_file(folder, "train-images-idx3-ubyte"))[:, None]
    ytr = _read_idx(_idx_file(folder, "train-labels-idx1-ubyte"))
    xte = _read_idx(_idx_file(folder, "t10k-images-idx3-ubyte"))[:, None]
    yte = _read_idx(_idx_file(folder, "t10k-labels-idx1-ubyte"))
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise DataError(f"Fashion-MNIST in {folder}: image and label counts differ")
    return xtr, ytr, xte, yte, FASHION_MNIST_CLASSES


#: the only globals a CIFAR file may name: what a pickled numpy array needs (numpy 1 and 2 module names), and the
#: bytes constructor of a protocol-2 pickle written by Python 3
_CIFAR_GLOBALS = frozenset(
    (module, name)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray")
    for name in ("_reconstruct", "scalar")
) | {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}


class _CifarUnpickler(pickle.Unpickler):
    """Dicts, lists, tuples, str/bytes, numbers and numpy arrays; any other global (``os.system`` in a crafted
    file) is refused before it is looked up, so loading a data file never runs code."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused to load {module}.{name} (only plain data and numpy arrays)"
            )
        return super().find_class(module, name)


def _load_pickle(path: Path, what: str) -> object:
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="latin1").load()
    except OSError as exc:
        raise DataError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    except Exception as exc:  # random bytes raise anything from EOFError to KeyError or MemoryError
        raise DataError(f"cannot read {what} {path}: {type(exc).__name__}: {exc}") from None


def _unpickle(path: Path) -> dict[str, object]:
    obj = _load_pickle(path, "CIFAR batch")
    if not isinstance(obj, dict) or "data" not in obj:
        raise DataError(f"{path} is not a CIFAR batch (no 'data' entry)")
    return obj


def load_cifar(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """CIFAR-10/100 in the torchvision (python pickle) format: ``root/cifar-10-batches-py`` or ``cifar-100-python``."""
    if not cfg.root:
        raise DataError(f"{cfg.dataset}: set data.root to the folder holding the torchvision-format files")
    root = Path(cfg.root)
    if cfg.download:
        import torchvision  # only to download (see load_fashion_mnist)

        cls = torchvision.datasets.CIFAR10 if cfg.dataset == "cifar10" else torchvision.datasets.CIFAR100
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    ten = cfg.dataset == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    if not folder.is_dir():
        raise DataError(
            f"{cfg.dataset}: {folder} not found (expected the torchvision format; data.download: true "
            "fetches it when online)"
        )
    label_key = "labels" if ten else "fine_labels"
    train_files = [folder / f"data_batch_{i}" for i in range(1, 6)] if ten else [folder / "train"]
    test_files = [folder / "test_batch"] if ten else [folder / "test"]
    meta = _unpickle_meta(
        folder / ("batches.meta" if ten else "meta"), "label_names" if ten else "fine_label_names"
    )

    def read(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for f in files:
            b = _unpickle(f)
            data = np.asarray(b["data"], dtype=np.uint8)
            labels = np.asarray(b[label_key], dtype=np.int64)
            if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
                raise DataError(f"{f}: expected N x 3072 uint8 data and N labels, got {data.shape}")
            xs.append(data.reshape(-1, 3, 32, 32))
            ys.append(labels)
        return np.concatenate(xs), np.concatenate(ys)

    xtr, ytr = read(train_files)
    xte, yte = read(test_files)
    return xtr, ytr, xte, yte, meta


def _unpickle_meta(path: Path, key: str) -> list[str]:
    if not path.is_file():
        raise DataError(f"{path} not found (CIFAR meta file with class names)")
    meta = _load_pickle(path, "CIFAR meta file")
    names = meta.get(key) if isinstance(meta, dict) else None
    if not isinstance(names, list | tuple) or not all(isinstance(n, str | bytes) for n in names):
        raise DataError(f"{path} is not a CIFAR meta file (no list of class names under {key!r})")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


# -- splitting -------------------------------------------------------------------------------------------------
def stratified_indices(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices so each class keeps ``fraction`` of its members on the first side (at least one)."""
    first, second = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else len(idx)
        first.append(idx[:k])
        second.append(idx[k:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def _read(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    loader = {
        "fashion-mnist": load_fashion_mnist,
        "cifar10": load_cifar,
        "cifar100": load_cifar,
        "imagefolder": load_imagefolder,
    }[cfg.dataset]
    return loader(cfg)


def load_data(cfg: DataConfig) -> DataSplits:
    """Load, subset and split a dataset as configured; deterministic for a given ``split_seed``."""
    xtr, ytr, xte, yte, classes = _read(cfg)
    ytr = ytr.astype(np.int64)
    yte = yte.astype(np.int64)
    rng = np.random.default_rng(cfg.split_seed)
    pool = np.arange(len(ytr))
    for key, size, have, part in (
        ("train_size", cfg.train_size, len(ytr), "training"),
        ("test_size", cfg.test_size, len(yte), "test"),
    ):
        if size is not None and size > have:
            log.warning(
                "data.%s %d is more than the %d %s images of %s: using all %d",
                key,
                size,
                have,
                part,
                cfg.dataset,
                have,
            )
    if cfg.train_size is not None and cfg.train_size < len(ytr):
        pool, _ = stratified_indices(ytr, cfg.train_size / len(ytr), rng)
    val_rel, train_rel = stratified_indices(ytr[pool], cfg.val_fraction, rng)
    train_idx, val_idx = pool[train_rel], pool[val_rel]
    test_idx = np.arange(len(yte))
    if cfg.test_size is not None and cfg.test_size < len(yte):
        test_idx, _ = stratified_indices(yte, cfg.test_size / len(yte), rng)

    def split(x: np.ndarray, y: np.ndarray, idx: np.ndarray) -> Split:
        return Split(
            torch.from_numpy(np.ascontiguousarray(x[idx])),
            torch.from_numpy(y[idx]),
            torch.from_numpy(idx.astype(np.int64)),
        )

    train = split(xtr, ytr, train_idx)
    xf = train.x.float().div_(255)
    mean = tuple(float(v) for v in xf.mean(dim=(0, 2, 3)))
    std = tuple(max(float(v), 1e-3) for v in xf.std(dim=(0, 2, 3)))
    h = hashlib.sha256()
    h.update(cfg.dataset.encode())
    for arr in (xtr, ytr, train_idx, val_idx, test_idx):
        h.update(hashlib.sha256(np.ascontiguousarray(arr).tobytes()).digest())
    return DataSplits(
        cfg.dataset,
        train,
        split(xtr, ytr, val_idx),
        split(xte, yte, test_idx),
        list(classes),
        mean,
        std,
        h.hexdigest()[:16],
        cfg,
    )


def with_training_pool(data: DataSplits, size: int) -> DataSplits:
    """``data`` with a larger training split: ``size`` images of the dataset's whole training set, stratified
    (seeded by the data config's ``split_seed``), none of them a validation image; all of them when there are
    fewer.

    What a teacher trains on with ``teacher.train.train_size`` (the students keep ``data.train_size``). The
    validation and test splits, the normalisation statistics (the students' training split's, so the teacher is
    fed the same inputs it is trained on) and the device stay ``data``'s; the fingerprint covers the new split.
    """
    if data.source is None:
        raise DataError("a larger teacher training split needs data loaded with load_data (its config)")
    cfg = data.source
    xtr, ytr, _, _, _ = _read(cfg)
    ytr = ytr.astype(np.int64)
    pool = np.setdiff1d(np.arange(len(ytr)), data.val.index.cpu().numpy())
    if size < len(pool):
        rel, _ = stratified_indices(ytr[pool], size / len(pool), np.random.default_rng(cfg.split_seed))
        pool = pool[rel]
    elif size > len(pool):
        log.warning(
            "teacher.train.train_size %d is more than the %d training images outside the validation split: "
            "using all %d",
            size,
            len(pool),
            len(pool),
        )
    device = data.train.x.device
    train = Split(
        torch.from_numpy(np.ascontiguousarray(xtr[pool])),
        torch.from_numpy(ytr[pool]),
        torch.from_numpy(pool.astype(np.int64)),
    ).to(device)
    h = hashlib.sha256(data.fingerprint.encode())
    h.update(hashlib.sha256(pool.astype(np.int64).tobytes()).digest())
    return DataSplits(
        data.name,
        train,
        data.val,
        data.test,
        data.classes,
        data.mean,
        data.std,
        h.hexdigest()[:16],
        data.source,
    )


# -- batches and augmentation ----------------------------------------------------------------------------------
def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(x_uint8, y, index)`` batches by tensor indexing; ``index`` are dataset indices."""
    n = len(split)
    order = torch.randperm(n, generator=generator).to(split.x.device) if shuffle else None
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        if order is None:
            sl = slice(start, min(start + batch_size, n))
            yield split.x[sl], split.y[sl], split.index[sl]
        else:
            sel = order[start : start + batch_size]
            yield split.x[sel], split.y[sel], split.index[sel]
