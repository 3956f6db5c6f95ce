"""Where a request's model work runs: on the event loop at once, on the loop in turns, or in
the thread pool. Handlers are `async` and name the size of their work:

    size = WorkSize(images=1, small=small_uploads([data]))
    return await scheduler.run(size, encode_one, model, data)

Why three tiers (figures: BENCHMARKS.md, "What changed and why"):
- Small work runs on the event loop. For an MNIST-sized request the thread-pool hand-off
  (anyio queue, thread wake-up, then waiting up to the GIL's switch interval to take the GIL
  back from the loop) costs more than the work itself, and with one worker process per CPU
  (the default) running it inline costs no parallelism either.
- Up to `DIRECT_IMAGES` images (an /encode, a /reconstruct: well under a millisecond) the
  work runs at once.
- Up to `LOOP_MAX_IMAGES`, requests take turns in arrival order, each after one pass of the
  loop over the sockets: uvloop left alone serves connections unfairly when handlers block
  for milliseconds, which shows as a long p99 tail at 32 connections.
- Anything bigger (more images, more pixels, any non-PNG upload) runs in the thread pool,
  where onnxruntime releases the GIL so the loop keeps serving; at most `OFFLOAD_THREADS` at a
  time per worker process.
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import anyio
import anyio.to_thread

from service.imaging.png import PNG_SIGNATURE

DIRECT_IMAGES = 2
LOOP_MAX_IMAGES = 16
# Pixels of work that still fits the loop: 16 digits at scale 4, or one 448x448 upload (an
# output's pixel values: C * H * W per image).
LOOP_MAX_PIXELS = 16 * (4 * 28) ** 2
# Each worker has about one core, so more threads would only add peak memory (a batch of 256
# holds ~100 MB of activations while it runs) and GIL contention.
OFFLOAD_THREADS = 2
# A PNG's width and height sit in its IHDR chunk, bytes 16..24.
_IHDR = slice(12, 16)
_SIZE = slice(16, 24)

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(frozen=True)
class WorkSize:
    """How much model work a request brings: images in or out, and whether their pixels are
    few enough for the event loop."""

    images: int
    small: bool


def small_uploads(images: list[bytes]) -> bool:
    """PNGs whose headers say they are few and small: cheap to decode and prepare. Any other
    format, or a big PNG (which can hold 40 MP in 200 KB), goes to the thread pool."""
    if len(images) > LOOP_MAX_IMAGES:
        return False
    pixels = 0
    for data in images:
        if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[_IHDR] != b"IHDR":
            return False
        width, height = struct.unpack(">II", data[_SIZE])
        pixels += width * height
    return pixels <= LOOP_MAX_PIXELS


def small_output(images: int, scale: int, shape: tuple[int, int, int] = (1, 28, 28)) -> bool:
    """Images of `shape` (C, H, W) drawn out at `scale` that are few and small enough for the
    loop (counted in pixel values: an RGB image is three times a grayscale one)."""
    channels, height, width = shape
    values = images * channels * height * width * scale * scale
    return images <= LOOP_MAX_IMAGES and values <= LOOP_MAX_PIXELS


class Scheduler:
    """One per application, made in its lifespan (so its lock and limiter belong to the
    running event loop)."""

    def __init__(self, offload_threads: int = OFFLOAD_THREADS) -> None:
        # asyncio.Lock wakes its waiters in the order they came: turns in arrival order.
        self.turns = asyncio.Lock()
        self.limiter = anyio.CapacityLimiter(offload_threads)

    async def run(
        self, size: WorkSize, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """`work(*args, **kwargs)` where `size` says it belongs; returns its result."""
        if size.small and size.images <= DIRECT_IMAGES:
            return work(*args, **kwargs)
        if size.small and size.images <= LOOP_MAX_IMAGES:
            async with self.turns:
                await asyncio.sleep(0)  # one pass over the sockets before each turn
                return work(*args, **kwargs)
        return await anyio.to_thread.run_sync(
            functools.partial(work, *args, **kwargs), limiter=self.limiter
        )
