"""Images out: [0, 1] float arrays -> 8-bit PNG bytes (grayscale for 1-channel images, RGB
for 3-channel ones), grids and base64 strings. Images come as (N, H, W), (N, 1, H, W) or
(N, 3, H, W), any H and W."""

from __future__ import annotations

import base64
import math
import struct
import zlib

import numpy as np

# zlib level 1: higher levels take several times as long for files only a little smaller, and
# the service is CPU-bound, not bandwidth-bound (BENCHMARKS.md, "The compute floor").
PNG_COMPRESS_LEVEL = 1
GRID_GAP = 2
GAP_VALUE = 128  # mid-grey gaps: visible between black-background digits
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] floats (any shape) -> uint8, rounded (a 28x28 PNG of it is lossless 8-bit); NaN
    and -inf give 0, +inf 255. In place on one float32 copy (fewer temporaries)."""
    x = np.multiply(images, 255.0, dtype=np.float32)
    np.fmax(x, 0.0, out=x)  # fmax(NaN, 0) is 0
    np.fmin(x, 255.0, out=x)
    x += 0.5
    out: np.ndarray = x.astype(np.uint8)
    return out


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling of an (H, W) or (H, W, 3) array by an integer factor."""
    if scale == 1:
        return image
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def channels_last(images: np.ndarray) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) -> (N, H, W); (N, 3, H, W) -> (N, H, W, 3): how pictures are
    laid out for PNG rows."""
    images = np.asarray(images)
    if images.ndim == 3:
        return images
    if images.ndim == 4 and images.shape[1] == 1:
        return images[:, 0]
    if images.ndim == 4 and images.shape[1] == 3:
        return np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    raise ValueError(f"expected images (N, H, W) or (N, 1 or 3, H, W), got {images.shape}")


def tile(images: np.ndarray, cols: int, scale: int = 1, gap: int = GRID_GAP) -> np.ndarray:
    """(N, H, W[, 3]) uint8 -> one picture with `cols` columns, row-major, `gap` pixels of
    mid-grey between cells (not scaled); cells past N are black. Built with array reshapes,
    no per-image Python loop."""
    images = np.asarray(images, dtype=np.uint8)
    count, height, width = images.shape[:3]
    channels = images.shape[3:]
    rows = -(-count // cols)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    cell_h, cell_w = height * scale, width * scale
    # Every cell with its gap below and to the right: (rows, cols, cell_h + gap, cell_w + gap).
    cells = np.full((rows * cols, cell_h + gap, cell_w + gap, *channels), GAP_VALUE, np.uint8)
    cells[:count, :cell_h, :cell_w] = images
    cells[count:, :cell_h, :cell_w] = 0
    blocks = cells.reshape(rows, cols, cell_h + gap, cell_w + gap, *channels).swapaxes(1, 2)
    out = blocks.reshape(rows * (cell_h + gap), cols * (cell_w + gap), *channels)
    return np.ascontiguousarray(out[: out.shape[0] - gap, : out.shape[1] - gap])


def grid(images: np.ndarray, scale: int = 1, gap: int = GRID_GAP) -> np.ndarray:
    """(N, H, W), (N, 1, H, W) or (N, 3, H, W) uint8 -> one uint8 picture ((H', W') or
    (H', W', 3)): row-major, ceil(sqrt(N)) columns, `gap` pixels between cells (gaps are not
    scaled); empty cells of the last row are black, like a digit's background."""
    images = channels_last(np.asarray(images, dtype=np.uint8))
    return tile(images, math.ceil(math.sqrt(len(images))), scale, gap)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(image: np.ndarray) -> bytes:
    """A 2-D uint8 array -> 8-bit grayscale PNG bytes; an (H, W, 3) one -> 8-bit RGB.

    Written here with zlib rather than through Pillow: the same lossless file (filter type 0 on
    every row, zlib level PNG_COMPRESS_LEVEL), at a fraction of Pillow's cost for one digit or
    a 16-digit grid: Pillow's per-image setup dominates at these sizes (BENCHMARKS.md, "The
    compute floor", PNG encoding). Filter 0 also gives the
    smallest files here: black backgrounds are runs of zeros already.
    """
    image = np.asarray(image, dtype=np.uint8)
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(f"expected an (H, W) or (H, W, 3) array, got shape {image.shape}")
    height, width = image.shape[:2]
    samples = width * (3 if image.ndim == 3 else 1)
    rows = np.zeros((height, samples + 1), dtype=np.uint8)  # column 0: the filter byte, 0 = None
    rows[:, 1:] = image.reshape(height, samples)
    colour = 2 if image.ndim == 3 else 0  # truecolour or gray
    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)  # 8-bit, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESS_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def png_base64(image: np.ndarray) -> str:
    """An (H, W) or (H, W, 3) uint8 array -> base64 (ASCII) of its PNG."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def grid_png(images: np.ndarray, scale: int = 1) -> bytes:
    """[0, 1] images (N, [1 or 3,] H, W) -> one PNG grid (grayscale or RGB)."""
    return png_bytes(grid(to_uint8(images), scale))


def pngs_base64(images: np.ndarray, scale: int = 1) -> list[str]:
    """[0, 1] images (N, [1 or 3,] H, W) -> one base64 PNG per image (grayscale or RGB)."""
    pixels = channels_last(to_uint8(images))
    return [png_base64(upscale(image, scale)) for image in pixels]
