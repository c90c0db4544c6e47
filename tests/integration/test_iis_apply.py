"""Plan and apply against the emulated IIS machine through the CLI: binds, renewal, drift, prune, what is kept."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from reconciler.entry.cli import main
from reconciler.state.statedir import StateDir
from tests.fixtures.iis import make_sample

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "iis"


BASE = """\
apiVersion: certctl/v1
kind: Settings
metadata: {name: settings}
spec: {stateDir: ../state, prune: %s}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec: {localCA: {validity: 90d}}
---
apiVersion: certctl/v1
kind: IisHost
metadata: {name: web01}
spec: {backend: emulated, root: ../web01}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: web01-webhosting}
spec: {windows: {host: web01, name: WebHosting}}
"""

CERT = """\
apiVersion: certctl/v1
kind: Certificate
metadata: {name: %s}
spec:
  issuer: local
  domains: %s
  stores: [web01-webhosting]
  iis: [{host: web01}]
"""

SPECS = {
    "www": CERT % ("www", "[www.example.com, example.com]"),
    "shop": CERT % ("shop", "[shop.example.net]"),
    "legacy": CERT % ("legacy", "[legacy.example.net]"),
    "api": CERT % ("api", "[api.example.org]"),
}


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """The CLI binds its log to this test's captured stderr; later tests must not write to it."""
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    structlog.reset_defaults()  # an earlier CLI run may have bound the log to a closed capture
    root = tmp_path_factory.mktemp("iis-apply-template") / "web01"
    return root, make_sample.build(root)


class World:
    def __init__(
        self, tmp: Path, template: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]
    ) -> None:
        self.tmp = tmp
        self.machine = tmp / "web01"
        shutil.copytree(template[0], self.machine)
        self.sample = template[1]
        self.desired = tmp / "desired"
        self.desired.mkdir()
        self.capsys = capsys

    def write(self, names: list[str], prune: bool = False) -> None:
        (self.desired / "base.yaml").write_text(BASE % str(prune).lower())
        (self.desired / "certs.yaml").write_text("---\n".join(SPECS[n] for n in names))

    def cli(self, *args: str) -> tuple[int, str]:
        self.capsys.readouterr()
        rc = main([*args, "-d", str(self.desired)])
        return rc, self.capsys.readouterr().out

    def plan(self, *extra: str) -> dict[str, Any]:
        rc, out = self.cli("plan", "--json", *extra)
        assert rc == 0, out
        return json.loads(out)

    def table(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(e["kind"], e["key"]): e for e in json.loads((self.machine / "httpsys.json").read_text())}

    def config(self) -> str:
        return (self.machine / "applicationHost.config").read_text()

    def current(self, name: str) -> str:
        versions = StateDir(self.tmp / "state").issued()[name]
        return max(versions, key=lambda v: v.issued_at).info.thumbprint

    def converged(self) -> None:
        rc, out = self.cli("plan", "--detailed-exitcode")
        assert rc == 0, out


