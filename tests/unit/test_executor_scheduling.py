"""The executor's scheduler: dependency order, skips that cascade, bounded parallelism, stop."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from reconciler.app.executor import Executor
from reconciler.core.plan import Action, ActionKind, Plan, Reason
from reconciler.state.statedir import StateDir
from tests.scenarios.build_core import T0


def act(action_id: str, *deps: str) -> Action:
    return Action(action_id, ActionKind.deploy, action_id.split("/")[0], "t", Reason.OutputMissing, "m", deps)


def executor(tmp_path: Path, behaviour, concurrency: int = 4) -> Executor:
    world = SimpleNamespace(
        state=StateDir(tmp_path), hosts={}, issuers={}, prober=None, desired=SimpleNamespace(certificates={})
    )
    ex = Executor(world, concurrency=concurrency)  # type: ignore[arg-type]
    ex._dispatch = behaviour  # type: ignore[method-assign]
    return ex


def plan(*actions: Action) -> Plan:
    return Plan(T0, "d", None, actions, ())


def test_a_failure_skips_its_dependents_and_theirs_and_nothing_else(tmp_path: Path) -> None:
    ran: list[str] = []

    def behaviour(action: Action) -> dict[str, object]:
        ran.append(action.id)
        if action.id == "a/issue":
            raise RuntimeError("CA down")
        return {}

    result = executor(tmp_path, behaviour).run(
        plan(
            act("a/issue"),
            act("a/install", "a/issue"),
            act("a/bind", "a/install", "b/install"),
            act("b/issue"),
            act("b/install", "b/issue"),
        )
    )
    status = {o.action.id: (o.status, o.error) for o in result.outcomes}
    assert status["a/issue"] == ("failed", "CA down")
    assert status["a/install"] == ("skipped", "skipped because a/issue did not succeed")
    assert status["a/bind"] == ("skipped", "skipped because a/install did not succeed")
    assert status["b/issue"][0] == status["b/install"][0] == "done"
    assert "a/install" not in ran and "a/bind" not in ran
    assert ran.index("b/issue") < ran.index("b/install")
    assert [o.action.id for o in result.outcomes] == [
        "a/issue",
        "a/install",
        "a/bind",
        "b/issue",
        "b/install",
    ]


def test_independent_actions_run_in_parallel_up_to_the_bound(tmp_path: Path) -> None:
    lock, now, peak = threading.Lock(), [0], [0]

    def behaviour(action: Action) -> dict[str, object]:
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.05)
        with lock:
            now[0] -= 1
        return {}

    result = executor(tmp_path, behaviour, concurrency=3).run(plan(*(act(f"c{i}/issue") for i in range(9))))
    assert result.ok and peak[0] == 3


def test_a_stop_skips_what_has_not_started(tmp_path: Path) -> None:
    ex: Executor

    def behaviour(action: Action) -> dict[str, object]:
        ex.stop_requested.set()
        return {}

    ex = executor(tmp_path, behaviour, concurrency=1)
    result = ex.run(plan(act("a/issue"), act("a/install", "a/issue"), act("b/issue")))
    status = {o.action.id: o.status for o in result.outcomes}
    assert status == {"a/issue": "done", "a/install": "skipped", "b/issue": "skipped"}


def test_ctrl_c_lets_running_actions_finish_and_starts_no_other(tmp_path: Path) -> None:
    """SIGINT while actions run: run() raises KeyboardInterrupt only once the running action has finished,
    and nothing else was started."""
    started: list[str] = []
    finished: list[str] = []
    ex: Executor

    def behaviour(action: Action) -> dict[str, object]:
        started.append(action.id)
        if action.id == "a/issue":
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
            ex.stop_requested.wait(60)  # still running when the main thread has taken the interrupt
        finished.append(action.id)
        return {}

    ex = executor(tmp_path, behaviour, concurrency=1)
    with pytest.raises(KeyboardInterrupt):
        ex.run(plan(act("a/issue"), act("a/install", "a/issue"), act("b/issue")))
    assert started == finished == ["a/issue"]
