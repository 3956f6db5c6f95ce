"""Image bytes -> the float array a model takes: the preparation uploads get before the encoder.

Three preparations (a model's metadata `input.preparation` names its own):
- digit: the MNIST recipe, for 1-channel models: grayscale, light digit on a dark background,
  the digit's bounding box scaled to fit a box of 20/28 of the height and width (20x20 in
  28x28) keeping its aspect ratio, then placed so that its centre of mass is at the centre.
- fit: converted to the model's channels (grayscale or RGB), the centre cut to the model's
  aspect ratio (what resizing the shorter side to fit and centre-cropping keeps), resized to
  H x W.
- none: converted to the model's channels and resized to exactly H x W (the aspect ratio is
  not kept).
For fit and none, a 1-channel model whose metadata says `background: dark` (images light on
black, as the MNIST-format sets: Fashion-MNIST) gets an upload with a light background
inverted first, as `digit` does: a garment photographed on white becomes one on black.
Decoding and validating the bytes is `service.imaging.uploads`.

    from service.imaging.prepare import prepare_bytes
    x = prepare_bytes(open("photo.jpg", "rb").read(), "fit", (3, 64, 64))  # (3, 64, 64) [0, 1]
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
    to_rgb,
)

# The legacy modes of `preprocess_bytes` (1-channel square models): auto = digit.
PreprocessMode = Literal["auto", "none"]
# The preparations (service.inference.format.Preparation, repeated: no pydantic here).
PreparationName = Literal["digit", "fit", "none"]
PREPARATIONS = ("digit", "fit", "none")
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


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def mnist_normalize(
    gray: np.ndarray,
    size: int | tuple[int, int] = MNIST_SIZE,
    box: int | tuple[int, int] | None = None,
) -> np.ndarray:
    """A grayscale (H, W) array in [0, 1] -> (size, size) or, for size (height, width),
    (height, width) float32, prepared as MNIST was.

    Light backgrounds (judged from the image border) are inverted; the background level and
    its noise are measured on the border and removed, and the contrast stretched to [0, 1];
    the digit is cropped to its bounding box, scaled to fit a `box` (default 20/28 of the
    height and of the width: 20x20 for 28x28) keeping its aspect ratio, and shifted so that
    its centre of mass is at the centre. Raises NoDigitError for a blank image.
    """
    out_h, out_w = _pair(size)
    if box is None:
        box_h, box_w = round(out_h * MNIST_BOX / MNIST_SIZE), round(out_w * MNIST_BOX / MNIST_SIZE)
    else:
        box_h, box_w = _pair(box)
    box_h, box_w = max(1, min(box_h, out_h)), max(1, min(box_w, out_w))
    gray = _denoise(_reduce_for_work(np.asarray(gray, dtype=np.float32)), max(out_h, out_w))
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
    scale = min(box_h / height, box_w / width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    digit = _resize(ink, new_w, new_h)
    if not digit.max() > 0:
        raise NoDigitError("no digit found: the image is blank (nothing stands out)")
    digit = digit / digit.max()  # resampling dims thin strokes; MNIST ink peaks at 1

    canvas = np.zeros((out_h, out_w), dtype=np.float32)
    top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = digit
    # Integer shift of the centre of mass to the centre (MNIST's is at index 14.0 of 0..27),
    # kept small enough that no ink leaves the canvas.
    row_mass, col_mass = canvas.sum(axis=1), canvas.sum(axis=0)
    mass = float(row_mass.sum())
    cy = float(row_mass @ np.arange(out_h, dtype=np.float32)) / mass
    cx = float(col_mass @ np.arange(out_w, dtype=np.float32)) / mass
    dy = int(np.clip(round(out_h / 2 - cy), -top, out_h - new_h - top))
    dx = int(np.clip(round(out_w / 2 - cx), -left, out_w - new_w - left))
    return np.roll(canvas, (dy, dx), axis=(0, 1))


def plain_resize(gray: np.ndarray, size: int | tuple[int, int] = MNIST_SIZE) -> np.ndarray:
    """`preprocess=none`: just resize the grayscale array to (size, size) or (height, width)."""
    height, width = _pair(size)
    return _resize(np.asarray(gray, dtype=np.float32), width, height)


def centre_box(width: int, height: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """The largest centred region (left, top, right, bottom) of a width x height image with the
    aspect ratio out_w : out_h: what `fit` keeps (the shorter side fits, the rest is cut)."""
    if width * out_h > height * out_w:  # wider than the model: cut left and right
        keep = min(width, max(1, round(height * out_w / out_h)))
        left = (width - keep) // 2
        return left, 0, left + keep, height
    keep = min(height, max(1, round(width * out_h / out_w)))
    top = (height - keep) // 2
    return 0, top, width, top + keep


def _channels(image: Image.Image, channels: int) -> np.ndarray:
    """A Pillow image -> (channels, h, w) float32 in [0, 1]: grayscale or RGB."""
    if channels == 1:
        return to_grayscale(image)[None]
    if channels == 3:
        return np.ascontiguousarray(to_rgb(image).transpose(2, 0, 1))
    raise ValueError(f"images of 1 or 3 channels, not {channels}")


def _resize_channels(planes: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.stack([_resize(plane, width, height) for plane in planes])


def _dark_background(planes: np.ndarray, background: str | None) -> np.ndarray:
    """Invert a 1-channel image whose border is mostly light, for a model trained on images
    with a dark background (`background`: the model's metadata)."""
    if background != "dark" or planes.shape[0] != 1:
        return planes
    border = np.sort(_border(planes[0]))
    return 1.0 - planes if _sorted_median(border) > 0.5 else planes


def prepare_image(
    image: Image.Image,
    preparation: PreparationName,
    shape: tuple[int, int, int],
    background: str | None = None,
) -> np.ndarray:
    """A Pillow image -> (C, H, W) float32 in [0, 1] for a model taking `shape` (C, H, W),
    through `preparation` (digit, fit or none: the module's docstring). digit is for
    1-channel models only (ValueError otherwise); `background` is the model's metadata
    `input.background` ('dark': fit and none invert a light-background upload)."""
    channels, height, width = shape
    if preparation == "digit":
        if channels != 1:
            raise ValueError("preparation 'digit' is for 1-channel (grayscale) models")
        return mnist_normalize(to_grayscale(shrink_for_work(image)), (height, width))[None]
    if preparation == "fit":
        box = centre_box(*image.size, width, height)
        planes = _channels(shrink_for_work(image, box), channels)
        return _dark_background(_resize_channels(planes, width, height), background)
    if preparation == "none":
        planes = _resize_channels(_channels(shrink_for_work(image), channels), width, height)
        return _dark_background(planes, background)
    raise ValueError(f"preparation must be one of {list(PREPARATIONS)}, not {preparation!r}")


def prepare_bytes(
    data: bytes,
    preparation: PreparationName,
    shape: tuple[int, int, int],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    background: str | None = None,
) -> np.ndarray:
    """Image file bytes -> (C, H, W) float32 in [0, 1] (`prepare_image`); raises
    ImageInputError subclasses for bytes that are no usable image."""
    return prepare_image(open_image(data, max_pixels), preparation, shape, background)


def preprocess_image(
    image: Image.Image, mode: PreprocessMode = "auto", size: int = MNIST_SIZE
) -> np.ndarray:
    """A Pillow image -> (size, size) float32 in [0, 1], light digit on dark: auto is the
    digit preparation, none grayscale and resize only."""
    if mode not in ("auto", "none"):
        raise ValueError(f"preprocess mode must be 'auto' or 'none', not {mode!r}")
    preparation: PreparationName = "digit" if mode == "auto" else "none"
    out: np.ndarray = prepare_image(image, preparation, (1, size, size))[0]
    return out


def preprocess_bytes(
    data: bytes,
    mode: PreprocessMode = "auto",
    size: int = MNIST_SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> np.ndarray:
    """Image file bytes -> (size, size) float32 in [0, 1]; raises ImageInputError subclasses."""
    return preprocess_image(open_image(data, max_pixels), mode, size)
