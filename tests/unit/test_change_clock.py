"""When identities (inode, size, mtime, ctime) may be recorded with what was read: only once the clock that
stamps changes has moved past their change times, so a later change always gets a new change time."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from reconciler.state import cache
from reconciler.state.cache import change_clock_ns, file_key, settled, tick_passed


def test_a_file_changed_now_is_settled_once_the_clock_has_moved_on(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    key = file_key(os.stat(path))
    assert tick_passed([key])
    assert settled([key], change_clock_ns())
    path.write_text("y")  # a change from now on gets a later change time
    assert os.stat(path).st_ctime_ns > key[3]


def test_a_change_not_earlier_than_the_reading_is_not_settled() -> None:
    now = change_clock_ns()
    assert not settled([(1, 1, now, now)], now)
    assert settled([(1, 1, now - 10**6, now - 10**6 + 1)], now)
    assert settled([None], now)


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    taken: list[float] = []
    monkeypatch.setattr(time, "sleep", taken.append)
    return taken


def test_whole_second_change_times_are_never_settled(sleeps: list[float]) -> None:
    """A file system keeping seconds only: a change later in the same second keeps the identity."""
    second = (change_clock_ns() // 10**9 - 5) * 10**9
    assert not settled([(1, 1, second, second)], change_clock_ns())
    assert not tick_passed([(1, 1, second, second)])
    assert sleeps == []  # refused, not waited out


def test_hundredths_of_a_second_are_settled_only_after_their_step() -> None:
    """FAT keeps change times in steps of 10 ms: settled only once the reading is past the whole step."""
    step = 10**7
    start = change_clock_ns() // 10**9 * 10**9 + 3 * step  # x.030 s: seven trailing zeros, no more
    assert not settled([(1, 1, start, start)], start + step - 1)
    assert settled([(1, 1, start, start)], start + step)


def test_a_change_time_far_ahead_of_this_clock_is_refused_at_once(sleeps: list[float]) -> None:
    """Another machine's clock (a network file system's server) far ahead: nothing is recorded."""
    ahead = change_clock_ns() + 3600 * 10**9 + 1
    assert not tick_passed([(1, 1, ahead, ahead)])
    assert sleeps == []


def test_a_change_time_just_ahead_is_waited_for_in_short_sleeps(sleeps: list[float]) -> None:
    """A change stamped a little after this clock's reading (a finer stamp): waited for, briefly."""
    soon = change_clock_ns() + 10**9 // 100 + 1
    tick_passed([(1, 1, soon, soon)])
    assert sleeps and all(0 < s <= cache.TICK_WAIT + 0.001 for s in sleeps)
