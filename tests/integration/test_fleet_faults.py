"""Fleet faults with real parts: a node killed (kill -9) in the middle of an ACME order (Pebble, dns-01 through
BIND with a slow record creation), and PostgreSQL stopped for 30 s under three running daemons."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import time
from pathlib import Path

import pytest

from tests.integration.fleet import NODES, SITES, Fleet
from tests.integration.servers import LOOPBACK, Bind, Pebble, Postgres, ServerError
from tests.integration.test_fleet import wait_for

pytestmark = pytest.mark.integration

RECORD_SCRIPT = """#!{python}
# the test's DNS "provider": waits as long as the file {slow} says (a slow API), then updates BIND with TSIG
import os, sys, time
import dns.name, dns.query, dns.tsigkeyring, dns.update

action, name, value = sys.argv[1], os.environ["CERTCTL_DNS_NAME"], os.environ["CERTCTL_DNS_VALUE"]
with open("{calls}", "a") as fh:
    fh.write(f"{{action}} {{name}} {{value}}\\n")
with open("{calls}.pids", "a") as fh:  # the test ends the dying node's call with it
    fh.write(f"{{os.getpid()}}\\n")
if action == "add":
    time.sleep(float(open("{slow}").read()))
update = dns.update.UpdateMessage("{zone}", keyring=dns.tsigkeyring.from_text({{"{key_name}": "{secret}"}}),
                                  keyalgorithm="{algorithm}")
if action == "add":
    update.add(name + ".", 60, "TXT", f'"{{value}}"')
else:
    update.delete(name + ".", "TXT", f'"{{value}}"')
dns.query.tcp(update, "{address}", port={port}, timeout=5)
"""

ACME = """apiVersion: certctl/v1
kind: Issuer
metadata: {{name: pebble}}
spec:
  acme:
    directoryUrl: {directory}
    email: ops@example.com
    agreeToS: true
    caBundle: {bundle}
    solvers:
      - dns01:
          script:
            create: ["{script}", add]
            delete: ["{script}", delete]
            timeout: 10m
            zone: {zone}
            nameservers: ["{nameserver}"]
            propagationTimeout: 30s
---
apiVersion: certctl/v1
kind: Store
metadata: {{name: pem}}
spec:
  pemDirectory:
    path: ../pem/{{node}}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {{name: shop}}
spec:
  issuer: pebble
  domains: [shop.{zone}]
  stores: [pem]
