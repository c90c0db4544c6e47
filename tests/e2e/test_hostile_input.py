"""A desired-state directory from an untrusted pull request: every hostile input is a diagnostic with
file:line:col, never a crash, a hang or a traceback, and the daemon keeps the last valid state in force.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Workspace
from tests.e2e.test_daemon import Daemon, Site, env

DEEP_FLOW = "[" * 40_000 + "]" * 40_000  # crashed the C composer (segfault)
DEEP_BLOCK = "a:\n" + "".join(" " * (i + 1) + "- \n" for i in range(400))  # RecursionError
ALIAS_BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{','.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)  # 730 bytes that expand to 9^9 nodes


def _cli(ws: Workspace, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """certctl as a separate process: a segfault or a hang must show as such, not take the test run with it."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args, "-d", str(ws.desired)],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
        cwd=ws.root,
        check=False,
    )


def _assert_diagnostic(result: subprocess.CompletedProcess[str], pattern: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(pattern, result.stderr), result.stderr[-2000:]


def test_alias_bomb_fixture_is_the_reported_size() -> None:
    assert len(ALIAS_BOMB) < 800


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        ("deep-flow", DEEP_FLOW, r"deep-flow\.yaml:1:65: YAML syntax error: nesting deeper than 64 levels"),
        (
            "deep-block",
            DEEP_BLOCK,
            r"deep-block\.yaml:\d+:\d+: YAML syntax error: nesting deeper than 64 levels",
        ),
        (
            "alias-bomb",
            ALIAS_BOMB,
            r"alias-bomb\.yaml:\d+:\d+: YAML syntax error: aliases expand this document",
        ),
    ],
)
@pytest.mark.parametrize("command", ["validate", "plan"])
def test_documents_that_crashed_or_hung_the_parser_are_diagnostics(
    ws: Workspace, name: str, text: str, pattern: str, command: str
) -> None:
    ws.base()
    (ws.desired / f"{name}.yaml").write_text(text)
    _assert_diagnostic(_cli(ws, command), pattern)
    assert ws.files_written() == []


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_fifos_devices_and_links_outside_are_not_read(ws: Workspace, command: str) -> None:
    ws.base()
    os.mkfifo(ws.desired / "fifo.yaml")
    os.symlink("/dev/zero", ws.desired / "zero.yaml")
    os.symlink("/etc/passwd", ws.desired / "passwd.yaml")
    result = _cli(ws, command, timeout=60)
    _assert_diagnostic(result, r"fifo\.yaml:1:1: not a regular file")
    assert re.search(
        r"zero\.yaml:1:1: the file is a link to /dev/zero, outside the desired-state directory", result.stderr
    )
    assert re.search(r"passwd\.yaml:1:1: the file is a link to /etc/passwd, outside", result.stderr)
    assert "root:" not in result.stderr, "nothing of a file outside the directory may be shown"


def test_a_link_to_a_device_inside_the_directory_is_refused_by_type(ws: Workspace) -> None:
    ws.base()
    (ws.desired / "dev").symlink_to("/dev")  # a folder link is not descended into; a file link to a device is
    os.symlink("/dev/zero", ws.desired / "sub-zero")
    os.symlink(ws.desired / "sub-zero", ws.desired / "chain.yaml")
    result = _cli(ws, "validate")
    _assert_diagnostic(result, r"chain\.yaml:1:1: the file is a link to /dev/zero")


def test_an_oversized_file_is_refused_before_it_is_read(ws: Workspace) -> None:
    from reconciler.app.loader import MAX_FILE_BYTES

    ws.base()
    with open(ws.desired / "huge.yaml", "wb") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: costs no disk
    _assert_diagnostic(_cli(ws, "validate"), r"huge\.yaml:1:1: the file is [\d,]+ bytes; at most")


