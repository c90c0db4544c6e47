"""Alerts cover every failing action, not only issuance: a deployment whose reload keeps failing alerts once
after ``afterFailures`` applies, stays quiet while it keeps failing, and recovers once it succeeds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from reconciler.app.loader import load
from reconciler.app.observe import observe
from reconciler.core.notify_rules import decide, record_sent
from reconciler.core.spec import Notify
from reconciler.core.status import status_rows
from reconciler.state.statedir import StateDir
from reconciler.wiring import build
from tests.conftest import Workspace


def _rows(ws: Workspace, now: datetime) -> list:  # type: ignore[type-arg]
    desired = load(ws.desired)
    world = build(desired, StateDir(ws.state))
    return status_rows(desired, observe(world), now)


def test_a_failing_deployment_alerts_once_and_then_recovers(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate(
        "www", ["www.example.com"], extra="  tasks:\n    - files: {path: ../out/www, reload: 'exit 3'}\n"
    )
    settings = Notify(afterFailures=3)
    state: dict = {}  # type: ignore[type-arg]
    now = datetime.now(UTC)
    sent = []
    for attempt in range(1, 5):
        code, out, _ = run_cli("apply", "-d", str(ws.desired))
        assert code == 1 and "deploy/www/task/0-files" in out
        row = _rows(ws, now)[0]
        assert row.action_failures == attempt and row.consecutive_failures == 0  # issuance itself went fine
        assert row.action_error is not None and row.action_error.startswith("deploy/www/task/0-files: ")
        sends, state = decide(state, [row], settings, ["webhook"], now)
        for channel, notice in sends:
            record_sent(state, channel, notice, now)
        sent.extend(sends)
        now += timedelta(minutes=5)
    assert [(n.event, n.condition) for _, n in sent] == [("alert", "failing")], (
        "one alert, after the third failure"
    )
    assert "3 consecutive apply(s) failed to install, bind, deploy or verify it" in sent[0][1].message

    ws.certificate(
        "www", ["www.example.com"], extra="  tasks:\n    - files: {path: ../out/www, reload: 'true'}\n"
    )
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    row = _rows(ws, now)[0]
    assert (row.action_failures, row.action_error) == (0, None)
    sends, state = decide(state, [row], settings, ["webhook"], now)
    assert [(n.event, n.condition) for _, n in sends] == [("recovered", "failing")]
    assert "its actions succeed again" in sends[0][1].message
