"""Image bytes -> MNIST-like float array: the preparation uploads get before the encoder.

The MNIST recipe: grayscale, light digit on a dark background, the digit's bounding box scaled
to fit a 20x20 box keeping its aspect ratio, then placed in 28x28 so that its centre of mass is
at the centre. Decoding and validating the bytes is `service.imaging.uploads`.

    from service.imaging.prepare import preprocess_bytes
    x = preprocess_bytes(open("digit.jpg", "rb").read())   # (28, 28) float32 in [0, 1]
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from service.imaging.uploads import (
    DEFAULT_MAX_PIXELS,
    WORK_SIZE,
    NoDigitError,
    open_image,
    shrink_for_work,
    to_grayscale,
)

PreprocessMode = Literal["auto", "none"]
MNIST_SIZE = 28
MNIST_BOX = 20
# Below this contrast between the background and the brightest ink there is no digit.
MIN_CONTRAST = 0.1
# Ink below this fraction of the contrast is treated as background noise (paper grain, JPEG).
NOISE_FLOOR = 0.05


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
    """np.median of an already sorted 1-D array: np.median's own checks cost several times the
    sort of a 100-pixel border, and /encode runs this on every request (BENCHMARKS.md, "What
    changed in the service, and why", 7)."""
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
