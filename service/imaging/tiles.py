"""Pictures the analysis routes answer with: strips and grids of a chosen shape (grayscale),
and red-blue error maps (RGB), as PNG bytes. Complements `service.imaging.png`.

Error map colours: each pixel's brightness is |reconstruction - input| (the square root of
its squared error, so small errors stay visible; 255 = an error of 1, i.e. ink where there is
none). Red: ink in the input that the reconstruction lacks; blue: ink the reconstruction adds
that the input lacks; black: no error.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np

from service.imaging.png import (
    GAP_VALUE,
    GRID_GAP,
    PNG_COMPRESS_LEVEL,
    PNG_SIGNATURE,
    png_bytes,
    to_uint8,
)


def tile(images: np.ndarray, cols: int, scale: int = 1, gap: int = GRID_GAP) -> np.ndarray:
    """(N, H, W[, 3]) uint8 -> one picture with `cols` columns, row-major, `gap` pixels of
    mid-grey between cells (not scaled); cells past N are black."""
    images = np.asarray(images, dtype=np.uint8)
    count, height, width = images.shape[:3]
    channels = images.shape[3:]
    rows = -(-count // cols)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    cell_h, cell_w = height * scale, width * scale
    cells = np.full((rows * cols, cell_h + gap, cell_w + gap, *channels), GAP_VALUE, np.uint8)
    cells[:count, :cell_h, :cell_w] = images
    cells[count:, :cell_h, :cell_w] = 0
    blocks = cells.reshape(rows, cols, cell_h + gap, cell_w + gap, *channels).swapaxes(1, 2)
    out = blocks.reshape(rows * (cell_h + gap), cols * (cell_w + gap), *channels)
    return np.ascontiguousarray(out[: out.shape[0] - gap, : out.shape[1] - gap])


def tiles_png(images: np.ndarray, cols: int, scale: int = 1) -> bytes:
    """[0, 1] images (N, [1,] H, W) -> one grayscale PNG with `cols` columns."""
    pixels = to_uint8(images)
    if pixels.ndim == 4:
        pixels = pixels[:, 0]
    return png_bytes(tile(pixels, cols, scale))


def rgb_png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array -> 8-bit RGB PNG bytes (filter 0, as png.png_bytes)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {image.shape}")
    height, width = image.shape[:2]
    rows = np.zeros((height, width * 3 + 1), dtype=np.uint8)
    rows[:, 1:] = image.reshape(height, width * 3)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit truecolour

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    return b"".join(
        (
            PNG_SIGNATURE,
            chunk(b"IHDR", header),
            chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESS_LEVEL)),
            chunk(b"IEND", b""),
        )
    )


def error_map(signed_error: np.ndarray) -> np.ndarray:
    """(N, H, W) reconstruction - input, [0, 1] pixels -> (N, H, W, 3) uint8 red-blue maps."""
    signed = np.asarray(signed_error, np.float64)
    magnitude = to_uint8(np.abs(signed))
    out = np.zeros((*signed.shape, 3), np.uint8)
    out[..., 0] = np.where(signed < 0, magnitude, 0)  # input ink the reconstruction lacks
    out[..., 2] = np.where(signed > 0, magnitude, 0)  # ink the reconstruction adds
    return out


def error_map_pngs(signed_error: np.ndarray, scale: int = 1) -> list[bytes]:
    """One RGB PNG error map per image."""
    maps = error_map(signed_error)
    if scale > 1:
        maps = maps.repeat(scale, axis=1).repeat(scale, axis=2)
    return [rgb_png_bytes(m) for m in maps]


def error_map_grid_png(signed_error: np.ndarray, scale: int = 1) -> bytes:
    """The error maps of N images as one RGB PNG grid (ceil(sqrt(N)) columns, as png.grid)."""
    maps = error_map(signed_error)
    cols = int(np.ceil(np.sqrt(len(maps))))
    return rgb_png_bytes(tile(maps, cols, scale))
