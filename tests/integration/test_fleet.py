"""Fleet mode against a real PostgreSQL: three nodes as separate processes share issuance through the
database (one order per certificate version, the same key and thumbprint on every server)."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.integration.fleet import NODES, SITES, Fleet
from tests.integration.servers import Postgres

pytestmark = pytest.mark.integration

ISSUANCE_KINDS = {"issue", "renew", "reissue"}


def apply_all_at_once(fleet: Fleet) -> list[int]:
    procs = [fleet.start(node, "apply") for node in NODES]
    return [p.wait(timeout=300) for p in procs]


def log_of(fleet: Fleet, node: str, command: str = "apply") -> str:
    return (fleet.root / f"{node}-{command}.log").read_text(errors="replace")


def wait_for(check, timeout: float, what: str) -> None:
    """A bound against a hang, not a speed assertion: the condition must come true at some point."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g}s")
        time.sleep(0.2)


@pytest.fixture
def fleet(tmp_path: Path, fleet_dsn: str) -> Fleet:
    fleet = Fleet(tmp_path, fleet_dsn)
    fleet.local_ca()
    migrated = fleet.certctl("web01", "backend", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert "Schema version 1 (was 0)." in migrated.stdout
    return fleet


def test_three_applies_at_once_issue_each_certificate_once_and_bind_it_everywhere(fleet: Fleet) -> None:
    codes = apply_all_at_once(fleet)
    assert codes == [0, 0, 0], [log_of(fleet, n) for n in NODES]

    versions = fleet.versions()
    assert sorted(versions) == sorted(SITES)
    assert all(len(v) == 1 for v in versions.values()), versions  # each certificate issued exactly once
    for name, host in SITES.items():
        assert {fleet.bound(node).get(host) for node in NODES} == {versions[name][0]}, name
    assert fleet.query("SELECT count(*) FROM certctl_leases") == [(0,)]  # every lease released
    for node in NODES:
        plan = fleet.certctl(node, "plan", "--detailed-exitcode")
        assert plan.returncode == 0, plan.stdout + plan.stderr
        assert "No changes." in plan.stdout

    status = fleet.certctl("web02", "status", "--fleet", "--json")
    assert status.returncode == 0, status.stderr
    doc = json.loads(status.stdout)
    assert [n["node"] for n in doc["nodes"]] == list(NODES)
    assert all(n["converged"] and not n["stale"] for n in doc["nodes"])
    for cert in doc["certificates"]:
        assert cert["serving"] == [
            {"thumbprint": versions[cert["name"]][0], "current": True, "nodes": list(NODES)}
        ]


def test_private_keys_never_stand_in_the_database_in_clear_text(
    fleet: Fleet, postgres_cluster: Postgres
) -> None:
    assert apply_all_at_once(fleet) == [0, 0, 0]
    dump = postgres_cluster.dump(fleet.dsn.rsplit("/", 1)[1])
    assert b"INSERT INTO public.certctl_versions" in dump  # the versions are in it (bytea as hex)
    assert b"BEGIN CERTIFICATE".hex().encode() in dump  # certificates are public: stored as they are
    assert b"PRIVATE KEY" not in dump
    assert b"PRIVATE KEY".hex().encode() not in dump
    keys = list((fleet.root / "state" / "web01" / "vault").glob("*/*/key.pem"))
    keys += [fleet.root / "state" / "web01" / "localca"]  # (the CA key is never written locally in a fleet)
    checked = 0
    for path in keys:
        if not path.is_file():
            assert not path.exists()
            continue
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        der = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        scalar = der[-48:]  # the tail of the DER holds the key material
        assert der not in dump and der.hex().encode() not in dump
        assert scalar.hex().encode() not in dump and base64.b64encode(der) not in dump
        checked += 1
    assert checked == len(SITES)
    sealed = fleet.query("SELECT key_sealed FROM certctl_versions")
    assert all(bytes(k)[:1] == b"\x01" and b"PRIVATE KEY" not in bytes(k) for (k,) in sealed)


def test_a_wrong_encryption_key_is_a_clear_error_never_a_reissue(fleet: Fleet) -> None:
    assert apply_all_at_once(fleet) == [0, 0, 0]
    before = fleet.versions()
    fleet.env["CERTCTL_ENCRYPTION_KEY"] = base64.b64encode(b"\x07" * 32).decode()
    for command in (("plan",), ("apply",), ("renew", "shop")):
        result = fleet.certctl("web02", *command)
        assert result.returncode == 1, command
        assert "encryption key" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert fleet.versions() == before
    fleet.env["CERTCTL_ENCRYPTION_KEY"] = "not base64 at all!"
    result = fleet.certctl("web02", "plan")
    assert result.returncode == 1
    assert "encryptionKey: the encryption key must be 32 bytes, base64-encoded" in result.stderr


def test_an_unreachable_database_is_exit_1_with_a_clear_message_and_no_secret(fleet: Fleet) -> None:
    password = fleet.dsn.split(":")[2].split("@")[0]
    fleet.env["CERTCTL_DATABASE_URL"] = fleet.dsn.replace(
        fleet.dsn.split("@")[1].split("/")[0], "127.0.0.1:9"
    )
    for command in (("plan",), ("apply",), ("status",), ("status", "--fleet"), ("backend", "migrate")):
        result = fleet.certctl("web01", *command, "--log-level", "debug")
        assert result.returncode == 1, command
        assert "PostgreSQL database at 127.0.0.1:9/" in result.stderr and "unavailable" in result.stderr
        assert "Traceback" not in result.stderr
        assert password not in result.stderr + result.stdout


def test_migrate_refuses_a_newer_schema_and_commands_name_the_fix(fleet: Fleet) -> None:
    again = fleet.certctl("web01", "backend", "migrate")
    assert again.returncode == 0 and "Schema version 1: up to date." in again.stdout
    fleet.query("UPDATE certctl_schema SET version = 99")
    refused = fleet.certctl("web01", "backend", "migrate")
    assert refused.returncode == 1
    assert "schema version 99, newer than this certctl knows (1); upgrade certctl" in refused.stderr
    plan = fleet.certctl("web01", "plan")
    assert plan.returncode == 1 and "upgrade certctl" in plan.stderr
    fleet.query("DROP TABLE certctl_schema")
    plan = fleet.certctl("web01", "plan")
    assert plan.returncode == 1 and "run `certctl backend migrate`" in plan.stderr


def test_a_forced_renewal_on_one_node_is_only_installed_by_the_others(fleet: Fleet) -> None:
    assert apply_all_at_once(fleet) == [0, 0, 0]
    old = fleet.versions()["shop"][0]
    renewed = fleet.certctl("web01", "renew", "shop")
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    new = fleet.versions()["shop"][-1]
    assert new != old and len(fleet.versions()["shop"]) == 2
    for node in ("web02", "web03"):
        plan = json.loads(fleet.certctl(node, "plan", "--json").stdout)
        kinds = {a["kind"] for a in plan["actions"]}
        assert kinds and kinds <= {"install", "rebind"}, kinds
        assert {a["certificate"] for a in plan["actions"]} == {"shop"}

    # the daemons of the other nodes hear of the next renewal from the database (their interval is an hour)
    fleet.dir.joinpath("settings.yaml").write_text(
        fleet.dir.joinpath("settings.yaml")
        .read_text()
        .replace("reconcileInterval: 5m", "reconcileInterval: 1h")
    )
    daemons = {node: fleet.start(node, "daemon", "--no-metrics") for node in ("web02", "web03")}
    try:
        wait_for(
            lambda: all(fleet.bound(n).get(SITES["shop"]) == new for n in daemons), 120, "the first passes"
        )
        wait_for(
            lambda: all('"reconcile.finished"' in log_of(fleet, n, "daemon") for n in daemons),
            60,
            "first pass",
        )
        renewed = fleet.certctl("web01", "renew", "shop")
        assert renewed.returncode == 0, renewed.stdout + renewed.stderr
        newest = fleet.versions()["shop"][-1]
        assert newest not in (old, new)
        wait_for(
            lambda: all(fleet.bound(n).get(SITES["shop"]) == newest for n in daemons),
            60,
            "the daemons install the new version",
        )
        for node in daemons:
            passes = [
                json.loads(line)
                for line in log_of(fleet, node, "daemon").splitlines()
                if '"reconcile.started"' in line
            ]
            assert any(p["reasons"] == ["fleet"] and p.get("focused") for p in passes), passes
            # the pass woken by the notice observed and planned only the renewed certificate (of three)
            focused = [
                json.loads(line)
                for line in log_of(fleet, node, "daemon").splitlines()
                if '"reconcile.focused"' in line
            ]
            assert focused, "no focused pass"
            for event in focused:
                assert event["certificates"] == ["shop"], event
                assert event["versions_read"] == ["shop"] and event["stored"] == ["shop"], event
                assert event["stores"] == ["pem", "webhosting"] and event["hosts"] == ["iis"], event
            assert daemons[node].poll() is None
    finally:
        for proc in daemons.values():
            proc.terminate()
            proc.wait(timeout=60)
    assert len(fleet.versions()["shop"]) == 3  # the daemons ordered nothing


def test_backend_import_moves_a_state_dir_in_without_reissuing(tmp_path: Path, fleet_dsn: str) -> None:
    fleet = Fleet(tmp_path, fleet_dsn)
    fleet.local_ca()
    settings = fleet.dir / "settings.yaml"
    with_backend = settings.read_text()
    settings.write_text(with_backend.split("  backend:")[0])  # first: a single server with its own state dir
    alone = fleet.certctl("web01", "apply")
    assert alone.returncode == 0, alone.stdout + alone.stderr
    bound = fleet.bound("web01")
    assert len(bound) == len(SITES)

    settings.write_text(with_backend)
    assert fleet.certctl("web01", "backend", "migrate").returncode == 0
    imported = fleet.certctl("web01", "backend", "import")
    assert imported.returncode == 0, imported.stderr
    assert f"{len(SITES)} version(s) (0 already there)" in imported.stdout
    assert {v[0] for v in fleet.versions().values()} == set(bound.values())
    plan = fleet.certctl("web01", "plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert (
        fleet.certctl("web01", "backend", "import").stdout.count(f"0 version(s) ({len(SITES)} already there)")
        == 1
    )

    # the other servers install those very versions: nothing is issued
    for node in ("web02", "web03"):
        applied = fleet.certctl(node, "apply")
        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert fleet.bound(node) == bound
    assert all(len(v) == 1 for v in fleet.versions().values())
    assert fleet.query("SELECT count(*) FROM certctl_blobs WHERE scope = 'localca/local'") == [(2,)]


def test_a_damaged_chain_in_the_database_is_never_used_nor_copied_and_a_renewal_replaces_it(
    fleet: Fleet,
) -> None:
    """The refusal names where the chain is kept (the database row, not the node's copy, which is not
    written from it), and the renewal it names works."""
    assert fleet.certctl("web01", "apply").returncode == 0
    (thumbprint,) = fleet.versions()["shop"]
    fleet.query(
        "UPDATE certctl_versions SET chain_pem = chain_pem || %s WHERE certificate = 'shop'",
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",),
    )
    result = fleet.certctl("web02", "apply")
    assert result.returncode == 1
    said = result.stdout + result.stderr
    assert f"(the database's certctl_versions row of shop {thumbprint}) holds something other than" in said
    assert "certctl renew shop" in said and "Traceback" not in said
    assert not (fleet.root / "state" / "web02" / "vault" / "shop" / thumbprint).exists()
    assert fleet.certctl("web02", "renew", "shop").returncode == 0
    assert fleet.certctl("web02", "apply").returncode == 0
    assert fleet.certctl("web02", "plan", "--detailed-exitcode").returncode == 0
    assert len(fleet.versions()["shop"]) == 2
