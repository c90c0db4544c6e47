"""The state dir: the vault of issued certificates, attempt history, deployment records, journal, lock.

Layout (never committed; keys 0600; every file written atomically):
  lock                          flock'ed by the process that applies
  localca/<issuer>/ca.pem, ca.key
  acme/<issuer>/...             ACME account (adapters.acme)
  vault/<certificate>/<THUMBPRINT>/cert.pem chain.pem key.pem meta.json
  vault/index.jsonl             every version's metadata in one append-only log (fast observe)
  attempts.jsonl                per certificate: failures, last error, next retry, ARI window
  deployments.jsonl             per (certificate, task): thumbprint last deployed successfully
  bindings.jsonl                IIS https bindings certctl added (host|site|bindingInformation)
  journal.jsonl                 write-ahead log of apply: intent, outcome

Every log append starts on a fresh line and is cut back off if it fails (full disk), so a torn record
never swallows the next one; a damaged line (torn, garbage, not UTF-8, the wrong shape) is skipped with
a warning naming the file and line, and the rest of the file is read as usual.
  applied.json                  the desired-state revision (git commit) the last apply carried out
  daemon.lock, notify.json      flock'ed by the one `certctl daemon`; alerts sent (reconciler.adapters.notify)
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.core.model import Attempts, IssuedVersion, Issuing, Revocation
from reconciler.ports import IssuanceGrant, Material
from reconciler.state.cache import as_file_key, file_key, tick_passed, unchanged
from reconciler.state.records import (
    attempts_from_json,
    attempts_to_json,
    info_from_json,
    info_to_json,
    revocation_from_json,
    revocation_to_json,
)
from reconciler.support import durable
from reconciler.support.fs import (
    NO_FOLLOW_NO_WAIT,
    UnsafePath,
    acquire,
    atomic_write,
    contained,
    fsync_dir,
    read_regular,
    stopped_midway,
    unlock,
    write_folder,
    write_path_problem,
)
from reconciler.support.lazy import LazyModule
from reconciler.support.logging import get_logger
from reconciler.support.parallel import locked, map_io, stepped_out

JOURNAL_ROTATE_BYTES = 8 << 20
CLEAN_MARK = "clean.json"  # written by a lock holder that finished cleanly (see ``StateDir.lock``)
MARK_MAX_BYTES = 1 << 20  # a larger one is not certctl's: nothing is vouched for
MARKED_LOGS = ("journal.jsonl", "vault/index.jsonl")  # the clean mark holds for these files as they were
RECENT_MATERIAL = 256  # versions just stored, kept for the installs that follow them
VAULT_FILES = ("cert.pem", "chain.pem", "key.pem")  # what deploying a version reads
log = get_logger()

if TYPE_CHECKING:
    from reconciler.support import pki
else:  # cryptography takes 70 ms to import; a plan of unchanged certificates never reads one
    pki = LazyModule("reconciler.support.pki")


class LockBusy(Exception):
    pass


class _Durability:
    """Group commit for the appends to one file (one inode): every append is written at once, but the
    fsync that makes it durable is shared by every append written while the previous fsync ran. A
    caller still returns only after an fsync that covers its own line, so nothing is weaker than one
    fsync per append; under concurrency (the executor's threads) a burst of appends costs two fsyncs."""

    def __init__(self, size: int) -> None:
        self.write_lock = threading.Lock()  # one writer at a time: a line is never interleaved
        self.sync_lock = threading.Lock()  # one fsync at a time; the others wait for it, then need none
        self.written = 0  # appends written (numbered from 1)
        self.synced = 0  # appends known durable
        self.durable_size = size  # the file's size covering exactly the durable appends
        self.failed_upto = 0  # appends cut back off after a failed fsync
        self.failure: OSError | None = None
        self.clean_end = -1  # the file's size after an append of this process that ended in a newline


_DURABILITY: weakref.WeakValueDictionary[tuple[int, int], _Durability] = weakref.WeakValueDictionary()
_DURABILITY_LOCK = threading.Lock()


class PendingAppend:
    """A line written to a log but not yet known durable: ``commit()`` waits for the shared fsync."""

    def __init__(
        self,
        path: Path,
        fd: int,
        state: _Durability,
        number: int,
        identity: tuple[int, int, int, int] | None = None,
    ) -> None:
        self.path, self._fd, self._state, self._number = path, fd, state, number
        self.identity = identity  # (inode, size, mtime_ns, ctime_ns) of the file once this line was written

    def commit(self) -> None:
        """Return once the line is on disk; OSError (naming the file) when it could not be, and then the
        line (and every line written with it that was not yet durable) is cut back off the file."""
        state = self._state
        try:
            with stepped_out(), state.sync_lock:
                if state.failed_upto >= self._number:
                    raise state.failure or OSError(f"cannot write {self.path}")
                if state.synced >= self._number:
                    return  # another append's fsync covered this line
                with state.write_lock:
                    target, end = state.written, os.fstat(self._fd).st_size
                try:
                    os.fsync(self._fd)
                except OSError as exc:
                    failure = OSError(exc.errno, f"cannot write {self.path}: {exc.strerror}")
                    with state.write_lock:
                        with contextlib.suppress(OSError):
                            os.ftruncate(self._fd, state.durable_size)
                        state.failed_upto, state.failure = state.written, failure
                        state.clean_end = -1
                    raise failure from None
                state.synced, state.durable_size = target, end
        finally:
            os.close(self._fd)

    def release(self) -> None:
        """Go on without waiting for the disk: the line is made durable by the next append to this file that
        is committed, by any ``durable.settle`` on its file system, or by ``flush_lazy`` (end of an apply)."""
        with _LAZY_LOCK:
            _LAZY.add(self.path)
        os.close(self._fd)


_LAZY: set[Path] = set()  # logs holding lines written without waiting for the disk
_LAZY_LOCK = threading.Lock()


def flush_lazy() -> None:
    """Make every line written without waiting (``PendingAppend.release``) durable: one fsync per log."""
    with _LAZY_LOCK:
        paths = sorted(_LAZY)
        _LAZY.clear()
    for path in paths:
        try:  # the log may have been replaced since: never through a link, never waiting on a pipe
            fd = os.open(path, os.O_RDONLY | NO_FOLLOW_NO_WAIT)
        except FileNotFoundError:
            continue
        except OSError as exc:
            log.error("state.flush.failed", file=str(path), error=exc.strerror)
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                os.fsync(fd)
        except OSError as exc:
            log.error("state.flush.failed", file=str(path), error=exc.strerror)
        finally:
            os.close(fd)


def write_line(
    path: Path, line: bytes, trust: Callable[[os.stat_result], str | None] | None = None
) -> PendingAppend:
    """Append one record, always on a fresh line, without waiting for the disk; ``commit()`` the result.

    A torn tail (a crash or a full disk mid-append) first gets its newline, so the torn record (skipped
    on reading) never swallows this one. A failed write is cut back off, so the file keeps exactly what
    it held; the error names the file.
    """
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | NO_FOLLOW_NO_WAIT
    try:
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:  # the first line of a log: make its folder (not tried before every line)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, flags, 0o600)
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise OSError(exc.errno, f"cannot write {path}: {reason}") from None
    try:
        st = os.fstat(fd)
        problem = _refusal(st, trust)
        if problem is not None:  # never into a pipe or a device; ``trust`` judges the file opened
            raise OSError(errno.EPERM, f"cannot write {path}: {problem}")
        with _DURABILITY_LOCK:
            state = _DURABILITY.get((st.st_dev, st.st_ino))
            if state is None:
                state = _DURABILITY[(st.st_dev, st.st_ino)] = _Durability(st.st_size)
        with state.write_lock:
            size = os.fstat(fd).st_size
            if size and size != state.clean_end:  # not known to end with a line of ours: look
                os.lseek(fd, size - 1, os.SEEK_SET)
                if os.read(fd, 1) != b"\n":
                    line = b"\n" + line
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view) :]
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                state.clean_end = -1
                raise OSError(exc.errno, f"cannot write {path}: {exc.strerror}") from None
            state.written += 1
            state.clean_end = size + len(line) if line.endswith(b"\n") else -1
            after = os.fstat(fd)
            return PendingAppend(
                path,
                fd,
                state,
                state.written,
                (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns),
            )
    except BaseException:
        os.close(fd)
        raise


