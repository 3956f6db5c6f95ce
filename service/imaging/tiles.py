"""Pictures the analysis routes answer with: strips and grids of a chosen shape (grayscale or
RGB as the images are, any cell height and width), and red-blue error maps (RGB), as PNG bytes.
Complements `service.imaging.png`.

Error map colours: each pixel's brightness is |reconstruction - input| (the square root of
its squared error, so small errors stay visible; 255 = an error of 1, i.e. ink where there is
none). Red: ink in the input that the reconstruction lacks; blue: ink the reconstruction adds
that the input lacks; black: no error.
"""

from __future__ import annotations

import numpy as np

from service.imaging.png import channels_last, png_bytes, tile, to_uint8

__all__ = [
    "error_map",
    "error_map_grid_png",
    "error_map_pngs",
    "rgb_png_bytes",
    "tile",
    "tiles_png",
]


def tiles_png(images: np.ndarray, cols: int, scale: int = 1) -> bytes:
    """[0, 1] images (N, [1 or 3,] H, W) -> one PNG (grayscale or RGB) with `cols` columns."""
    return png_bytes(tile(channels_last(to_uint8(images)), cols, scale))


def rgb_png_bytes(image: np.ndarray) -> bytes:
    """An (H, W, 3) uint8 array -> 8-bit RGB PNG bytes (png.png_bytes, checked to be RGB)."""
    image = np.asarray(image, dtype=np.uint8)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) array, got shape {image.shape}")
    return png_bytes(image)


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
