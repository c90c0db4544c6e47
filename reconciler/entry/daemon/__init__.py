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

from reconciler.entry.daemon.loop import Daemon, DaemonBusy, hold_daemon_lock, run_daemon
from reconciler.entry.daemon.options import DaemonOptions

__all__ = ["Daemon", "DaemonBusy", "DaemonOptions", "hold_daemon_lock", "run_daemon"]
