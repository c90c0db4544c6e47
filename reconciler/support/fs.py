"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
import time
from pathlib import Path


def fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: Path | str, data: bytes | str, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new content, never a mix.

    The file gets ``mode`` from the moment it exists (a key is never readable by others, even briefly).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_symlink(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (make a new link beside it, rename over)."""
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)
    fsync_dir(link.parent)


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
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())
    return fd, None


class UnsafePath(Exception):
    """A path read from a state, intent or plan file, or a folder to write into, that must not be used."""


def contained(root: Path | str, relative: str, what: str = "path") -> Path:
    """``root / relative``, refused (UnsafePath) unless it stays inside ``root``.

    For names read from state and intent files: an absolute path, a drive, ``..``, an empty part or a
    NUL is refused before anything is joined, and the joined path's real location (links resolved) must
    still be below ``root``'s real location.
    """
    text = str(relative)
    parts = text.replace("\\", "/").split("/")
    if not text or "\x00" in text or os.path.isabs(text) or ":" in parts[0] or any(p in ("", ".", "..") for p in parts):
        raise UnsafePath(f"{what} {text!r} is not a plain relative path inside {root}; refused")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, real]) != base:
        raise UnsafePath(f"{what} {text!r} leads to {real}, outside {root}; refused")
    return Path(root, *parts)


def _trusted_owner(uid: int) -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is None or uid in (0, geteuid())


def write_path_problem(path: Path | str, _hops: int = 0) -> str | None:
    """Why certctl must not write a certificate, key or challenge below ``path``, or None (OpenSSH StrictModes).

    Every existing component, from the root down, and every symlink met on the way (and what it points
    to) must be owned by root or the running user and writable by no one else; a sticky folder (/tmp) is
    fine, since then the next component must itself be ours. Components that do not exist yet are
    created by certctl. Windows has no owners to check here: always None there.
    """
    if not hasattr(os, "geteuid") or _hops > 40:
        return None if _hops <= 40 else f"{path}: too many symbolic links"
    current = Path(os.path.abspath(path))
    walked = Path(current.anchor)
    for name in current.parts[1:]:
        candidate = walked / name
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{candidate}: cannot inspect it ({exc.strerror})"
        if not _trusted_owner(st.st_uid):
            return f"{candidate} is owned by uid {st.st_uid}, neither root nor the running user"
        if stat.S_ISLNK(st.st_mode):
            target = os.path.realpath(candidate)
            problem = write_path_problem(target, _hops + 1)
            if problem is not None:
                return f"{candidate} is a link to {target}: {problem}"
            walked = Path(target)
            continue
        if st.st_mode & 0o022 and not (stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX):
            return f"{candidate} is writable by other users (mode {stat.S_IMODE(st.st_mode):04o})"
        walked = candidate
    return None


def safe_folder(path: Path | str, mode: int, what: str = "folder") -> Path:
    """Make sure certctl may write into ``path`` (write_path_problem) and that it exists; raise UnsafePath.

    Folders that are missing are created with exactly ``mode`` (0700 for key material, 0755 for what a web
    server must read), whatever the process umask; existing folders keep their mode.
    """
    path = Path(path)
    problem = write_path_problem(path)
    if problem is not None:
        raise UnsafePath(f"refusing to write into {what} {path}: {problem}")
    missing: list[Path] = []
    probe = path
    while not probe.exists() and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=mode)
        except FileExistsError:
            continue
        os.chmod(folder, mode)
    if missing:
        problem = write_path_problem(path)  # what was created is ours; what raced in between is checked again
        if problem is not None:
            raise UnsafePath(f"refusing to write into {what} {path}: {problem}")
    return path


class NotRegular(OSError):
    """A path that must be a regular file of bounded size is not (a FIFO, device, socket, folder, or too big);
    the message names the problem, not the path."""


def read_regular(path: Path | str, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; NotRegular (an OSError) otherwise.

    Opened without blocking and checked on the open descriptor, so a FIFO or a device (a link to
    /dev/zero) is refused instead of hanging or filling memory, and a file swapped in between cannot slip by.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegular("not a regular file (a FIFO, device, socket or folder)")
        if st.st_size > limit:
            raise NotRegular(f"is {st.st_size:,} bytes; at most {limit:,} are allowed")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise NotRegular(f"grew beyond {limit:,} bytes while it was read")
    finally:
        os.close(fd)
    return b"".join(chunks)
