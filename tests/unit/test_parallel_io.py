"""map_io: many small file-system calls stay in the calling thread while they do not wait, and go to
threads once they do (a cold page cache)."""

from __future__ import annotations

import threading
import time

import pytest

from reconciler.support import parallel


@pytest.fixture(autouse=True)
def _parallel_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CERTCTL_NO_PARALLEL", raising=False)


def test_calls_that_never_wait_all_run_in_the_calling_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # calls that never wait: all their wall time is CPU time (a real clock pair would count the moments
    # another process takes this core as waiting, and a busy machine would make this test flaky)
    monkeypatch.setattr(time, "thread_time", time.perf_counter)
    threads: set[str] = set()

    def fast(item: int) -> int:
        threads.add(threading.current_thread().name)
        return item * 2

    items = list(range(2000))
    assert parallel.map_io(fast, items) == [i * 2 for i in items]
    assert threads == {threading.current_thread().name}


def test_calls_that_wait_go_to_threads_after_the_first_batch_and_keep_their_order() -> None:
    where: dict[int, str] = {}

    def waiting(item: int) -> int:
        time.sleep(0.0002)  # 64 of these: well over the millisecond that says "waiting for the disk"
        where[item] = threading.current_thread().name
        return item + 1

    items = list(range(600))
    assert parallel.map_io(waiting, items) == [i + 1 for i in items]
    first = [where[i] for i in range(parallel.IO_PROBE)]
    assert set(first) == {threading.current_thread().name}
    rest = {where[i] for i in range(parallel.IO_PROBE, len(items))}
    assert rest and all(name.startswith("certctl-fs") for name in rest)
    assert len(rest) > 1


def test_an_exception_is_raised_once_every_chunk_has_finished() -> None:
    finished: list[int] = []

    def failing(item: int) -> int:
        time.sleep(0.0002)
        if item == 300:
            raise RuntimeError("boom")
        finished.append(item)
        return item

    with pytest.raises(RuntimeError, match="boom"):
        parallel.map_io(failing, list(range(600)))
    count = len(finished)
    assert 599 in finished and 0 in finished  # the other chunks ran to their end before the raise
    time.sleep(0.05)
    assert len(finished) == count  # and nothing was left running behind the caller's back
