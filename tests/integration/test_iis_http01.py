"""http-01 on an emulated IIS host as shipped: Pebble fetches the token from an HTTP server that serves
the physical-path folder of the site IIS would use, and the web.config beside it is what IIS needs."""

from __future__ import annotations

import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconciler.state.statedir import StateDir
from tests.conftest import Workspace
from tests.fixtures.iis import make_sample
from tests.integration.servers import LOOPBACK, Pebble

pytestmark = pytest.mark.integration

RunCli = Callable[..., tuple[int, str, str]]


class SiteServer:
    """Plain HTTP on the VA's port serving one folder, as IIS serves a site's physical path; it records,
    for every challenge request, the web.config that stood beside the token."""

    def __init__(self, folder: Path, port: int) -> None:
        self.folder = folder
        self.seen: list[tuple[str, int, str | None]] = []  # (path, status, web.config text)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                target = server.folder / self.path.lstrip("/").split("?")[0]
                config = target.parent / "web.config"
                body = (
                    target.read_bytes()
                    if target.is_file() and target.parent.is_relative_to(server.folder)
                    else None
                )
                server.seen.append(
                    (
                        self.path,
                        200 if body is not None else 404,
                        config.read_text() if config.exists() else None,
                    )
                )
                self.send_response(200 if body is not None else 404)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body or b"")))
                self.end_headers()
                self.wfile.write(body or b"")

        self.httpd = ThreadingHTTPServer((LOOPBACK, port), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def machine(tmp_path: Path) -> Path:
    root = tmp_path / "web01"
    make_sample.build(root)
    return root


@pytest.fixture
def site_server(machine: Path, va_http_port: int) -> Iterator[SiteServer]:
    folder = machine / "drives" / "D" / "Sites" / "example.com"  # site example.com: D:\Sites\example.com
    folder.mkdir(parents=True)
    (folder / "index.html").write_text("hello")
    server = SiteServer(folder, va_http_port)
    yield server
    server.stop()


def write_desired(ws: Workspace, pebble: Pebble, machine: Path, domains: list[str]) -> None:
    ws.write(
        "all.yaml",
        f"""\
apiVersion: certctl/v1
kind: Settings
metadata: {{name: settings}}
spec:
  stateDir: ../state
---
apiVersion: certctl/v1
kind: IisHost
metadata: {{name: web01}}
spec:
  backend: emulated
  root: {machine}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {{name: pebble}}
spec:
  acme:
    directoryUrl: {pebble.directory_url}
    email: ops@example.com
    agreeToS: true
    caBundle: {pebble.ca_bundle}
    timeout: 10s
    solvers:
      - http01: {{iis: {{host: web01}}}}
---
apiVersion: certctl/v1
kind: Store
metadata: {{name: pem}}
spec:
  pemDirectory: {{path: ../pem}}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {{name: www}}
spec:
  issuer: pebble
  domains: [{", ".join(domains)}]
  stores: [pem]
""",
    )


def test_http01_through_the_site_folder_with_a_web_config_iis_serves(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, machine: Path, site_server: SiteServer
) -> None:
    write_desired(ws, pebble, machine, ["www.example.com", "example.com"])
    code, out, err = run_cli("plan", "-d", str(ws.desired))
    assert code == 0, err
    assert "the token goes under the physical path of site example.com on IIS host web01" in out

    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert StateDir(ws.state).issued_for("www")[-1].info.sans == ("www.example.com", "example.com")

    served = [s for s in site_server.seen if s[0].startswith("/.well-known/acme-challenge/") and s[1] == 200]
    assert served, site_server.seen
    config = served[0][2]
    assert config is not None, "web.config stood beside the token while Pebble fetched it"
    root = ET.fromstring(config)
    static = root.find("system.webServer/staticContent")
    assert static is not None
    assert [(e.tag, e.get("fileExtension"), e.get("mimeType")) for e in static] == [
        ("remove", ".", None),
        ("mimeMap", ".", "text/plain"),
    ]  # extensionless files as text/plain
    handlers = root.find("system.webServer/handlers")
    assert handlers is not None
    assert [e.tag for e in handlers] == ["clear", "add"]
    add = handlers[1]
    assert (add.get("path"), add.get("verb"), add.get("modules"), add.get("requireAccess")) == (
        "*",
        "*",
        "StaticFileModule",
        "Read",
    )

    # afterwards: token, web.config and the folders certctl made are gone; the site's own file stays
    assert sorted(p.name for p in site_server.folder.iterdir()) == ["index.html"]


def test_a_web_config_that_was_there_before_is_kept(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, machine: Path, site_server: SiteServer
) -> None:
    folder = site_server.folder / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True)
    own = '<?xml version="1.0"?>\n<configuration><!-- the admin\'s own --></configuration>\n'
    (folder / "web.config").write_text(own)
    write_desired(ws, pebble, machine, ["www.example.com"])
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert [p.name for p in folder.iterdir()] == ["web.config"]
    assert (folder / "web.config").read_text() == own


def test_a_name_no_started_site_serves_on_port_80_is_a_plan_error(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, machine: Path
) -> None:
    # With "Default Web Site"'s blank-host catch-all, every name has a site on port 80 ...
    write_desired(ws, pebble, machine, ["staging.example.com"])
    code, out, err = run_cli("plan", "-d", str(ws.desired))
    assert code == 0, err
    assert "site Default Web Site on IIS host web01" in out
    # ... without it, staging.example.com has only its own site, which is stopped.
    config = machine / "applicationHost.config"
    config.write_text(
        config.read_text().replace('<binding protocol="http" bindingInformation="*:80:" />', "")
    )
    code, out, err = run_cli("plan", "-d", str(ws.desired))
    assert code == 1
    assert "no started site on IIS host web01 serves staging.example.com over http on port 80" in err
