"""Run certctl and kill -9 it at its N-th file-system step: the crash suite's fault injector.

``CRASH_AT=N``: at the N-th call of a file-system primitive (write, fsync, rename/replace, link, symlink,
unlink, mkdir, rmdir, truncate) the process sends itself SIGKILL, before the call, or, for ``os.write``,
after writing half of the bytes (a torn append). ``CRASH_AT=0`` never kills; ``CRASH_COUNT_FILE`` then
receives the number of steps the run took, so that a test can pick a point inside it.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

AT = int(os.environ.get("CRASH_AT", "0"))
_lock = threading.Lock()
_count = 0


def _due() -> bool:
    global _count
    with _lock:
        _count += 1
        return _count == AT


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(name: str) -> None:
    real: Callable[..., Any] = getattr(os, name)

    def step(*args: Any, **kwargs: Any) -> Any:
        if _due():
            _die()
        return real(*args, **kwargs)

    setattr(os, name, step)


for _name in ("replace", "rename", "link", "symlink", "unlink", "mkdir", "rmdir", "fsync", "ftruncate"):
    _wrap(_name)
_write = os.write


def _torn_write(fd: int, data: Any) -> int:
    if _due():
        view = memoryview(data)
        _write(fd, view[: len(view) // 2])
        _die()
    return _write(fd, data)


os.write = _torn_write


def _report() -> None:
    path = os.environ.get("CRASH_COUNT_FILE")
    if path:
        with open(path, "w") as fh:
            fh.write(str(_count))


atexit.register(_report)

if __name__ == "__main__":
    from reconciler.entry.cli import main

    sys.exit(main(sys.argv[1:]))
