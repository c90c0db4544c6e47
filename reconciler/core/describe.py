"""One certificate in full (`certctl status NAME`, `certctl describe NAME`) and the monitoring check
(`certctl status --check`). Pure: the plan, the observed state, task runs from the journal and the time
are parameters."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.core.durations import format_duration, iso
from reconciler.core.iis_rules import entry_key, normalize_key
from reconciler.core.model import DesiredState, ObservedState
from reconciler.core.plan import CertState, Plan
from reconciler.core.spec import Task
from reconciler.core.status import StatusRow

# Nagios plugin exit codes
OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
SEVERITY = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


@dataclass(frozen=True, slots=True)
class TaskRun:
    """The last time a deployment task ran (from the apply journal)."""

    at: str
    result: str  # done | failed
    error: str | None = None


def days_left(not_after: datetime | None, at: datetime) -> float | None:
    if not_after is None:
        return None
    return round((not_after - at) / timedelta(days=1), 1)


def _task_target(task: Task) -> str:
    if task.files is not None:
        return task.files.path
    if task.pfx is not None:
        return task.pfx.path
    if task.ccs is not None:
        return task.ccs.path
    assert task.script is not None
    command = task.script.command
    return command if isinstance(command, str) else " ".join(command)


def describe(
    desired: DesiredState,
    observed: ObservedState,
    plan: Plan,
    name: str,
    at: datetime,
    task_runs: Mapping[int, TaskRun],
) -> dict[str, Any]:
    """Everything about one certificate, as JSON data (rendered by ``core.render.describe_lines``)."""
    named = desired.certificates[name]
    spec = named.spec
    summary = next(c for c in plan.certificates if c.name == name)
    attempts = observed.attempts.get(name)
    first = spec.issuers[0]
    issuer = desired.issuers[first].spec
    versions = observed.issued.get(name, ())
    current = next((v for v in versions if v.info.thumbprint == summary.thumbprint), None)
    thumbprint = summary.thumbprint
    renewal = spec.renewal or desired.settings.renewal
    stores = []
    for store_name in spec.stores:
        store = desired.stores[store_name].spec
        where = (
            f"{store.pemDirectory.path}/{name}"
            if store.pemDirectory is not None
            else f"{store.windows.host}: Cert:\\LocalMachine\\{store.windows.name.value}"
            if store.windows
            else ""
        )
        observed_store = observed.stores.get(store_name)
        found = (
            [c for c in observed_store.certs if c.info.thumbprint == thumbprint]
            if observed_store is not None and thumbprint
            else []
        )
        holds = (
            "current"
            if any(c.current and not c.drift for c in found)
            else (found[0].drift or "holds it, not as the live version")
            if found
            else "lacks the current certificate"
        )
        stores.append({"name": store_name, "where": where, "holds": holds})
    bindings = []
    for target in spec.iis:
        host = observed.hosts.get(target.host)
        served: list[dict[str, Any]] = []
        if host is not None and thumbprint:
            entries = {(e.kind, normalize_key(e.kind, e.key)): e for e in host.httpsys}
            for site in host.sites:
                for b in site.bindings:
                    if b.protocol.lower() == "https" and not b.parse_error:
                        entry = entries.get(entry_key(b))
                        if entry is not None and (entry.certhash or "").upper() == thumbprint:
                            served.append({"site": site.name, "binding": b.label})
                if site.ftp_cert_hash and site.ftp_cert_hash.upper() == thumbprint:
                    served.append({"site": site.name, "binding": "ftp ssl"})
        bindings.append(
            {
                "host": target.host,
                "mode": target.mode.value,
                "site": target.site,
                "reachable": host.reachable if host is not None else False,
                "serving": served,
            }
        )
    tasks = []
    for index, task in enumerate(spec.tasks):
        state = observed.tasks.get((name, index))
        run = task_runs.get(index)
        tasks.append(
            {
                "index": index,
                "kind": task.kind,
                "target": _task_target(task),
                "deployed": state.thumbprint if state else None,
                "problem": state.problem if state else None,
                "last_run": {"at": run.at, "result": run.result, "error": run.error} if run else None,
            }
        )
    next_attempt = summary.deferred_until or (
        summary.renew_at if summary.renew_at and summary.renew_at > at else None
    )
    return {
        "name": name,
        "file": named.source.file,
        "state": summary.state.value,
        "reason": summary.reason,
        "domains": list(spec.domains),
        "issuer": {
            "name": first,
            "fallbacks": list(spec.issuers[1:]),
            "kind": "acme" if issuer.acme is not None else "localCA",
            "directory": issuer.acme.directoryUrl if issuer.acme is not None else None,
        },
        "key": {"algorithm": spec.key.algorithm.value, "reuse": spec.key.reuse},
        "renewal": (
            f"{renewal.lifetimePercent}% of lifetime"
            if renewal.lifetimePercent is not None
            else f"{format_duration(renewal.beforeExpiry)} before expiry"
            if renewal.beforeExpiry
            else ""
        ),
        "thumbprint": thumbprint,
        "serial": current.info.serial if current else None,
        "not_before": iso(current.info.not_before) if current else None,
        "not_after": iso(summary.not_after),
        "days_left": days_left(summary.not_after, at),
        "renew_at": iso(summary.renew_at),
        "next_attempt": iso(next_attempt),
        "consecutive_failures": summary.consecutive_failures,
        "last_attempt": iso(attempts.last_attempt) if attempts else None,
        "last_success": iso(attempts.last_success) if attempts else None,
        "last_error": summary.last_error,
        "stores": stores,
        "bindings": bindings,
        "tasks": tasks,
        "verify": [{"endpoint": v.endpoint, "sni": v.sni} for v in spec.verify],
        "pending_actions": [{"id": a.id, "reason": a.message} for a in plan.actions if a.certificate == name],
        "notes": [n.message for n in plan.notes if n.certificate == name],
        "revision": desired.revision,
    }


def check(
    rows: Sequence[StatusRow], at: datetime, warning_window: timedelta
) -> tuple[int, list[tuple[int, str]]]:
    """Nagios-style: (exit code, one (severity, line) per problem), worst first.

    CRITICAL: expired; no certificate while issuance fails; expiring within ``warning_window``.
    WARNING: renewal overdue (its point passed, not renewed yet); deferred after failures; not issued yet.
    """
    problems: list[tuple[int, str]] = []
    for r in rows:
        left = f"{days_left(r.not_after, at)} days left" if r.not_after else ""
        if r.state is CertState.expired or (r.not_after is not None and r.not_after <= at):
            problems.append((CRITICAL, f"{r.name}: expired {iso(r.not_after)}"))
        elif r.not_after is not None and r.not_after - at <= warning_window:
            problems.append(
                (
                    CRITICAL,
                    f"{r.name}: expires {iso(r.not_after)} ({left}), within the warning window "
                    f"of {format_duration(warning_window)}"
                    + (f"; last error: {r.last_error}" if r.last_error else ""),
                )
            )
        elif r.thumbprint is None and r.consecutive_failures:
            problems.append(
                (
                    CRITICAL,
                    f"{r.name}: no certificate, issuance failing ({r.consecutive_failures} "
                    f"failure(s)): {r.last_error}",
                )
            )
        elif r.state is CertState.deferred:
            problems.append(
                (
                    WARNING,
                    f"{r.name}: renewal deferred until {iso(r.deferred_until)} after "
                    f"{r.consecutive_failures} failure(s) ({left}): {r.last_error}",
                )
            )
        elif r.state is CertState.due:
            problems.append(
                (WARNING, f"{r.name}: renewal overdue since {iso(r.renew_at)} ({r.reason}; {left})")
            )
        elif r.state is CertState.outdated:
            problems.append(
                (WARNING, f"{r.name}: no longer matches its spec, reissue pending ({r.reason}; {left})")
            )
        elif r.state is CertState.missing:
            problems.append((WARNING, f"{r.name}: not issued yet"))
    problems.sort(key=lambda p: -p[0])
    return (problems[0][0] if problems else OK), problems
