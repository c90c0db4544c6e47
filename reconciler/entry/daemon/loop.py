"""The daemon's loop: wait for a reason (a file change, a timer, a due time, a signal), run one pass
(``reconciler.app.reconcile.reconcile_once``) under the apply lock, report it (metrics, /status, alerts)."""

from __future__ import annotations

import contextlib
import os
import queue
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from reconciler.app.executor import Executor, Outcome
from reconciler.app.reconcile import reconcile_once
from reconciler.app.world import World
from reconciler.core.durations import iso
from reconciler.core.fleet import focused, node_view
from reconciler.core.model import DesiredState
from reconciler.core.schedules import next_due
from reconciler.core.status import StatusRow, status_document, status_rows
from reconciler.entry.daemon.desired import DesiredInForce
from reconciler.entry.daemon.metrics import DEFAULT_ADDRESS, HttpEndpoint, Metrics
from reconciler.entry.daemon.options import DaemonOptions
from reconciler.entry.daemon.schedule import Schedule
from reconciler.entry.daemon.signals import SignalRelay
from reconciler.entry.daemon.watch import watch
from reconciler.ports import BackendUnavailable, Clock, StateBackend
from reconciler.state.statedir import LockBusy
from reconciler.support import logging
from reconciler.support.clock import SYSTEM
from reconciler.support.fs import acquire
from reconciler.support.logging import get_logger
from reconciler.wiring import node_name

log = get_logger()

EXIT_OK, EXIT_ERROR = 0, 1
LOCK_WAIT = 5.0  # seconds a pass waits for a `certctl apply` that holds the apply lock
BUSY_RETRY = 5.0  # then it tries again this much later
ERROR_RETRY = 30.0  # a pass that failed as a whole is retried after this long (or the interval, if shorter)
RELOAD_REASONS = frozenset({"start", "files", "sighup", "interval"})
BACKEND_RETRY_FIRST, BACKEND_RETRY_MAX = 1.0, 30.0  # seconds: backoff while the database is unavailable


FLEET_VERSION = "fleet:"  # an event "fleet:<certificate>": the database announced a new version of it


def fleet_event(payload: str) -> str:
    """The loop's event for a notice on the fleet channel: ``version:<certificate>`` names the certificate
    (a focused pass); anything else (``reconnected``: notices may have been missed) asks for a full pass."""
    kind, _, name = payload.partition(":")
    return f"{FLEET_VERSION}{name}" if kind == "version" and name else "fleet"


def focus_of(reasons: set[str]) -> frozenset[str] | None:
    """The certificates a pass may focus on: when new versions are its only reason, their names."""
    names = frozenset(r[len(FLEET_VERSION) :] for r in reasons if r.startswith(FLEET_VERSION))
    return names if names and len(names) == len(reasons) else None


class DaemonBusy(Exception):
    pass


def hold_daemon_lock(state_path: Path, directory: Path, clock: Clock = SYSTEM) -> int:
    """flock ``<state>/daemon.lock`` for the life of the process (the OS releases it on any exit, even kill -9)."""
    fd, holder = acquire(
        state_path / "daemon.lock",
        0,
        f"pid {os.getpid()}, daemon since "
        f"{clock.now().strftime('%Y-%m-%dT%H:%M:%SZ')}, desired state {directory}",
    )
    if holder is not None:
        raise DaemonBusy(
            f"another certctl daemon is already running on the state dir {state_path} ({holder}); "
            "only one daemon may run per state dir. Stop it first (systemctl stop certctl, or kill that pid)."
        )
    return fd


