"""Fleet mode on a real PostgreSQL: three nodes x N certificates on the local CA (a PEM store per node).

Measures: the time for the fleet to converge from an empty database (three `certctl apply` processes
started at once), the database statements of one converged pass per node (at N/10 and N certificates:
a converged pass should cost O(1) statements, not O(certificates)), the time a forced renewal on one
node takes to reach another node's daemon (LISTEN/NOTIFY), and the idle load of three daemons
(transactions per second in pg_stat_database).

Usage: python bench/fleet_bench.py [N]   (default 1000)
"""

from __future__ import annotations

import os
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from tests.integration.fleet import ISSUER_LOCAL, NODES, PEM_STORE, Fleet  # noqa: E402
from tests.integration.servers import Postgres  # noqa: E402

CERT = """---
apiVersion: certctl/v1
kind: Certificate
metadata: {{name: c{i:05d}}}
spec:
  issuer: local
  domains: [c{i:05d}.example.test]
  stores: [pem]
"""
BASE = ISSUER_LOCAL + PEM_STORE


def write(fleet: Fleet, count: int) -> None:
    (fleet.dir / "certs.yaml").write_text(BASE + "".join(CERT.format(i=i) for i in range(count)))


def statements_per_converged_pass(fleet: Fleet, node: str) -> int:
    """One daemon pass (observe, plan, nothing to apply, report) in this process: statements sent."""
    os.environ.update({k: v for k, v in fleet.env.items() if k.startswith("CERTCTL_")})
    from reconciler.app.loader import load
    from reconciler.app.reconcile import reconcile_once
    from reconciler.core.fleet import node_view
    from reconciler.core.planner import desired_fingerprint
    from reconciler.support.clock import SYSTEM
    from reconciler.wiring import build, open_state, state_dir_for

    desired = node_view(load(fleet.dir), node)
    state = open_state(desired, state_dir_for(fleet.dir, desired, None), node)
    world = build(desired, state)
    stop = threading.Event()
    fingerprint = desired_fingerprint(desired)
    reconcile_once(world, clock=SYSTEM, maintenance=False, stopping=stop, desired_fingerprint_now=fingerprint)
    before = state.db.queries  # type: ignore[attr-defined]
    result = reconcile_once(
        world, clock=SYSTEM, maintenance=False, stopping=stop, desired_fingerprint_now=fingerprint
    )
    assert result.applied is None and not result.plan.actions, "the fleet is not converged"
    spent = state.db.queries - before  # type: ignore[attr-defined]
    state.db.close()  # type: ignore[attr-defined]
    return int(spent)


def commits(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    return int(row[0]) if row else 0


def main(count: int) -> int:
    with tempfile.TemporaryDirectory(prefix="certctl-fleet-bench-") as tmp:
        root = Path(tmp)
        server = Postgres(root / "postgres").start()
        try:
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute("CREATE DATABASE fleet")
            dsn = server.dsn.rsplit("/", 1)[0] + "/fleet"
            fleet = Fleet(root / "fleet", dsn, interval="5m")
            assert fleet.certctl("web01", "backend", "migrate").returncode == 0

            small = max(1, count // 10)
            write(fleet, small)
            for node in NODES:
                assert fleet.certctl(node, "apply").returncode == 0
            at_small = statements_per_converged_pass(fleet, "web02")

            write(fleet, count)
            started = time.monotonic()
            procs = [fleet.start(node, "apply") for node in NODES]
            codes = [p.wait() for p in procs]
            converge = time.monotonic() - started
            assert codes == [0, 0, 0], codes
            orders = sum(len(v) for v in fleet.versions().values())
            at_full = statements_per_converged_pass(fleet, "web02")

            daemons = [fleet.start(node, "daemon", "--no-metrics") for node in NODES]
            try:
                time.sleep(15)  # their first passes
                idle_from = commits(dsn)
                idle_window = 30.0
                time.sleep(idle_window)
                idle = (commits(dsn) - idle_from) / idle_window
                renewed = fleet.certctl("web01", "renew", "c00000")
                assert renewed.returncode == 0
                newest = fleet.versions()["c00000"][-1]
                t0 = time.monotonic()
                reached = None
                while (
                    time.monotonic() - t0 < 30
                ):  # from the commit of the new version to web03's report of it
                    rows = fleet.query(
                        "SELECT extract(epoch FROM n.last_seen - v.created_at) FROM certctl_nodes n, certctl_versions v "
                        "WHERE n.node = 'web03' AND v.certificate = 'c00000' AND v.thumbprint = %s "
                        "AND n.report->'certificates'->'c00000'->>'thumbprint' = %s",
                        (newest, newest),
                    )
                    if rows:
                        reached = float(rows[0][0])
                        break
                    time.sleep(0.02)
            finally:
                for proc in daemons:
                    proc.terminate()
                    proc.wait(timeout=60)
        finally:
            server.stop()
    print(f"{'certificates':<52}{count:>12}")
    print(f"{'orders placed (one per certificate expected)':<52}{orders:>12}")
    print(f"{'fleet converges from empty (3 applies at once), s':<52}{converge:>12.1f}")
    print(f"{f'statements per converged pass per node, {small} certs':<52}{at_small:>12}")
    print(f"{f'statements per converged pass per node, {count} certs':<52}{at_full:>12}")
    print(f"{'idle load of 3 daemons, transactions/s':<52}{idle:>12.2f}")
    print(
        f"{'new version committed -> installed on web03, s':<52}"
        f"{(f'{reached:.2f}' if reached is not None else 'not within 30s'):>12}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000))
