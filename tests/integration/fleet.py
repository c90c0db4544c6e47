"""Three certctl nodes on this machine sharing one desired-state directory and one PostgreSQL database:
each its own ``--node``, its own emulated IIS machine and PEM store (``{node}`` in their paths), its own
state dir; every node a separate process, as on a web farm."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]
NODES = ("web01", "web02", "web03")
SITES = {"shop": "shop.example.test", "blog": "blog.example.test", "api": "api.example.test"}

APPLICATION_HOST = """<?xml version="1.0" encoding="UTF-8"?>
<configuration>
    <system.applicationHost>
        <sites>
{sites}
        </sites>
    </system.applicationHost>
</configuration>
"""
SITE = """            <site name="{name}" id="{id}">
                <application path="/">
                    <virtualDirectory path="/" physicalPath="D:\\Sites\\{name}" />
                </application>
                <bindings>
                    <binding protocol="http" bindingInformation="*:80:{host}" />
                </bindings>
            </site>"""

SETTINGS = """apiVersion: certctl/v1
kind: Settings
metadata: {{name: settings}}
spec:
  stateDir: ../state/{{node}}
  reconcileInterval: {interval}
  backend:
    postgres:
      dsn: {{fromEnv: CERTCTL_DATABASE_URL}}
      encryptionKey: {{fromEnv: CERTCTL_ENCRYPTION_KEY}}
      leaseTimeout: {lease}
"""

ISSUER_LOCAL = """apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec:
  localCA: {validity: 90d}
"""
PEM_STORE = """---
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory:
    path: ../pem/{node}
"""
LOCAL = (
    ISSUER_LOCAL
    + """---
apiVersion: certctl/v1
kind: IisHost
metadata: {name: iis}
spec:
  backend: emulated
  root: ../machines/{node}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: webhosting}
spec: {windows: {host: iis, name: WebHosting}}
"""
    + PEM_STORE
)

CERTIFICATE = """---
apiVersion: certctl/v1
kind: Certificate
metadata: {{name: {name}}}
spec:
  issuer: {issuer}
  domains: [{host}]
  stores: [webhosting, pem]
  iis: [{{host: iis, mode: auto}}]
"""


class Fleet:
    def __init__(self, root: Path, dsn: str, *, interval: str = "5m", lease: str = "60s") -> None:
        self.root = root
        self.dir = root / "desired-state"
        self.dir.mkdir(parents=True)
        self.dsn = dsn
        self.key = base64.b64encode(os.urandom(32)).decode()
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CERTCTL_DATABASE_URL": dsn,
            "CERTCTL_ENCRYPTION_KEY": self.key,
            "CERTCTL_LOG_FORMAT": "json",
        }
        self.env.pop("CERTCTL_DIR", None)
        self.env.pop("CERTCTL_NODE", None)
        (self.dir / "settings.yaml").write_text(SETTINGS.format(interval=interval, lease=lease))
        for node in NODES:
            machine = root / "machines" / node
            machine.mkdir(parents=True)
            sites = "\n".join(SITE.format(name=n, id=i, host=h) for i, (n, h) in enumerate(SITES.items(), 1))
            (machine / "applicationHost.config").write_text(APPLICATION_HOST.format(sites=sites))

    def local_ca(self, names: dict[str, str] = SITES) -> None:
        (self.dir / "local.yaml").write_text(
            LOCAL + "".join(CERTIFICATE.format(name=n, host=h, issuer="local") for n, h in names.items())
        )

    def argv(self, node: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "reconciler", *args, "-d", str(self.dir), "--node", node]

    def certctl(self, node: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(node, *args), env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )

    def start(self, node: str, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
        out = open(log or (self.root / f"{node}-{args[0]}.log"), "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            self.argv(node, *args),
            env=self.env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def bound(self, node: str) -> dict[str, str]:
        """host name -> thumbprint HTTP.sys serves for it on that node's emulated machine."""
        path = self.root / "machines" / node / "httpsys.json"
        if not path.exists():
            return {}
        return {
            e["key"].rsplit(":", 1)[0]: e["certhash"].upper()
            for e in json.loads(path.read_text())
            if e.get("kind") == "hostnameport"
        }

    def query(self, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description is not None else []

    def versions(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for certificate, thumbprint in self.query(
            "SELECT certificate, thumbprint FROM certctl_versions ORDER BY certificate, seq"
        ):
            out.setdefault(certificate, []).append(thumbprint)
        return out
