"""Spread a large, CPU-bound batch over the machine's cores (parsing thousands of YAML files or certificates).

Small batches run in-process: a pool costs ~0.2 s to start, which pays only for thousands of items.
Workers come from a forkserver, never a plain fork, because the daemon has threads running.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor, wait
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")

THRESHOLD = 2000  # items below which a batch runs in-process
# what the workers' forkserver imports once, before the first batch: the YAML parser (a plan's first pool
# parses the desired state; a batch that reads certificates imports cryptography in each worker, on use)
_PRELOAD = ["reconciler.support.yamlfast"]


def workers() -> int:
    return max(
        1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    )


def map_batch(
    fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], threshold: int = THRESHOLD
) -> list[R]:
    """``fn`` over ``items`` in chunks, in order; in worker processes when the batch is large enough.

    ``fn`` must be a module-level function taking a chunk and returning one result per item.
    """
    return list(iter_batch(fn, items, threshold))


def iter_batch(
    fn: Callable[[Sequence[T]], list[R]], items: Sequence[T], threshold: int = THRESHOLD
) -> Iterator[R]:
    """``map_batch``, giving each result as soon as its chunk (and every chunk before it) is done: the caller
    works on the first results while the workers still work on the rest."""
    count = workers()
    threshold = int(os.environ.get("CERTCTL_PARALLEL_MIN", threshold))  # tests force the pool with 1
    if len(items) < max(1, threshold) or count < 2 or os.environ.get("CERTCTL_NO_PARALLEL"):
        yield from fn(items)
        return
    size = -(-len(items) // (count * 4))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    with ProcessPoolExecutor(max_workers=count, mp_context=context) as pool:
        for part in pool.map(fn, chunks):
            yield from part


def at_once(fn: Callable[[T], R], items: Sequence[T], pool: Executor | None = None) -> list[R]:
    """``fn`` over ``items``, all at the same time (I/O-bound work: requests to one server), results in order.

    The first item runs in the calling thread, the others in ``pool``: a long-lived thread pool (starting
    threads for every batch costs more than the requests on a busy machine); without one, a pool is made
    for the batch. ``fn`` must not itself wait for work of the same pool. The first failure, in the order
    of ``items``, is raised once every call has finished, so nothing is left running behind the caller's
    back.
    """
    if len(items) <= 1:
        return [fn(item) for item in items]
    executor = (
        pool if pool is not None else ThreadPoolExecutor(len(items) - 1, thread_name_prefix="certctl-io")
    )
    try:
        futures = [executor.submit(fn, item) for item in items[1:]]
        try:
            first = fn(items[0])
        finally:
            wait(futures)
    finally:
        if executor is not pool:
            executor.shutdown()
    return [first, *(f.result() for f in futures)]


# requests kept in flight: a cold disk answers several small reads at once faster than in turn, but each
# thread more also takes Python's lock from the others at every call (measured at 10,000 certificates on
# two cores: 4 threads plan 15% faster than 16 with a cold page cache and 12% faster with a warm one)
IO_THREADS = 4
IO_PROBE = 64  # items done in the calling thread between two looks at whether it waits for the disk


def map_io(fn: Callable[[T], R], items: Sequence[T], threads: int = IO_THREADS) -> list[R]:
    """``fn`` over ``items``, in order: for many small blocking file-system calls (``stat``, ``readlink``,
    ``listdir`` of thousands of folders).

    When the page cache holds what they read, each call takes a few microseconds and threads only cost:
    each would hand Python's lock over at every call (at 10,000 certificates, a million futex calls and two
    seconds of system time). When it does not, each waits for the disk in turn, and threads let the disk
    serve several at once. So the calling thread starts, and looks after every IO_PROBE items at whether it
    spent its time waiting (wall time well over its CPU time); from the first batch that waited, the rest go
    to ``threads`` threads in chunks. ``fn`` must not raise for an item it cannot read (return the problem
    instead); an exception is raised once every chunk has finished."""
    if len(items) < 256 or os.environ.get("CERTCTL_NO_PARALLEL"):
        return [fn(item) for item in items]
    out: list[R] = []
    done = 0
    while done < len(items):
        wall, cpu = time.perf_counter(), time.thread_time()
        out.extend(fn(item) for item in items[done : done + IO_PROBE])
        done += IO_PROBE
        waited = (time.perf_counter() - wall) - (time.thread_time() - cpu)
        if waited > 0.001 and done < len(items):  # at least a millisecond spent waiting: a cold disk
            return out + _threaded(fn, items[done:], threads)
    return out


def _threaded(fn: Callable[[T], R], items: Sequence[T], threads: int) -> list[R]:
    size = max(16, -(-len(items) // (threads * 8)))
    chunks = [items[i : i + size] for i in range(0, len(items), size)]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="certctl-fs") as pool:
        futures = [pool.submit(lambda chunk: [fn(item) for item in chunk], c) for c in chunks]
        wait(futures)
    return [r for f in futures for r in f.result()]


_CURRENT = threading.local()  # the lane the calling thread is in, if any


class Lane:
    """At most ``width`` threads at a time run CPU-bound work (signing, writing a version): more would only
    take the interpreter's lock from one another, switching threads at every system call. A thread in the
    lane steps out while it waits for the disk or for a lock (``stepped_out``, ``locked``), so others use
    the CPU meanwhile and its wait is shared with theirs (group commit). Each executor has its own lane."""

    def __init__(self, width: int) -> None:
        self._slots = threading.Semaphore(width)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._slots.acquire()
        previous = getattr(_CURRENT, "lane", None)
        _CURRENT.lane = self
        try:
            yield
        finally:
            _CURRENT.lane = previous
            self._slots.release()


@contextlib.contextmanager
def stepped_out() -> Iterator[None]:
    """Leave the calling thread's lane for a blocking wait (outside any lane: nothing changes)."""
    lane: Lane | None = getattr(_CURRENT, "lane", None)
    if lane is None:
        yield
        return
    _CURRENT.lane = None
    lane._slots.release()
    try:
        yield
    finally:
        lane._slots.acquire()
        _CURRENT.lane = lane


@contextlib.contextmanager
def locked(lock: threading.Lock) -> Iterator[None]:
    """Hold ``lock``; should it be taken, wait for it outside the lane. A thread in a lane never blocks on
    a lock: its holder may be waiting to come back into the lane (a deadlock otherwise)."""
    if not lock.acquire(blocking=False):
        with stepped_out():
            lock.acquire()
    try:
        yield
    finally:
        lock.release()
