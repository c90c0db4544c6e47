"""Group commit of the state dir's logs: appends made at the same time share one fsync, each caller still
returns only once its own line is on disk, and a failed fsync cuts every line it covered back off."""

from __future__ import annotations

import errno
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from reconciler.state import statedir
from reconciler.state.statedir import KeyedLog, StateDir, append_line

WRITERS = 8


def _hold_first_fsync_until(
    path: Path, lines: int, monkeypatch: pytest.MonkeyPatch, fail: bool = False
) -> list[int]:
    """Patch os.fsync: the first call waits until ``path`` holds ``lines`` lines (every writer has written),
    then succeeds (or fails with ENOSPC when ``fail``); returns the list of fsync'ed fds (one per call)."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            give_up = time.monotonic() + 30
            while path.read_bytes().count(b"\n") < lines and time.monotonic() < give_up:
                time.sleep(0.005)
            if fail:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(statedir.os, "fsync", fsync)  # type: ignore[attr-defined]
    return calls


def test_appends_written_while_an_fsync_runs_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "journal.jsonl"
    log.write_bytes(b'{"k":"before","v":1}\n')
    calls = _hold_first_fsync_until(log, 1 + WRITERS, monkeypatch)
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(lambda i: append_line(log, f'{{"k":"w{i}","v":{i}}}\n'.encode()), range(WRITERS)))
    assert sorted(log.read_text().splitlines()[1:]) == sorted(
        f'{{"k":"w{i}","v":{i}}}' for i in range(WRITERS)
    )
    # the first writer's fsync ran while the seven others wrote; one more fsync made all seven durable
    assert len(calls) == 2


def test_a_failed_group_fsync_cuts_every_line_it_covered_back_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "index.jsonl"
    before = b'{"k":"kept","v":1}\n'
    log.write_bytes(before)
    keyed = KeyedLog(log)
    assert keyed.get("kept") == 1
    _hold_first_fsync_until(log, 1 + WRITERS, monkeypatch, fail=True)
    outcomes: list[BaseException | None] = []

    def set_one(i: int) -> None:
        try:
            keyed.set(f"w{i}", i)
        except OSError as exc:
            outcomes.append(exc)
        else:
            outcomes.append(None)

    threads = [threading.Thread(target=set_one, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # every writer had written when the fsync failed: each one is told, naming the file ...
    assert len(outcomes) == WRITERS and all(isinstance(o, OSError) and str(log) in str(o) for o in outcomes)
    # ... and the file holds exactly what it held before, in memory as on disk
    assert log.read_bytes() == before
    assert keyed.read() == {"kept": 1}
    assert KeyedLog(log).read() == {"kept": 1}


def test_concurrent_state_updates_lose_nothing(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        list(pool.map(lambda i: state.update_attempts(f"c{i % 4}", consecutive_failures=i), range(64)))
        list(pool.map(lambda i: state.journal("intent", run="r", action=f"a{i}"), range(64)))
    assert set(state.attempts()) == {"c0", "c1", "c2", "c3"}
    assert len(StateDir(tmp_path / "state").journal_entries()) == 64  # a fresh reader sees every line


def _count_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(statedir.os, "fsync", fsync)  # type: ignore[attr-defined]
    return calls


def test_several_records_set_at_once_cost_one_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ACME challenge journal records every challenge of an order before any is made answerable:
    all of them on disk when ``set_all`` returns, with one fsync."""
    keyed = KeyedLog(tmp_path / "challenges.jsonl")
    calls = _count_fsyncs(monkeypatch)
    keyed.set_all({"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}})
    assert len(calls) == 1
    assert KeyedLog(tmp_path / "challenges.jsonl").read() == {"a": {"n": 1}, "b": {"n": 2}, "c": {"n": 3}}


def test_a_record_not_waited_for_is_written_at_once_and_made_durable_by_the_flush(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keyed = KeyedLog(tmp_path / "challenges.jsonl")
    keyed.set("a", 1)
    statedir.flush_lazy()  # what earlier tests of this process left to flush
    calls = _count_fsyncs(monkeypatch)
    keyed.delete("a", wait=False)
    assert calls == []  # not waited for ...
    assert KeyedLog(tmp_path / "challenges.jsonl").read() == {}  # ... but written: another reader sees it
    statedir.flush_lazy()
    assert len(calls) == 1  # the end of the apply makes it durable
    statedir.flush_lazy()
    assert len(calls) == 1  # once
