"""Group commit for files and folders: write without waiting for the disk, then ``settle`` once.

A writer makes its files (temporary names, renames, links) without an fsync per file, then calls
``settle(path)`` before anything may depend on them (a commit record, a link that makes them live).
``settle`` returns once everything written so far on that file system is on disk. Concurrent callers
share the work: a caller that arrives while a sync is running waits for the next one, which covers
every caller that arrived meanwhile, so N threads settling at once cost two syncs, not N.

On Linux one ``syncfs(2)`` per file system does it: it flushes the file system's dirty data and
metadata and reports any write-back error since the descriptor it is called on was opened (that
descriptor is opened before the first write it must cover, and kept). Elsewhere (no ``syncfs``)
each settled path and its folder is fsync'ed, as an ``atomic_write`` would.

A failed sync fails every caller it covered, with the error naming the path each one settled;
nothing a caller committed after ``settle`` returned depends on data that is not on disk.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import stat
import threading
from pathlib import Path

from reconciler.support.parallel import stepped_out

__all__ = ["settle", "watch"]


def _load_syncfs() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if not hasattr(os, "geteuid"):  # Windows
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        call = libc.syncfs
    except (OSError, AttributeError):  # macOS and the BSDs have no syncfs
        return None
    call.argtypes = [ctypes.c_int]
    call.restype = ctypes.c_int
    return call


_SYNCFS = _load_syncfs()


class _FileSystem:
    """One file system's group commit: a descriptor kept open on it, and the rounds of syncs."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.cond = threading.Condition()
        self.requested = 0  # tickets handed out (numbered from 1)
        self.synced = 0  # tickets known durable
        self.failed_upto = 0  # tickets a failed sync covered
        self.failure: OSError | None = None
        self.running = False

    def settle(self, path: str) -> None:
        with self.cond:
            self.requested += 1
            ticket = self.requested
            while True:
                if self.failed_upto >= ticket and self.failure is not None:
                    raise OSError(self.failure.errno, f"cannot write {path}: {self.failure.strerror}")
                if self.synced >= ticket:
                    return
                if not self.running:
                    break
                self.cond.wait()
            self.running = True
            target = self.requested  # every ticket handed out so far: their writes came before this sync
        error: OSError | None = None
        try:
            if _SYNCFS is not None and _SYNCFS(self.fd) != 0:
                number = ctypes.get_errno()
                error = OSError(number, os.strerror(number))
        finally:
            with self.cond:
                self.running = False
                if error is None:
                    self.synced = max(self.synced, target)
                else:
                    self.failed_upto, self.failure = target, error
                self.cond.notify_all()
        if error is not None:
            raise OSError(error.errno, f"cannot write {path}: {error.strerror}")


_SYSTEMS: dict[int, _FileSystem] = {}
_GUARD = threading.Lock()


def watch(folder: Path | str) -> None:
    """Open (once) the descriptor that settles the file system holding ``folder``: called before the first
    write a later ``settle`` must vouch for, so a write-back error of that write is reported to it."""
    if _SYNCFS is None:
        return
    with contextlib.suppress(OSError):
        _system(folder)


_DEVICE_OF: dict[str, int] = {}  # folder -> its file system (a stat per folder, not per call)


def _system(folder: Path | str) -> _FileSystem:
    key = os.fspath(folder)
    device = _DEVICE_OF.get(key)
    if device is None:
        device = os.stat(key).st_dev
        if len(_DEVICE_OF) >= 4096:
            _DEVICE_OF.clear()
        _DEVICE_OF[key] = device
    with _GUARD:
        found = _SYSTEMS.get(device)
        if found is None:
            fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
            found = _SYSTEMS[device] = _FileSystem(fd)
        return found


def settle(*paths: Path | str) -> None:
    """Return once ``paths`` (files, links or folders just written, renamed or linked) and everything written
    before them on their file systems are on disk (one shared sync per file system); OSError naming the
    path whose file system failed."""
    with stepped_out():  # another local action uses the CPU meanwhile
        systems: dict[int, tuple[_FileSystem, str]] = {}
        for raw in paths:
            if _SYNCFS is None:
                _fsync_each(Path(raw))
                continue
            path = os.fspath(raw)
            try:
                folder = path if stat.S_ISDIR(os.lstat(path).st_mode) else os.path.dirname(path)
                system = _system(folder)
            except OSError as exc:
                raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
            systems.setdefault(id(system), (system, path))
        for system, named in systems.values():
            system.settle(named)


def _fsync_each(path: Path) -> None:
    """Without syncfs: fsync ``path`` (a folder: its entries too) and the folder that names it."""
    targets = [path]
    if path.is_dir() and not path.is_symlink():
        targets.extend(p for p in path.iterdir() if not p.is_symlink())
    targets.append(path.parent)
    for target in targets:
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        except OSError:
            continue  # Windows cannot open a folder: its renames are durable when they return
        try:
            os.fsync(fd)
        except OSError as exc:
            if target.is_dir():
                continue
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
        finally:
            os.close(fd)
