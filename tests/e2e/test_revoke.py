"""`certctl revoke` on the local CA: the CRL it publishes (read back with openssl), the reissue that follows
(with a new key after keyCompromise, even with key.reuse), and the daemon's check of the CRL."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.app.loader import load
from reconciler.app.observe import observe
from reconciler.app.revocation import check_revocations
from reconciler.core.planner import current_version
from reconciler.core.planner import plan as make_plan
from reconciler.state.statedir import StateDir
from reconciler.wiring import build
from tests.conftest import BASE, Workspace


def _openssl_crl(path: Path) -> str:
    result = subprocess.run(
        ["openssl", "crl", "-in", str(path), "-noout", "-text"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def _serial(ws: Workspace, name: str) -> str:
    current = current_version(StateDir(ws.state).issued_for(name))
    assert current is not None
    digits = current.info.serial.upper()
    return digits.zfill(len(digits) + len(digits) % 2)  # as openssl prints it: whole bytes


def _key(ws: Workspace, name: str) -> bytes:
    current = current_version(StateDir(ws.state).issued_for(name))
    assert current is not None
    return (ws.state / "vault" / name / current.info.thumbprint / "key.pem").read_bytes()


def test_revoke_publishes_a_crl_and_the_next_apply_replaces_the_certificate_with_a_new_key(
    ws: Workspace, run_cli
) -> None:
    ws.write(
        "base.yaml",
        BASE.replace("localCA: {validity: 90d}", "localCA: {validity: 90d, crlPath: ../public/ca.crl.pem}"),
    )
    ws.certificate("www", ["www.example.com"])
    ws.write(
        "www.yaml",
        (ws.desired / "www.yaml")
        .read_text()
        .replace("key: {algorithm: ecdsa-p256}", "key: {algorithm: ecdsa-p256, reuse: true}"),
    )
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    serial, old_key = _serial(ws, "www"), _key(ws, "www")

    code, out, err = run_cli("revoke", "www", "-d", str(ws.desired), "--reason", "keyCompromise")
    assert code == 0, out + err
    assert "Revoked www" in out and "with a new key" in out
    for crl in (ws.state / "localca" / "local" / "crl.pem", ws.root / "public" / "ca.crl.pem"):
        text = _openssl_crl(crl)
        assert f"Serial Number: {serial}" in text
        assert "Key Compromise" in text
    verify = subprocess.run(
        [
            "openssl",
            "crl",
            "-in",
            str(ws.root / "public" / "ca.crl.pem"),
            "-noout",
            "-CAfile",
            str(ws.state / "localca" / "local" / "ca.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0 and "verify OK" in (verify.stdout + verify.stderr)

    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    plan = json.loads(out)
    renew = next(a for a in plan["actions"] if a["id"] == "renew/www")
    assert renew["reason_code"] == "Revoked" and renew["detail"]["new_key"] is True
    assert next(c for c in plan["certificates"] if c["name"] == "www")["state"] == "revoked"

    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    assert _serial(ws, "www") != serial
    assert _key(ws, "www") != old_key, "keyCompromise must never reuse the key, whatever key.reuse says"
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0


def test_revoke_superseded_keeps_a_reused_key(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("www", ["www.example.com"])
    ws.write(
        "www.yaml",
        (ws.desired / "www.yaml")
        .read_text()
        .replace("key: {algorithm: ecdsa-p256}", "key: {algorithm: ecdsa-p256, reuse: true}"),
    )
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    old_key = _key(ws, "www")
    assert run_cli("revoke", "www", "-d", str(ws.desired), "--reason", "superseded", "--yes")[0] == 0
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    renew = next(a for a in json.loads(out)["actions"] if a["id"] == "renew/www")
    assert renew["reason_code"] == "Revoked" and "new_key" not in renew["detail"]
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    assert _key(ws, "www") == old_key


def test_revoke_refuses_what_cannot_be_revoked(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("www", ["www.example.com"])
    code, _, err = run_cli("revoke", "www", "-d", str(ws.desired))
    assert code == 1 and "has not been issued yet" in err
    code, _, err = run_cli("revoke", "nope", "-d", str(ws.desired))
    assert code == 1 and "no Certificate named 'nope'" in err
    assert not (ws.state / "localca" / "local" / "crl.pem").exists()


def _revoked_behind_the_records(ws: Workspace, run_cli, reason: str, *others: str) -> tuple[Any, Any, Any]:
    """Apply www (and ``others``), then revoke www straight through the local CA, not with certctl revoke:
    the state dir does not know it. (desired, world, the revoked version)"""
    ws.base()
    for name in ("www", *others):
        ws.certificate(name, [f"{name}.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    desired = load(ws.desired)
    world = build(desired, StateDir(ws.state))
    www = current_version(world.state.issued_for("www"))
    assert www is not None
    world.issuers["local"].revoke(world.state.material("www", www.info.thumbprint), reason)  # type: ignore[attr-defined]
    return desired, world, www


def test_the_maintenance_check_finds_a_serial_in_the_crl(ws: Workspace, run_cli) -> None:
    """A certificate revoked outside this state dir's records (here: straight through the CA) is found in
    the CRL its issuer publishes, and planned for renewal at once."""
    desired, world, _ = _revoked_behind_the_records(ws, run_cli, "cessationOfOperation", "api")
    now = datetime.now(UTC)
    assert make_plan(desired, observe(world), now).actions == ()  # not known yet
    assert check_revocations(world, now) == 1
    plan = make_plan(desired, observe(world), now)
    assert [(a.id, a.reason.value) for a in plan.actions if a.kind.value == "renew"] == [
        ("renew/www", "Revoked")
    ]
    assert "cessationOfOperation" in plan.actions[0].message and "CRL" in plan.actions[0].message
    assert check_revocations(world, now) == 0  # already known: not looked up again


def test_a_damaged_revoked_list_is_an_error_not_a_crash(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("www", ["www.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    (ws.state / "localca" / "local" / "revoked.json").write_text('{"revoked": [{"serial": "zz", "at": "x"}]}')
    code, _, err = run_cli("revoke", "www", "-d", str(ws.desired), "--yes")
    assert code == 1 and "revoked list" in err and "damaged" in err


def test_a_daemon_maintenance_pass_renews_a_certificate_found_in_the_crl(ws: Workspace, run_cli) -> None:
    import threading

    from reconciler.app.reconcile import reconcile_once
    from reconciler.support.clock import SYSTEM

    _, world, before = _revoked_behind_the_records(ws, run_cli, "superseded")
    quiet = reconcile_once(
        world, clock=SYSTEM, maintenance=False, stopping=threading.Event(), desired_fingerprint_now="x"
    )
    assert quiet.applied is None, "an ordinary pass does not read CRLs"
    result = reconcile_once(
        world, clock=SYSTEM, maintenance=True, stopping=threading.Event(), desired_fingerprint_now="x"
    )
    assert result.applied is not None and result.applied.ok
    assert [o.action.id for o in result.applied.outcomes][:1] == ["renew/www"]
    after = current_version(world.state.issued_for("www"))
    assert after is not None and after.info.serial != before.info.serial and result.plan.actions == ()


def test_on_a_terminal_revoke_asks_and_only_yes_goes_ahead(ws: Workspace, run_cli) -> None:
    import os
    import sys

    ws.base()
    ws.certificate("www", ["www.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0

    def answer(text: str) -> tuple[int, str]:
        main, child = os.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "revoke", "www", "-d", str(ws.desired)],
            stdin=child,
            stdout=child,
            stderr=subprocess.PIPE,
        )
        os.close(child)
        output = b""
        while b"will be accepted" not in output:
            output += os.read(main, 4096)
        os.write(main, text.encode() + b"\n")
        code = proc.wait(timeout=60)
        try:
            while chunk := os.read(main, 4096):
                output += chunk
        except OSError:  # the terminal closed with the process
            pass
        os.close(main)
        return code, output.decode(errors="replace")

    code, out = answer("y")
    assert code == 1 and "Revoke certificate www" in out and "Revocation cancelled" in out
    assert current_version(StateDir(ws.state).issued_for("www")).revocation is None  # type: ignore[union-attr]
    code, out = answer("yes")
    assert code == 0 and "Revoked www" in out
    assert current_version(StateDir(ws.state).issued_for("www")).revocation is not None  # type: ignore[union-attr]
