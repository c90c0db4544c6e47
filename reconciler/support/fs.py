"""Atomic file writes: temporary file in the same folder, fsync, rename, fsync the folder."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import stat
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from reconciler.support import durable
from reconciler.support.logging import get_logger

log = get_logger()

# open() flags for a file that must be the one named, never waited on: not through a link, not blocking on a
# pipe, never a controlling terminal (the first two do not exist on Windows, where a regular-file check on
# the opened file remains)
NO_FOLLOW_NO_WAIT = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)

WRITE_TEMP = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")  # the temporary files of atomic_write


_stopped_midway = 0  # writes of this process that failed partway (see ``stopped_midway``)


def stopped_midway() -> int:
    """How many writes of this process (``atomic_write``, ``write_folder``, ``discard``, links) failed
    partway and could not remove what they had begun: a temporary left behind, whoever caught the error. A
    holder of the apply lock that sees this number change leaves no clean mark (crash recovery then looks
    everywhere)."""
    return _stopped_midway


def _stopping_midway() -> None:
    global _stopped_midway
    _stopped_midway += 1  # two at once may count one: it still changes, which is all that is asked


def clean_up(temporary: str | Path, remove: Callable[[str], object] | None = None) -> None:
    """Remove (``os.unlink`` unless told otherwise) what a write had begun or left to remove (a temporary, a
    backup, an intent record); count it (``stopped_midway``) when it stays behind, so no clean mark vouches
    for a folder still holding it."""
    temporary = os.fspath(temporary)
    with contextlib.suppress(OSError):
        (remove or os.unlink)(temporary)
    if os.path.lexists(temporary):
        _stopping_midway()


def fsync_dir(path: Path, *, strict: bool = False) -> None:
    """fsync a folder (its names on disk); an error is ignored unless ``strict`` (some platforms and file
    systems cannot open or sync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # a pipe put in its place never blocks
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        if strict:
            raise


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
        clean_up(tmp)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
        raise
    fsync_dir(path.parent)


def remove_temporaries(
    root: Path,
    pattern: re.Pattern[str],
    *,
    recursive: bool,
    failed: list[str] | None = None,
    skip: frozenset[str] = frozenset(),
    removed_from: set[str] | None = None,
) -> int:
    """Remove the files and folders below ``root`` whose names match ``pattern`` (what interrupted writes
    left behind), not looking into the folders of ``root`` named in ``skip``; a folder that cannot be read
    or an entry that cannot be removed is logged, skipped and added to ``failed``; the folders something
    was removed from are added to ``removed_from`` (to be made durable)."""
    removed = 0
    if not root.is_dir():
        return 0

    def unreadable(exc: OSError) -> None:
        log.warning("recovery.read.failed", path=str(exc.filename or root), error=str(exc))
        if failed is not None:
            failed.append(str(exc.filename or root))

    if recursive:
        walker = os.walk(root, onerror=unreadable)
    else:
        try:
            walker = iter([(str(root), [], [e.name for e in os.scandir(root)])])
        except OSError as exc:
            unreadable(exc)
            return 0
    for folder, dirs, files in walker:
        if skip and folder == str(root):
            dirs[:] = [d for d in dirs if d not in skip]
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
                if failed is not None:
                    failed.append(str(path))
                continue
            removed += 1
            if removed_from is not None:
                removed_from.add(str(folder))
            log.info("recovery.removed", path=str(path), note="left by an interrupted write")
    return removed


def atomic_symlink(target: str, link: Path | str, *, sync: bool = True) -> None:
    """Point ``link`` at ``target`` atomically (make a new link beside it, rename over); ``sync=False``
    leaves the folder's fsync to the caller (several links in one folder, one fsync)."""
    folder, name = os.path.split(os.fspath(link))
    tmp = f"{folder}/.{name}.{secrets.token_hex(4)}.tmp"  # a WRITE_TEMP name: swept after a crash
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        clean_up(tmp)
        raise
    if sync:
        fsync_dir(Path(folder))


def discard(target: Path, *, settle: bool = True) -> None:
    """Remove a folder so that it vanishes at once (renamed to ``.<name>.removing``, then deleted)."""
    trash = target.with_name(f".{target.name}.removing")
    try:
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(target, trash)
        shutil.rmtree(trash)
    except BaseException:
        if os.path.lexists(trash):
            _stopping_midway()
        raise
    if settle:
        fsync_dir(target.parent)


def _temporary_folder(staging: str, name: str) -> str:
    """A new, empty 0700 folder ``.<name>.XXXXXXXX.tmp`` in ``staging`` (a WRITE_TEMP name: swept after a crash)."""
    while True:
        tmp = f"{staging}/.{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.mkdir(tmp, 0o700)
        except FileExistsError:
            continue
        return tmp


def write_folder(
    target: Path,
    files: dict[str, tuple[bytes, int]],
    *,
    staging: Path,
    mode: int = 0o755,
    settle: bool = True,
) -> None:
    """Make the folder ``target`` appear at once holding ``files`` (name -> (data, mode)), replacing a folder
    of that name. Written in a temporary folder ``.<name>.XXXXXXXX.tmp`` under ``staging`` (same file system;
    swept by recovery if a crash leaves it), every file 0600 until it is complete, then renamed.

    The files are not fsync'ed one by one: with ``settle`` (the default) the call returns once the folder
    is on disk (``durable.settle``: one sync shared with every concurrent writer); ``settle=False`` leaves
    that to the caller, who must settle before anything that depends on the folder (a link that makes it
    live, a commit record). A crash before that leaves a folder whose files may be empty: what reads it
    must check it is complete (the vault's recovery and the stores' observe do)."""
    target_s, staging_s = os.fspath(target), os.fspath(staging)
    parent = os.path.dirname(target_s)
    try:  # plain strings, not Paths: this runs for every version written
        os.makedirs(staging_s, exist_ok=True)
        if parent != staging_s:
            os.makedirs(parent, exist_ok=True)
        durable.watch(staging_s)
        tmp = _temporary_folder(staging_s, os.path.basename(target_s))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
    try:
        for name, (data, file_mode) in files.items():
            fd = os.open(f"{tmp}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if file_mode != 0o600:
                    os.fchmod(fd, file_mode)
            finally:
                os.close(fd)
        os.chmod(tmp, mode)
        if os.path.isdir(target_s) and not os.path.islink(target_s):
            discard(Path(target_s), settle=False)
        os.replace(tmp, target_s)
        if settle:
            durable.settle(target_s)
    except BaseException as exc:
        clean_up(tmp, partial(shutil.rmtree, ignore_errors=True))
        if isinstance(exc, OSError):
            raise OSError(exc.errno, f"cannot write {target}: {exc.strerror}") from None
        raise


def switch_links(
    folder: Path, current: str, version: str, names: tuple[str, ...], *, written: tuple[Path, ...] = ()
) -> None:
    """Make every one of ``names`` in ``folder`` the link ``<current>/<name>``, then point ``current`` at
    ``version``: once ``current`` exists, flipping it is the one step that switches what a reader of the
    names sees (on a first install the names dangle until then). Plain files found under the names (an
    older layout) are replaced after ``current`` is set, so they never dangle. ``written``: folders the
    caller wrote without settling them (the version): they are settled with the links, before the flip.
    Returns once the flip is on disk."""
    base = os.fspath(folder)
    link = f"{base}/{current}"
    plain = [n for n in names if os.path.lexists(f"{base}/{n}") and not os.path.islink(f"{base}/{n}")]
    if plain and not os.path.lexists(link):
        atomic_symlink(version, link, sync=False)
        durable.settle(folder, *written)
    changed = False
    for name in names:
        path = f"{base}/{name}"
        wanted = f"{current}/{name}"
        try:
            if os.readlink(path) == wanted:
                continue
        except OSError:  # missing, or not a link
            if os.path.isdir(path) and not os.path.islink(path):
                discard(Path(path), settle=False)
        atomic_symlink(wanted, path, sync=False)
        changed = True
    if changed or written:
        durable.settle(folder, *written)  # every name and the version on disk before ``current`` flips
    atomic_symlink(version, link, sync=False)
    durable.settle(link)


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
    with contextlib.suppress(
        OSError
    ):  # who holds it is only for messages: a full disk must not lose the lock
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
    if (
        not text
        or "\x00" in text
        or os.path.isabs(text)
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise UnsafePath(f"{what} {text!r} is not a plain relative path inside {root}; refused")
    base = os.path.realpath(root)
    real = os.path.realpath(os.path.join(base, *parts))
    if os.path.commonpath([base, real]) != base:
        raise UnsafePath(f"{what} {text!r} leads to {real}, outside {root}; refused")
    return Path(root, *parts)


_EUID = os.geteuid() if hasattr(os, "geteuid") else None


def _trusted_owner(uid: int) -> bool:
    return _EUID is None or uid in (0, _EUID)


def write_path_problem(path: Path | str, _hops: int = 0) -> str | None:
    """Why certctl must not write a certificate, key or challenge below ``path``, or None (OpenSSH StrictModes).

    Every existing component, from the root down, and every symlink met on the way (and what it points
    to) must be owned by root or the running user and writable by no one else; a sticky folder (/tmp) is
    fine, since then the next component must itself be ours. Components that do not exist yet are
    created by certctl. Windows has no owners to check here: always None there.
    """
    if not hasattr(os, "geteuid") or _hops > 40:
        return None if _hops <= 40 else f"{path}: too many symbolic links"
    walked = "/"
    for name in os.path.abspath(path).split("/")[1:]:  # plain strings: this runs for every file written
        candidate = walked + name if walked.endswith("/") else f"{walked}/{name}"
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
            walked = target
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


def read_regular(path: Path | str, limit: int, *, follow: bool = True) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes; NotRegular (an OSError) otherwise.

    Opened without blocking and checked on the open descriptor, so a FIFO or a device (a link to
    /dev/zero) is refused instead of hanging or filling memory, and a file swapped in between cannot slip by.
    ``follow=False``: a link is refused too (an OSError).
    """
    flags = NO_FOLLOW_NO_WAIT if not follow else getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, os.O_RDONLY | flags)
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
