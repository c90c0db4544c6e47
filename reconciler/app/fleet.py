"""Fleet use cases: report a node's pass to the database, wait for another node's issuance, show the fleet."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from reconciler.app.world import World
from reconciler.core.fleet import ISSUING_ELSEWHERE, fleet_document, merged_report, node_report
from reconciler.core.model import ObservedState
from reconciler.core.plan import Plan
from reconciler.ports import BackendUnavailable, StateBackend
from reconciler.state.statedir import StateDir, version_meta
from reconciler.support.logging import get_logger

log = get_logger()

WAIT_POLL = 0.25


def is_fleet(state: StateBackend) -> bool:
    return hasattr(state, "fleet")


def report_pass(
    world: World, plan: Plan, observed: ObservedState, at: datetime, focus: frozenset[str] | None = None
) -> None:
    """Tell the fleet what this node serves (a database that is away only costs a warning). A pass focused
    on a few certificates updates them in the node's last full report (none yet: the next full pass reports)."""
    if not is_fleet(world.state):
        return
    report = node_report(world.desired, observed, plan, at, world.state.applied())
    if focus is not None:
        previous = world.state.reported  # type: ignore[attr-defined]
        if previous is None:
            return
        report = merged_report(previous, report, focus)
    try:
        world.state.report(report)
    except BackendUnavailable as exc:
        log.warning("fleet.report.failed", error=str(exc))


def waiting_for(plan: Plan) -> list[str]:
    """The certificates whose issuance another node holds (this node installs them once they land)."""
    return sorted({n.certificate for n in plan.notes if n.code == ISSUING_ELSEWHERE and n.certificate})


def wait_for_others(state: StateBackend, names: Iterable[str], timeout: float) -> bool:
    """Wait until no other node holds a live issuance lease on any of ``names``; False on timeout."""
    wanted = set(names)
    deadline = time.monotonic() + timeout
    while wanted & set(state.issuing()):
        if time.monotonic() > deadline:
            return False
        time.sleep(WAIT_POLL)
    return True


def fleet_status(state: StateBackend) -> dict[str, Any]:
    """`certctl status --fleet`: every node that reported, and which nodes serve which versions."""
    now, nodes, newest = state.fleet()  # type: ignore[attr-defined]
    return fleet_document(now, nodes, newest)


def import_state_dir(source: StateDir, target: Any, issuers: Iterable[str]) -> dict[str, int]:
    """Copy a state dir into the database (``certctl backend import``): local CAs and ACME accounts of
    ``issuers``, every issued version with its key, and the attempt history. Nothing is reissued; what is
    already in the database stays (a CA or account of the same issuer name from another import is kept,
    and reported)."""
    counts = {"versions": 0, "already": 0, "attempts": 0, "blobs": 0, "kept": 0}
    target.ready()
    for issuer in sorted(issuers):
        for scope, files in (
            (f"localca/{issuer}", ("ca.key", "ca.pem")),
            (f"acme/{issuer}", ("account.key", "account.json")),
        ):
            local = source.blobs(scope)
            shared = target.blobs(scope)
            for key in files:
                value = local.get(key)
                if value is None:
                    continue
                if shared.create(key, value) == value:
                    counts["blobs"] += 1
                else:
                    counts["kept"] += 1
                    log.warning(
                        "backend.import.kept",
                        what=f"{scope}/{key}",
                        note="the database already holds another one (imported from another node); "
                        "it is kept and this one is not imported",
                    )
    for name, versions in sorted(source.issued().items()):
        for version in versions:
            if version.lost is not None:
                log.warning(
                    "backend.import.skipped",
                    certificate=name,
                    thumbprint=version.info.thumbprint,
                    note=f"its vault files are gone ({version.lost}); not imported",
                )
                continue
            material = source.material(name, version.info.thumbprint)
            meta = version_meta(
                material, version.issuer_id, version.domains, version.issued_at, version.replaced
            )
            if target.import_version(name, material, meta):
                counts["versions"] += 1
            else:
                counts["already"] += 1
    for attempts in source.attempts().values():
        target.save_attempts(attempts)
        counts["attempts"] += 1
    return counts
