"""onnxruntime sessions and the process's memory behaviour around them.

`session_options` is the one place the sessions' settings live (bench/compute.py measures
them); `open_session` loads verified bytes; the glibc calls keep a worker's memory flat under
big batches (RELIABILITY.md, "Memory").
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

from service.inference.format import ModelLoadError

FLOAT_TENSOR = "tensor(float)"
# After an inference of at least this many images, free heap pages go back to the system.
TRIM_AFTER_BATCH = 32


M_ARENA_MAX = -8  # glibc's mallopt parameter
MALLOC_ARENAS = 2


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> None:
    """glibc: at most `arenas` malloc arenas in this process (unless MALLOC_ARENA_MAX is set).

    glibc gives each new thread its own arena, up to 8 per core, and each keeps its freed
    pages: with big batches in the thread pool that is tens of MB per thread that never go
    back. Call before threads start (service/__main__.py, service/process/workers.py)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, arenas)


def _malloc_trim() -> Callable[[], None]:
    """glibc's malloc_trim(0), or nothing elsewhere.

    Without onnxruntime's arena (see `session_options`) a big batch's buffers go back to
    malloc, but glibc keeps the pages: after a big free it raises its mmap threshold, so the
    next big buffers come from the heap, where blocks freed out of order fragment it; a trim
    after each big batch costs a fraction of a millisecond against tens for the batch. A fixed
    mmap threshold instead would page-fault every big buffer and slow inference down. Together
    with `limit_malloc_arenas` and at most `OFFLOAD_THREADS` big requests at a time per worker
    (service/api/scheduling.py), a worker's RSS stays flat: figures in BENCHMARKS.md, "Memory",
    and "What changed in the service, and why" (8, flat memory)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return lambda: None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return lambda: trim(0) and None


release_free_memory = _malloc_trim()


def open_session(
    path: Path, expected_sha: str, options: ort.SessionOptions
) -> ort.InferenceSession:
    if not path.is_file():
        raise ModelLoadError(f"{path}: file not found")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha:
        raise ModelLoadError(
            f"{path}: sha256 is {digest}, metadata.json says {expected_sha} "
            "(the file changed after export: re-export the model)"
        )
    try:
        # The verified bytes themselves are loaded, not the path again.
        return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelLoadError(f"{path}: onnxruntime cannot load it ({exc})") from None


def check_tensor(path: Path, role: str, arg: ort.NodeArg, name: str, dims: tuple[int, ...]) -> None:
    if arg.name != name:
        raise ModelLoadError(f"{path}: {role} is named {arg.name!r}, metadata.json says {name!r}")
    if arg.type != FLOAT_TENSOR:
        raise ModelLoadError(f"{path}: {role} {name!r} is {arg.type}, expected {FLOAT_TENSOR}")
    shape = list(arg.shape)
    expected = ["N", *dims]
    if len(shape) != len(expected) or shape[1:] != list(dims):
        raise ModelLoadError(
            f"{path}: {role} {name!r} has shape {shape}, metadata.json implies {expected}"
        )
    if isinstance(shape[0], int):
        raise ModelLoadError(
            f"{path}: {role} {name!r} has a fixed batch size {shape[0]}; it must be dynamic"
        )


def session_options(intra_op_threads: int = 1, allow_spinning: bool = False) -> ort.SessionOptions:
    """The onnxruntime settings of every session (bench/compute.py measures them).

    - `intra_op_threads`: threads per inference (0 = one per core). These graphs are small
      (7.5 M multiply-adds per image): at the batch sizes requests bring, splitting one call
      over threads gains less than running calls side by side, one per core.
    - `allow_spinning` off: with threads > 1, idle pool threads spin for a while waiting for
      work by default; under concurrent requests that burns the cores the other requests need.
    - No memory arena: onnxruntime's arena keeps the largest batch's buffers for good (about a
      hundred MB per worker after one batch of 256); without it they go back to malloc, at no
      measurable cost in speed at these sizes (BENCHMARKS.md, "Memory").
    - Sequential execution and full graph optimisation (onnxruntime's defaults, stated).
    """
    options = ort.SessionOptions()
    options.enable_cpu_mem_arena = False
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry(
        "session.intra_op.allow_spinning", "1" if allow_spinning else "0"
    )
    options.log_severity_level = 3  # errors only: ORT's warnings are not the client's business
    return options