class Daemon:
    def __init__(self, options: DaemonOptions, clock: Clock = SYSTEM) -> None:
        self.options = options
        self.dir = options.directory
        self.clock = clock
        self.metrics = Metrics()
        self.events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stop = threading.Event()
        self.started_at = clock.now()
        self.desired = DesiredInForce(self.dir, clock, self.metrics, view=lambda d: node_view(d, self.node))
        self.state: StateBackend | None = None
        self._world: World | None = None
        self._world_key: str | None = None
        self.fingerprint = ""
        self.executor: Executor | None = None
        self.last: dict[str, Any] = {"ok": False, "error": "starting: no reconcile has completed yet"}
        self.status_doc: dict[str, Any] = {}
        self.git: dict[str, Any] | None = None
        self.passes = 0  # started
        self.completed = 0  # finished (what /status and /healthz count)
        self.schedule = Schedule(interval=300.0, maintenance_interval=86400.0)
        self._watch_stop = threading.Event()
        self.node = node_name(options.node)
        self.backend_failures = 0  # consecutive passes the state backend (database) was unavailable
        # each certificate's status row after the last pass (None until a full pass has succeeded)
        self.rows: dict[str, StatusRow] | None = None

    @property
    def stopping(self) -> bool:
        return self.stop.is_set()

    # --- settings ---------------------------------------------------------------------------------------

    def _settings_to_schedule(self) -> None:
        """The intervals in force now: an edited reconcileInterval counts at once."""
        settings = self.desired.current.settings if self.desired.current else None
        self.schedule.interval = (
            settings.reconcileInterval if settings else timedelta(minutes=5)
        ).total_seconds()
        self.schedule.maintenance_interval = (
            settings.maintenanceInterval if settings else timedelta(hours=24)
        ).total_seconds()

    @property
    def git_pull_enabled(self) -> bool:
        return bool(
            self.options.git_pull
            or (self.desired.current is not None and self.desired.current.settings.gitPull)
        )

    # --- start --------------------------------------------------------------------------------------------

    def run(self) -> int:
        from reconciler.wiring import open_state, state_dir_for

        self.desired.reload()
        state_path = state_dir_for(self.dir, self.desired.current, self.options.state_dir)
        try:
            hold_daemon_lock(state_path, self.dir, self.clock)
            self.state = open_state(self.desired.current, state_path, self.node)
        except (DaemonBusy, BackendUnavailable) as exc:
            sys.stderr.write(f"certctl: {exc}\n")
            return EXIT_ERROR
        self.state.report_access()
        self.desired.state_dir_problem = self._state_dir_problem
        if self.desired.current is not None and (problem := self._state_dir_problem(self.desired.current)):
            self.desired.current = None
            self.desired.invalid([problem])
        try:
            endpoint = self._endpoint()
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"certctl: {exc}\n")
            return EXIT_ERROR
        SignalRelay(
            on_hup=lambda: self.events.put("sighup"),
            on_stop=self._on_stop,
            stop_grace=self.options.stop_grace,
            exit_code=EXIT_OK,
        ).install()
        watcher = threading.Thread(
            target=watch,
            args=(self.dir, self.state.path, lambda: self.events.put("files"), self._watch_stop),
            name="certctl-watch",
            daemon=True,
        )
        watcher.start()
        listen = getattr(self.state, "listen", None)
        if listen is not None:  # fleet: a new version in the database wakes this daemon at once
            listen(lambda payload: self.events.put(fleet_event(payload)), self._watch_stop)
        log.info(
            "daemon.started",
            node=self.node,
            dir=str(self.dir),
            state_dir=str(state_path),
            pid=os.getpid(),
            metrics=endpoint.address if endpoint else None,
            git_pull=self.git_pull_enabled,
        )
        self._settings_to_schedule()
        self.schedule.start(time.monotonic())
        try:
            self._loop({"start"})
        finally:
            self._watch_stop.set()
            if endpoint:
                endpoint.stop()
        log.info("daemon.stopped", passes=self.completed)
        return EXIT_OK

    def _endpoint(self) -> HttpEndpoint | None:
        settings = self.desired.current.settings.metrics if self.desired.current else None
        if self.options.no_metrics or (
            settings is not None and not settings.enabled and not self.options.metrics_address
        ):
            return None
        address = self.options.metrics_address or (settings.address if settings else DEFAULT_ADDRESS)
        try:
            endpoint = HttpEndpoint(address, self.metrics, self.health, self.status)
        except (OSError, ValueError) as exc:
            raise OSError(
                f"cannot serve metrics on {address}: {exc} (use --metrics-address HOST:PORT, or --no-metrics)"
            ) from None
        endpoint.start()
        return endpoint

    def _on_stop(self, signal_name: str) -> None:
        log.info(
            "daemon.stopping", signal=signal_name, note="the running actions finish; the others are skipped"
        )
        self.stop.set()
        executor = self.executor
        if executor is not None:
            executor.stop_requested.set()
        self.events.put("stop")

    # --- the loop -------------------------------------------------------------------------------------------

    def _loop(self, reasons: set[str]) -> None:
        while not self.stopping:
            self._settings_to_schedule()
            maintenance = self.schedule.take(reasons, time.monotonic(), self.clock.now())
            if reasons:
                self.reconcile(reasons, maintenance)
                reasons = set()
                if self.stopping:
                    break
            try:
                reason = self.events.get(timeout=self._timeout())
            except queue.Empty:
                continue
            reasons.add(reason)
            with contextlib.suppress(queue.Empty):
                while True:  # take everything that is waiting: one pass answers them all
                    reasons.add(self.events.get_nowait())
            reasons.discard("stop")

    def _timeout(self) -> float:
        return self.schedule.timeout(time.monotonic(), self.clock.now())

    # --- one pass -------------------------------------------------------------------------------------------

    def reconcile(self, reasons: set[str], maintenance: bool) -> None:
        self.passes += 1
        started = time.monotonic()
        logging.loaded().contextvars.bind_contextvars(reconcile=self.passes)
        focus = focus_of(reasons) if self.rows is not None and not maintenance else None
        names = sorted(r[len(FLEET_VERSION) :] for r in reasons if r.startswith(FLEET_VERSION))
        reasons = {("fleet" if r.startswith(FLEET_VERSION) else r) for r in reasons}
        log.info(
            "reconcile.started",
            reasons=sorted(reasons),
            maintenance=maintenance,
            **({"certificates": names} if names else {}),
            **({"focused": True} if focus is not None else {}),
        )
        if focus is None:  # a focused pass does not answer a full pass's retry
            self.schedule.retry_at = None
        try:
            if self.git_pull_enabled and reasons & {"start", "interval", "sighup"}:
                self._git_pull()
            if reasons & RELOAD_REASONS or self.desired.current is None:
                self.desired.reload()
            if self.desired.current is None:
                self._finish(started, ok=False, error="no valid desired state to reconcile")
                return
            failed = self._pass(self.desired.current, maintenance, focus)
        except LockBusy as exc:
            self.schedule.retry_at = time.monotonic() + BUSY_RETRY
            log.warning("reconcile.busy", error=str(exc), retry_in=BUSY_RETRY)
            self._finish(started, ok=False, error=str(exc))
        except BackendUnavailable as exc:  # what is installed keeps being served; retried with backoff
            self.backend_failures += 1
            delay = min(
                BACKEND_RETRY_MAX,
                BACKEND_RETRY_FIRST * 2 ** (self.backend_failures - 1),
                self.schedule.interval,
            )
            self.schedule.retry_at = time.monotonic() + delay
            log.error(
                "reconcile.backend_unavailable",
                error=str(exc),
                retry_in=delay,
                note="everything installed stays as it is; the pass is retried",
            )
            self._finish(started, ok=False, error=str(exc))
        except OSError as exc:  # the state dir or a store (a full disk, a mark it cannot remove): its message
            # names the file and what to do; retried, and logged once per try without a traceback, as the CLI does
            delay = min(ERROR_RETRY, self.schedule.interval)
            self.schedule.retry_at = time.monotonic() + delay
            log.error("reconcile.failed", error=str(exc), retry_in=delay)
            self._finish(started, ok=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a pass that breaks is reported and retried, never fatal
            self.schedule.retry_at = time.monotonic() + min(ERROR_RETRY, self.schedule.interval)
            log.exception("reconcile.failed", error=str(exc))
            self._finish(started, ok=False, error=f"{exc.__class__.__name__}: {exc}")
        else:
            self.backend_failures = 0
            self._finish(started, ok=True, failed=failed)
        finally:
            logging.loaded().contextvars.unbind_contextvars("reconcile")

    def _finish(self, started: float, ok: bool, error: str | None = None, failed: int = 0) -> None:
        seconds = time.monotonic() - started
        self.completed += 1
        self.metrics.reconciles.inc()
        self.metrics.duration.observe(seconds)
        if not ok or failed:
            self.metrics.errors.inc()
        if ok:
            self.metrics.last_success.set(time.time())
        self.last = {
            "ok": ok,
            "at": iso(self.clock.now()),
            "seconds": round(seconds, 3),
            "error": error,
            "failed_actions": failed,
        }
        nxt = self._timeout()
        self.metrics.next_due.set(time.time() + nxt)
        due = self.schedule.due
        log.info(
            "reconcile.finished",
            ok=ok,
            seconds=round(seconds, 3),
            failed_actions=failed,
            error=error,
            next_in=round(nxt, 3),
            next_due=iso(due) if due else None,
        )

    def _world_for(self, desired: DesiredState) -> World:
        from reconciler.wiring import build

        self.fingerprint = self.desired.fingerprint(desired)
        key = f"{self.fingerprint}/{desired.revision}"
        if self._world is None or key != self._world_key:
            assert self.state is not None
            self._world = build(desired, self.state)
            self._world_key = key
        return self._world

    def _pass(self, desired: DesiredState, maintenance: bool, focus: frozenset[str] | None = None) -> int:
        assert self.state is not None
        world = self._world_for(desired)

        def count(outcome: Outcome) -> None:
            self.metrics.actions.labels(kind=outcome.action.kind.value, result=outcome.status).inc()

        def running(executor: Executor | None) -> None:
            self.executor = executor

        with self.state.lock(wait=LOCK_WAIT, purpose="daemon reconcile"):
            result = reconcile_once(
                world,
                clock=self.clock,
                maintenance=maintenance,
                stopping=self.stop,
                desired_fingerprint_now=self.fingerprint,
                on_outcome=count,
                on_executor=running,
                focus=focus,
            )
            fresh = status_rows(
                desired if focus is None else focused(desired, focus), result.observed, result.at, result.plan
            )
            applied_doc = self.state.applied()
        if focus is None or self.rows is None:
            self.rows = {row.name: row for row in fresh}
        else:  # the other certificates' rows stay as the last full pass left them
            self.rows.update((row.name, row) for row in fresh)
        rows = [self.rows[name] for name in sorted(self.rows)]
        notify = desired.settings.notify
        warning = notify.expiryWarning if (notify.webhook or notify.email) else None
        due = next_due(result.plan, result.observed, result.at, warning)
        if focus is not None and self.schedule.due is not None:  # the others' due times still hold
            due = min(self.schedule.due, due) if due is not None else self.schedule.due
        self.schedule.due = due
        self.metrics.certificates(rows, result.at)
        self.metrics.revision(desired.revision)
        self.status_doc = status_document(desired, rows, applied_doc, result.at)
        if notify.webhook or notify.email:
            self._notify(desired, rows, result.at)
        return result.failed

    def _notify(self, desired: DesiredState, rows: list[StatusRow], now: datetime) -> None:
        from reconciler.adapters.notify import Notifier

        assert self.state is not None
        notifier = Notifier(
            self.state.path,
            on_result=lambda c, e, r: self.metrics.notifications.labels(channel=c, event=e, result=r).inc(),
        )
        try:
            notifier.process(
                desired.settings.notify, rows, {"dir": desired.directory, "revision": desired.revision}, now
            )
        except Exception as exc:  # noqa: BLE001 - alerts never stop reconciliation
            log.error("notify.error", error=str(exc))

    # --- desired state and git -----------------------------------------------------------------------------

    def _state_dir_problem(self, desired: DesiredState) -> str | None:
        from reconciler.wiring import state_dir_for

        assert self.state is not None
        wanted = state_dir_for(self.dir, desired, self.options.state_dir)
        if Path(wanted).resolve() == self.state.path.resolve():
            return None
        return (
            f"Settings.stateDir now points at {wanted}, but this daemon runs on the state dir "
            f"{self.state.path}; restart certctl daemon to move to another state dir"
        )

    def _git_pull(self) -> None:
        from reconciler.support.git import pull

        result = pull(self.dir)
        self.git = {
            "ok": result.ok,
            "at": iso(self.clock.now()),
            "revision": result.after,
            "message": result.message,
        }
        if result.ok:
            if result.changed:
                log.info("git.pulled", before=result.before, after=result.after)
            else:
                log.debug("git.up_to_date", revision=result.after)
        else:
            self.metrics.git_errors.inc()
            log.error(
                "git.pull.failed",
                error=result.message,
                revision=result.before,
                note="the checked-out revision stays in force",
            )

    # --- what the HTTP endpoint shows ------------------------------------------------------------------------

    def _daemon_doc(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": iso(self.started_at),
            "passes": self.completed,
            "running": self.passes > self.completed,
            "last_reconcile": self.last,
            "next_due": iso(self.schedule.due) if self.schedule.due else None,
            "desired_state": self.desired.doc(),
            "git": self.git,
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = bool(self.last.get("ok")) and self.desired.valid
        reason = None
        if not self.last.get("ok"):
            reason = self.last.get("error")
        elif self.desired.error is not None:
            reason = (
                f"the desired state is invalid ({len(self.desired.error['errors'])} problem(s)); "
                "the last valid one stays in force"
            )
        return ok, {"status": "ok" if ok else "unhealthy", "reason": reason, **self._daemon_doc()}

    def status(self) -> dict[str, Any]:
        doc = (
            dict(self.status_doc)
            if self.status_doc
            else {
                "at": iso(self.clock.now()),
                "source": {"dir": str(self.dir), "revision": None},
                "applied": None,
                "certificates": [],
            }
        )
        doc["daemon"] = self._daemon_doc()
        return doc


def run_daemon(options: DaemonOptions) -> int:
    return Daemon(options).run()
