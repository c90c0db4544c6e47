"""Small on-disk caches keyed by file identity (inode, size, mtime, ctime), for the second run of a big plan.

A cache is only ever an optimisation, and it is untrusted data: plain JSON (never a format that can
run code when read), read only from a folder owned by the running user that no one else can write,
and ignored with a warning otherwise. A missing, stale, corrupt or unwritable cache is ignored; every
entry a caller takes from it is checked by that caller as it is decoded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import platformdirs

from reconciler import __version__
from reconciler.support.fs import NO_FOLLOW_NO_WAIT, atomic_write
from reconciler.support.logging import get_logger
from reconciler.support.parallel import stepped_out

log = get_logger()

FileKey = tuple[int, int, int, int]
MAX_CACHE_BYTES = 256 << 20


def file_key(st: os.stat_result) -> FileKey:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def unchanged(path: str, recorded: FileKey) -> bool:
    """Whether ``path`` (a link itself, not followed) still has the identity ``recorded``. For a folder, that
    means no name in it was made, removed, renamed or replaced since (a link cannot be rewritten in place)."""
    try:
        return file_key(os.lstat(path)) == recorded
    except OSError:
        return False


# The clock file systems stamp changes with: the kernel's coarse wall clock (a change is stamped with it,
# or with a finer reading, never an earlier one). Elsewhere the wall clock.
_CHANGE_CLOCK = getattr(time, "CLOCK_REALTIME_COARSE", 5 if sys.platform.startswith("linux") else None)
TICK_WAIT = 0.05  # seconds ``tick_passed`` waits at most


def change_clock_ns() -> int:
    """Now, as the clock that stamps file changes reads it."""
    return time.clock_gettime_ns(_CHANGE_CLOCK) if _CHANGE_CLOCK is not None else time.time_ns()


def _granularity(ctime_ns: int) -> int:
    """The finest step a file system stamping this change time can have (1 ns for ext4, 10 ms for FAT)."""
    step = 1
    while step < 1_000_000_000 and ctime_ns % (step * 10) == 0:
        step *= 10
    return step


def settled(keys: Iterable[FileKey | None], since_ns: int) -> bool:
    """Were the files or folders with these identities last changed before ``since_ns`` (a ``change_clock_ns``
    reading), in an earlier step of their file system's clock? Then any change from ``since_ns`` on gets a
    later change time, and what was read of them after ``since_ns`` may be recorded with these identities.
    A change in the same step could keep the identity unchanged ("racily clean", as git calls it)."""
    for key in keys:
        if key is not None and (
            key[3] + _granularity(key[3]) > since_ns or _granularity(key[3]) >= 1_000_000_000
        ):
            return False
    return True


def tick_passed(keys: Iterable[FileKey | None]) -> bool:
    """Wait, outside the calling thread's lane, until ``settled(keys, now)``: identities taken before this and
    contents read after it can be recorded together. False, at once or after ``TICK_WAIT``, when that does
    not come soon: a change time ahead of this machine's clock (a network file system's server) or a file
    system that keeps whole seconds only (a change in the same second would look like none)."""
    keys = list(keys)
    now = change_clock_ns()
    if settled(keys, now):
        return True
    if any(k is not None and _granularity(k[3]) >= 1_000_000_000 for k in keys):
        return False
    latest = max(k[3] + _granularity(k[3]) for k in keys if k is not None)
    if latest - now > TICK_WAIT * 1e9:
        return False
    deadline = time.monotonic() + TICK_WAIT
    with stepped_out():  # once for the whole wait: others use the CPU meanwhile
        while not settled(keys, now):
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(TICK_WAIT, (latest - now) / 1e9) + 0.0005)
            now = change_clock_ns()
    return True


def as_file_key(value: Any) -> FileKey | None:
    """A FileKey read back from JSON, or None when it is not four integers."""
    if type(value) is list and len(value) == 4:  # read for every file of a store's index: no generator
        ino, size, mtime, ctime = value
        if type(ino) is int and type(size) is int and type(mtime) is int and type(ctime) is int:
            return ino, size, mtime, ctime
    return None


def default_dir() -> Path | None:
    if os.environ.get("CERTCTL_NO_CACHE"):
        return None
    if os.environ.get("CERTCTL_CACHE_DIR"):
        return Path(os.environ["CERTCTL_CACHE_DIR"])
    return Path(
        platformdirs.user_cache_dir("certctl", appauthor=False)
    )  # XDG on Linux, %LOCALAPPDATA% on Windows


_PACKAGE = Path(__file__).resolve().parents[1]
STAMPED_SOURCES = tuple(
    _PACKAGE / rel
    for rel in ("core/spec.py", "core/domains.py", "core/model.py", "support/pki.py", "support/yamlfast.py")
)


def _code_stamp() -> str:
    """Caches are dropped whenever certctl's models change (another version, or an edited source)."""
    parts = [__version__]
    for path in STAMPED_SOURCES:
        with contextlib.suppress(OSError):
            parts.append(str(path.stat().st_mtime_ns))
    return "|".join(parts)


