"""Images out: [0, 1] float arrays -> 8-bit PNG bytes, grids and base64 strings."""

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
    """Nearest-neighbour upscaling of a 2-D array by an integer factor."""
    if scale == 1:
        return image
    return np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)


def grid(images: np.ndarray, scale: int = 1, gap: int = GRID_GAP) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) uint8 -> one uint8 picture: row-major, ceil(sqrt(N)) columns,
    `gap` pixels between cells (gaps are not scaled); empty cells of the last row are black,
    like a digit's background. Built with array reshapes, no per-image Python loop."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 4:
        images = images[:, 0]
    count, height, width = images.shape
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    cell_h, cell_w = height * scale, width * scale
    # Every cell with its gap below and to the right: (rows, cols, cell_h + gap, cell_w + gap).
    cells = np.full((rows * cols, cell_h + gap, cell_w + gap), GAP_VALUE, dtype=np.uint8)
    cells[:count, :cell_h, :cell_w] = (
        images.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else images
    )
    cells[count:, :cell_h, :cell_w] = 0
    blocks = cells.reshape(rows, cols, cell_h + gap, cell_w + gap).transpose(0, 2, 1, 3)
    out = blocks.reshape(rows * (cell_h + gap), cols * (cell_w + gap))
    return np.ascontiguousarray(out[: out.shape[0] - gap, : out.shape[1] - gap])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(image: np.ndarray) -> bytes:
    """A 2-D uint8 array -> 8-bit grayscale PNG bytes.

    Written here with zlib rather than through Pillow: the same lossless file (filter type 0 on
    every row, zlib level PNG_COMPRESS_LEVEL), at a fraction of Pillow's cost for one digit or
    a 16-digit grid: Pillow's per-image setup dominates at these sizes (BENCHMARKS.md, "The
    compute floor", PNG encoding). Filter 0 also gives the
    smallest files here: black backgrounds are runs of zeros already.
    """
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {image.shape}")
    height, width = image.shape
    rows = np.zeros((height, width + 1), dtype=np.uint8)  # column 0: the filter byte, 0 = None
    rows[:, 1:] = image
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return b"".join(
        (
            PNG_SIGNATURE,
            _chunk(b"IHDR", header),
            _chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESS_LEVEL)),
            _chunk(b"IEND", b""),
        )
    )


def png_base64(image: np.ndarray) -> str:
    """A 2-D uint8 array -> base64 (ASCII) of its PNG."""
    return base64.b64encode(png_bytes(image)).decode("ascii")


def grid_png(images: np.ndarray, scale: int = 1) -> bytes:
    """[0, 1] images (N, [1,] H, W) -> one PNG grid."""
    return png_bytes(grid(to_uint8(images), scale))


def pngs_base64(images: np.ndarray, scale: int = 1) -> list[str]:
    """[0, 1] images (N, [1,] H, W) -> one base64 PNG per image."""
    images = to_uint8(images)
    if images.ndim == 4:
        images = images[:, 0]
    return [png_base64(upscale(image, scale)) for image in images]
