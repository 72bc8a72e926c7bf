"""Datasets on real files: Fashion-MNIST (Debian package), CIFAR (real pickle format), ImageFolder (CIFAR-10 JPEG)."""

from __future__ import annotations

import gzip
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_DATA

from automl_kd.config import DataConfig
from automl_kd.data import DEBIAN_FASHION_MNIST, batches, load_data, unpack_imagefolder
from automl_kd.distill.views import random_crop_flip
from automl_kd.errors import DataError


def test_fashion_mnist_splits_are_stratified_disjoint_and_deterministic() -> None:
    cfg = DataConfig(dataset="fashion-mnist", train_size=5000, test_size=1000, val_fraction=0.2)
    d = load_data(cfg)
    assert (d.num_classes, d.in_chans, d.input_size) == (10, 1, 28)
    assert len(d.train) + len(d.val) == 5000 and len(d.test) == 1000
    assert not set(d.train.index.tolist()) & set(d.val.index.tolist())
    counts = torch.bincount(d.val.y, minlength=10)
    assert int(counts.min()) == int(counts.max()) == 100  # 20 % of 500 per class
    again = load_data(cfg)
    assert torch.equal(again.train.index, d.train.index) and again.fingerprint == d.fingerprint
    other = load_data(DataConfig(dataset="fashion-mnist", train_size=5000, val_fraction=0.2, split_seed=1))
    assert other.fingerprint != d.fingerprint


def test_batches_carry_dataset_indices() -> None:
    d = load_data(DataConfig(train_size=600))
    from automl_kd.data import load_fashion_mnist

    xtr, ytr, *_ = load_fashion_mnist(DataConfig())
    g = torch.Generator().manual_seed(0)
    seen = []
    for x, y, idx in batches(d.train, 64, shuffle=True, generator=g):
        assert torch.equal(x, torch.from_numpy(xtr[idx.numpy()]))
        assert torch.equal(y, torch.from_numpy(ytr[idx.numpy()]).long())
        seen += idx.tolist()
    assert sorted(seen) == sorted(d.train.index.tolist())


def test_crop_and_flip_are_per_image_and_reproducible() -> None:
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4) + 1
    a = random_crop_flip(x, 1, True, torch.Generator().manual_seed(3))
    b = random_crop_flip(x, 1, True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == x.shape
    for i in range(2):  # every output pixel is either padding or a pixel of the same image
        assert set(a[i].unique().tolist()) - {0.0} <= set(x[i].unique().tolist())
    many = torch.rand(64, 1, 4, 4)
    flipped = random_crop_flip(many, 0, True, torch.Generator().manual_seed(0))
    same = [torch.equal(flipped[i], many[i]) for i in range(64)]
    mirrored = [torch.equal(flipped[i], many[i].flip(-1)) for i in range(64)]
    assert all(
        s != m for s, m in zip(same, mirrored, strict=True)
    )  # each image whole: as it was, or mirrored
    assert 16 <= sum(mirrored) <= 48, sum(mirrored)  # a fair coin per image, not all or nothing
    assert torch.equal(random_crop_flip(many, 0, False, torch.Generator().manual_seed(0)), many)  # flip off


def _write_cifar10(root: Path, n_train: int = 50, n_test: int = 20) -> None:
    """A small CIFAR-10 in the real torchvision/python pickle format (data_batch_1..5, test_batch, batches.meta)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {
            "batch_label": f"training batch {i} of 5",
            "data": rng.integers(0, 256, (n_train, 3072), np.uint8),
            "labels": [int(v) for v in rng.integers(0, 10, n_train)],
            "filenames": [f"img{i}_{j}.png" for j in range(n_train)],
        }
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    test = {
        "batch_label": "testing batch 1 of 1",
        "data": rng.integers(0, 256, (n_test, 3072), np.uint8),
        "labels": [j % 10 for j in range(n_test)],
        "filenames": [f"t{j}.png" for j in range(n_test)],
    }
    (folder / "test_batch").write_bytes(pickle.dumps(test, protocol=2))
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": names, "num_vis": 3072}, protocol=2))


def test_cifar10_loader_reads_the_real_format(tmp_path: Path) -> None:
    _write_cifar10(tmp_path)
    d = load_data(DataConfig(dataset="cifar10", root=str(tmp_path), val_fraction=0.2))
    assert (d.num_classes, d.in_chans, d.input_size) == (10, 3, 32)
    assert len(d.train) + len(d.val) == 250 and len(d.test) == 20
    raw = pickle.loads((tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes())
    assert torch.equal(d.test.x[3], torch.from_numpy(raw["data"][3].reshape(3, 32, 32)))  # channel-major rows
    assert d.classes[0] == "airplane"


def test_cifar_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cifar-10-batches-py not found"):
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path)))
    _write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError, match=r"cannot read CIFAR batch .*data_batch_3"):
        load_data(DataConfig(dataset="cifar10", root=str(tmp_path)))


@pytest.fixture(scope="module")
def cifar_jpeg_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Unpack the first 30 images per class and split of the CIFAR-10 (JPEG) archive beside the checkout (the real
    JPEG files)."""
    archive = SHARED_DATA / "cifar-10-jpeg" / "cifar-10-jpeg.tar.gz"
    return unpack_imagefolder(archive, tmp_path_factory.mktemp("cifar-jpeg"), {"train": 30, "test": 30})


def test_unpack_imagefolder_keeps_the_first_images_of_each_class_and_reports_a_bad_archive(
    tmp_path: Path,
) -> None:
    archive = SHARED_DATA / "cifar-10-jpeg" / "cifar-10-jpeg.tar.gz"
    root = unpack_imagefolder(archive, tmp_path / "a", {"train": 3})
    assert sorted(p.name for p in root.iterdir()) == ["train"]  # the test split was not named: skipped
    counts = [len(list(c.iterdir())) for c in (root / "train").iterdir()]
    assert len(counts) == 10 and set(counts) == {3}
    broken = tmp_path / "broken.tar.gz"
    with archive.open("rb") as f:
        broken.write_bytes(f.read(4096))
    with pytest.raises(DataError, match=r"^cannot unpack .*broken\.tar\.gz"):
        unpack_imagefolder(broken, tmp_path / "b")
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tar:
        tar.add(root / "train" / "cat", arcname="cat")
    with pytest.raises(DataError, match=r"has no train/ folder"):
        unpack_imagefolder(flat, tmp_path / "c")


def test_imagefolder_on_cifar10_jpeg(cifar_jpeg_subset: Path) -> None:
    d = load_data(DataConfig(dataset="imagefolder", root=str(cifar_jpeg_subset), val_fraction=0.2))
    assert d.num_classes == 10 and d.in_chans == 3 and d.input_size == 32
    assert len(d.train) + len(d.val) == 300 and len(d.test) == 300
    assert "airplane" in d.classes and d.train.x.dtype == torch.uint8
    resized = load_data(DataConfig(dataset="imagefolder", root=str(cifar_jpeg_subset), image_size=16))
    assert resized.input_size == 16


def test_corrupt_idx_file_is_a_clear_error(tmp_path: Path) -> None:
    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / f"{name}.gz").write_bytes((DEBIAN_FASHION_MNIST / f"{name}.gz").read_bytes())
    data = gzip.decompress((tmp_path / "train-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[: len(data) // 2]))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz is truncated"):
        load_data(DataConfig(root=str(tmp_path)))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read .*train-images"):
        load_data(DataConfig(root=str(tmp_path)))


def test_missing_dataset_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import automl_kd.data as data_mod

    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(root=str(tmp_path)))
