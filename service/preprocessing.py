"""Image bytes -> validated Pillow image -> MNIST-like float array.

One module for the service and the training-time tools (numpy and Pillow only, no torch, no
FastAPI), so that a digit is prepared the same way everywhere. The MNIST recipe: grayscale,
light digit on a dark background, the digit's bounding box scaled to fit a 20x20 box keeping
its aspect ratio, then placed in 28x28 so that its centre of mass is at the centre.

    from service.preprocessing import preprocess_bytes
    x = preprocess_bytes(open("digit.jpg", "rb").read())   # (28, 28) float32 in [0, 1]

Errors are `ImageInputError` subclasses, each saying what is wrong in words a client can act on.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps

PreprocessMode = Literal["auto", "none"]
DEFAULT_MAX_PIXELS = 40_000_000
# The formats we accept, detected from the bytes; the order is the sniffing order.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
MNIST_SIZE = 28
MNIST_BOX = 20
# Grayscale work above this size is wasted on a 20x20 target: big images are reduced first.
WORK_SIZE = 512
# Below this contrast between the background and the brightest ink there is no digit.
MIN_CONTRAST = 0.1
# Ink below this fraction of the contrast is treated as background noise (paper grain, JPEG).
NOISE_FLOOR = 0.05

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_PATH = re.compile(r"(?:/[\w.\-]+){2,}")

# Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; we check the size ourselves
# before decoding, and make the warning an error too, so a bomb is never decoded silently.
warnings.simplefilter("error", Image.DecompressionBombWarning)
# Truncated images must be an error, never a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageInputError(ValueError):
    """The bytes are not a usable digit image; the message says why."""


class EmptyImageError(ImageInputError):
    """No bytes at all."""


class UnsupportedImageError(ImageInputError):
    """Not an image, or an image format that is not allowed."""


class CorruptImageError(ImageInputError):
    """Looks like an allowed format but cannot be decoded (corrupt or truncated)."""


class ImageTooLargeError(ImageInputError):
    """More pixels than the limit."""


class NoDigitError(ImageInputError):
    """A blank image: nothing stands out from the background."""


def _describe(exc: BaseException) -> str:
    """A decoder's error for a client: no object addresses or file paths (they say nothing
    about the upload and something about the server), and not too long."""
    text = _ADDRESS.sub("", f"{type(exc).__name__}: {exc}")
    return _PATH.sub("<path>", text)[:200]


def sniff_format(data: bytes) -> str | None:
    """The allowed Pillow format name the bytes start like, or None (never trusts a name)."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if head.startswith(b"BM"):
        return "BMP"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "TIFF"
    return None


