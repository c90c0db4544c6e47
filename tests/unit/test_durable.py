"""Group commit for files and folders (``support.durable``): writers settle at once and share syncs, a failed
sync fails the callers it covered, a PEM store's version and links are on disk before ``current`` flips, and
the lane of local work never deadlocks on a lock."""

from __future__ import annotations

import errno
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.adapters.issuers.localca import LocalCAIssuer
from reconciler.adapters.stores.pemdir import PemDirectoryStore
from reconciler.core.spec import LocalCA
from reconciler.ports import IssueRequest
from reconciler.support import durable
from reconciler.support.fs import write_folder
from reconciler.support.parallel import Lane, locked, stepped_out

WRITERS = 8


class FakeSyncfs:
    """Stands in for syncfs(2): counts calls, and can hold the first one until every writer is waiting."""

    def __init__(self, hold_until: int = 0, fail: bool = False) -> None:
        self.calls = 0
        self.hold_until = hold_until
        self.fail = fail
        self.lock = threading.Lock()

    @staticmethod
    def _requested() -> int:
        """Settle calls made so far (every writer that is waiting for a sync has made one)."""
        return sum(system.requested for system in durable._SYSTEMS.values())

    def __call__(self, fd: int) -> int:
        with self.lock:
            self.calls += 1
            first = self.calls == 1
        if first and self.hold_until:
            give_up = time.monotonic() + 30
            while self._requested() < self.hold_until and time.monotonic() < give_up:
                time.sleep(0.005)
        if self.fail and first:
            import ctypes

            ctypes.set_errno(errno.EIO)
            return -1
        return 0


@pytest.fixture
def fresh_systems(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(durable, "_SYSTEMS", {})


def _settle_all(tmp_path: Path, fake: FakeSyncfs) -> list[BaseException | None]:
    def one(i: int) -> BaseException | None:
        path = tmp_path / f"f{i}"
        path.write_bytes(b"x")
        try:
            durable.settle(path)
        except OSError as exc:
            return exc
        return None

    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        return list(pool.map(one, range(WRITERS)))


def test_writers_settling_at_once_share_the_syncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_systems: None
) -> None:
    fake = FakeSyncfs(hold_until=WRITERS)
    monkeypatch.setattr(durable, "_SYNCFS", fake)
    assert _settle_all(tmp_path, fake) == [None] * WRITERS
    # the first sync ran while the seven others arrived; one more covered all seven
    assert fake.calls == 2


def test_a_failed_sync_fails_the_writer_it_covered_naming_its_path_and_the_next_is_tried_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_systems: None
) -> None:
    fake = FakeSyncfs(fail=True)
    monkeypatch.setattr(durable, "_SYNCFS", fake)
    (tmp_path / "one").write_bytes(b"x")
    with pytest.raises(OSError, match=r"cannot write .*one: Input/output error") as raised:
        durable.settle(tmp_path / "one")
    assert raised.value.errno == errno.EIO
    (tmp_path / "two").write_bytes(b"y")
    durable.settle(tmp_path / "two")  # a later write is settled by a new sync, which succeeds
    assert fake.calls == 2


def test_without_syncfs_each_path_and_its_folder_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable, "_SYNCFS", None)
    synced: list[str] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(durable.os, "fsync", fsync)  # type: ignore[attr-defined]
    write_folder(tmp_path / "v1", {"a": (b"1", 0o644), "b": (b"2", 0o600)}, staging=tmp_path)
    assert sorted(synced) == sorted(
        [str(tmp_path / "v1"), str(tmp_path / "v1" / "a"), str(tmp_path / "v1" / "b"), str(tmp_path)]
    )
    assert (tmp_path / "v1" / "a").read_bytes() == b"1"
    assert oct((tmp_path / "v1" / "b").stat().st_mode & 0o777) == "0o600"


def test_a_pem_store_version_and_its_links_are_settled_before_current_flips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_systems: None
) -> None:
    """What each sync covered: the first one sees the version's files and the four links, but ``current``
    not yet; the flip itself is settled before install returns."""
    folder = tmp_path / "pem" / "web"
    seen: list[tuple[bool, bool, str | None]] = []

    def syncfs(fd: int) -> int:
        versions = folder / "versions"
        complete = versions.is_dir() and any(
            all((v / f).is_file() for f in ("cert.pem", "privkey.pem", "fullchain.pem", "chain.pem"))
            for v in versions.iterdir()
            if not v.name.startswith(".")
        )
        links = all(
            (folder / f).is_symlink() for f in ("cert.pem", "privkey.pem", "fullchain.pem", "chain.pem")
        )
        current = os.readlink(folder / "current") if (folder / "current").is_symlink() else None
        seen.append((complete, links, current))
        return 0

    material = LocalCAIssuer("local", LocalCA(), tmp_path / "state").issue(
        IssueRequest("web", ("web.example.com",), "ecdsa-p256")
    )
    monkeypatch.setattr(durable, "_SYNCFS", syncfs)
    now = datetime.now(UTC)
    stored = PemDirectoryStore("pem", tmp_path / "pem").install("web", material, now)
    version = stored.ref.split("/", 1)[1]
    assert seen[0] == (True, True, None)
    assert seen[-1] == (True, True, f"versions/{version}")
    assert (folder / "fullchain.pem").read_bytes() == material.fullchain_pem


def test_a_thread_in_the_lane_waits_for_a_lock_outside_it() -> None:
    """A holds a lock and steps out of the lane (a sync); B, in the lane, wants that lock. B must wait
    outside the lane, or A could never come back into it to release the lock."""
    lane, lock = Lane(1), threading.Lock()
    a_out, b_waiting = threading.Event(), threading.Event()
    order: list[str] = []

    def a() -> None:
        with lane.held(), locked(lock):
            with stepped_out():
                a_out.set()
                b_waiting.wait(30)
            order.append("a")

    def b() -> None:
        a_out.wait(30)
        with lane.held():
            b_waiting.set()
            with locked(lock):
                order.append("b")

    threads = [threading.Thread(target=a, daemon=True), threading.Thread(target=b, daemon=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlocked"
    assert order == ["a", "b"]
