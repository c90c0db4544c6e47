"""Where each certificate stands: typed status rows for `certctl status`, /status, metrics and alerts."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from reconciler.core.durations import iso
from reconciler.core.model import DesiredState, ObservedState
from reconciler.core.plan import CertState, CertSummary, Plan
from reconciler.core.planner import plan as make_plan

READY_CONDITIONS = ("True", "False", "Unknown")


@dataclass(frozen=True, slots=True)
class StatusRow(CertSummary):
    """One certificate: the plan's summary, plus its attempt history and the actions still to do."""

    last_attempt: datetime | None = None
    last_success: datetime | None = None
    pending_actions: tuple[str, ...] = ()
    action_failures: int = 0  # consecutive applies in which an install, bind, deploy or verify failed
    action_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **CertSummary.to_json(self),
            "last_attempt": iso(self.last_attempt),
            "last_success": iso(self.last_success),
            "pending_actions": list(self.pending_actions),
            "action_failures": self.action_failures,
            "action_error": self.action_error,
        }


def status_rows(
    desired: DesiredState, observed: ObservedState, at: datetime, plan: Plan | None = None
) -> list[StatusRow]:
    """Every certificate of ``plan`` (planned now when not given), in the plan's order."""
    plan = plan or make_plan(desired, observed, at)
    pending: dict[str, list[str]] = {}
    for action in plan.actions:
        pending.setdefault(action.certificate, []).append(action.id)
    rows = []
    for s in plan.certificates:
        attempts = observed.attempts.get(s.name)
        summary = {f.name: getattr(s, f.name) for f in fields(CertSummary)}
        rows.append(
            StatusRow(
                **summary,
                last_attempt=attempts.last_attempt if attempts else None,
                last_success=attempts.last_success if attempts else None,
                pending_actions=tuple(pending.get(s.name, ())),
                action_failures=attempts.action_failures if attempts else 0,
                action_error=attempts.action_error if attempts else None,
            )
        )
    return rows


def status_document(
    desired: DesiredState, rows: list[StatusRow], applied: dict[str, Any] | None, at: datetime
) -> dict[str, Any]:
    """What `certctl status --json` prints and the daemon's /status serves."""
    return {
        "at": iso(at),
        "source": {"dir": desired.directory, "revision": desired.revision},
        "applied": applied,
        "certificates": [r.to_json() for r in rows],
    }


def ready_condition(row: StatusRow, now: datetime) -> str:
    """cert-manager's Ready condition: True while a valid certificate matching the spec is in place."""
    if (
        row.state in (CertState.missing, CertState.expired, CertState.outdated, CertState.revoked)
        or not row.thumbprint
    ):
        return "False"
    if row.not_after is None:
        return "False"
    return "True" if row.not_after > now else "False"
