"""Small on-disk caches keyed by file identity (inode, size, mtime, ctime), for the second run of a big plan.

A cache is only ever an optimisation: a missing, stale, corrupt or unwritable cache is ignored.
Caches live in a folder only the user can write (0700), since they are pickles.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import structlog

from reconciler import __version__
from reconciler.support.fs import atomic_write

log = structlog.get_logger()

FileKey = tuple[int, int, int, int]


def file_key(st: os.stat_result) -> FileKey:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def default_dir() -> Path | None:
    if os.environ.get("CERTCTL_NO_CACHE"):
        return None
    if os.environ.get("CERTCTL_CACHE_DIR"):
        return Path(os.environ["CERTCTL_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or (os.path.join(os.path.expanduser("~"), ".cache"))
    return Path(base) / "certctl"


def _code_stamp() -> str:
    """Caches are dropped whenever certctl's models change (another version, or an edited source)."""
    here = Path(__file__).parent
    parts = [__version__]
    for rel in ("core/spec.py", "core/domains.py", "core/model.py", "pki.py", "yamlfast.py"):
        with contextlib.suppress(OSError):
            parts.append(str((here / rel).stat().st_mtime_ns))
    return "|".join(parts)


class PickleCache:
    def __init__(self, folder: Path | None, name: str) -> None:
        self.path = folder / f"{name}.pickle" if folder else None
        self.stamp = _code_stamp()

    @staticmethod
    def name_for(kind: str, identity: str) -> str:
        return f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"

    def load(self) -> dict[Any, Any]:
        if self.path is None:
            return {}
        try:
            with open(self.path, "rb") as fh:
                data = pickle.load(fh)  # noqa: S301 - our own file in a 0700 folder
        except FileNotFoundError:
            return {}
        except Exception as exc:  # noqa: BLE001 - a broken cache is only ignored
            log.debug("cache.unreadable", path=str(self.path), error=str(exc))
            return {}
        if not isinstance(data, dict) or data.get("stamp") != self.stamp:
            return {}
        entries = data.get("entries")
        return entries if isinstance(entries, dict) else {}

    def save(self, entries: dict[Any, Any]) -> None:
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write(self.path, pickle.dumps({"stamp": self.stamp, "entries": entries}, protocol=5), 0o600)
        except OSError as exc:
            log.debug("cache.unwritable", path=str(self.path), error=str(exc))
