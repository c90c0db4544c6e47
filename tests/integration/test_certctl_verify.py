"""Post-deploy verification through certctl: a `files` task writes where nginx reads, its `reload`
reloads nginx, and `verify` checks over TLS (with SNI) that nginx serves the new certificate."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler.state.statedir import StateDir
from tests.conftest import Workspace
from tests.integration.servers import Nginx, ServerError, require, wait_until

pytestmark = pytest.mark.integration

RunCli = Callable[..., tuple[int, str, str]]


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Nginx]:
    """nginx of this test alone; its TLS server reads ``tls/fullchain.pem`` and ``tls/privkey.pem``."""
    server = Nginx(tmp_path / "nginx")
    try:
        server.start()
    except ServerError as exc:
        server.stop()
        pytest.fail(f"nginx could not start: {exc}", pytrace=False)
    yield server
    server.stop()


def write_spec(ws: Workspace, site: Nginx, reload: list[str] | str) -> None:
    ws.base()  # local CA issuer `local`, PEM store `pem`
    ws.certificate(
        "www",
        ["www.example.com", "example.com"],
        extra=(
            "  tasks:\n"
            f"    - files: {{path: {json.dumps(str(site.cert_path.parent))}, reload: {json.dumps(reload)}}}\n"
            f'  verify:\n    - {{endpoint: "{site.endpoint}", sni: www.example.com}}\n'
        ),
    )


def reload_command(site: Nginx) -> list[str]:
    return [
        require("nginx"),
        "-p",
        str(site.folder),
        "-c",
        str(site.conf),
        "-e",
        str(site.folder / "error.log"),
        "-s",
        "reload",
    ]


def current_sha256(ws: Workspace) -> str:
    return StateDir(ws.state).issued_for("www")[-1].info.sha256


def test_verify_passes_then_a_reload_that_does_nothing_is_caught_and_planned_as_drift(
    ws: Workspace, run_cli: RunCli, site: Nginx
) -> None:
    placeholder = site.served_sha256("www.example.com")
    write_spec(ws, site, reload_command(site))
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert "verification" not in out
    first = current_sha256(ws)
    assert first != placeholder
    wait_until(
        lambda: site.served_sha256("www.example.com") == first, timeout=10, what="nginx serving the first one"
    )

    # The reload no longer reloads: a forced renewal deploys the files, but nginx keeps the old certificate.
    write_spec(ws, site, "true")
    code, out, err = run_cli("renew", "www", "-d", str(ws.desired))
    assert code == 1, out + err
    second = current_sha256(ws)
    assert second != first
    assert site.served_sha256("www.example.com") == first
    assert f"verify/www: {site.endpoint} (SNI www.example.com) serves" in out
    assert "expected the new certificate" in out
    assert "1 verification(s) failed" in out

    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--json", "--detailed-exitcode")
    assert code == 2
    actions = json.loads(out)["actions"]
    assert [(a["id"], a["reason_code"]) for a in actions] == [("deploy/www/task/0-files", "EndpointDrift")]
    assert site.endpoint in actions[0]["reason"]

    # Once the reload works again, apply repairs the drift and verification passes.
    write_spec(ws, site, reload_command(site))
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    # nginx reloads gracefully: old workers may still answer a connection or two with the old certificate
    wait_until(
        lambda: site.served_sha256("www.example.com") == second, timeout=10, what="nginx serving the new one"
    )
    # (and so may a probe made while old workers finish: the plan converges once they are gone)
    wait_until(
        lambda: run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0,
        timeout=10,
        what="an empty plan",
    )
