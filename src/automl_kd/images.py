"""Image folders: ``root/train/<class>/*`` and ``root/test/<class>/*`` decoded once with PIL into uint8 arrays, and
the archives they come in.

Every image becomes 8 bits per channel: a 16-bit image (``I;16``, as PIL opens a 16-bit PNG) is scaled from
0..65535 to 0..255, where PIL's own conversion would clip everything above 255 to white. A floating-point image
(no agreed range), an image over PIL's decompression-bomb limit and a file PIL cannot decode are each a
:class:`DataError` naming the file.
"""

from __future__ import annotations

import re
import tarfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from .config import DataConfig
from .errors import DataError

#: the file extensions read as images
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"})


def _read_image(f: Path, image_size: int | None, mode: str, where: str) -> np.ndarray:
    """One image as uint8 ``H x W x C`` in PIL ``mode``. A 16-bit image is scaled from 0..65535 to 0..255 (PIL's own
    conversion clips at 255: white); a float image, a decompression bomb (more pixels than PIL's limit,
    ``Image.MAX_IMAGE_PIXELS``, known from the header alone) or an undecodable file is a :class:`DataError`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(f) as opened:
                img: Image.Image = opened
                if img.mode == "F":
                    raise DataError(f"{where}{f} is a floating-point image (mode F); convert it to 8-bit")
                if img.mode.startswith("I"):  # I;16, I;16B, ... (16-bit PNG, TIFF) and I (32-bit)
                    a = np.asarray(img).astype(np.int64)
                    if a.size and (a.min() < 0 or a.max() > 65535):
                        raise DataError(f"{where}{f} has more than 16 bits per pixel; convert it to 8-bit")
                    img = Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")
                img = img.convert(mode)
        if image_size:
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))  # "Image size (N pixels) exceeds limit of ..."
        raise DataError(
            f"{where}{f} has {f'{int(found.group(1)):,}' if found else 'too many'} pixels, over the limit of "
            f"{Image.MAX_IMAGE_PIXELS:,} for one image (a decompression bomb, or far too large to train on)"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # PIL raises all three for broken files
        raise DataError(f"{where}cannot decode {f}: {exc}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_class_folders(
    folder: Path, classes: list[str], image_size: int | None, mode: str = "RGB", where: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Every image of ``folder/<class>/`` for ``classes`` (label = position in ``classes``; a missing class folder
    has no images): uint8 ``N x C x H x W`` in PIL ``mode`` (``RGB`` or ``L``), resized to ``image_size`` when
    given, and the labels. ``where`` prefixes every error message."""
    xs: list[np.ndarray] = []
    ys: list[int] = []
    for ci, c in enumerate(classes):
        for f in sorted((folder / c).iterdir()) if (folder / c).is_dir() else []:
            if f.suffix.lower() not in IMAGE_EXTS:
                continue
            arr = _read_image(f, image_size, mode, where)
            if xs and arr.shape != xs[0].shape:
                raise DataError(
                    f"{where}{f} is {arr.shape[1]}x{arr.shape[0]} but earlier images are "
                    f"{xs[0].shape[1]}x{xs[0].shape[0]}; set data.image_size to resize"
                )
            xs.append(arr)
            ys.append(ci)
    if not xs:
        raise DataError(f"{where}no images in {folder}")
    return np.stack(xs).transpose(0, 3, 1, 2).copy(), np.asarray(ys, dtype=np.int64)


def unpack_imagefolder(archive: Path, dest: Path, per_class: dict[str, int] | None = None) -> Path:
    """Unpack an image-folder archive (``.../train/<class>/*``, ``.../test/<class>/*``; any tar compression) into
    ``dest`` and return the folder that holds ``train/``, usable as ``data.root``. ``per_class`` keeps only the
    first N images of each class folder of a split (``{"train": 40, "test": 60}``); splits it does not name are
    skipped. Member paths are filtered (no absolute paths, no links out of ``dest``)."""
    seen: dict[str, int] = {}
    try:
        with tarfile.open(archive) as tar:
            if per_class is None:
                tar.extractall(dest, filter="data")
            else:
                for m in tar:
                    parent = Path(m.name).parent
                    if not m.isfile() or Path(m.name).suffix.lower() not in IMAGE_EXTS:
                        continue
                    if seen.get(str(parent), 0) >= per_class.get(parent.parent.name, 0):
                        continue
                    seen[str(parent)] = seen.get(str(parent), 0) + 1
                    tar.extract(m, dest, filter="data")
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise DataError(f"cannot unpack {archive}: {exc}") from None
    found = sorted(p.parent for p in dest.rglob("train") if p.is_dir())
    if not found:
        raise DataError(f"{archive} has no train/ folder")
    return found[0]


def load_imagefolder(cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``root/train/<class>/*`` and ``root/test/<class>/*`` (or ``val/``), decoded once with PIL."""
    if not cfg.root:
        raise DataError("imagefolder: set data.root to a folder with train/ and test/ class folders")
    root = Path(cfg.root)
    test_dir = root / "test" if (root / "test").is_dir() else root / "val"
    if not (root / "train").is_dir() or not test_dir.is_dir():
        raise DataError(
            f"imagefolder: {root} must contain train/ and test/ (or val/) folders of class folders"
        )
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"imagefolder: {root / 'train'} has no class folders")
    xtr, ytr = read_class_folders(root / "train", classes, cfg.image_size, "RGB", "imagefolder: ")
    xte, yte = read_class_folders(test_dir, classes, cfg.image_size, "RGB", "imagefolder: ")
    return xtr, ytr, xte, yte, classes
