"""at_once: every item at the same time (the first in the calling thread), results in order, and a failure
raised only once every call has ended."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from reconciler.support.parallel import at_once


@pytest.mark.parametrize("with_pool", [True, False])
def test_every_item_runs_at_the_same_time_and_the_results_keep_their_order(with_pool: bool) -> None:
    items = list(range(5))
    together = threading.Barrier(len(items), timeout=10)  # broken unless all five wait at once
    where: dict[int, str] = {}

    def call(item: int) -> int:
        where[item] = threading.current_thread().name
        together.wait()
        return item * 10

    pool = ThreadPoolExecutor(8) if with_pool else None
    try:
        assert at_once(call, items, pool) == [0, 10, 20, 30, 40]
    finally:
        if pool is not None:
            pool.shutdown()
    assert where[0] == threading.current_thread().name  # the first one costs no hand-over
    assert threading.current_thread().name not in {where[i] for i in items[1:]}


def test_the_first_failure_in_order_is_raised_after_every_call_has_ended() -> None:
    release = threading.Event()
    ended: list[int] = []

    def call(item: int) -> int:
        if item == 0:
            raise ValueError("first")
        release.wait(timeout=10)
        ended.append(item)
        if item == 2:
            raise KeyError("third")
        return item

    with ThreadPoolExecutor(4) as pool:
        timer = threading.Timer(0.2, release.set)
        timer.start()
        with pytest.raises(ValueError, match="first"):
            at_once(call, [0, 1, 2], pool)
        assert sorted(ended) == [1, 2]  # nothing left running behind the caller's back
        release.set()
        timer.cancel()

        ended.clear()
        with pytest.raises(KeyError, match="third"):
            at_once(call, [1, 2, 3], pool)
        assert sorted(ended) == [1, 2, 3]


def test_one_item_or_none_runs_in_the_calling_thread() -> None:
    seen: list[str] = []

    def call(item: int) -> int:
        seen.append(threading.current_thread().name)
        return item

    assert at_once(call, [7]) == [7]
    assert seen == [threading.current_thread().name]
    assert at_once(lambda i: i, []) == []