def _refusal(st: os.stat_result, trust: Callable[[os.stat_result], str | None] | None) -> str | None:
    """Why a state log with this status (of the file opened) is neither read nor written, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return trust(st) if trust is not None else None


def append_line(path: Path, line: bytes) -> None:
    """Append one record on a fresh line and return once it is on disk (``write_line`` + ``commit``)."""
    write_line(path, line).commit()


def read_records(
    path: Path, trust: Callable[[os.stat_result], str | None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for every JSON object line of ``path``; a damaged line (torn, garbage,
    not UTF-8, not an object, nested past the parser's depth) is skipped with a warning naming the file
    and line. The file is opened without following a link and without waiting on a pipe, and must be a
    regular file; ``trust``, given the opened file's status, names a reason not to read it at all (checked
    on what was opened, so a file swapped in after an earlier look is judged, not the one looked at)."""
    try:
        fd = os.open(path, os.O_RDONLY | NO_FOLLOW_NO_WAIT)
    except FileNotFoundError:
        return
    except OSError as exc:
        damaged(
            path, 0, "a symbolic link; not read" if exc.errno == errno.ELOOP else f"not read: {exc.strerror}"
        )
        return
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        problem = _refusal(st, trust)
        if problem is not None:  # a device or a pipe would never end
            damaged(path, 0, f"{problem}; not read")
            return
        data = fh.read()
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            entry = json.loads(raw)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError included
            damaged(path, number, f"not a JSON line ({exc.__class__.__name__})")
            continue
        if not isinstance(entry, dict):
            damaged(path, number, f"a JSON {type(entry).__name__}, not an object")
            continue
        yield number, entry


def damaged(path: Path, line: int, problem: str) -> None:
    log.warning(
        "state.line.skipped",
        file=str(path),
        line=line,
        problem=problem,
        note="a damaged line of a state log (torn by a crash or a full disk, or edited); skipped",
    )


