"""What `certctl status --json` prints and the daemon's /status serves: one document, built in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from reconciler.core.durations import iso
from reconciler.core.model import DesiredState, ObservedState
from reconciler.core.plan import Plan
from reconciler.core.planner import plan as make_plan


def status_rows(desired: DesiredState, observed: ObservedState, at: datetime, plan: Plan | None = None) -> list[dict[str, Any]]:
    """Every certificate: the plan's summary plus its attempt history and the actions still to do."""
    plan = plan or make_plan(desired, observed, at)
    pending: dict[str, list[str]] = {}
    for action in plan.actions:
        pending.setdefault(action.certificate, []).append(action.id)
    rows = []
    for summary in plan.certificates:
        row = summary.to_json()
        attempts = observed.attempts.get(summary.name)
        row["last_attempt"] = iso(attempts.last_attempt) if attempts else None
        row["last_success"] = iso(attempts.last_success) if attempts else None
        row["pending_actions"] = pending.get(summary.name, [])
        rows.append(row)
    return rows


def status_document(desired: DesiredState, rows: list[dict[str, Any]], applied: dict[str, Any] | None,
                    at: datetime) -> dict[str, Any]:
    return {"at": iso(at), "source": {"dir": desired.directory, "revision": desired.revision},
            "applied": applied, "certificates": rows}