def open_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` into a loaded Pillow image: first frame, EXIF orientation applied.

    Raises EmptyImageError, UnsupportedImageError, CorruptImageError or ImageTooLargeError.
    """
    if not data:
        raise EmptyImageError("empty image: no bytes received")
    fmt = sniff_format(data)
    if fmt is None:
        raise UnsupportedImageError(
            f"not an image of an allowed type (allowed: {', '.join(ALLOWED_FORMATS)})"
        )
    try:
        # formats=[fmt]: only the plugin the bytes announce may parse them.
        image = Image.open(io.BytesIO(data), formats=[fmt])
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"image of {width}x{height} = {width * height} pixels is over the limit "
                f"of {max_pixels} pixels"
            )
        if width < 1 or height < 1:
            raise CorruptImageError(f"{fmt} image of size {width}x{height}")
        if fmt == "JPEG":
            # Let libjpeg decode big photos at 1/2..1/8 scale: same digit, far less work.
            image.draft(image.mode, (WORK_SIZE, WORK_SIZE))
        image.seek(0)  # GIF, WebP, TIFF: the first frame
        image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLargeError(f"image too large: {exc}") from None
    except MemoryError:
        raise ImageTooLargeError("image too large to decode") from None
    except Exception as exc:
        # Truncated or corrupt files raise OSError mostly, but also SyntaxError, ValueError,
        # EOFError, struct.error, IndexError... depending on the plugin: all mean "corrupt".
        raise CorruptImageError(
            f"cannot decode the {fmt} image (corrupt or truncated): {_describe(exc)}"
        ) from None
    # A broken EXIF block only loses the orientation, not the picture.
    with contextlib.suppress(Exception):
        image = ImageOps.exif_transpose(image)
    return image


def shrink_for_work(image: Image.Image) -> Image.Image:
    """Reduce a big image by an integer factor in its own 8-bit mode, before any float work.

    A 200 KB PNG can hold 40 MP of RGBA: as float32 that is 640 MB per copy, and
    `to_grayscale` makes several (1.4 GB and 4 s measured per request). Averaging blocks here
    keeps at least WORK_SIZE pixels on the long side, which `mnist_normalize` reduces to
    WORK_SIZE anyway, so the digit comes out the same. RGBA/LA are reduced premultiplied
    (Pillow's reduce does that), and compositing is linear, so transparency is kept right.
    Palette images go through RGB(A) (averaging palette indices would be nonsense); 16-bit
    modes are left alone (2 bytes per pixel, and their scale must be kept).
    """
    factor = max(image.size) // WORK_SIZE
    if factor < 2:
        return image
    if image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"):
        return image
    return image.reduce(factor)


def _alpha_composite_gray(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite gray ink with alpha onto a background that contrasts with the ink.

    Transparent pixels carry arbitrary (often black) colour, so a plain convert("L") turns
    black strokes on transparency into an all-black image. The ink is what is opaque: put it
    on white if it is dark, on black if it is light.
    """
    weight = alpha.sum()
    ink = float((gray * alpha).sum() / weight) if weight > 0 else 0.0
    background = 1.0 if ink < 0.5 else 0.0
    return gray * alpha + background * (1.0 - alpha)


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> (H, W) float32 in [0, 1], transparency composited.

    16-bit and 32-bit modes are scaled by their real range (convert("L") would clip them to
    white); palette and CMYK images go through RGB.
    """
    mode = image.mode
    if mode.startswith("I;16"):
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        peak = float(array.max()) if array.size else 0.0
        # Pillow reports 16-bit PNGs and TIFFs as mode I on some versions: pick the scale
        # from the values, the only information there is.
        scale = 1.0 if mode == "F" and peak <= 1.0 else 255.0 if peak <= 255 else 65535.0
        return np.clip(array / scale, 0.0, 1.0).astype(np.float32)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
        gray = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        return _alpha_composite_gray(gray, rgba[..., 3]).astype(np.float32)
    if mode != "L":
        try:
            image = image.convert("L")
        except ValueError:
            image = image.convert("RGB").convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """Antialiased resize of a float image."""
    if array.shape == (height, width):
        return array
    # A 2-D float32 array is a Pillow 'F' image: full precision through the resampling.
    resized = Image.fromarray(array.astype(np.float32)).resize(
        (width, height), Image.Resampling.LANCZOS
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def _reduce_for_work(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    factor = max(height, width) / WORK_SIZE
    if factor <= 1:
        return gray
    # BOX averaging keeps thin strokes as fainter lines instead of dropping them.
    small = Image.fromarray(gray).resize(
        (max(1, round(width / factor)), max(1, round(height / factor))), Image.Resampling.BOX
    )
    return np.asarray(small, dtype=np.float32)


def _border(gray: np.ndarray) -> np.ndarray:
    return np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])


def _sorted_median(sorted_values: np.ndarray) -> float:
    """np.median of an already sorted 1-D array: np.median's own checks cost ~14 us a call,
    several times the sort of a 100-pixel border, and /encode runs this on every request."""
    n = len(sorted_values)
    middle = n // 2
    if n % 2:
        return float(sorted_values[middle])
    return (float(sorted_values[middle - 1]) + float(sorted_values[middle])) / 2.0


def _denoise(gray: np.ndarray, size: int) -> np.ndarray:
    """3x3 median on images well above the target size: removes paper grain, JPEG speckle and
    dust without thinning strokes (which are several pixels wide there). MNIST-sized inputs
    are left alone: their strokes are 2-3 pixels wide."""
    if min(gray.shape) < 3 * size:
        return gray
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(gray).filter(ImageFilter.MedianFilter(3)), np.float32)


def mnist_normalize(gray: np.ndarray, size: int = MNIST_SIZE, box: int | None = None) -> np.ndarray:
    """A grayscale (H, W) array in [0, 1] -> (size, size) float32, prepared as MNIST was.

    Light backgrounds (judged from the image border) are inverted; the background level and
    its noise are measured on the border and removed, and the contrast stretched to [0, 1];
    the digit is cropped to its bounding box, scaled to fit a `box` square (20 for 28) keeping
    its aspect ratio, and shifted so that its centre of mass is at the centre.
    Raises NoDigitError for a blank image.
    """
    box = box or round(size * MNIST_BOX / MNIST_SIZE)
    gray = _denoise(_reduce_for_work(np.asarray(gray, dtype=np.float32)), size)
    border = np.sort(_border(gray))
    background = _sorted_median(border)
    if background > 0.5:
        # MNIST is a light digit on black; the inverted border is 1 - border, reversed.
        gray = 1.0 - gray
        border = (1.0 - border)[::-1]
        background = _sorted_median(border)
    # Robust spread of the background (MAD), so uneven paper or noise is not taken for ink.
    spread = 1.4826 * _sorted_median(np.sort(np.abs(border - background)))
    peak = float(gray.max())
    contrast = peak - background
    if not contrast >= MIN_CONTRAST:  # also catches NaN
        raise NoDigitError("no digit found: the image is blank (nothing stands out)")
    floor = background + max(NOISE_FLOOR * contrast, 4.0 * spread)
    if floor >= peak:
        raise NoDigitError("no digit found: nothing stands out from the background noise")
    ink = np.clip((gray - floor) / (peak - floor), 0.0, 1.0)
    rows = np.flatnonzero(ink.max(axis=1) > 0)
    cols = np.flatnonzero(ink.max(axis=0) > 0)
    ink = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    height, width = ink.shape
    scale = box / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    digit = _resize(ink, new_w, new_h)
    if not digit.max() > 0:
        raise NoDigitError("no digit found: the image is blank (nothing stands out)")
    digit = digit / digit.max()  # resampling dims thin strokes; MNIST ink peaks at 1

    canvas = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = digit
    # Integer shift of the centre of mass to the centre (MNIST's is at index 14.0 of 0..27),
    # kept small enough that no ink leaves the canvas.
    positions = np.arange(size, dtype=np.float32)
    row_mass, col_mass = canvas.sum(axis=1), canvas.sum(axis=0)
    mass = float(row_mass.sum())
    cy, cx = float(row_mass @ positions) / mass, float(col_mass @ positions) / mass
    dy = int(np.clip(round(size / 2 - cy), -top, size - new_h - top))
    dx = int(np.clip(round(size / 2 - cx), -left, size - new_w - left))
    return np.roll(canvas, (dy, dx), axis=(0, 1))


def plain_resize(gray: np.ndarray, size: int = MNIST_SIZE) -> np.ndarray:
    """`preprocess=none`: just resize the grayscale array to (size, size)."""
    return _resize(np.asarray(gray, dtype=np.float32), size, size)


def preprocess_image(
    image: Image.Image, mode: PreprocessMode = "auto", size: int = MNIST_SIZE
) -> np.ndarray:
    """A Pillow image -> (size, size) float32 in [0, 1], light digit on dark."""
    gray = to_grayscale(shrink_for_work(image))
    if mode == "none":
        return plain_resize(gray, size)
    if mode == "auto":
        return mnist_normalize(gray, size)
    raise ValueError(f"preprocess mode must be 'auto' or 'none', not {mode!r}")


def preprocess_bytes(
    data: bytes,
    mode: PreprocessMode = "auto",
    size: int = MNIST_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Image file bytes -> (size, size) float32 in [0, 1]; raises ImageInputError subclasses."""
    return preprocess_image(open_image(data, max_pixels), mode, size)
