"""Carries out a Plan: dependency order, bounded parallelism, journal, backoff, verification.

A failed action fails only what depends on it; everything else still runs.
"""

from __future__ import annotations

import contextlib
import errno
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime

import structlog

from reconciler.adapters import tasks as task_adapter
from reconciler.app.world import World
from reconciler.core.plan import ISSUANCE, Action, ActionKind, Plan
from reconciler.core.planner import current_version
from reconciler.core.policies import issuer_id
from reconciler.core.schedules import backoff
from reconciler.ports import BindingChange, Clock, IssueError, IssueRequest, Material
from reconciler.support.clock import SYSTEM
from reconciler.support.secrets import env_names

log = structlog.get_logger()

LOCAL_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})  # no backoff: nothing the CA did
VERIFY_SETTLE = 5.0  # seconds a verify endpoint may take to serve the new certificate after a reload


def recover_challenges(world: World) -> int:
    """Remove ACME challenge files and DNS records that an interrupted order left answerable."""
    removed = 0
    for issuer in world.issuers.values():
        recover = getattr(issuer, "recover_challenges", None)
        if recover is not None:
            removed += int(recover())
    return removed


@dataclass
class Outcome:
    action: Action
    status: str  # done | failed | skipped
    error: str | None = None
    seconds: float = 0.0
    result: dict[str, object] = field(default_factory=dict)


@dataclass
class ApplyResult:
    outcomes: list[Outcome]
    verify_failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.status == "done" for o in self.outcomes) and not self.verify_failures

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