def _dt(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def version_meta(
    material: Material,
    issuer_id: str,
    domains: tuple[str, ...],
    at: datetime,
    replaced: str | None,
    *,
    issuer: str | None = None,
    issuer_note: str | None = None,
) -> dict[str, Any]:
    """The metadata of an issued version, as the vault index keeps it."""
    return {
        "info": info_to_json(material.info),
        "issuer_id": issuer_id,
        "issued_at": _iso(at),
        "domains": list(domains),
        "replaced": replaced,
        "issuer": issuer,
        "issuer_note": issuer_note,
    }


class KeyedLog:
    """An append-only JSON-lines map: each line sets (or, with value null, deletes) one key.

    One fsync'ed append per change, whatever the size of the map (a full rewrite per change would cost
    O(n) and make 10,000 issuances quadratic). The map is cached in memory and re-read only when the
    file's size or identity changed (another process wrote it). The log compacts itself, atomically,
    once it holds more than twice as many lines as live keys. A damaged line (a crash or a full disk
    mid-append, garbage, the wrong shape) is skipped with a warning: the key keeps its previous value.
    """

    def __init__(
        self,
        path: Path,
        check: Callable[[str, Any], object] | None = None,
        trust: Callable[[os.stat_result], str | None] | None = None,
    ) -> None:
        self.path = path
        self._trust = trust  # a reason not to read the file, given its status (``read_records``)
        self._check = (
            check  # raises (KeyError, TypeError, ValueError, AttributeError) on a value of the wrong shape
        )
        self._lock = threading.RLock()
        self._cache: dict[str, Any] = {}
        self._decoded: dict[str, Any] = {}  # what ``check`` returned for a value, while the value is current
        self._lines = 0
        self._seen: tuple[int, int, int, int] | None = None  # (inode, size, mtime, ctime) the cache reflects

    def _stat(self) -> tuple[int, int, int, int] | None:
        """The file's identity; its change time too, so a chmod or chown (whether it is trusted) is seen."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns

    def read(self) -> dict[str, Any]:
        with self._lock:
            self._refresh()
            return dict(self._cache)

    def get(self, key: str) -> Any:
        with self._lock:
            self._refresh()
            return self._cache.get(key)

    def written_ns(self) -> int | None:
        """The modification time of the file as last read or written (None: there is none)."""
        with self._lock:
            self._refresh()
            return self._seen[2] if self._seen is not None else None

    def read_decoded(self) -> dict[str, Any]:
        """Every live key with what ``check`` made of its value (the log's reader decodes each value once)."""
        with self._lock:
            self._refresh()
            return {key: self._decoded_value(key) for key in self._cache}

    def get_decoded(self, key: str) -> Any:
        """What ``check`` made of the value of ``key`` (None when it has none)."""
        with self._lock:
            self._refresh()
            return self._decoded_value(key) if key in self._cache else None

    def _decoded_value(self, key: str) -> Any:
        if key not in self._decoded:
            assert self._check is not None, "a log without a check has no decoded values"
            self._decoded[key] = self._check(key, self._cache[key])
        return self._decoded[key]

    def _refresh(self) -> None:
        seen = self._stat()
        if seen == self._seen and (seen is not None or not self._cache):
            return
        self._cache, self._decoded, self._lines = {}, {}, 0
        if seen is not None:
            for number, entry in read_records(self.path, self._trust):
                key, value = entry.get("k"), entry.get("v")
                if not isinstance(key, str) or "v" not in entry:
                    damaged(self.path, number, "not a {k, v} record")
                    continue
                if value is not None and self._check is not None:
                    try:
                        decoded = self._check(key, value)
                    except (KeyError, TypeError, ValueError, AttributeError) as exc:
                        damaged(self.path, number, f"the value for {key!r} has the wrong shape ({exc!r})")
                        continue
                    self._apply(entry)
                    self._decoded[key] = decoded
                    continue
                self._apply(entry)
        self._seen = seen

    def _apply(self, entry: dict[str, Any]) -> None:
        self._lines += 1
        self._decoded.pop(entry["k"], None)
        if entry.get("v") is None:
            self._cache.pop(entry["k"], None)
        else:
            self._cache[entry["k"]] = entry["v"]

    def set(self, key: str, value: Any, *, wait: bool = True) -> None:
        self.update(key, lambda _: value, wait=wait)

    def update(self, key: str, change: Callable[[Any], Any], *, wait: bool = True) -> Any:
        """Set ``key`` to ``change(its current value)`` (None: delete it) and return the new value, once on disk
        (``wait=False``: once written; see ``PendingAppend.release``).

        The read, the change and the write happen under this log's lock (no update is lost); the wait for
        the disk happens outside it, so concurrent updates share one fsync (``write_line``)."""
        with self._lock:
            self._refresh()
            value = change(self._cache.get(key))
            entry = {"k": key, "v": value}
            line = json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"
            pending = write_line(self.path, line.encode(), self._trust)
            self._apply(entry)
            if self._lines > 2 * len(self._cache) + 64:
                body = "".join(
                    json.dumps({"k": k, "v": v}, sort_keys=True, separators=(",", ":")) + "\n"
                    for k, v in self._cache.items()
                )
                atomic_write(self.path, body, 0o600)
                self._lines = len(self._cache)
                self._seen = self._stat()
            else:
                self._seen = pending.identity  # the file as this append left it (no second stat)
        if not wait:
            pending.release()
            return value
        try:
            pending.commit()
        except OSError:
            with self._lock:
                self._seen = None  # the line was cut back off: read the file again
                self._cache = {}
            raise
        return value

    def set_all(self, values: Mapping[str, Any]) -> None:
        """Set every key of ``values``, one line each, and return once all are on disk (one commit)."""
        keys = list(values)
        for key in keys[:-1]:
            self.set(key, values[key], wait=False)
        if keys:
            self.set(keys[-1], values[keys[-1]])  # its commit covers the lines written before it

    def delete(self, key: str, *, wait: bool = True) -> None:
        self.set(key, None, wait=wait)


MAX_BLOB_BYTES = 16 << 20


class FileBlobs:
    """Blobs as files of one folder (keys are file names), written atomically, 0600."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return contained(self.folder, key, "state file")

    def get(self, key: str) -> bytes | None:
        try:
            return read_regular(
                self._path(key), MAX_BLOB_BYTES
            )  # a regular file of bounded size: never a FIFO
        except FileNotFoundError:
            return None

    def create(self, key: str, value: bytes) -> bytes:
        with self._lock:
            existing = self.get(key)
            if existing is not None:
                return existing
            self.put(key, value)
            return value

    def put(self, key: str, value: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(self._path(key), value, 0o600)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()


def _adding(key: str, value: Any) -> Callable[[dict[str, Any] | None], dict[str, Any]]:
    """A change for ``KeyedLog.update`` that adds ``key: value`` to a map value."""
    return lambda current: {**(current or {}), key: value}


def _check_str(key: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError("not a string")


def _check_binding(key: str, value: Any) -> None:
    if len(key.split("|", 2)) != 3 or not isinstance(value, dict):
        raise ValueError("not host|site|binding -> {certificate, at}")


class StateDir:
    runs_locally = True  # every record is a file of this machine (see ``ActionRunner.runs_locally``)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._vault_folder = str(self.path / "vault")
        self._mutex = threading.RLock()
        self._recent: OrderedDict[tuple[str, str], Material] = OrderedDict()  # versions this process stored
        self._folder_locks: dict[str, threading.Lock] = {}
        self._lock_fd: int | None = None
        self._debris = True  # whether debris may lie about (see ``lock``); unknown without the lock: yes
        self._swept: frozenset[str] = frozenset()  # the folders the clean mark vouches for
        self._failed = False  # something failed midway since the lock was taken
        self._vault_index = KeyedLog(self.path / "vault" / "index.jsonl", self._versions)
        self._attempts = KeyedLog(self.path / "attempts.jsonl", attempts_from_json)
        self._deployments = KeyedLog(self.path / "deployments.jsonl", _check_str)
        self._bindings = KeyedLog(self.path / "bindings.jsonl", _check_binding)

    def access_problem(self) -> str | None:
        """Why the state dir (ACME account keys, the local CA, every issued key) is too open, or None."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        if hasattr(os, "geteuid") and st.st_uid not in (0, os.geteuid()):
            return f"the state dir {self.path} is owned by uid {st.st_uid}, not by the running user"
        if st.st_mode & 0o077:
            return (
                f"the state dir {self.path} can be read or entered by group or others "
                f"(mode {st.st_mode & 0o7777:04o}); it holds private keys: chmod 700 it"
            )
        return None

    def report_access(self) -> None:
        problem = self.access_problem()
        if problem is not None:
            log.warning("state_dir.too_open", path=str(self.path), problem=problem)

    # --- what a fleet shares (here: files of this state dir; a single node needs no lease) --------------

    @contextlib.contextmanager
    def issuance(self, name: str, replaces: str | None) -> Iterator[IssuanceGrant]:
        yield IssuanceGrant()  # the apply lock already keeps a second certctl of this state dir out

    def issuing(self) -> dict[str, Issuing]:
        return {}

    def blobs(self, scope: str) -> FileBlobs:
        return FileBlobs(contained(self.path, scope, "state folder"))

    def record_log(self, scope: str) -> KeyedLog:
        return KeyedLog(contained(self.path, f"{scope}.jsonl", "state file"))

    def report(self, summary: Any) -> None:
        return None  # `certctl status` reads this node's own state

    # --- lock ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, wait: float = 10.0, purpose: str = "apply") -> Iterator[None]:
        """Hold the state dir's lock; wait up to ``wait`` seconds, then raise LockBusy naming the holder."""
        fd, holder = acquire(
            self.path / "lock",
            wait,
            f"pid {os.getpid()}, {purpose} since {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        )
        if holder is not None:
            raise LockBusy(
                f"another certctl holds the lock on {self.path} ({holder}); waited {wait:g}s. "
                "Only one certctl may apply at a time; try again when it has finished."
            )
        self._lock_fd = fd
        try:
            self._debris, self._swept, self._failed = True, frozenset(), False
            midway = stopped_midway()
            self._take_clean_mark()
            yield
            if stopped_midway() != midway:  # a write left something behind, whoever caught its error
                log.info("state.clean_mark.withheld", reason="a write failed and left a temporary behind")
                self._debris = True
        except BaseException:
            self._debris = True
            raise
        finally:
            try:
                if not self._debris:
                    self._leave_clean_mark()
            finally:
                self._debris = True  # asked again without the lock: look everywhere
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                try:
                    unlock(fd)
                finally:
                    os.close(fd)
                    self._lock_fd = None

    # --- the clean mark: whether crash recovery must look through every folder ---------------------------
    #
    # Debris (temporaries of interrupted writes, a vault version without its index line) is only ever left
    # in the vault, the stores and the task folders by a holder of the lock that stopped without finishing:
    # killed, crashed, the machine lost power, or an action failed. So the holder removes ``clean.json``
    # (durably) as soon as it has the lock, and writes it back when it lets go if there can be no debris:
    # the mark was there when it took the lock, or a recovery looked everywhere since (``recovered``), and
    # nothing failed or raised after that. The mark names the folders it vouches for (those the last full
    # recovery swept); a recovery that finds it, with the journal and the vault index as it recorded them
    # (no other writer since), walks only folders it does not name. A missing, unreadable or stale mark
    # means: look everywhere.

    def _log_identities(self) -> dict[str, list[int] | None]:
        """The identity of the journal and of the vault index: a writer other than a lock holder of this
        version (an older certctl, a hand, a disk that lost a line) changes one of them."""
        out: dict[str, list[int] | None] = {}
        for name in MARKED_LOGS:
            try:
                out[name] = list(file_key(os.lstat(self.path / name)))
            except OSError:
                out[name] = None
        return out

    def _take_clean_mark(self) -> None:
        """Read the clean mark (``recovery_needed``, ``swept``), then remove it before anything is written."""
        path = self.path / CLEAN_MARK
        try:
            st = os.lstat(path)
        except OSError:
            return
        if stat.S_ISDIR(st.st_mode):
            # not certctl's: never removed; writing the mark back then fails, so recovery always looks
            log.warning("state.clean_mark.ignored", path=str(path), reason="a folder")
            return
        try:
            mark: Any = json.loads(read_regular(path, MARK_MAX_BYTES, follow=False))
        except (
            OSError,
            ValueError,
            RecursionError,
        ):  # a link, a pipe, too large, not JSON: vouches for nothing
            mark = None
        try:
            os.unlink(path)
        except OSError as exc:  # left there, it could vouch for what this holder leaves half-done
            raise OSError(
                exc.errno,
                f"cannot remove {path}: {exc.strerror} (certctl removes it before it writes anything: "
                "fix the state dir's permissions, or remove the file by hand)",
            ) from None
        try:  # gone for good before this holder writes anything: the folder's fsync (not a whole syncfs)
            fsync_dir(self.path, strict=True)
        except OSError:  # a folder that cannot be opened (Windows) or synced (EINVAL on some file systems)
            try:
                durable.settle(self.path)
            except OSError as exc:  # as durable as it gets there
                log.warning("state.clean_mark.not_synced", path=str(path), error=exc.strerror)
        swept = mark.get("swept") if isinstance(mark, dict) else None
        if (
            isinstance(swept, list)
            and all(isinstance(f, str) for f in swept)
            and mark.get("logs") == self._log_identities()
        ):
            self._debris, self._swept = False, frozenset(swept)

    def _leave_clean_mark(self) -> None:
        mark = {
            "logs": self._log_identities(),
            "swept": sorted(self._swept),
            "at": _iso(datetime.now(UTC)),
            "pid": os.getpid(),
        }
        try:
            atomic_write(self.path / CLEAN_MARK, json.dumps(mark, sort_keys=True) + "\n", 0o600)
        except OSError as exc:  # the next recovery looks everywhere
            log.warning("state.clean_mark.not_written", path=str(self.path / CLEAN_MARK), error=exc.strerror)

    def _not_removed(self, _fn: Any, path: str, error: Any) -> None:
        """``rmtree``'s error handler in recovery: logged, and the next recovery looks everywhere again."""
        log.warning("recovery.remove.failed", path=path, error=str(error[1]))
        self.mark_unclean()

    def recovery_needed(self) -> bool:
        """Whether debris may lie about (see ``lock``): False when the lock's previous holder finished cleanly."""
        return self._debris

    def swept(self) -> frozenset[str]:
        """The folders the clean mark vouches for (empty when recovery is needed)."""
        return self._swept if not self._debris else frozenset()

    def recovered(self, swept: Collection[str]) -> None:
        """A recovery looked through ``swept`` (every folder the desired state writes in) and left nothing
        behind, on disk."""
        if self._lock_fd is not None and not self._failed:
            self._debris, self._swept = False, frozenset(swept)

    def mark_unclean(self) -> None:
        """Something this lock's holder did failed midway: the next recovery looks everywhere."""
        self._debris = self._failed = True

    # --- JSON documents ----------------------------------------------------------------------------

    def _read_json(self, name: str, default: Any) -> Any:
        try:
            return json.loads((self.path / name).read_bytes())
        except FileNotFoundError:
            return default
        except (OSError, ValueError) as exc:
            log.warning(
                "state.file.unreadable",
                file=str(self.path / name),
                error=str(exc),
                note="ignored; it is written afresh by the next apply",
            )
            return default

    def _write_json(self, name: str, data: Any, mode: int = 0o600) -> None:
        atomic_write(self.path / name, json.dumps(data, indent=1, sort_keys=True) + "\n", mode)

    # --- vault ---------------------------------------------------------------------------------------

    @property
    def vault(self) -> Path:
        return self.path / "vault"

    def issued(self) -> dict[str, tuple[IssuedVersion, ...]]:
        """Every issued version, from the index log (plain JSON lines; no other cache of it is kept).
        The newest version of each certificate says which of its vault files are gone (``lost``)."""
        index: dict[str, tuple[IssuedVersion, ...]] = self._vault_index.read_decoded()
        records, written = self._vault_index.read(), self._vault_index.written_ns()
        # a stat or a listdir per certificate (from threads when the disk is cold: map_io)
        marked = map_io(lambda name: self._mark_lost(index[name], records.get(name), written), list(index))
        return dict(zip(index, marked, strict=True))

    def issued_for(self, name: str) -> tuple[IssuedVersion, ...]:
        versions = self._vault_index.get_decoded(name) or ()
        return self._mark_lost(versions, self._vault_index.get(name), self._vault_index.written_ns())

    def issued_of(self, names: Collection[str]) -> dict[str, tuple[IssuedVersion, ...]]:
        """``issued()`` for ``names`` only (a pass woken for a few certificates)."""
        return {name: versions for name in sorted(names) if (versions := self.issued_for(name))}

    def _mark_lost(
        self, versions: tuple[IssuedVersion, ...], record: Any, written: int | None
    ) -> tuple[IssuedVersion, ...]:
        """The newest version, marked with the vault files it lacks (a deleted key cannot be deployed).

        Its folder is listed, unless it still has the identity recorded in its index line when it was kept:
        a folder's identity changes whenever a name in it is made, removed or renamed. The identity was
        recorded only once the clock that stamps changes had moved past it (``store_issued``); as for a
        store's index, one not older than the index's last write is listed all the same, as a second guard."""
        if not versions:
            return versions
        newest = versions[-1]
        folder = f"{self._vault_folder}/{newest.certificate}/{newest.info.thumbprint}"
        meta = record.get(newest.info.thumbprint) if isinstance(record, dict) else None
        recorded = as_file_key(meta.get("dir")) if isinstance(meta, dict) else None
        if (
            recorded is not None
            and written is not None
            and recorded[3] < written
            and unchanged(folder, recorded)
        ):
            return versions
        try:
            present = set(os.listdir(folder))
        except OSError:
            present = set()
        lost = [f for f in VAULT_FILES if f not in present]
        if not lost:
            return versions
        return (*versions[:-1], replace(newest, lost=", ".join(lost)))

    @staticmethod
    def _versions(name: str, versions: dict[str, Any]) -> tuple[IssuedVersion, ...]:
        out = [
            IssuedVersion(
                certificate=name,
                info=info_from_json(v["info"]),
                issuer_id=v["issuer_id"],
                issued_at=datetime.fromisoformat(v["issued_at"]),
                domains=tuple(v["domains"]),
                replaced=v.get("replaced"),
                issuer=v.get("issuer"),
                issuer_note=v.get("issuer_note"),
                revocation=revocation_from_json(v.get("revoked")),
            )
            for v in versions.values()
        ]
        return tuple(sorted(out, key=lambda v: (v.issued_at, v.info.not_before)))

    def store_issued(
        self,
        name: str,
        material: Material,
        issuer_id: str,
        domains: tuple[str, ...],
        at: datetime,
        replaced: str | None,
        *,
        issuer: str | None = None,
        issuer_note: str | None = None,
    ) -> IssuedVersion:
        """Keep a newly issued certificate with its key; the index is updated last (the commit point)."""
        version = IssuedVersion(
            name, material.info, issuer_id, at, domains, replaced, issuer=issuer, issuer_note=issuer_note
        )
        meta = version_meta(
            material, issuer_id, domains, at, replaced, issuer=issuer, issuer_note=issuer_note
        )
        folder = self.write_vault_files(name, material, meta)
        with contextlib.suppress(OSError):
            # its identity, then (once the clock that stamps changes has moved past it) that it holds every
            # file: while the identity is unchanged, it still does (``issued``); a change after the lstat
            # makes the recorded identity stale, never wrong
            identity = file_key(os.lstat(folder))
            if tick_passed([identity]) and set(VAULT_FILES) <= set(os.listdir(folder)):
                meta = {**meta, "dir": list(identity)}
        # the commit point: on disk before this returns, in the same group commit as other writers' files
        self._vault_index.update(name, _adding(material.info.thumbprint, meta), wait=False)
        durable.settle(self._vault_index.path)
        with self._mutex:  # the install that follows reads it from here, not back from the disk
            self._recent[(name, material.info.thumbprint)] = material
            while len(self._recent) > RECENT_MATERIAL:
                self._recent.popitem(last=False)
        return version

    def write_vault_files(
        self, name: str, material: Material, meta: dict[str, Any] | None = None, *, if_missing: bool = False
    ) -> Path:
        """The certificate, chain, full chain, key (0600) and metadata of a version in
        ``vault/<name>/<THUMBPRINT>/``, appearing at once; with ``if_missing``, only when a file is missing."""
        folder = self.vault / name / material.info.thumbprint
        problem = write_path_problem(folder)
        if problem is not None:
            raise UnsafePath(f"refusing to keep the key of {name} in the vault: {problem}")
        files = {
            "key.pem": (material.key_pem, 0o600),
            "cert.pem": (material.cert_pem, 0o644),
            "chain.pem": (material.chain_pem, 0o644),
            "fullchain.pem": (material.fullchain_pem, 0o644),
        }
        if meta is not None:
            files["meta.json"] = (json.dumps(meta, indent=1, sort_keys=True).encode(), 0o600)
        # The version folder appears at once, complete (every file fsync'ed, then one rename): five files cost
        # five fsyncs and two of folders, not ten. One writer per folder at a time: two threads replacing the same
        # folder at once would fail (the second rename finds the first one's folder); other folders go on.
        with self._mutex:
            lock = self._folder_locks.setdefault(str(folder), threading.Lock())
        with locked(lock):
            if not (if_missing and all((folder / f).is_file() for f in files)):
                write_folder(folder, files, staging=folder.parent, mode=0o700, settle=False)
        # outside the folder's lock, so writers of other folders share this sync; also when another writer
        # made the folder, which may not be on disk yet
        durable.settle(folder)
        return folder

    def mark_revoked(self, name: str, thumbprint: str, revocation: Revocation) -> bool:
        """Record that an issued version is revoked (the plan then replaces it); False when it is unknown."""
        record = revocation_to_json(revocation)
        known = False

        def change(current: dict[str, Any] | None) -> dict[str, Any] | None:
            nonlocal known
            meta = (current or {}).get(thumbprint)
            if not isinstance(meta, dict):
                return current
            known = True
            return {**(current or {}), thumbprint: {**meta, "revoked": record}}

        if self._vault_index.get(name) is not None:
            self._vault_index.update(name, change)
        return known

    def recover_vault(self) -> tuple[int, int]:
        """Put back into the index every complete vault version it lacks (a crash before the index line, or
        a line lost to a torn write); remove incomplete ones (their issuance is redone). (reindexed, removed)"""
        if not self.vault.is_dir():
            return 0, 0
        reindexed = removed = 0
        with self._mutex:
            index = self._vault_index.read()
            for cert_dir in sorted(self.vault.iterdir()):
                if not cert_dir.is_dir() or cert_dir.name.startswith("."):
                    continue
                for version in sorted(cert_dir.iterdir()):
                    if not version.is_dir() or version.name in (index.get(cert_dir.name) or {}):
                        continue
                    meta = self._complete_version(cert_dir.name, version)
                    if meta is not None:
                        self._vault_index.update(cert_dir.name, _adding(version.name, meta))
                        reindexed += 1
                        log.warning(
                            "recovery.reindexed",
                            path=str(version),
                            note="an issued version missing from the vault index was put back",
                        )
                    else:
                        shutil.rmtree(version, onerror=self._not_removed)
                        removed += 1
                        log.info(
                            "recovery.removed",
                            path=str(version),
                            note="an issuance that never completed in the vault; it is redone",
                        )
                with contextlib.suppress(OSError):
                    cert_dir.rmdir()  # only if empty
        return reindexed, removed

    def _complete_version(self, name: str, folder: Path) -> dict[str, Any] | None:
        """The metadata of a vault version whose files are all there and agree, else None."""
        try:
            meta = json.loads((folder / "meta.json").read_bytes())
            cert = (folder / "cert.pem").read_bytes()
            if not (folder / "chain.pem").is_file() or not (folder / "fullchain.pem").is_file():
                return None
            if pki.info_from_pem(cert).thumbprint != folder.name or meta["info"]["thumbprint"] != folder.name:
                return None
            if not pki.key_matches(cert, (folder / "key.pem").read_bytes()):
                return None
            self._versions(name, {folder.name: meta})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return dict(meta)

    def material(self, name: str, thumbprint: str) -> Material:
        with self._mutex:
            recent = self._recent.get((name, thumbprint))
        if recent is not None:
            return recent
        folder = contained(self.vault, f"{name}/{thumbprint}", "vault version")
        cert = (folder / "cert.pem").read_bytes()
        return Material(
            cert,
            (folder / "chain.pem").read_bytes(),
            (folder / "key.pem").read_bytes(),
            pki.info_from_pem(cert),
        )

    def chain_kept_at(self, name: str, thumbprint: str) -> str:
        return str(self.vault / name / thumbprint / "chain.pem")

    def forget_issued(self, name: str, thumbprint: str) -> None:
        def without(versions: dict[str, Any] | None) -> dict[str, Any] | None:
            return {t: v for t, v in (versions or {}).items() if t != thumbprint} or None

        self._vault_index.update(name, without)
        with self._mutex:
            self._recent.pop((name, thumbprint), None)
        shutil.rmtree(contained(self.vault, f"{name}/{thumbprint}", "vault version"), ignore_errors=True)

    # --- attempts -----------------------------------------------------------------------------------------

    def attempts(self) -> dict[str, Attempts]:
        return {name: attempts_from_json(name, a) for name, a in self._attempts.read().items()}

    def attempts_of(self, names: Collection[str]) -> dict[str, Attempts]:
        return {name: a for name, a in self.attempts().items() if name in names}

    def save_attempts(self, attempts: Attempts) -> None:
        self._attempts.set(attempts.certificate, attempts_to_json(attempts))

    def update_attempts(self, name: str, *, wait: bool = True, **changes: Any) -> Attempts:
        """Change a certificate's attempt record (``wait=False``: without waiting for the disk, for records
        that the action's own commit or the end of the apply makes durable)."""

        def change(raw: dict[str, Any] | None) -> dict[str, Any]:
            current = attempts_from_json(name, raw) if raw else Attempts(certificate=name)
            return attempts_to_json(replace(current, **changes))

        return attempts_from_json(name, self._attempts.update(name, change, wait=wait))

    # --- deployments (script tasks, whose output cannot be observed) ----------------------------------------

    def deployments(self) -> dict[str, str]:
        return {k: str(v) for k, v in self._deployments.read().items()}

    def record_deployment(self, name: str, index: int, thumbprint: str) -> None:
        self._deployments.set(f"{name}/{index}", thumbprint)

    # --- applied revision ------------------------------------------------------------------------------------

    def record_applied(
        self, revision: str | None, directory: str, desired_fingerprint: str, ok: bool, actions: int
    ) -> None:
        """What the last apply carried out: the desired state's git commit (or None) and whether all went well."""
        self._write_json(
            "applied.json",
            {
                "at": _iso(datetime.now(UTC)),
                "revision": revision,
                "dir": directory,
                "desired_fingerprint": desired_fingerprint,
                "ok": ok,
                "actions": actions,
            },
        )

    def applied(self) -> dict[str, Any] | None:
        data = self._read_json("applied.json", None)
        return data if isinstance(data, dict) else None

    # --- IIS bindings certctl added (only these may ever be removed, with prune) -----------------------------

    def made_bindings(self) -> tuple[tuple[str, str, str], ...]:
        return tuple(sorted(tuple(k.split("|", 2)) for k in self._bindings.read()))  # type: ignore[misc]

    def record_binding(self, host: str, site: str, information: str, certificate: str) -> None:
        self._bindings.set(
            f"{host}|{site}|{information}", {"certificate": certificate, "at": _iso(datetime.now(UTC))}
        )

    def forget_binding(self, host: str, site: str, information: str) -> None:
        self._bindings.delete(f"{host}|{site}|{information}")

    # --- journal ---------------------------------------------------------------------------------------------

    def journal(self, event: str, *, wait: bool = False, **fields: Any) -> None:
        """Append one line to the journal (intent before acting, outcome after).

        Written at once, in order, but not waited for by default: the journal reports what an interrupted
        run left open, and recovery observes the world afresh, so a line needs no fsync of its own. It
        becomes durable with the action's own commit (a vault index line, a store's switch), with the next
        line that is waited for, or at the end of the apply (``flush``). ``wait``: return once on disk."""
        line = json.dumps({"at": datetime.now(UTC).isoformat(), "event": event, **fields}, sort_keys=True)
        with self._mutex:
            pending = write_line(self.path / "journal.jsonl", (line + "\n").encode())
        if wait:
            pending.commit()  # outside the mutex: concurrent actions share one fsync
        else:
            pending.release()

    def flush(self) -> None:
        """Make every state line written without waiting durable (the end of an apply)."""
        flush_lazy()

    def journal_entries(self) -> list[dict[str, Any]]:
        path = self.path / "journal.jsonl"
        out = []
        for number, entry in read_records(path):
            if isinstance(entry.get("event"), str) and isinstance(entry.get("action", ""), str):
                out.append(entry)
            else:
                damaged(path, number, "not a journal entry (event, run, action)")
        return out

    def close_unfinished(self, by: str) -> list[dict[str, Any]]:
        """Close every action a stopped process left open (intent without outcome) as ``recovered``, then
        rotate a large journal (all its entries are closed by then). Returns the entries closed."""
        entries = self.unfinished()
        for entry in entries:
            log.warning(
                "journal.recovered",
                action=entry.get("action"),
                run=entry.get("run"),
                note="a previous apply stopped during this action; what it left is observed afresh and redone",
            )
            self.journal("recovered", run=entry.get("run"), action=entry.get("action"), by=by)
        journal = self.path / "journal.jsonl"
        with contextlib.suppress(FileNotFoundError):
            if journal.stat().st_size >= JOURNAL_ROTATE_BYTES:
                os.replace(journal, journal.with_name("journal.1.jsonl"))  # one generation kept
                log.info("journal.rotated", path=str(journal))
        return entries

    def unfinished(self) -> list[dict[str, Any]]:
        """Actions whose intent is journaled without an outcome (the process died in between)."""
        open_: dict[str, dict[str, Any]] = {}
        for entry in self.journal_entries():
            key = f"{entry.get('run')}/{entry.get('action')}"
            if entry.get("event") == "intent":
                open_[key] = entry
            elif entry.get("event") in ("done", "failed", "skipped", "recovered"):
                open_.pop(key, None)
        return list(open_.values())
