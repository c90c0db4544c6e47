"""Deployment tasks through certctl: pfx, script, ccs (files is covered in test_cli)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.state.statedir import StateDir
from reconciler.support import pki
from tests.conftest import Workspace


def current(ws: Workspace, name: str) -> str:
    return StateDir(ws.state).issued_for(name)[-1].info.thumbprint


def plan_ids(ws: Workspace, run_cli) -> list[str]:
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    return [a["id"] for a in json.loads(out)["actions"]]


def test_pfx_task_with_a_password_from_the_environment(
    ws: Workspace, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFX_PASSWORD", "correct horse")
    ws.base()
    ws.certificate(
        "app",
        ["app.example.com"],
        extra=("  tasks:\n    - pfx: {path: ../out/app.pfx, password: {fromEnv: PFX_PASSWORD}}\n"),
    )
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    pfx = ws.root / "out" / "app.pfx"
    assert pfx.stat().st_mode & 0o777 == 0o600
    cert_pem, _, key_pem, name = pki.from_pfx(pfx.read_bytes(), b"correct horse")
    assert pki.info_from_pem(cert_pem).thumbprint == current(ws, "app") and key_pem and name == "certctl:app"
    assert plan_ids(ws, run_cli) == []
    monkeypatch.setenv("PFX_PASSWORD", "a new password")  # the file no longer opens with it: written again
    assert plan_ids(ws, run_cli) == ["deploy/app/task/0-pfx"]
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    assert pki.from_pfx(pfx.read_bytes(), b"a new password")[0] == cert_pem
    monkeypatch.delenv("PFX_PASSWORD")
    code, out, _ = run_cli("plan", "-d", str(ws.desired))
    assert "the environment variable PFX_PASSWORD is not set" in out


def test_script_task_gets_the_paths_and_runs_again_only_after_a_change(ws: Workspace, run_cli) -> None:
    record = ws.root / "script-runs.txt"
    ws.base()
    ws.certificate(
        "svc",
        ["svc.example.com"],
        extra=(
            "  tasks:\n    - script:\n        command: >-\n"
            f'          echo "$CERTCTL_CERTIFICATE $CERTCTL_THUMBPRINT $CERTCTL_DOMAINS $CERTCTL_CERT_FILE $CERTCTL_KEY_FILE" >> {record}\n'
        ),
    )
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    [line] = record.read_text().splitlines()
    name, thumb, domains, cert_file, key_file = line.split()
    assert (name, thumb, domains) == ("svc", current(ws, "svc"), "svc.example.com")
    assert pki.info_from_pem(Path(cert_file).read_bytes()).thumbprint == thumb
    assert pki.key_matches(Path(cert_file).read_bytes(), Path(key_file).read_bytes())
    assert plan_ids(ws, run_cli) == []  # ran once for this certificate: not again
    assert run_cli("renew", "svc", "-d", str(ws.desired))[0] == 0
    lines = record.read_text().splitlines()
    assert len(lines) == 2 and lines[1].split()[1] == current(ws, "svc") != thumb


def test_a_failing_script_is_retried_on_the_next_run(ws: Workspace, run_cli) -> None:
    flag = ws.root / "allow"
    ws.base()
    ws.certificate(
        "svc", ["svc.example.com"], extra=(f"  tasks:\n    - script: {{command: 'test -e {flag}'}}\n")
    )
    code, out, _ = run_cli("apply", "-d", str(ws.desired))
    assert code == 1 and "script command exited 1" in out
    assert plan_ids(ws, run_cli) == ["deploy/svc/task/0-script"]
    flag.touch()
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    assert plan_ids(ws, run_cli) == []


def test_ccs_task_writes_one_pfx_per_host_name(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate(
        "shared",
        ["www.example.com", "'*.apps.example.com'"],
        extra=("  tasks:\n    - ccs: {path: ../ccs-share}\n"),
    )
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    share = ws.root / "ccs-share"
    assert sorted(p.name for p in share.iterdir()) == ["_.apps.example.com.pfx", "www.example.com.pfx"]
    for pfx in share.iterdir():
        assert pki.info_from_pem(pki.from_pfx(pfx.read_bytes(), None)[0]).thumbprint == current(ws, "shared")
    assert plan_ids(ws, run_cli) == []
    (share / "www.example.com.pfx").unlink()
    assert plan_ids(ws, run_cli) == ["deploy/shared/task/0-ccs"]


def test_commands_never_see_the_secrets_the_specs_reference(
    ws: Workspace, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PFX_PASSWORD", "correct horse")
    monkeypatch.setenv("HARMLESS", "visible")
    seen = ws.root / "env.txt"
    ws.base()
    ws.certificate(
        "app",
        ["app.example.com"],
        extra=(
            "  tasks:\n    - pfx: {path: ../out/app.pfx, password: {fromEnv: PFX_PASSWORD}}\n"
            f"    - script: {{command: 'env > {seen}'}}\n"
        ),
    )
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    env = seen.read_text()
    assert "HARMLESS=visible" in env and "PFX_PASSWORD" not in env and "correct horse" not in env