class Executor:
    def __init__(self, world: World, *, concurrency: int = 8, clock: Clock = SYSTEM,
                 on_outcome: Callable[[Outcome], None] | None = None) -> None:
        self.world = world
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.on_outcome = on_outcome
        self.run_id = uuid.uuid4().hex[:12]
        self._host_locks: dict[str, threading.Lock] = {name: threading.Lock() for name in world.hosts}
        self._cert_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.stop_requested = threading.Event()
        self._secret_env = env_names(world.desired)  # never handed to reload or script commands

    # --- scheduling -----------------------------------------------------------------------------------

    def run(self, plan: Plan) -> ApplyResult:
        state = self.world.state
        state.close_unfinished(by="apply")
        actions = {a.id: a for a in plan.actions}
        outcomes: dict[str, Outcome] = {}
        # Each action waits for the count of its dependencies still open; a dependency that did not
        # succeed skips its dependents (and theirs). Linear in the plan's size.
        waiting: dict[str, int] = {}
        dependents: dict[str, list[str]] = {}
        for action in plan.actions:
            deps = [d for d in action.depends_on if d in actions]
            waiting[action.id] = len(deps)
            for dep in deps:
                dependents.setdefault(dep, []).append(action.id)
        ready = deque(a.id for a in plan.actions if waiting[a.id] == 0)

        def settle(outcome: Outcome) -> None:
            self._finish(outcome, outcomes)
            for child in dependents.get(outcome.action.id, ()):
                if child in outcomes:
                    continue
                if outcome.status != "done":
                    settle(Outcome(actions[child], "skipped", f"skipped because {outcome.action.id} did not succeed"))
                else:
                    waiting[child] -= 1
                    if waiting[child] == 0:
                        ready.append(child)

        running: dict[Future[Outcome], str] = {}
        with ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="certctl-apply") as pool:
            while ready or running:
                # At most one action per worker in flight: waiting on every queued future at each
                # completion would cost O(actions) per completion, O(actions²) per apply.
                while ready and len(running) < self.concurrency:
                    action = actions[ready.popleft()]
                    if self.stop_requested.is_set():
                        settle(Outcome(action, "skipped", "skipped: certctl is stopping"))
                    else:
                        running[pool.submit(self._run_one, action)] = action.id
                if running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        running.pop(future)
                        settle(future.result())
        result = ApplyResult([outcomes[a.id] for a in plan.actions])
        result.verify_failures = self._verify(plan, result)
        return result

    def _finish(self, outcome: Outcome, outcomes: dict[str, Outcome]) -> None:
        outcomes[outcome.action.id] = outcome
        if outcome.status == "skipped":
            try:
                self.world.state.journal("skipped", run=self.run_id, action=outcome.action.id, error=outcome.error)
            except OSError as exc:  # nothing was started, so nothing is left open
                log.error("journal.write.failed", action=outcome.action.id, error=str(exc))
            log.warning("action.skipped", action=outcome.action.id, reason=outcome.error)
        if self.on_outcome:
            self.on_outcome(outcome)

    def _run_one(self, action: Action) -> Outcome:
        if self.stop_requested.is_set():  # queued in the pool before the stop: never started
            return Outcome(action, "skipped", "skipped: certctl is stopping")
        state = self.world.state
        started = time.monotonic()
        try:  # the intent is the write-ahead record: without it, the action must not start
            state.journal("intent", run=self.run_id, action=action.id, kind=action.kind.value,
                          certificate=action.certificate)
        except OSError as exc:
            return self._failed(action, started, f"not started: the journal could not record it ({exc})")
        log.info("action.started", action=action.id, kind=action.kind.value, certificate=action.certificate)
        try:
            result = self._dispatch(action) or {}
        except Exception as exc:  # noqa: BLE001 - every failure becomes this action's outcome
            message = str(exc) or exc.__class__.__name__
            try:
                state.journal("failed", run=self.run_id, action=action.id, error=message)
            except OSError as write_error:  # left open: the next run closes it as recovered
                message += f" (and the journal could not record the failure: {write_error})"
            return self._failed(action, started, message)
        seconds = time.monotonic() - started
        try:
            state.journal("done", run=self.run_id, action=action.id,
                          **{k: v for k, v in result.items() if isinstance(v, str)})
        except OSError as exc:  # left open: the next run observes what it did and redoes what is missing
            return self._failed(action, started, f"carried out, but the journal could not record it ({exc}); "
                                "the next run checks its result")
        log.info("action.applied", action=action.id, kind=action.kind.value, certificate=action.certificate,
                 seconds=round(seconds, 3), **{k: v for k, v in result.items() if isinstance(v, str)})
        return Outcome(action, "done", None, seconds, result)

    def _failed(self, action: Action, started: float, message: str) -> Outcome:
        seconds = time.monotonic() - started
        log.error("action.failed", action=action.id, kind=action.kind.value, certificate=action.certificate,
                  error=message, seconds=round(seconds, 3))
        return Outcome(action, "failed", message, seconds)

    def _dispatch(self, action: Action) -> dict[str, object] | None:
        if action.kind in ISSUANCE:
            return self._issue(action)
        if action.kind is ActionKind.install:
            return self._install(action)
        if action.kind is ActionKind.deploy:
            return self._deploy(action)
        if action.kind is ActionKind.cleanup:
            return self._cleanup(action)
        if action.kind in (ActionKind.bind, ActionKind.rebind, ActionKind.unbind):
            return self._bind(action)
        raise RuntimeError(f"unknown action kind {action.kind}")

    # --- actions ------------------------------------------------------------------------------------------

    def _cert_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._cert_locks.setdefault(name, threading.Lock())

    def _issue(self, action: Action) -> dict[str, object]:
        name = action.certificate
        desired = self.world.desired
        spec = desired.certificates[name].spec
        issuer_name = spec.issuer
        backend = self.world.issuers[issuer_name]
        state = self.world.state
        with self._cert_lock(name):  # never two orders for one certificate
            current = current_version(state.issued_for(name))
            key_pem = None
            if (spec.key.reuse and current is not None and current.lost is None
                    and current.info.key_algorithm == spec.key.algorithm.value):
                key_pem = state.material(name, current.info.thumbprint).key_pem
            now = self.clock.now()
            state.update_attempts(name, last_attempt=now)
            replaces_pem = None  # the certificate being renewed, for ACME ARI `replaces` (same CA only)
            if current is not None and current.issuer_id == issuer_id(issuer_name, desired.issuers[issuer_name].spec):
                with contextlib.suppress(OSError, ValueError):
                    replaces_pem = state.material(name, current.info.thumbprint).cert_pem
            request = IssueRequest(
                certificate=name, domains=tuple(spec.domains), key_algorithm=spec.key.algorithm.value,
                key_pem=key_pem, replaces=current.info if current else None, at=now, replaces_pem=replaces_pem,
            )
            try:
                material = backend.issue(request)
            except IssueError as exc:
                self._record_failure(name, str(exc), exc.retry_after)
                raise
            except OSError as exc:
                if exc.errno not in LOCAL_DISK_ERRORS:
                    self._record_failure(name, f"{exc.__class__.__name__}: {exc}", None)
                raise  # a full or read-only disk is not the CA's fault: retried at once, once there is room
            except Exception as exc:
                self._record_failure(name, f"{exc.__class__.__name__}: {exc}", None)
                raise
            version = state.store_issued(
                name, material, issuer_id(issuer_name, desired.issuers[issuer_name].spec), tuple(spec.domains),
                self.clock.now(), current.info.thumbprint if current else None,
            )
            state.update_attempts(name, consecutive_failures=0, last_success=self.clock.now(), last_error=None,
                                  next_retry=None, ari_window_start=None, ari_window_end=None, ari_for=None)
        return {"thumbprint": version.info.thumbprint, "not_after": version.info.not_after.isoformat()}

    def _record_failure(self, name: str, message: str, retry_after: datetime | None) -> None:
        state = self.world.state
        failures = state.attempts().get(name)
        count = (failures.consecutive_failures if failures else 0) + 1
        next_retry = self.clock.now() + backoff(count)
        if retry_after is not None and retry_after > next_retry:
            next_retry = retry_after
        state.update_attempts(name, consecutive_failures=count, last_error=message, next_retry=next_retry)

    def _material(self, action: Action) -> Material:
        """The certificate an action installs: the one the plan named, or the newest issued (after issuance)."""
        state = self.world.state
        thumbprint = action.details.get("thumbprint")
        if thumbprint is None:
            current = current_version(state.issued_for(action.certificate))
            if current is None:
                raise RuntimeError(f"certificate {action.certificate} has not been issued")
            thumbprint = current.info.thumbprint
        return state.material(action.certificate, str(thumbprint))

    def _install(self, action: Action) -> dict[str, object]:
        store_name = action.target.split("/", 1)[1]
        material = self._material(action)
        stored = self.world.stores[store_name].install(action.certificate, material, self.clock.now())
        return {"thumbprint": material.info.thumbprint, "ref": stored.ref}

    def _deploy(self, action: Action) -> dict[str, object]:
        index = int(action.target.split("/", 1)[1].split("-", 1)[0])
        spec = self.world.desired.certificates[action.certificate].spec
        task = spec.tasks[index]
        material = self._material(action)
        folder = self.world.state.vault / action.certificate / material.info.thumbprint
        task_adapter.deploy(action.certificate, index, task, spec, material, folder, self._secret_env)
        self.world.state.record_deployment(action.certificate, index, material.info.thumbprint)
        return {"thumbprint": material.info.thumbprint}

    def _cleanup(self, action: Action) -> dict[str, object]:
        detail = action.details
        store = self.world.stores[str(detail["store"])]
        store.remove(str(detail["ref"]))
        return {"thumbprint": str(detail["thumbprint"])}

    def _bind(self, action: Action) -> dict[str, object]:
        detail = action.details
        host_name = str(detail["host"])
        thumbprint = detail.get("thumbprint")
        if thumbprint is None and action.kind is not ActionKind.unbind:
            thumbprint = self._material(action).info.thumbprint
        change = BindingChange(
            op=str(detail["op"]),
            site=str(detail["site"]),
            protocol=str(detail.get("protocol", "https")),
            information=str(detail["binding"]),
            ssl_flags=int(str(detail.get("ssl_flags", 0))),
            thumbprint=str(thumbprint) if thumbprint else None,
            store=str(detail.get("store", "WebHosting")),
            old_thumbprint=str(detail["old_thumbprint"]) if detail.get("old_thumbprint") else None,
        )
        with self._host_locks.setdefault(host_name, threading.Lock()):
            if change.op == "add":  # recorded first: a crash after the commit must not make it look foreign
                self.world.state.record_binding(host_name, change.site, change.information, action.certificate)
            try:
                self.world.hosts[host_name].apply([change])
            except Exception:
                if change.op == "add" and not self._binding_exists(host_name, change):
                    self.world.state.forget_binding(host_name, change.site, change.information)
                raise
            if change.op == "remove":
                self.world.state.forget_binding(host_name, change.site, change.information)
        return {"thumbprint": str(thumbprint) if thumbprint else ""}

    def _binding_exists(self, host_name: str, change: BindingChange) -> bool:
        try:
            host = self.world.hosts[host_name].observe()
        except Exception:  # noqa: BLE001 - cannot tell: keep the record (it only allows a later prune)
            return True
        return any(b.information == change.information and b.protocol == change.protocol
                   for s in host.sites if s.name == change.site for b in s.bindings)

    # --- verification ------------------------------------------------------------------------------------------

    def _verify(self, plan: Plan, result: ApplyResult) -> list[str]:
        """After a certificate's actions succeeded, check each verify endpoint serves the current certificate."""
        prober = self.world.prober
        failures: list[str] = []
        touched = {o.action.certificate for o in result.outcomes if o.status == "done"}
        failed = {o.action.certificate for o in result.outcomes if o.status != "done"}
        for name in sorted(touched - failed):
            spec = self.world.desired.certificates.get(name)
            if spec is None or not spec.spec.verify or prober is None:
                continue
            current = current_version(self.world.state.issued_for(name))
            if current is None:
                continue
            for v in spec.spec.verify:
                sni = v.sni or spec.spec.domains[0].removeprefix("*.")
                # A reload is asynchronous (nginx, IIS): probe again for a few seconds before calling it a mismatch.
                settle = time.monotonic() + min(VERIFY_SETTLE, v.timeout.total_seconds())
                problem: Exception | None = None
                while True:
                    try:
                        served = prober.probe(v.endpoint, sni, v.timeout.total_seconds()).thumbprint
                    except Exception as exc:  # noqa: BLE001
                        served, problem = None, exc
                    if served == current.info.thumbprint or time.monotonic() >= settle:
                        break
                    time.sleep(0.2)
                if served is None:
                    failures.append(f"verify/{name}: {v.endpoint} (SNI {sni}) could not be probed: {problem}")
                    continue
                if served != current.info.thumbprint:
                    failures.append(f"verify/{name}: {v.endpoint} (SNI {sni}) serves {served[:8]}, "
                                    f"expected the new certificate {current.info.thumbprint[:8]}")
                else:
                    log.info("verify.ok", certificate=name, endpoint=v.endpoint, sni=sni, thumbprint=served)
        for f in failures:
            log.error("verify.failed", detail=f)
        return failures