def untrusted_owner(st: os.stat_result) -> str | None:
    """Why a cache folder or file with these facts must not be trusted, or None (POSIX; Windows has no uid)."""
    getuid = getattr(os, "getuid", None)
    if getuid is None:
        return None
    if st.st_uid != getuid():
        return f"owned by uid {st.st_uid}, not by the running user (uid {getuid()})"
    if st.st_mode & 0o022:
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def untrusted_file(st: os.stat_result) -> str | None:
    """Why a cache file (or a store's index) with these facts must not be read, or None: it must be a
    regular file of bounded size that only the running user can write."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_size > MAX_CACHE_BYTES:
        return f"larger than {MAX_CACHE_BYTES:,} bytes"
    return untrusted_owner(st)


class JsonCache:
    """One JSON document ``{"stamp": ..., "entries": {...}}`` in ``<folder>/<name>.json``."""

    def __init__(self, folder: Path | None, name: str) -> None:
        self.path = folder / f"{name}.json" if folder else None
        self.stamp = _code_stamp()

    @staticmethod
    def name_for(kind: str, identity: str) -> str:
        return f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"

    def _folder_problem(self) -> str | None:
        assert self.path is not None
        try:
            st = os.stat(self.path.parent)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"cannot inspect it: {exc.strerror}"
        if not stat.S_ISDIR(st.st_mode):
            return "not a folder"
        return untrusted_owner(st)

    def load(self) -> dict[str, Any]:
        if self.path is None:
            return {}
        problem = self._folder_problem()
        if problem is not None:
            log.warning("cache.ignored", folder=str(self.path.parent), reason=problem)
            return {}
        try:
            fd = os.open(self.path, os.O_RDONLY | NO_FOLLOW_NO_WAIT)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            log.warning("cache.ignored", path=str(self.path), reason=exc.strerror)
            return {}
        try:
            problem = untrusted_file(os.fstat(fd))
            if problem is not None:
                log.warning("cache.ignored", path=str(self.path), reason=problem)
                return {}
            with os.fdopen(os.dup(fd), "rb") as fh:
                data = json.loads(fh.read(MAX_CACHE_BYTES + 1))
        except Exception as exc:  # noqa: BLE001 - a broken cache is only ignored
            log.warning("cache.ignored", path=str(self.path), reason=f"unreadable: {type(exc).__name__}")
            return {}
        finally:
            os.close(fd)
        if not isinstance(data, dict) or data.get("stamp") != self.stamp:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def save(self, entries: dict[str, Any]) -> None:
        if self.path is None:
            return
        try:
            created = not self.path.parent.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            if created:
                os.chmod(self.path.parent, 0o700)  # whatever the umask
            problem = self._folder_problem()
            if problem is not None:
                log.warning("cache.not_written", folder=str(self.path.parent), reason=problem)
                return
            body = json.dumps(
                {"stamp": self.stamp, "entries": entries}, separators=(",", ":"), allow_nan=False
            )
            atomic_write(self.path, body, 0o600)
        except (OSError, ValueError, TypeError) as exc:
            log.debug("cache.unwritable", path=str(self.path), error=str(exc))
