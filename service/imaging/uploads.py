"""Uploaded bytes -> a validated, decoded Pillow image -> a float grayscale or RGB array.

Numpy and Pillow only (no torch, no FastAPI): the service and the training-time tools decode
images the same way. Errors are `ImageInputError` subclasses, each saying what is wrong in
words a client can act on.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps

from service.imaging.png import PNG_SIGNATURE

DEFAULT_MAX_PIXELS = 40_000_000
# The formats we accept, detected from the bytes; the order is the sniffing order.
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Grayscale work above this size is wasted on a 20x20 target: big images are reduced first.
WORK_SIZE = 512

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
    if head.startswith(PNG_SIGNATURE):
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
        return ImageOps.exif_transpose(image)
    return image


def shrink_for_work(
    image: Image.Image, box: tuple[int, int, int, int] | None = None
) -> Image.Image:
    """Reduce a big image (or its region `box`: left, top, right, bottom) by an integer factor
    in its own 8-bit mode, before any float work.

    A 200 KB PNG can hold 40 MP of RGBA: as float32 that is 640 MB per copy, and
    `to_grayscale` makes several (1.4 GB and 4 s measured per request). Averaging blocks here
    keeps at least WORK_SIZE pixels on the long side, which `mnist_normalize` reduces to
    WORK_SIZE anyway, so the digit comes out the same. RGBA/LA are reduced premultiplied
    (Pillow's reduce does that), and compositing is linear, so transparency is kept right.
    Palette images go through RGB(A) (averaging palette indices would be nonsense); 16-bit
    modes are left alone (2 bytes per pixel, and their scale must be kept). With `box` the
    result is that region only (cut out while reducing: no full-size copy is made).
    """
    size = image.size if box is None else (box[2] - box[0], box[3] - box[1])
    factor = max(size) // WORK_SIZE
    if factor < 2:
        return image if box is None or box == (0, 0, *image.size) else image.crop(box)
    if image.mode in ("P", "PA"):
        transparent = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    elif image.mode == "1":
        image = image.convert("L")
    if image.mode not in ("L", "LA", "RGB", "RGBA", "CMYK", "YCbCr", "I", "F"):
        return image if box is None else image.crop(box)
    return image.reduce(factor, box)


# ITU-R 601 luma, as Pillow's convert("L").
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ALPHA_MODES or "transparency" in image.info


def _unpremultiplied(image: Image.Image) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A transparent image's (H, W, 3) colour, (H, W) gray and alpha in [0, 1], and the
    background to composite it onto: one that contrasts with the content.

    Transparent pixels carry arbitrary (often black) colour, so a plain convert("L") turns
    black strokes on transparency into an all-black image. The ink is what is opaque: put it
    on white (1) if it is dark, on black (0) if it is light.
    """
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0
    rgb, alpha = rgba[..., :3], rgba[..., 3]
    gray = rgb @ LUMA
    weight = alpha.sum()
    ink = float((gray * alpha).sum() / weight) if weight > 0 else 0.0
    return rgb, gray, alpha, 1.0 if ink < 0.5 else 0.0


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
    if _has_alpha(image):
        _, gray, alpha, background = _unpremultiplied(image)
        return np.asarray(gray * alpha + background * (1.0 - alpha), dtype=np.float32)
    if mode != "L":
        try:
            image = image.convert("L")
        except ValueError:
            image = image.convert("RGB").convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def to_rgb(image: Image.Image) -> np.ndarray:
    """Any Pillow image -> (H, W, 3) float32 in [0, 1], for 3-channel models.

    Grayscale (any bit depth) is repeated over the three channels; transparency is composited
    onto white when what is opaque is mostly dark, onto black otherwise (as `to_grayscale`
    does, so a logo on transparency never vanishes into its own colour)."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        gray = to_grayscale(image)
        return np.repeat(gray[..., None], 3, axis=2)
    if _has_alpha(image):
        rgb, _, alpha, background = _unpremultiplied(image)
        keep = alpha[..., None]
        return np.asarray(rgb * keep + background * (1.0 - keep), dtype=np.float32)
    if mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError:
            image = image.convert("RGBA").convert("RGB")
    return np.asarray(image, dtype=np.float32) / 255.0
