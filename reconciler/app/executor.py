"""Carries out a Plan: dependency order, bounded parallelism, the journal, then verification.

What each kind of action does is ``reconciler.app.actions``; verification is ``reconciler.app.verify``.

A failed action fails only what depends on it; everything else still runs.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from reconciler.app.actions import ActionRunner
from reconciler.app.verify import verify
from reconciler.app.world import World
from reconciler.core.plan import (
    ISSUANCE,
    Action,
    Plan,
)
from reconciler.ports import Clock
from reconciler.support.clock import SYSTEM
from reconciler.support.logging import get_logger
from reconciler.support.parallel import Lane

log = get_logger()


@contextlib.contextmanager
def _interrupts_held() -> Iterator[None]:
    """Hold SIGINT back from the calling thread for a moment (POSIX); it is delivered when this ends."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        yield
        return
    before = mask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, before)


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
    def __init__(
        self,
        world: World,
        *,
        concurrency: int = 8,
        clock: Clock = SYSTEM,
        on_outcome: Callable[[Outcome], None] | None = None,
    ) -> None:
        self.world = world
        self.concurrency = max(1, concurrency)
        self.clock = clock
        self.on_outcome = on_outcome
        self.run_id = uuid.uuid4().hex[:12]
        self.actions = ActionRunner(world, clock)
        self.stop_requested = threading.Event()
        self.lane = Lane(1)  # local actions: one at a time on the CPU; their waits for the disk overlap

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
        # The workers take ready actions themselves (no thread hands them out, so an action costs no
        # wake-up of a dispatcher); the bookkeeping below happens under ``cond``.
        cond = threading.Condition()
        running = ended = 0
        failures: list[BaseException] = []

        def settle(outcome: Outcome) -> None:
            self._finish(outcome, outcomes)
            for child in dependents.get(outcome.action.id, ()):
                if child in outcomes:
                    continue
                if outcome.status != "done":
                    settle(
                        Outcome(
                            actions[child], "skipped", f"skipped because {outcome.action.id} did not succeed"
                        )
                    )
                else:
                    waiting[child] -= 1
                    if waiting[child] == 0:  # first in line: a certificate reaches its stores as soon
                        ready.appendleft(child)  # as it is issued, not after every other issuance

        def work() -> None:
            nonlocal ended
            try:
                take_actions()
            finally:
                with cond:
                    ended += 1
                    cond.notify_all()

        def take_actions() -> None:
            nonlocal running
            while True:
                with cond:
                    while not ready and running and not failures:
                        cond.wait()
                    if not ready or failures:
                        cond.notify_all()
                        return  # nothing left that can become ready
                    action = actions[ready.popleft()]
                    if self.stop_requested.is_set():
                        settle(Outcome(action, "skipped", "skipped: certctl is stopping"))
                        continue
                    running += 1
                try:
                    outcome = self._run_one(action)
                except BaseException as exc:  # noqa: BLE001 - _run_one reports failures itself; this is a bug
                    outcome = self._failed(action, time.monotonic(), f"{exc.__class__.__name__}: {exc}")
                with cond:
                    running -= 1
                    try:
                        settle(outcome)
                    except BaseException as exc:  # noqa: BLE001 - e.g. the outcome callback: raised below
                        failures.append(exc)
                    cond.notify_all()

        workers = [
            threading.Thread(target=work, name=f"certctl-apply-{i}")
            for i in range(min(self.concurrency, len(plan.actions)) if ready else 0)
        ]
        begun = 0

        def all_ended() -> None:  # not Thread.join: after a Ctrl-C, it may return for a running thread
            with cond:
                while ended < begun:
                    cond.wait()

        try:
            with _interrupts_held():  # a Ctrl-C during the starts comes once every started worker is counted
                for worker in workers:
                    worker.start()
                    begun += 1
            all_ended()
        except BaseException:  # Ctrl-C: the running actions finish, the others are skipped, then it stops
            self.stop_requested.set()
            all_ended()
            raise
        if failures:
            raise failures[0]
        for action in plan.actions:  # never ready (cannot happen in a plan, whose actions form no cycle)
            if action.id not in outcomes:
                self._finish(Outcome(action, "skipped", "skipped: its dependencies never finished"), outcomes)
        try:
            state.flush()  # the journal and records written without waiting for the disk
        except OSError as exc:
            log.error("state.flush.failed", error=str(exc))
        result = ApplyResult([outcomes[a.id] for a in plan.actions])
        result.verify_failures = verify(
            self.world,
            [o.action.certificate for o in result.outcomes if o.status == "done"],
            [o.action.certificate for o in result.outcomes if o.status != "done"],
        )
        self._record_action_health(result)
        return result

    def _record_action_health(self, result: ApplyResult) -> None:
        """Count, per certificate, the consecutive applies in which an install, bind, deploy or verify failed
        (alerts use it as they use issuance failures); an apply in which they all succeeded resets it."""
        failed: dict[str, str] = {}
        succeeded: set[str] = set()
        for o in result.outcomes:
            if o.action.kind in ISSUANCE:
                continue
            if o.status == "failed":
                failed.setdefault(o.action.certificate, f"{o.action.id}: {o.error}")
            elif o.status == "done":
                succeeded.add(o.action.certificate)
        for name in sorted(succeeded | set(failed)):
            problem = next((f for f in result.verify_failures if f.startswith(f"verify/{name}: ")), None)
            if problem is not None:
                failed.setdefault(name, problem)
        state = self.world.state
        try:
            known = state.attempts()
            for name, error in sorted(failed.items()):
                seen = known.get(name)
                state.update_attempts(
                    name, action_failures=(seen.action_failures if seen else 0) + 1, action_error=error
                )
            for name in sorted(succeeded - set(failed)):
                seen = known.get(name)
                if seen is not None and seen.action_failures:
                    state.update_attempts(name, action_failures=0, action_error=None)
        except OSError as exc:  # a full disk: the count waits for the next apply
            log.error("attempts.write.failed", error=str(exc))

    def _finish(self, outcome: Outcome, outcomes: dict[str, Outcome]) -> None:
        outcomes[outcome.action.id] = outcome
        if outcome.status == "skipped":
            try:
                self.world.state.journal(
                    "skipped", run=self.run_id, action=outcome.action.id, error=outcome.error
                )
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
            state.journal(
                "intent",
                run=self.run_id,
                action=action.id,
                kind=action.kind.value,
                certificate=action.certificate,
            )
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
        said: dict[str, Any] = {k: v for k, v in result.items() if isinstance(v, str)}
        try:
            state.journal("done", run=self.run_id, action=action.id, **said)
        except OSError as exc:  # left open: the next run observes what it did and redoes what is missing
            return self._failed(
                action,
                started,
                f"carried out, but the journal could not record it ({exc}); the next run checks its result",
            )
        log.info(
            "action.applied",
            action=action.id,
            kind=action.kind.value,
            certificate=action.certificate,
            seconds=round(seconds, 3),
            **{k: v for k, v in result.items() if isinstance(v, str)},
        )
        return Outcome(action, "done", None, seconds, result)

    def _failed(self, action: Action, started: float, message: str) -> Outcome:
        seconds = time.monotonic() - started
        self.world.state.mark_unclean()  # it may have stopped midway: the next recovery looks everywhere
        log.error(
            "action.failed",
            action=action.id,
            kind=action.kind.value,
            certificate=action.certificate,
            error=message,
            seconds=round(seconds, 3),
        )
        return Outcome(action, "failed", message, seconds)

    def _dispatch(self, action: Action) -> dict[str, object] | None:
        if self.actions.runs_locally(action):  # one at a time on the CPU; their waits for the disk overlap
            with self.lane.held():
                return self.actions.carry_out(action)
        return self.actions.carry_out(action)