@pytest.fixture
def world(tmp_path: Path, template: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> World:
    return World(tmp_path, template, capsys)


def test_apply_binds_rebinds_and_leaves_the_shared_endpoint_alone(world: World) -> None:
    world.write(["www", "shop", "legacy", "api"])
    plan = world.plan()
    kinds = {
        (a["kind"], a["detail"].get("site"), a["detail"].get("binding"))
        for a in plan["actions"]
        if a["kind"] in ("bind", "rebind")
    }
    assert kinds == {
        ("bind", "example.com", "*:443:example.com"),
        ("rebind", "example.com", "*:443:www.example.com"),
        ("rebind", "shop", "203.0.113.10:443:shop.example.net"),
        ("rebind", "shop", "[2001:db8::10]:443:shop.example.net"),
        ("rebind", "apps", "*:8443:api.example.org"),
    }
    assert any(n["code"] == "SharedEndpoint" and n["certificate"] == "legacy" for n in plan["notes"])

    rc, out = world.cli("apply")
    assert rc == 0, out
    world.converged()
    table = world.table()
    www, shop, api = world.current("www"), world.current("shop"), world.current("api")
    assert table[("hostnameport", "www.example.com:443")]["certhash"] == www
    assert table[("hostnameport", "example.com:443")]["certhash"] == www
    assert table[("ipport", "203.0.113.10:443")]["certhash"] == shop
    assert table[("ipport", "[2001:db8::10]:443")]["certhash"] == shop
    assert table[("hostnameport", "api.example.org:8443")]["certhash"] == api
    assert table[("hostnameport", "api.example.org:8443")]["flags"] == {"Disable HTTP2": "Set"}
    # the shared entry, another application's entry and the stopped site keep what they had
    assert table[("ipport", "0.0.0.0:443")]["certhash"] == world.sample["default"]
    assert table[("ipport", "0.0.0.0:8172")]["certhash"] == world.sample["default"]
    assert table[("hostnameport", "staging.example.com:443")]["certhash"] == world.sample["staging"]
    config = world.config()
    assert '<binding protocol="https" bindingInformation="*:443:example.com" sslFlags="1" />' in config
    assert '<binding protocol="https" bindingInformation="*:8443:api.example.org" sslFlags="5" />' in config
    assert config.count("bindingInformation=") == make_sample.CONFIG.count("bindingInformation=") + 1


def test_renewal_rebinds_exactly_the_bindings_that_served_the_old_certificate(world: World) -> None:
    world.write(["www", "shop"])
    assert world.cli("apply")[0] == 0
    old = world.current("www")
    later = world.plan("--at", "+70d")
    www = [a for a in later["actions"] if a["certificate"] == "www"]
    assert [a["kind"] for a in www] == ["renew", "install", "rebind", "rebind"]
    assert {a["detail"]["binding"] for a in www if a["kind"] == "rebind"} == {
        "*:443:www.example.com",
        "*:443:example.com",
    }
    assert all(a["detail"]["old_thumbprint"] == old for a in www if a["kind"] == "rebind")

    rc, out = world.cli("renew", "www")
    assert rc == 0, out
    new = world.current("www")
    assert new != old
    world.converged()
    hashes = [e["certhash"] for e in world.table().values()]
    assert old not in hashes and hashes.count(new) == 2
    assert world.table()[("ipport", "203.0.113.10:443")]["certhash"] == world.current("shop")


def test_one_binding_changed_by_hand_gives_one_rebind_and_no_issuance(world: World) -> None:
    world.write(["www", "shop"])
    assert world.cli("apply")[0] == 0
    entries = json.loads((world.machine / "httpsys.json").read_text())
    for e in entries:
        if e["key"] == "example.com:443":
            e["certhash"] = world.sample["shop"]
    (world.machine / "httpsys.json").write_text(json.dumps(entries, indent=2))

    plan = world.plan()
    assert [(a["kind"], a["reason_code"], a["detail"]["binding"]) for a in plan["actions"]] == [
        ("rebind", "BindingDrift", "*:443:example.com")
    ]
    assert world.cli("apply")[0] == 0
    world.converged()
    assert world.table()[("hostnameport", "example.com:443")]["certhash"] == world.current("www")


def test_a_deleted_spec_is_kept_without_prune_and_removed_with_it(world: World) -> None:
    world.write(["www", "shop"])
    assert world.cli("apply")[0] == 0
    www = world.current("www")
    pfx = world.machine / "certstore" / "WebHosting" / f"{www}.pfx"
    assert pfx.exists()

    world.write(["shop"])
    kept = world.plan()
    assert kept["actions"] == []
    assert {n["target"] for n in kept["notes"] if n["certificate"] == "www" and n["code"] == "Orphaned"} >= {
        "iis/web01/example.com/https *:443:www.example.com",
        "iis/web01/example.com/https *:443:example.com",
    }
    world.converged()

    world.write(["shop"], prune=True)
    pruned = world.plan()
    unbinds = {a["id"] for a in pruned["actions"] if a["kind"] == "unbind"}
    # only the binding certctl added is removed; www.example.com's https binding existed before certctl
    # (certctl only set its certificate), so it stays, and so does the certificate it serves
    assert {a["detail"]["binding"] for a in pruned["actions"] if a["kind"] == "unbind"} == {
        "*:443:example.com"
    }
    assert unbinds and not [
        a for a in pruned["actions"] if a["kind"] == "cleanup" and a["detail"]["thumbprint"] == www
    ]
    assert any(
        n["target"] == "iis/web01/example.com/https *:443:www.example.com"
        and "did not create" in n["message"]
        for n in pruned["notes"]
    )
    rc, out = world.cli("apply")
    assert rc == 0, out
    world.converged()
    assert pfx.exists()
    assert 'bindingInformation="*:443:example.com"' not in world.config()
    assert 'bindingInformation="*:443:www.example.com"' in world.config()
    assert world.table()[("hostnameport", "www.example.com:443")]["certhash"] == www
    assert world.table()[("ipport", "203.0.113.10:443")]["certhash"] == world.current("shop")
