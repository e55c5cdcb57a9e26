"""Running the numba kernels: one cloud per task on a process-wide thread pool.

The kernels release the GIL, so clouds of a batch run in parallel on up to
`torch.get_num_threads()` threads; `torch.set_num_threads(1)` (as DataLoader workers do) keeps
them on the calling thread. The pool lives for the process and is forgotten in a forked child,
whose threads do not survive the fork.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

_T = TypeVar("_T")


def kernel_arrays(*tensors: torch.Tensor) -> list[np.ndarray]:
    """CPU tensors as numpy arrays of one kernel precision, views when the dtype matches:
    float64 when any tensor is float64, else float32 (the kernels have no half-precision code)."""
    dtype = torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32
    return [t.detach().to(dtype).numpy() for t in tensors]


def map_clouds(fn: Callable[[int], _T], batch: int) -> list[_T]:
    """[fn(0), ..., fn(batch - 1)], on up to torch.get_num_threads() threads."""
    threads = torch.get_num_threads()
    if min(batch, threads) <= 1:
        return [fn(b) for b in range(batch)]
    return list(thread_pool(threads).map(fn, range(batch)))


# One pool per process and thread count: starting threads on every call cost ~0.5 ms, ~1% of
# grouping 16 clouds. A pool that is replaced is not shut down (another caller may still be
# submitting to it); its idle threads exit when it is garbage collected.
_pool_lock = threading.Lock()
_pool: tuple[int, ThreadPoolExecutor] | None = None


def thread_pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of `threads` workers, created on first use or when the count changes."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != threads:
            _pool = (threads, ThreadPoolExecutor(threads, thread_name_prefix="pointllm-ops"))
        return _pool[1]


def _forget_thread_pool() -> None:
    """In a forked child (e.g. a DataLoader worker): the parent's threads did not come along."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_thread_pool)
