"""certctl daemon: keep the world converged with the desired state, continuously.

When it reconciles (one pass = load if needed, observe, plan, apply, observe again, report):
  * at start;
  * when a ``*.yaml``/``*.yml`` file below the desired-state directory changes (watchfiles, debounced);
  * every ``reconcileInterval`` (default 5m): git pull (if enabled), reload, and a full pass, which
    also repairs drift (a binding changed by hand, a deleted task output);
  * exactly at the next due time: the earliest renewal point, retry time, expiry or expiry-warning
    time of any certificate, so a certificate that lives 30 s is renewed on time without polling;
  * at once on SIGHUP.

Every pass runs every planned action except ``cleanup``: removals of superseded certificates wait
for a maintenance pass (at start, then every ``maintenanceInterval``, default 24h), which also
recovers from a crash (see ``reconciler.app.recovery``).

An edit that makes the desired state invalid is reported (log ``desired_state.invalid``, /status,
/healthz 503, metric ``certctl_desired_state_valid 0``) and the last valid desired state stays in
force: renewals go on, nothing is removed or changed because of the broken edit.

One daemon per state dir (``<state>/daemon.lock``); the apply lock (``<state>/lock``) is taken per
pass, so `certctl apply`/`renew` can still run between passes. SIGTERM/SIGINT: the running
actions finish, the others are skipped, exit 0; if they take longer than ``CERTCTL_STOP_TIMEOUT``
seconds (default 30) the daemon exits anyway, and the next start recovers from the journal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from reconciler.app.loader import InvalidDesiredState, load
from reconciler.app.recovery import recover
from reconciler.core.durations import iso
from reconciler.core.model import DesiredState
from reconciler.core.plan import ActionKind, Plan
from reconciler.core.planner import desired_fingerprint
from reconciler.core.planner import plan as make_plan
from reconciler.core.schedules import next_due
from reconciler.core.status import StatusRow, status_document, status_rows
from reconciler.entry.metrics import DEFAULT_ADDRESS, HttpEndpoint, Metrics
from reconciler.state.statedir import LockBusy, StateDir
from reconciler.support.clock import SYSTEM
from reconciler.support.fs import acquire

log = structlog.get_logger()

EXIT_OK, EXIT_ERROR = 0, 1
LOCK_WAIT = 5.0  # seconds a pass waits for a `certctl apply` that holds the apply lock
BUSY_RETRY = 5.0  # then it tries again this much later
ERROR_RETRY = 30.0  # a pass that failed as a whole is retried after this long (or the interval, if shorter)
WAKE_SLACK = 0.05  # wake this long after a due time (renewal points are whole seconds)
DEBOUNCE_MS, STEP_MS = 400, 50  # watchfiles: group changes for at most 400 ms; a change is final after 50 ms of quiet
RELOAD_REASONS = frozenset({"start", "files", "sighup", "interval"})


class DaemonBusy(Exception):
    pass


# --- the one-daemon lock ------------------------------------------------------------------------------------


def hold_daemon_lock(state_path: Path, directory: Path) -> int:
    """flock ``<state>/daemon.lock`` for the life of the process (the OS releases it on any exit, even kill -9)."""
    fd, holder = acquire(state_path / "daemon.lock", 0, f"pid {os.getpid()}, daemon since "
                         f"{SYSTEM.now().strftime('%Y-%m-%dT%H:%M:%SZ')}, desired state {directory}")
    if holder is not None:
        raise DaemonBusy(
            f"another certctl daemon is already running on the state dir {state_path} ({holder}); "
            "only one daemon may run per state dir. Stop it first (systemctl stop certctl, or kill that pid)."
        )
    return fd


# --- scheduling ---------------------------------------------------------------------------------------------


def without_cleanup(plan: Plan) -> Plan:
    return replace(plan, actions=tuple(a for a in plan.actions if a.kind is not ActionKind.cleanup))


# --- the daemon ---------------------------------------------------------------------------------------------


class Daemon:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dir = Path(args.dir or os.environ.get("CERTCTL_DIR") or "desired-state")
        self.metrics = Metrics()
        self.events: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stopping = False
        self.stop_grace = float(os.environ.get("CERTCTL_STOP_TIMEOUT", "30"))
        self.started_at = SYSTEM.now()
        self.desired: DesiredState | None = None  # the last valid desired state: the one in force
        self.desired_error: dict[str, Any] | None = None
        self.state: StateDir | None = None
        self._world: Any = None
        self._world_key: str | None = None
        self.fingerprint = ""
        self.executor: Any = None
        self.last: dict[str, Any] = {"ok": False, "error": "starting: no reconcile has completed yet"}
        self.status_doc: dict[str, Any] = {}
        self.git: dict[str, Any] | None = None
        self.passes = 0  # started
        self.completed = 0  # finished (what /status and /healthz count)
        self._fingerprinted: tuple[DesiredState | None, str] = (None, "")
        self.due: datetime | None = None
        self.retry_at: float | None = None
        self.interval_mark = 0.0  # monotonic time of the last interval pass (the next is one interval later,
        self.maintenance_mark = 0.0  # with the interval in force now: an edited reconcileInterval counts at once)
        self._watch_stop = threading.Event()

    # --- settings ---------------------------------------------------------------------------------------

    @property
    def interval(self) -> float:
        return (self.desired.settings.reconcileInterval if self.desired else timedelta(minutes=5)).total_seconds()

    @property
    def maintenance_interval(self) -> float:
        return (self.desired.settings.maintenanceInterval if self.desired else timedelta(hours=24)).total_seconds()

    @property
    def next_interval(self) -> float:
        return self.interval_mark + self.interval

    @property
    def next_maintenance(self) -> float:
        return self.maintenance_mark + self.maintenance_interval

    @property
    def git_pull_enabled(self) -> bool:
        return bool(self.args.git_pull or (self.desired is not None and self.desired.settings.gitPull))

    # --- start --------------------------------------------------------------------------------------------

    def run(self) -> int:
        from reconciler.wiring import state_dir_for

        self._reload()
        state_path = state_dir_for(self.dir, self.desired, self.args.state_dir)
        try:
            hold_daemon_lock(state_path, self.dir)
        except DaemonBusy as exc:
            sys.stderr.write(f"certctl: {exc}\n")
            return EXIT_ERROR
        self.state = StateDir(state_path)
        self.state.report_access()
        if self.desired is not None and not self._same_state_dir(self.desired):
            self.desired = None
        try:
            endpoint = self._endpoint()
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"certctl: {exc}\n")
            return EXIT_ERROR
        self._signals()
        watcher = threading.Thread(target=self._watch, name="certctl-watch", daemon=True)
        watcher.start()
        log.info("daemon.started", dir=str(self.dir), state_dir=str(state_path), pid=os.getpid(),
                 metrics=endpoint.address if endpoint else None, git_pull=self.git_pull_enabled)
        now = time.monotonic()
        self.interval_mark = self.maintenance_mark = now
        try:
            self._loop({"start"})
        finally:
            self._watch_stop.set()
            if endpoint:
                endpoint.stop()
        log.info("daemon.stopped", passes=self.completed)
        return EXIT_OK

    def _endpoint(self) -> HttpEndpoint | None:
        settings = self.desired.settings.metrics if self.desired else None
        if self.args.no_metrics or (settings is not None and not settings.enabled and not self.args.metrics_address):
            return None
        address = self.args.metrics_address or (settings.address if settings else DEFAULT_ADDRESS)
        try:
            endpoint = HttpEndpoint(address, self.metrics, self.health, self.status)
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot serve metrics on {address}: {exc} "
                          "(use --metrics-address HOST:PORT, or --no-metrics)") from None
        endpoint.start()
        return endpoint

    def _signals(self) -> None:
        """Signals reach a thread of our own through a socket (signal.set_wakeup_fd).

        The OS may deliver a signal to any thread; Python runs its handler only when the main thread
        next executes bytecode, which may be minutes away while it waits for an action or a timer.
        The byte the C-level handler writes to the socket wakes ``_on_signals`` at once, whichever
        thread received the signal.
        """
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._signal_sockets = (reader, writer)
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), lambda _s, _f: None)  # the work happens in _on_signals
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._on_signals, args=(reader,), name="certctl-signals", daemon=True).start()

    def _on_signals(self, reader: socket.socket) -> None:
        stop_deadline: float | None = None
        while True:
            timeout = None if stop_deadline is None else max(0.0, stop_deadline - time.monotonic())
            reader.settimeout(timeout)
            try:
                data = reader.recv(64)
            except TimeoutError:
                log.warning("daemon.stop.forced", seconds=self.stop_grace,
                            note="actions still running after the stop timeout; the next start recovers from the journal")
                os._exit(EXIT_OK)
            for signum in data:
                if signum == getattr(signal, "SIGHUP", None):
                    self.events.put("sighup")
                    continue
                if self.stopping:
                    log.warning("daemon.stop.now", signal=signal.Signals(signum).name, note="second stop signal")
                    os._exit(EXIT_OK)
                self.stopping = True
                log.info("daemon.stopping", signal=signal.Signals(signum).name,
                         note="the running actions finish; the others are skipped")
                executor = self.executor
                if executor is not None:
                    executor.stop_requested.set()
                self.events.put("stop")
                stop_deadline = time.monotonic() + self.stop_grace

    def _watch(self) -> None:
        import watchfiles

        state_path = self.state.path.resolve() if self.state else None
        root = self.dir.resolve() if self.dir.exists() else self.dir

        def relevant(change: Any, path: str) -> bool:
            p = Path(path)
            if state_path is not None and (p == state_path or state_path in p.parents):
                return False
            try:
                rel = p.relative_to(root)
            except ValueError:
                rel = p
            if any(part.startswith(".") for part in rel.parts):
                return False
            return p.suffix in (".yaml", ".yml") or change == watchfiles.Change.deleted

        while not self._watch_stop.is_set():
            try:
                for changes in watchfiles.watch(self.dir, watch_filter=relevant, debounce=DEBOUNCE_MS, step=STEP_MS,
                                                stop_event=self._watch_stop, raise_interrupt=False):
                    log.debug("watch.changed", files=sorted(p for _, p in changes)[:20])
                    self.events.put("files")
            except Exception as exc:  # noqa: BLE001 - e.g. the directory does not exist (yet)
                log.warning("watch.failed", dir=str(self.dir), error=str(exc), note="retrying in 5 s")
                self._watch_stop.wait(5)

    # --- the loop -------------------------------------------------------------------------------------------

    def _loop(self, reasons: set[str]) -> None:
        while not self.stopping:
            now = time.monotonic()
            if now >= self.next_interval:
                reasons.add("interval")
                self.interval_mark = now
            maintenance = "start" in reasons or now >= self.next_maintenance
            if maintenance:
                self.maintenance_mark = now
            if self.due is not None and SYSTEM.now() >= self.due:
                reasons.add("due")
            if self.retry_at is not None and now >= self.retry_at:
                reasons.add("retry")
            if reasons:
                self.reconcile(reasons, maintenance)
                reasons = set()
                if self.stopping:
                    break
            timeout = self._timeout()
            try:
                reason = self.events.get(timeout=timeout)
            except queue.Empty:
                continue
            reasons.add(reason)
            with contextlib.suppress(queue.Empty):
                while True:  # take everything that is waiting: one pass answers them all
                    reasons.add(self.events.get_nowait())
            reasons.discard("stop")

    def _timeout(self) -> float:
        now = time.monotonic()
        deadlines = [self.next_interval, self.next_maintenance]
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        if self.due is not None:
            deadlines.append(now + max(0.0, (self.due - SYSTEM.now()).total_seconds()) + WAKE_SLACK)
        return max(0.0, min(deadlines) - now)

    # --- one pass -------------------------------------------------------------------------------------------

    def reconcile(self, reasons: set[str], maintenance: bool) -> None:
        self.passes += 1
        started = time.monotonic()
        structlog.contextvars.bind_contextvars(reconcile=self.passes)
        log.info("reconcile.started", reasons=sorted(reasons), maintenance=maintenance)
        self.retry_at = None
        try:
            if self.git_pull_enabled and reasons & {"start", "interval", "sighup"}:
                self._git_pull()
            if reasons & RELOAD_REASONS or self.desired is None:
                self._reload()
            if self.desired is None:
                self._finish(started, ok=False, error="no valid desired state to reconcile")
                return
            failed = self._pass(self.desired, maintenance)
        except LockBusy as exc:
            self.retry_at = time.monotonic() + BUSY_RETRY
            log.warning("reconcile.busy", error=str(exc), retry_in=BUSY_RETRY)
            self._finish(started, ok=False, error=str(exc))
        except Exception as exc:  # noqa: BLE001 - a pass that breaks is reported and retried, never fatal
            self.retry_at = time.monotonic() + min(ERROR_RETRY, self.interval)
            log.exception("reconcile.failed", error=str(exc))
            self._finish(started, ok=False, error=f"{exc.__class__.__name__}: {exc}")
        else:
            self._finish(started, ok=True, failed=failed)
        finally:
            structlog.contextvars.unbind_contextvars("reconcile")

    def _finish(self, started: float, ok: bool, error: str | None = None, failed: int = 0) -> None:
        seconds = time.monotonic() - started
        self.completed += 1
        self.metrics.reconciles.inc()
        self.metrics.duration.observe(seconds)
        if not ok or failed:
            self.metrics.errors.inc()
        if ok:
            self.metrics.last_success.set(time.time())
        self.last = {"ok": ok, "at": iso(SYSTEM.now()), "seconds": round(seconds, 3), "error": error,
                     "failed_actions": failed}
        nxt = self._timeout()
        self.metrics.next_due.set(time.time() + nxt)
        log.info("reconcile.finished", ok=ok, seconds=round(seconds, 3), failed_actions=failed, error=error,
                 next_in=round(nxt, 3), next_due=iso(self.due) if self.due else None)

    def _world_for(self, desired: DesiredState) -> Any:
        from reconciler.wiring import build

        self.fingerprint = self._fingerprint(desired)
        key = f"{self.fingerprint}/{desired.revision}"
        if key != self._world_key:
            assert self.state is not None
            self._world = build(desired, self.state)
            self._world_key = key
        return self._world

    def _pass(self, desired: DesiredState, maintenance: bool) -> int:
        from reconciler.app.executor import Executor, Outcome
        from reconciler.app.observe import observe, observe_current

        assert self.state is not None
        world = self._world_for(desired)
        failed = 0
        with self.state.lock(wait=LOCK_WAIT, purpose="daemon reconcile"):
            if maintenance:
                recover(world)
            observed = observe_current(world, SYSTEM.now(), locked=True)
            now = SYSTEM.now()
            plan = make_plan(desired, observed, now)
            todo = plan if maintenance else without_cleanup(plan)
            applied = self.state.applied() or {}
            ran = 0
            if todo.actions and not self.stopping:
                def count(outcome: Outcome) -> None:
                    self.metrics.actions.labels(kind=outcome.action.kind.value, result=outcome.status).inc()

                executor = Executor(world, concurrency=desired.settings.concurrency, on_outcome=count)
                self.executor = executor
                if self.stopping:
                    executor.stop_requested.set()
                log.info("apply.started", actions=len(todo.actions), summary={k: v for k, v in todo.summary().items() if v})
                try:
                    result = executor.run(todo)
                finally:
                    self.executor = None
                failed = result.count("failed") + result.count("skipped") + len(result.verify_failures)
                ran = len(todo.actions)
                log.info("apply.finished", done=result.count("done"), failed=result.count("failed"),
                         skipped=result.count("skipped"), verify_failures=len(result.verify_failures))
                observed = observe(world)
                now = SYSTEM.now()
                plan = make_plan(desired, observed, now)
            fingerprint = self.fingerprint
            if ran or applied.get("revision") != desired.revision or applied.get("desired_fingerprint") != fingerprint:
                self.state.record_applied(desired.revision, desired.directory, fingerprint, failed == 0, ran)
            rows = status_rows(desired, observed, now, plan)
            applied_doc = self.state.applied()
        notify = desired.settings.notify
        warning = notify.expiryWarning if (notify.webhook or notify.email) else None
        self.due = next_due(plan, observed, now, warning)
        self.metrics.certificates(rows, now)
        self.metrics.revision(desired.revision)
        self.status_doc = status_document(desired, rows, applied_doc, now)
        if notify.webhook or notify.email:
            self._notify(desired, rows, now)
        return failed

    def _notify(self, desired: DesiredState, rows: list[StatusRow], now: datetime) -> None:
        from reconciler.adapters.notify import Notifier

        assert self.state is not None
        notifier = Notifier(self.state.path, on_result=lambda c, e, r: self.metrics.notifications.labels(
            channel=c, event=e, result=r).inc())
        try:
            notifier.process(desired.settings.notify, rows,
                             {"dir": desired.directory, "revision": desired.revision}, now)
        except Exception as exc:  # noqa: BLE001 - alerts never stop reconciliation
            log.error("notify.error", error=str(exc))

    # --- desired state and git -----------------------------------------------------------------------------

    def _same_state_dir(self, desired: DesiredState) -> bool:
        from reconciler.wiring import state_dir_for

        assert self.state is not None
        wanted = state_dir_for(self.dir, desired, self.args.state_dir)
        if Path(wanted).resolve() == self.state.path.resolve():
            return True
        self._invalid([f"Settings.stateDir now points at {wanted}, but this daemon runs on the state dir "
                       f"{self.state.path}; restart certctl daemon to move to another state dir"])
        return False

    def _reload(self) -> None:
        try:
            desired = load(self.dir)
        except InvalidDesiredState as exc:
            self._invalid([str(d) for d in exc.diagnostics])
            return
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable directory
            self._invalid([f"{self.dir}: cannot load the desired state: {exc}"])
            return
        if self.state is not None and not self._same_state_dir(desired):
            return
        previous = self.desired
        self.desired = desired
        if self.desired_error is not None:
            log.info("desired_state.valid_again", revision=desired.revision)
        self.desired_error = None
        self.metrics.desired_valid.set(1)
        self.metrics.desired_errors.set(0)
        if previous is None or previous.revision != desired.revision or \
                self._fingerprint(previous) != self._fingerprint(desired):
            log.info("desired_state.loaded", certificates=len(desired.certificates), revision=desired.revision)

    def _fingerprint(self, desired: DesiredState) -> str:
        if self._fingerprinted[0] is not desired:
            self._fingerprinted = (desired, desired_fingerprint(desired))
        return self._fingerprinted[1]

    def _invalid(self, errors: list[str]) -> None:
        if self.desired_error is None or self.desired_error["errors"] != errors:
            log.error("desired_state.invalid", problems=len(errors), errors=errors,
                      in_force=self.desired.revision if self.desired else None,
                      note="the last valid desired state stays in force; nothing changes because of this edit"
                      if self.desired else "nothing is reconciled until the desired state is valid")
            self.desired_error = {"errors": errors, "since": iso(SYSTEM.now())}
        self.metrics.desired_valid.set(0)
        self.metrics.desired_errors.set(len(errors))

    def _git_pull(self) -> None:
        from reconciler.support.git import pull

        result = pull(self.dir)
        self.git = {"ok": result.ok, "at": iso(SYSTEM.now()), "revision": result.after, "message": result.message}
        if result.ok:
            if result.changed:
                log.info("git.pulled", before=result.before, after=result.after)
            else:
                log.debug("git.up_to_date", revision=result.after)
        else:
            self.metrics.git_errors.inc()
            log.error("git.pull.failed", error=result.message, revision=result.before,
                      note="the checked-out revision stays in force")

    # --- what the HTTP endpoint shows ------------------------------------------------------------------------

    def _daemon_doc(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "started_at": iso(self.started_at),
            "passes": self.completed,
            "running": self.passes > self.completed,
            "last_reconcile": self.last,
            "next_due": iso(self.due) if self.due else None,
            "desired_state": {"valid": self.desired_error is None, "in_force": self.desired.revision if self.desired else None,
                              **(self.desired_error or {})},
            "git": self.git,
        }

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok = bool(self.last.get("ok")) and self.desired_error is None
        reason = None
        if not self.last.get("ok"):
            reason = self.last.get("error")
        elif self.desired_error is not None:
            reason = f"the desired state is invalid ({len(self.desired_error['errors'])} problem(s)); " \
                     "the last valid one stays in force"
        return ok, {"status": "ok" if ok else "unhealthy", "reason": reason, **self._daemon_doc()}

    def status(self) -> dict[str, Any]:
        doc = dict(self.status_doc) if self.status_doc else {
            "at": iso(SYSTEM.now()), "source": {"dir": str(self.dir), "revision": None}, "applied": None, "certificates": []}
        doc["daemon"] = self._daemon_doc()
        return doc


def run_daemon(args: argparse.Namespace) -> int:
    return Daemon(args).run()
