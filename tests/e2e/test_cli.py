"""The CLI as a user runs it, on the local CA and a PEM store in a temporary folder."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

from reconciler.state.statedir import StateDir
from tests.conftest import Workspace

ROOT = Path(__file__).resolve().parents[2]


def three(ws: Workspace, reload: str = "true") -> None:
    ws.base()
    ws.certificate(
        "www",
        ["www.example.com", "example.com"],
        extra=f"  tasks:\n    - files: {{path: ../out/www, reload: '{reload}'}}\n",
    )
    ws.certificate("api", ["api.example.com"], algorithm="ecdsa-p384")
    ws.certificate(
        "legacy", ["legacy.example.net"], algorithm="rsa-3072", extra="  renewal: {beforeExpiry: 30d}\n"
    )


def test_apply_converges_and_second_plan_is_empty(ws: Workspace, run_cli) -> None:
    three(ws)
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert "Apply complete: 7 done, 0 failed, 0 skipped." in out
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")
    assert code == 0
    assert out.strip() == "No changes. Everything is up to date."
    for name, alg in (("www", "ecdsa-p256"), ("api", "ecdsa-p384"), ("legacy", "rsa-3072")):
        folder = ws.pem / name
        assert StateDir(ws.state).issued_for(name)[-1].info.key_algorithm == alg
        assert (folder / "fullchain.pem").read_bytes() == (folder / "cert.pem").read_bytes() + (
            folder / "chain.pem"
        ).read_bytes()
        assert oct((folder / "current" / "privkey.pem").stat().st_mode & 0o777) == "0o600"
    assert (ws.root / "out/www/privkey.pem").stat().st_mode & 0o777 == 0o600
    key_files = [p for p in ws.state.rglob("*.key")] + [p for p in ws.state.rglob("key.pem")]
    assert key_files and all(p.stat().st_mode & 0o077 == 0 for p in key_files)


def test_plan_json_follows_the_contract(ws: Workspace, run_cli) -> None:
    three(ws)
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--json", "--detailed-exitcode")
    assert code == 2
    plan = json.loads(out)
    assert plan["format_version"] == 1
    assert plan["changes"] is True
    assert plan["summary"] == {
        "issue": 3,
        "renew": 0,
        "reissue": 0,
        "install": 3,
        "bind": 0,
        "rebind": 0,
        "deploy": 1,
        "cleanup": 0,
        "unbind": 0,
    }
    issue = next(a for a in plan["actions"] if a["id"] == "issue/www")
    assert issue["kind"] == "issue" and issue["reason"] == "no certificate yet" and issue["depends_on"] == []
    install = next(a for a in plan["actions"] if a["id"] == "install/www/store/pem")
    assert install["depends_on"] == ["issue/www"]
    assert {c["name"]: c["state"] for c in plan["certificates"]} == {
        "api": "missing",
        "legacy": "missing",
        "www": "missing",
    }
    assert ws.files_written() == [], "plan must change nothing"


def test_plan_markdown_and_text_agree(ws: Workspace, run_cli) -> None:
    three(ws)
    _, md, _ = run_cli("plan", "-d", str(ws.desired), "--markdown")
    _, text, _ = run_cli("plan", "-d", str(ws.desired))
    summary = "Plan: 3 to issue, 0 to renew, 0 to reissue, 3 to install, 0 to bind, 0 to rebind, 1 to deploy, 0 to clean up, 0 to unbind."
    assert summary in text and f"**{summary}**" in md
    assert "| `www` | **issue** | issuer/local | no certificate yet |" in md


def test_plan_at_a_later_time_shows_renewals(ws: Workspace, run_cli) -> None:
    three(ws)
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--at", "+70d", "--json")
    plan = json.loads(out)
    reasons = {a["id"]: a["reason"] for a in plan["actions"] if a["kind"] == "renew"}
    assert set(reasons) == {"renew/www", "renew/api", "renew/legacy"}
    assert reasons["renew/www"].startswith("77% of lifetime elapsed, renewal point is 75% of lifetime")
    assert "30 days before expiry" in reasons["renew/legacy"]
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--at", "+60d")
    assert "renew" in out and "renew    issuer/local" in out  # legacy renews 30 days before expiry (day 60)
    assert out.count("~ renew") == 1


def test_saved_plan_applies_exactly_and_is_refused_when_stale(ws: Workspace, run_cli, tmp_path: Path) -> None:
    three(ws)
    planfile = tmp_path / "plan.json"
    assert run_cli("plan", "-d", str(ws.desired), "--out", str(planfile))[0] == 0
    code, out, err = run_cli("apply", "-d", str(ws.desired), str(planfile))
    assert code == 0, out + err
    # the world changed since the plan was made (the plan issued everything): applying it again is refused
    code, out, err = run_cli("apply", "-d", str(ws.desired), str(planfile))
    assert code == 1
    assert "stale plan" in err
    # a desired-state edit makes a plan stale too
    assert run_cli("plan", "-d", str(ws.desired), "--out", str(planfile))[0] == 0
    ws.certificate("extra", ["extra.example.com"])
    code, _, err = run_cli("apply", "-d", str(ws.desired), str(planfile))
    assert code == 1 and "stale plan: the desired state" in err


def test_a_failing_task_fails_only_itself(ws: Workspace, run_cli) -> None:
    three(ws, reload="echo no such service >&2; exit 3")
    code, out, _ = run_cli("apply", "-d", str(ws.desired))
    assert code == 1
    assert "Apply complete: 6 done, 1 failed, 0 skipped." in out
    assert "failed: deploy/www/task/0-files: reload command exited 3" in out and "no such service" in out
    # every certificate was issued and installed; only the reload is left to do
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    plan = json.loads(out)
    assert [a["id"] for a in plan["actions"]] == ["deploy/www/task/0-files"]


def test_a_failing_issuance_skips_its_dependents_and_backs_off(ws: Workspace, run_cli) -> None:
    three(ws)
    # make the local CA unusable for one certificate: its key algorithm cannot be reused from a foreign key file
    ws.write(
        "bad.yaml",
        """\
        apiVersion: certctl/v1
        kind: Issuer
        metadata: {name: broken}
        spec:
          localCA: {validity: 30d}
        ---
        apiVersion: certctl/v1
        kind: Certificate
        metadata: {name: bad}
        spec:
          issuer: broken
          domains: [bad.example.com]
          stores: [pem]
        """,
    )
    (ws.state / "localca" / "broken").mkdir(parents=True)
    (ws.state / "localca" / "broken" / "ca.pem").write_text("not a certificate")
    (ws.state / "localca" / "broken" / "ca.key").write_text("not a key")
    code, out, _ = run_cli("apply", "-d", str(ws.desired))
    assert code == 1
    assert "Apply complete: 7 done, 1 failed, 1 skipped." in out
    assert "skipped: install/bad/store/pem: skipped because issue/bad did not succeed" in out
    code, out, _ = run_cli("status", "-d", str(ws.desired), "--json")
    rows = {r["name"]: r for r in json.loads(out)["certificates"]}
    assert rows["bad"]["consecutive_failures"] == 1 and rows["bad"]["last_error"]
    assert rows["bad"]["state"] == "deferred" and rows["bad"]["deferred_until"]
    assert rows["www"]["state"] == "ready"
    # deferred: the plan does not hammer the issuer, and says why
    _, out, _ = run_cli("plan", "-d", str(ws.desired))
    assert "deferred until" in out and "certctl renew bad" in out
    assert "issue    issuer/broken" not in out


def test_renew_forces_a_new_certificate(ws: Workspace, run_cli) -> None:
    three(ws)
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    before = StateDir(ws.state).issued()["api"][-1].info.thumbprint
    code, out, err = run_cli("renew", "api", "-d", str(ws.desired))
    assert code == 0, out + err
    versions = StateDir(ws.state).issued()["api"]
    assert len(versions) == 2 and versions[-1].info.thumbprint != before and versions[-1].replaced == before
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0
    # the old version is kept in the store, the new one is live
    assert len(list((ws.pem / "api" / "versions").iterdir())) == 2
    code, _, err = run_cli("renew", "nope", "-d", str(ws.desired))
    assert code == 1 and "no Certificate named 'nope'" in err


def test_status_reports_every_certificate(ws: Workspace, run_cli) -> None:
    three(ws)
    code, out, _ = run_cli("status", "-d", str(ws.desired))
    assert code == 0 and out.count("missing") == 3
    run_cli("apply", "-d", str(ws.desired))
    code, out, _ = run_cli("status", "-d", str(ws.desired), "--json")
    rows = json.loads(out)["certificates"]
    assert {r["name"]: r["state"] for r in rows} == {"api": "ready", "legacy": "ready", "www": "ready"}
    assert all(r["not_after"] and r["renew_at"] and r["thumbprint"] for r in rows)


def test_a_second_apply_waits_then_gives_up_clearly(ws: Workspace, run_cli) -> None:
    three(ws)
    state = StateDir(ws.state)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with state.lock(purpose="test"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    try:
        code, _, err = run_cli("apply", "-d", str(ws.desired), "--lock-timeout", "0.3")
    finally:
        release.set()
        thread.join()
    assert code == 1
    assert "another certctl holds the lock" in err and "test since" in err
    assert not (ws.pem).exists()


def test_python_dash_m_and_console_script(ws: Workspace) -> None:
    three(ws)
    env = {**os.environ, "CERTCTL_DIR": str(ws.desired)}
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "validate"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "Valid: 3 certificate(s)" in result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "plan", "--log-format", "json", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd=ROOT,
    )
    assert json.loads(result.stdout)["summary"]["issue"] == 3


def test_the_desired_state_cache_notices_every_edit(ws: Workspace, run_cli) -> None:
    three(ws)
    assert run_cli("validate", "-d", str(ws.desired))[0] == 0  # fills the cache
    assert run_cli("validate", "-d", str(ws.desired))[0] == 0  # served from it
    path = ws.certificate("api", ["api.example.com", "bad..name"], algorithm="ecdsa-p384")
    code, _, err = run_cli("validate", "-d", str(ws.desired))
    assert code == 1 and "bad..name" in err and "api.yaml" in err
    ws.certificate("api", ["api2.example.com"], algorithm="ecdsa-p384")
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    assert next(a for a in json.loads(out)["actions"] if a["id"] == "issue/api")["detail"]["domains"] == [
        "api2.example.com"
    ]
    path.unlink()
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    assert "issue/api" not in {a["id"] for a in json.loads(out)["actions"]}


def test_key_reuse_keeps_the_key_across_renewals(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("pinned", ["pinned.example.com"], extra="  tasks: []\n")
    (ws.desired / "pinned.yaml").write_text(
        (ws.desired / "pinned.yaml")
        .read_text()
        .replace("key: {algorithm: ecdsa-p256}", "key: {algorithm: ecdsa-p256, reuse: true}")
    )
    ws.certificate("fresh", ["fresh.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    state = StateDir(ws.state)
    keys = {
        n: state.material(n, state.issued_for(n)[-1].info.thumbprint).key_pem for n in ("pinned", "fresh")
    }
    assert run_cli("renew", "pinned", "-d", str(ws.desired))[0] == 0
    assert run_cli("renew", "fresh", "-d", str(ws.desired))[0] == 0
    for name, same in (("pinned", True), ("fresh", False)):
        versions = state.issued_for(name)
        assert len(versions) == 2
        assert (state.material(name, versions[-1].info.thumbprint).key_pem == keys[name]) is same


def _apply_on_a_terminal(ws: Workspace, *extra: str) -> str:
    """Run `certctl apply` with its stdout on a pseudo-terminal, as a person at a shell would."""
    import pty

    controller, terminal = pty.openpty()
    env = {**os.environ, "CERTCTL_DIR": str(ws.desired)}
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", *extra],
        stdout=terminal,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=ROOT,
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    assert process.wait(60) == 0
    return re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode())  # colours: tests/e2e/test_terminal.py


def test_apply_shows_progress_on_a_terminal_and_only_events_otherwise(ws: Workspace, run_cli) -> None:
    three(ws)
    shown = _apply_on_a_terminal(ws)
    for action in ("issue/www", "install/www/store/pem", "deploy/www/task/0-files", "issue/legacy"):
        assert re.search(rf"^\s+\d/7 ok\s+{re.escape(action)} \(\d+\.\ds\)", shown, re.M), shown
    ws.certificate("extra", ["extra.example.com"])
    quiet = _apply_on_a_terminal(ws, "--log-format", "json")
    assert "certificate extra:" in quiet and not re.search(r"^\s+\d+/\d+ ok\s+", quiet, re.M)
    assert "Apply complete: 2 done, 0 failed, 0 skipped." in quiet


def test_local_ca_names_with_an_ip_address_and_a_long_first_name_converge(ws: Workspace, run_cli) -> None:
    long_name = ".".join(["a" * 60, "b" * 60, "example.com"])  # a valid name, longer than a CN may be (64)
    ws.base()
    ws.certificate("intranet", ["app01.corp", "10.0.0.5"])
    ws.certificate("long", [long_name])
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert StateDir(ws.state).issued_for("intranet")[-1].info.sans == ("app01.corp", "10.0.0.5")
    assert StateDir(ws.state).issued_for("long")[-1].info.sans == (long_name,)
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0
