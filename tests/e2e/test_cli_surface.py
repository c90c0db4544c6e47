"""The CLI's smaller promises: status NAME / describe / --check, -dirty revisions, --at=-5d, renew NAMES and
--all, schema to stdout, --version, shell completion, help with examples, secrets checked before any action,
and `certctl init`."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler import __version__
from reconciler.entry.cli import parser
from reconciler.state.statedir import StateDir
from tests.conftest import Workspace

ROOT = Path(__file__).resolve().parents[2]


def test_status_name_and_describe_show_everything_about_one_certificate(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate(
        "www", ["www.example.com", "example.com"], extra="  tasks:\n    - files: {path: ../out/www}\n"
    )
    ws.certificate("api", ["api.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    code, out, _ = run_cli("status", "www", "-d", str(ws.desired))
    assert code == 0
    thumbprint = StateDir(ws.state).issued_for("www")[-1].info.thumbprint
    for expected in (
        "certificate www",
        "state          ready",
        "domains        www.example.com, example.com",
        "issuer         local (localCA)",
        "key            ecdsa-p256",
        "renewal        75% of lifetime",
        f"thumbprint     {thumbprint}",
        "days left      90",
        f"pem: {ws.root / 'pem'}/www: current",
        f"[0] files {ws.root / 'out' / 'www'}: holds {thumbprint[:8]}; last run 20",
    ):
        assert expected in out, (expected, out)
    assert "api" not in out
    code, described, _ = run_cli("describe", "www", "-d", str(ws.desired))
    assert code == 0 and described == out
    code, out, _ = run_cli("describe", "www", "-d", str(ws.desired), "--json")
    detail = json.loads(out)
    assert detail["tasks"][0]["last_run"]["result"] == "done" and detail["stores"][0]["holds"] == "current"
    assert detail["days_left"] == 90.0 and detail["next_attempt"] == detail["renew_at"]
    code, _, err = run_cli("status", "nope", "-d", str(ws.desired))
    assert code == 1 and "no Certificate named 'nope'" in err


def test_status_shows_the_full_last_error_and_the_next_attempt(ws: Workspace, run_cli) -> None:
    from tests.e2e.test_pending_work import failing_issuer

    failing_issuer(ws)
    run_cli("apply", "-d", str(ws.desired))
    _, out, _ = run_cli("describe", "bad", "-d", str(ws.desired), "--json")
    detail = json.loads(out)
    error = StateDir(ws.state).attempts()["bad"].last_error
    assert error and detail["last_error"] == error and detail["state"] == "deferred"
    assert detail["next_attempt"] and detail["consecutive_failures"] == 1
    _, out, _ = run_cli("describe", "bad", "-d", str(ws.desired))
    assert "next attempt   " + detail["next_attempt"] in out and error.splitlines()[0] in out


def test_status_check_follows_the_nagios_convention(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("www", ["www.example.com"])
    code, out, _ = run_cli("status", "--check", "-d", str(ws.desired))
    assert code == 1 and out.splitlines() == ["CERTCTL WARNING - 1 warning", "WARNING: www: not issued yet"]
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    code, out, _ = run_cli("status", "--check", "-d", str(ws.desired))
    assert code == 0 and out.startswith("CERTCTL OK - 1 certificate(s) fine")
    # the failing one: deferred is a warning; expiring within notify.expiryWarning (7d) is critical
    from tests.e2e.test_pending_work import BROKEN

    ws.write("bad.yaml", BROKEN)
    folder = ws.state / "localca" / "broken"
    folder.mkdir(parents=True)
    (folder / "ca.pem").write_text("not a certificate")
    (folder / "ca.key").write_text("not a key")
    run_cli("apply", "-d", str(ws.desired))
    code, out, _ = run_cli("status", "--check", "-d", str(ws.desired))
    lines = out.splitlines()
    assert code == 2 and lines[0] == "CERTCTL CRITICAL - 1 critical", out
    assert lines[1].startswith("CRITICAL: bad: no certificate, issuance failing (1 failure(s))")
    ws.write(
        "settings.yaml",
        "apiVersion: certctl/v1\nkind: Settings\nmetadata: {name: s}\n"
        "spec: {stateDir: ../state, notify: {expiryWarning: 100d}}\n",
    )
    base = (ws.desired / "base.yaml").read_text()
    ws.write("base.yaml", base.split("---", 1)[1])  # one Settings only
    code, out, _ = run_cli("status", "--check", "-d", str(ws.desired))
    assert code == 2 and "CRITICAL: www: expires" in out and "within the warning window of 100d" in out
    ws.write("broken.yaml", "kind: [")
    code, out, _ = run_cli("status", "--check", "-d", str(ws.desired))
    assert code == 3 and out.startswith("CERTCTL UNKNOWN")


def _git(folder: Path, *args: str) -> None:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
    }
    subprocess.run(["git", "-C", str(folder), *args], check=True, capture_output=True, env=env)


def test_the_revision_is_marked_dirty_with_uncommitted_changes(ws: Workspace, run_cli) -> None:
    if shutil.which("git") is None:
        pytest.fail("git is not installed")
    ws.base()
    ws.certificate("www", ["www.example.com"])
    _git(ws.desired, "init", "-q")
    _git(ws.desired, "add", "-A")
    _git(ws.desired, "commit", "-qm", "start")
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    commit = json.loads(out)["source"]["revision"]
    assert len(commit) == 40
    ws.certificate("api", ["api.example.com"])  # not committed
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    _, out, _ = run_cli("status", "-d", str(ws.desired), "--json")
    assert json.loads(out)["applied"]["revision"] == f"{commit}-dirty"
    _, out, _ = run_cli("status", "-d", str(ws.desired))
    assert f"revision {commit}-dirty" in out


def test_at_takes_an_offset_into_the_past(ws: Workspace, run_cli) -> None:
    ws.base()
    ws.certificate("www", ["www.example.com"])
    for argv in (["--at", "-5d"], ["--at=-5d"]):
        code, out, err = run_cli("plan", "-d", str(ws.desired), "--json", *argv)
        assert code == 0, err
        assert json.loads(out)["at"] < json.loads(run_cli("plan", "-d", str(ws.desired), "--json")[1])["at"]


def test_renew_takes_several_names_and_all(ws: Workspace, run_cli) -> None:
    ws.base()
    for name in ("a", "b", "c"):
        ws.certificate(name, [f"{name}.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    assert run_cli("renew", "a", "b", "-d", str(ws.desired))[0] == 0
    counts = {n: len(v) for n, v in StateDir(ws.state).issued().items()}
    assert counts == {"a": 2, "b": 2, "c": 1}
    assert run_cli("renew", "--all", "-d", str(ws.desired))[0] == 0
    assert {n: len(v) for n, v in StateDir(ws.state).issued().items()} == {"a": 3, "b": 3, "c": 2}
    code, _, err = run_cli("renew", "-d", str(ws.desired))
    assert code == 1 and "or give --all" in err


def test_schema_without_out_prints_the_any_kind_schema(run_cli) -> None:
    code, out, _ = run_cli("schema")
    assert code == 0 and json.loads(out)["title"].startswith("certctl desired-state document")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from reconciler.entry.cli import main

    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0 and capsys.readouterr().out.strip() == f"certctl {__version__}"


def _all_actions() -> list[tuple[str, argparse.Action]]:
    p = parser()
    out = [("certctl", a) for a in p._actions]
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += [(name, a) for a in sub._actions]
    return out


def test_every_argument_has_help_with_an_example() -> None:
    missing = [
        f"{cmd} {a.option_strings or a.dest}"
        for cmd, a in _all_actions()
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        and "(e.g. " not in (a.help or "")
    ]
    assert not missing, missing


def test_bash_completion_completes_commands_options_and_choices(run_cli) -> None:
    if shutil.which("bash") is None:
        pytest.fail("bash is not installed")
    code, script, _ = run_cli("completion", "bash")
    assert code == 0

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f"{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _certctl; "
            'printf "%s\\n" "${COMPREPLY[@]}"'
        )
        result = subprocess.run(
            ["bash", "--noprofile", "--norc", "-c", probe], capture_output=True, text=True, check=True
        )
        return result.stdout.split()

    assert {"plan", "apply", "status", "describe", "init", "completion"} <= set(complete("certctl", ""))
    assert complete("certctl", "pl") == ["plan"]
    assert "--detailed-exitcode" in complete("certctl", "plan", "--d")
    assert complete("certctl", "plan", "--log-format", "") == ["console", "json"]
    assert {"bash", "zsh", "powershell"} <= set(complete("certctl", "completion", ""))


@pytest.mark.parametrize("shell", ["zsh", "powershell"])
def test_zsh_and_powershell_completion_name_every_command(run_cli, shell: str) -> None:
    code, script, _ = run_cli("completion", shell)
    assert code == 0
    for command in (
        "validate",
        "plan",
        "apply",
        "status",
        "describe",
        "renew",
        "daemon",
        "schema",
        "import",
        "init",
    ):
        assert f"{command}" in script
    assert ("Register-ArgumentCompleter" in script) == (shell == "powershell")
    assert ("bashcompinit" in script) == (shell == "zsh")


def test_secrets_the_plan_needs_are_checked_before_anything(ws: Workspace, run_cli, monkeypatch) -> None:
    monkeypatch.delenv("CERTCTL_TEST_PFX_PASSWORD", raising=False)
    ws.base()
    path = ws.certificate(
        "www",
        ["www.example.com"],
        extra="  tasks:\n    - pfx:\n        path: ../out/www.pfx\n"
        "        password: {fromEnv: CERTCTL_TEST_PFX_PASSWORD}\n",
    )
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "fromEnv" in text)
    code, out, err = run_cli("plan", "-d", str(ws.desired))
    assert code == 1 and "deploy" in out
    assert (
        f"{path}:{line}:" in err
        and "spec.tasks[0].pfx.password.fromEnv: the environment variable "
        "CERTCTL_TEST_PFX_PASSWORD is not set; deploy/www/task/0-pfx needs it"
    ) in err, err
    code, _, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 1 and "CERTCTL_TEST_PFX_PASSWORD is not set" in err and "nothing was changed" in err
    assert not ws.pem.exists() and not (ws.state / "vault").exists(), "apply must not start"
    assert run_cli("plan", "-d", str(ws.desired), "--no-secret-check")[0] == 0
    monkeypatch.setenv("CERTCTL_TEST_PFX_PASSWORD", "s3cret")
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0


def test_an_acme_account_secret_is_checked_for_an_issuance(ws: Workspace, run_cli, monkeypatch) -> None:
    monkeypatch.delenv("CERTCTL_TEST_EAB", raising=False)
    ws.base()
    issuer = ws.write(
        "acme.yaml",
        """\
        apiVersion: certctl/v1
        kind: Issuer
        metadata: {name: ca}
        spec:
          acme:
            directoryUrl: https://127.0.0.1:9/directory
            agreeToS: true
            eab: {keyId: kid-1, hmacKey: {fromEnv: CERTCTL_TEST_EAB}}
            solvers: [{http01: {standalone: {port: 8080}}}]
        """,
    )
    ws.write(
        "www.yaml",
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: www}\n"
        "spec: {issuer: ca, domains: [www.example.com], stores: [pem]}\n",
    )
    code, _, err = run_cli("plan", "-d", str(ws.desired))
    assert (
        code == 1
        and f"{issuer}:8:" in err
        and "spec.acme.eab.hmacKey.fromEnv" in err
        and "issue/www needs it" in err
    )


def test_init_writes_a_starter_that_plan_accepts(tmp_path: Path, run_cli) -> None:
    folder = tmp_path / "desired-state"
    code, out, _ = run_cli("init", str(folder))
    assert code == 0 and "certctl plan -d" in out
    names = sorted(p.name for p in folder.glob("*.yaml"))
    assert names == ["certificate.yaml", "issuer.yaml", "settings.yaml", "store.yaml"]
    for path in folder.glob("*.yaml"):
        text = path.read_text()
        first = text.splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema=.schemas/"), path
        assert (folder / first.split("=", 1)[1]).is_file(), path
        assert sum(1 for line in text.splitlines() if line.lstrip().startswith("#")) >= 3, (
            f"{path} is not commented"
        )
    assert run_cli("validate", "-d", str(folder))[0] == 0
    code, out, _ = run_cli("plan", "-d", str(folder), "--json")
    plan = json.loads(out)
    assert code == 0 and [a["id"] for a in plan["actions"]] == [
        "issue/www-example-com",
        "install/www-example-com/store/pem",
    ]
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code, _, err = run_cli("init", str(folder))
    assert code == 1 and "already holds a desired state" in err
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_help_runs_for_every_command() -> None:
    for command in (
        "validate",
        "plan",
        "apply",
        "status",
        "describe",
        "renew",
        "daemon",
        "schema",
        "import",
        "init",
        "completion",
    ):
        result = subprocess.run(
            [sys.executable, "-m", "reconciler", command, "--help"],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        assert result.returncode == 0 and "e.g." in result.stdout, (command, result.stderr)


def test_the_program_ends_without_teardown_yet_keeps_its_output_and_exit_codes(ws: Workspace) -> None:
    """``certctl`` (``run``) ends a one-shot command with os._exit: its output must still be complete,
    through a pipe too, with the command's exit code; in-process callers of main() keep nothing."""
    from reconciler.entry import cli

    ws.base()
    for i in range(5):
        ws.certificate(f"c{i:02d}", [f"c{i:02d}.example.com"])
    env = {**os.environ, "CERTCTL_NO_CACHE": "1"}
    command = [sys.executable, "-m", "reconciler", "plan", "-d", str(ws.desired)]
    result = subprocess.run(
        [*command, "--json", "--detailed-exitcode"], capture_output=True, env=env, cwd=ROOT
    )
    assert result.returncode == 2, result.stderr  # changes pending
    plan = json.loads(result.stdout)  # all of it arrived, and it parses
    assert len([a for a in plan["actions"] if a["kind"] == "issue"]) == 5
    head = subprocess.run(
        f"{' '.join(command)} | head -n 1", shell=True, capture_output=True, env=env, cwd=ROOT, text=True
    )
    assert head.stdout.startswith("certificate c00") and "Traceback" not in head.stderr
    assert subprocess.run([*command, "--bogus"], capture_output=True, cwd=ROOT).returncode == 2  # usage error
    assert cli.main(["validate", "-d", str(ws.desired)]) == 0
    assert cli._KEPT is None  # only run() keeps what a command built
