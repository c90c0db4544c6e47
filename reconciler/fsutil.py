"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import structlog

log = structlog.get_logger()

WRITE_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # the temporary files of atomic_write


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path | str, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new content, never a mix.

    The temporary file is 0600 while it is written (one a crash leaves behind never shows a key to
    others) and gets ``mode`` just before it takes the name. An error names ``path``, not the temporary.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
        raise
    fsync_dir(path.parent)


def remove_temporaries(root: Path, pattern: re.Pattern[str], *, recursive: bool) -> int:
    """Remove the files and folders below ``root`` whose names match ``pattern`` (what interrupted writes
    left behind); a folder that cannot be read or an entry that cannot be removed is logged and skipped."""
    removed = 0
    if not root.is_dir():
        return 0
    if recursive:
        walker = os.walk(root)
    else:
        try:
            walker = iter([(str(root), [], [e.name for e in os.scandir(root)])])
        except OSError as exc:
            log.warning("recovery.read.failed", path=str(root), error=str(exc))
            return 0
    for folder, dirs, files in walker:
        for name in list(dirs) + list(files):
            if not pattern.match(name):
                continue
            path = Path(folder) / name
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                    if name in dirs:
                        dirs.remove(name)
                else:
                    path.unlink()
            except OSError as exc:
                log.warning("recovery.remove.failed", path=str(path), error=str(exc))
                continue
            removed += 1
            log.info("recovery.removed", path=str(path), note="left by an interrupted write")
    return removed


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (make a new link beside it, rename over)."""
    tmp = link.with_name(f".{link.name}.{secrets.token_hex(4)}.tmp")  # a WRITE_TEMP name: swept after a crash
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(link.parent)


def discard(target: Path) -> None:
    """Remove a folder so that it vanishes at once (renamed to ``.<name>.removing``, then deleted)."""
    trash = target.with_name(f".{target.name}.removing")
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(target, trash)
    shutil.rmtree(trash)
    fsync_dir(target.parent)


def write_folder(target: Path, files: dict[str, tuple[bytes, int]], *, staging: Path, mode: int = 0o755) -> None:
    """Make the folder ``target`` appear at once holding ``files`` (name -> (data, mode)), replacing a folder
    of that name. Written in a temporary folder ``.<name>.XXXXXXXX.tmp`` under ``staging`` (same file system;
    swept by recovery if a crash leaves it), every file 0600 until it is complete and fsync'ed."""
    try:
        staging.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=staging))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
    try:
        for name, (data, file_mode) in files.items():
            fd = os.open(tmp / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                os.fchmod(fh.fileno(), file_mode)
        fsync_dir(tmp)
        os.chmod(tmp, mode)
        if target.is_dir() and not target.is_symlink():
            discard(target)
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
        raise


def switch_links(folder: Path, current: str, version: str, names: tuple[str, ...]) -> None:
    """Make every one of ``names`` in ``folder`` the link ``<current>/<name>``, then point ``current`` at
    ``version``: once ``current`` exists, flipping it is the one step that switches what a reader of the
    names sees (on a first install the names dangle until then). Plain files found under the names (an
    older layout) are replaced after ``current`` is set, so they never dangle."""
    link = folder / current
    plain = [n for n in names if os.path.lexists(folder / n) and not (folder / n).is_symlink()]
    if plain and not os.path.lexists(link):
        atomic_symlink(version, link)
    for name in names:
        path = folder / name
        if not (path.is_symlink() and os.readlink(path) == f"{current}/{name}"):
            if path.is_dir() and not path.is_symlink():
                discard(path)
            atomic_symlink(f"{current}/{name}", path)
    atomic_symlink(version, link)


def try_lock(fd: int) -> bool:
    """Take an exclusive lock on an open file without waiting: True if taken, False if another process holds it.

    flock on POSIX; on Windows msvcrt.locking on the first byte (both end with the process).
    """
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)  # type: ignore[attr-defined]
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def unlock(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        with contextlib.suppress(OSError):
            os.lseek(fd, 0, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)  # type: ignore[attr-defined]
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def acquire(path: Path, wait: float, holder: str) -> tuple[int, str | None]:
    """Open ``path`` and lock it, retrying for up to ``wait`` seconds; write ``holder`` into it once held.

    Returns (fd, None) when held, or (-1, what the holder wrote) when another process keeps it.
    The lock ends with the process, whatever way it ends (kill -9 included).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + wait
    try:
        while not try_lock(fd):
            if time.monotonic() >= deadline:
                os.close(fd)
                return -1, path.read_text(errors="replace").strip() or "another process"
            time.sleep(0.1)
    except OSError:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # who holds it is only for messages: a full disk must not lose the lock
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())
    return fd, None
