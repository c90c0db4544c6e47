"""One reconcile pass, the same for `certctl apply` and the daemon: observe, plan, apply, record.

``apply_plan`` carries out a plan and records what was applied (the CLI shows it, with a saved plan or
after a question); ``reconcile_once`` is the daemon's whole pass: recover and look for revoked
certificates in their issuers' CRLs (on maintenance passes),
observe, plan, apply everything but cleanup (cleanup only on maintenance passes), observe again and plan
again, so what it reports is what is still to do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

from reconciler.app.executor import ApplyResult, Executor, Outcome
from reconciler.app.fleet import report_pass
from reconciler.app.observe import observe, observe_current
from reconciler.app.recovery import recover
from reconciler.app.revocation import check_revocations
from reconciler.app.world import World
from reconciler.core.fleet import focused, only_for
from reconciler.core.model import ObservedState
from reconciler.core.plan import Plan, without_cleanup
from reconciler.core.planner import desired_fingerprint
from reconciler.core.planner import plan as make_plan
from reconciler.ports import Clock
from reconciler.support.logging import get_logger

log = get_logger()


def sync_accounts(world: World) -> None:
    """Bring each ACME account's contact in line with its Issuer's ``email`` (never fatal: logged, retried on
    the next apply, and done anyway before the next order)."""
    for name, issuer in sorted(world.issuers.items()):
        sync = getattr(issuer, "sync_account", None)
        if sync is None:
            continue
        try:
            sync()
        except Exception as exc:  # noqa: BLE001
            log.warning("acme.account.contact_not_updated", issuer=name, error=str(exc) or repr(exc))


def apply_plan(
    world: World,
    plan: Plan,
    *,
    clock: Clock,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_executor: Callable[[Executor | None], None] | None = None,
) -> ApplyResult:
    """Carry out ``plan`` and record it as the last apply (a record that cannot be written fails the apply)."""
    executor = Executor(
        world, concurrency=world.desired.settings.concurrency, clock=clock, on_outcome=on_outcome
    )
    if on_executor is not None:
        on_executor(executor)
    try:
        result = executor.run(plan)
    finally:
        if on_executor is not None:
            on_executor(None)
    try:
        world.state.record_applied(
            world.desired.revision,
            world.desired.directory,
            plan.desired_fingerprint or desired_fingerprint(world.desired),
            result.ok,
            len(plan.actions),
        )
    except OSError as exc:
        result.verify_failures.append(f"the record of this apply could not be written: {exc}")
    return result


@dataclass(frozen=True)
class PassResult:
    plan: Plan  # planned after the pass: what is still to do
    observed: ObservedState
    at: datetime
    applied: ApplyResult | None  # None when there was nothing to do (or a stop was requested)
    failed: int  # failed or skipped actions, and failed verifications

    @property
    def ran(self) -> int:
        return len(self.applied.outcomes) if self.applied is not None else 0


def reconcile_once(
    world: World,
    *,
    clock: Clock,
    maintenance: bool,
    stopping: threading.Event,
    desired_fingerprint_now: str,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_executor: Callable[[Executor | None], None] | None = None,
    focus: frozenset[str] | None = None,
) -> PassResult:
    """The daemon's pass. Call it holding the apply lock.

    With ``focus`` (fleet: a pass woken by the database's notice of new versions of these certificates)
    the pass observes, plans and applies only those certificates, their Stores, IIS hosts and tasks; it
    is never a maintenance pass, and it reports only what changed for them."""
    if focus is not None:
        world = world.narrowed(focused(world.desired, focus))
        maintenance = False
    desired = world.desired

    def planned(observed: ObservedState, at: datetime) -> Plan:
        made = make_plan(desired, observed, at)
        return made if focus is None else only_for(made, focus)

    if maintenance:
        recover(world)
        check_revocations(
            world, clock.now()
        )  # daily: a certificate its CA has revoked is renewed in this pass
    if focus is None:
        sync_accounts(world)
        observed = observe_current(world, clock.now(), locked=True)
    else:  # renewal windows and accounts are the full passes' business
        observed = observe(world, only=focus)
        log.info(
            "reconcile.focused",
            certificates=sorted(desired.certificates),
            stores=sorted(world.stores),
            hosts=sorted(world.hosts),
            versions_read=sorted(observed.issued),
            stored=sorted({c.managed_by or "" for s in observed.stores.values() for c in s.certs}),
        )
    at = clock.now()
    plan = planned(observed, at)
    todo = plan if maintenance else without_cleanup(plan)
    previous = world.state.applied() or {}
    if not todo.actions or stopping.is_set():
        if (
            previous.get("revision") != desired.revision
            or previous.get("desired_fingerprint") != desired_fingerprint_now
        ):
            world.state.record_applied(desired.revision, desired.directory, desired_fingerprint_now, True, 0)
        report_pass(world, plan, observed, at, focus)
        return PassResult(plan, observed, at, None, 0)
    log.info(
        "apply.started", actions=len(todo.actions), summary={k: v for k, v in todo.summary().items() if v}
    )

    def stop_aware(executor: Executor | None) -> None:
        if executor is not None and stopping.is_set():
            executor.stop_requested.set()
        if on_executor is not None:
            on_executor(executor)

    todo = replace(todo, desired_fingerprint=desired_fingerprint_now)
    result = apply_plan(world, todo, clock=clock, on_outcome=on_outcome, on_executor=stop_aware)
    failed = result.count("failed") + result.count("skipped") + len(result.verify_failures)
    log.info(
        "apply.finished",
        done=result.count("done"),
        failed=result.count("failed"),
        skipped=result.count("skipped"),
        verify_failures=len(result.verify_failures),
    )
    observed = observe(world, only=focus)
    at = clock.now()
    after = planned(observed, at)
    report_pass(world, after, observed, at, focus)
    return PassResult(after, observed, at, result, failed)