"""


def test_a_node_killed_mid_order_loses_its_lease_and_another_completes_the_order(
    tmp_path: Path, fleet_dsn: str, pebble_public_bind: Pebble, public_bind: Bind
) -> None:
    pebble, bind = pebble_public_bind, public_bind
    fleet = Fleet(tmp_path, fleet_dsn, lease="5s")
    slow = tmp_path / "slow"
    slow.write_text("300")
    calls = tmp_path / "calls"
    script = tmp_path / "record.py"
    script.write_text(
        RECORD_SCRIPT.format(
            python=sys.executable,
            slow=slow,
            calls=calls,
            address=LOOPBACK,
            port=bind.port,
            zone=bind.zone,
            key_name=bind.key_name,
            secret=bind.secret,
            algorithm=bind.algorithm,
        )
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    (fleet.dir / "acme.yaml").write_text(
        ACME.format(
            directory=pebble.directory_url,
            bundle=pebble.ca_bundle,
            script=script,
            zone=bind.zone,
            nameserver=bind.address,
        )
    )
    assert fleet.certctl("web01", "backend", "migrate").returncode == 0
    record = f"_acme-challenge.shop.{bind.zone}"

    doomed = fleet.start("web01", "apply")
    wait_for(
        lambda: calls.exists() and "add " in calls.read_text(),
        120,
        "web01 starts making the challenge answerable",
    )
    assert fleet.query("SELECT node FROM certctl_leases WHERE certificate = 'shop'") == [("web01",)]
    assert fleet.query("SELECT count(*) FROM certctl_records WHERE lease IS NOT NULL") == [(1,)]
    os.killpg(doomed.pid, signal.SIGKILL)  # the node and its slow DNS call, as a machine that dies
    for pid in (tmp_path / "calls.pids").read_text().split():  # the call runs in a session of its own
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)
    doomed.wait(timeout=30)

    watching = json.loads(fleet.certctl("web03", "plan", "--json").stdout)
    notes = [n for n in watching["notes"] if n["code"] == "IssuingElsewhere"]
    assert [n["certificate"] for n in notes] == ["shop"] and "issuing on web01 since " in notes[0]["message"]
    assert not [a for a in watching["actions"] if a["certificate"] == "shop"]

    slow.write_text("0")
    rescuer = fleet.certctl("web02", "apply")
    assert rescuer.returncode == 0, rescuer.stdout + rescuer.stderr
    assert "Waiting: shop: issuing on web01 since" in rescuer.stdout
    events = [json.loads(line) for line in rescuer.stderr.splitlines() if line.startswith("{")]
    assert any(e["event"] == "fleet.lease.taken_over" and e["previous_holder"] == "web01" for e in events)
    assert any(e["event"] == "acme.challenge.recovered" for e in events)

    assert len(fleet.versions()["shop"]) == 1  # one certificate: the dead node's order never finished
    assert fleet.query("SELECT count(*) FROM certctl_records") == [(0,)]
    assert fleet.query("SELECT count(*) FROM certctl_leases") == [(0,)]
    assert bind.txt(record) == set()  # the challenges of both orders are cleaned up
    lines = calls.read_text().splitlines()
    killed_value = lines[0].split()[2]
    assert f"delete {record} {killed_value}" in lines  # the dead order's record was removed by web02
    for node in ("web02", "web03"):
        assert fleet.certctl(node, "apply").returncode == 0
        assert fleet.certctl(node, "plan", "--detailed-exitcode").returncode == 0
    assert len(fleet.versions()["shop"]) == 1


def test_daemons_ride_out_a_database_outage_and_converge_when_it_returns(tmp_path: Path) -> None:
    import psycopg

    server = Postgres(tmp_path / "postgres")
    try:
        server.start()
    except ServerError as exc:
        server.stop()
        pytest.fail(f"PostgreSQL could not start: {exc}", pytrace=False)
    daemons: dict[str, object] = {}
    try:
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("CREATE DATABASE fleet")
        fleet = Fleet(tmp_path / "fleet", server.dsn.rsplit("/", 1)[0] + "/fleet")
        first = {k: v for k, v in SITES.items() if k != "api"}
        fleet.local_ca(first)
        assert fleet.certctl("web01", "backend", "migrate").returncode == 0
        daemons = {node: fleet.start(node, "daemon", "--no-metrics") for node in NODES}
        wait_for(lambda: all(len(fleet.bound(n)) == len(first) for n in NODES), 120, "the fleet converges")
        before = fleet.versions()
        served = {n: fleet.bound(n) for n in NODES}

        server.pause()
        fleet.local_ca(SITES)  # a new certificate while the database is away: nothing can be issued
        time.sleep(30)
        assert all(p.poll() is None for p in daemons.values())  # type: ignore[attr-defined]
        assert {n: fleet.bound(n) for n in NODES} == served  # what is installed keeps being served
        for node in NODES:
            log = (fleet.root / f"{node}-daemon.log").read_text()
            assert '"reconcile.backend_unavailable"' in log and "Traceback" not in log

        server.resume()
        wait_for(
            lambda: all(len(fleet.bound(n)) == len(SITES) for n in NODES), 120, "the fleet converges again"
        )
        after = fleet.versions()
        assert all(len(v) == 1 for v in after.values()), after  # each certificate issued once, nothing lost
        assert {k: after[k] for k in before} == before
        for name, host in SITES.items():
            assert {fleet.bound(n)[host] for n in NODES} == {after[name][0]}
        assert all(p.poll() is None for p in daemons.values())  # type: ignore[attr-defined]
        for node in NODES:
            assert fleet.certctl(node, "plan", "--detailed-exitcode").returncode == 0
    finally:
        for proc in daemons.values():
            proc.terminate()  # type: ignore[attr-defined]
            proc.wait(timeout=60)  # type: ignore[attr-defined]
        server.stop()