CERT = "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: web}\nspec:\n  issuer: local\n  domains: [www.example.com]\n"


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        (
            "apiVersion: certctl/v1\nkind: [Certificate]\nmetadata: {name: x}\nspec: {}\n",
            r"x\.yaml:2:1: kind: kind must be a string",
        ),
        (
            "apiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: x}\nspec:\n  localCA: {validity: 99999999999999d}\n",
            r"x\.yaml:5:23: spec\.localCA\.validity: '99999999999999d' is longer than 36500d",
        ),
        (
            'apiVersion: certctl/v1\nkind: Store\nmetadata: {name: x}\nspec:\n  pemDirectory: {path: "pem\\0/x"}\n',
            r"x\.yaml:5:24: spec\.pemDirectory\.path: a NUL character is not allowed here",
        ),
        (
            "apiVersion: certctl/v1\nkind: Settings\nmetadata: {name: x}\nspec:\n  metrics: {address: nonsense}\n",
            r"x\.yaml:5:22: spec\.metrics\.address: metrics address 'nonsense' must be host:port",
        ),
        (
            CERT + '  verify: [{endpoint: "www.example.com:99999"}]\n',
            r"x\.yaml:7:23: spec\.verify\[0\]\.endpoint: endpoint 'www.example.com:99999' must be host:port with a port from 1",
        ),
        (
            CERT.replace("www.example.com", "www.xn--zz.com"),
            r"x\.yaml:6:13: spec\.domains\[0\]: 'www\.xn--zz\.com': label 'xn--zz' is not valid punycode",
        ),
        (
            "apiVersion: certctl/v1\nkind: IisHost\nmetadata: {name: x}\nspec:\n  backend: windows\n  computerName: web02\n",
            r"x\.yaml:6:17: spec\.computerName: managing a remote machine \(computerName: web02\) is not supported",
        ),
        (
            CERT + '  tasks: [{files: {path: out, keyMode: "0644"}}]\n',
            r"x\.yaml:7:40: spec\.tasks\[0\]\.files\.keyMode: keyMode 0644 gives every user access",
        ),
    ],
)
def test_inputs_that_raised_are_validation_errors(ws: Workspace, text: str, pattern: str) -> None:
    ws.base()
    ws.write("x.yaml", text)
    _assert_diagnostic(_cli(ws, "validate"), pattern)


@pytest.mark.parametrize("at", ["+999999999d", "9999-12-31"])
def test_plan_at_a_time_too_far_away_is_an_error(ws: Workspace, at: str) -> None:
    ws.base()
    result = _cli(ws, "plan", "--at", at)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert re.search(r"certctl: .*(longer than 36500d|too far in the future)", result.stderr), result.stderr


def test_the_daemon_survives_every_hostile_edit_and_keeps_the_last_valid_state(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.certificate("alpha", ["alpha.example.test"])
    daemon = Daemon(site)
    try:
        daemon.wait_healthy()
        first = daemon.wait("alpha in its store", lambda: site.live("alpha"))
        for name, text in (("deep", DEEP_FLOW), ("block", DEEP_BLOCK), ("bomb", ALIAS_BOMB)):
            site.write(f"{name}.yaml", text)
            daemon.wait(
                f"{name}.yaml reported",
                lambda n=name: (  # type: ignore[misc]
                    (r := daemon.json("/healthz"))[0] == 503
                    and any(f"{n}.yaml:" in e for e in r[1]["desired_state"].get("errors", []))
                ),
            )
            (site.desired / f"{name}.yaml").unlink()
        os.mkfifo(site.desired / "fifo.yaml")
        daemon.wait(
            "fifo.yaml reported",
            lambda: any(
                "fifo.yaml:1:1: not a regular file" in e
                for e in daemon.json("/healthz")[1]["desired_state"].get("errors", [])
            ),
        )
        (site.desired / "fifo.yaml").unlink()
        site.certificate("alpha", ["alpha.example.test"])  # touch: valid again
        daemon.wait_healthy()
        assert site.live("alpha") is not None and site.live("alpha").thumbprint == first.thumbprint  # type: ignore[union-attr]
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()


@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_secret_file_that_is_a_fifo_or_a_device_cannot_hang_plan(ws: Workspace, kind: str) -> None:
    ws.base()
    (ws.root / "out.pfx").write_bytes(
        b"not really a pfx"
    )  # an output exists, so plan opens it with its password
    secret = ws.desired / "password"
    if kind == "fifo":
        os.mkfifo(secret)
    else:
        secret.symlink_to("/dev/zero")
    ws.certificate(
        "web",
        ["www.example.com"],
        extra="  tasks: [{pfx: {path: ../out.pfx, password: {fromFile: password}}}]\n",
    )
    result = _cli(ws, "plan", "--json", timeout=120)
    # it does not hang; the deployment needs that secret, so plan reports it unreadable, where it is written
    assert result.returncode == 1, result.stderr[-2000:]
    assert '"deploy": 1' in result.stdout
    assert "web.yaml:9:" in result.stderr and "spec.tasks[0].pfx.password.fromFile" in result.stderr, (
        result.stderr
    )
    assert "cannot read the secret file" in result.stderr
