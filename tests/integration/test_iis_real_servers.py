"""IIS as real servers are (issue 16): imports that renew every binding they found, host ``*``, HTTP.sys
settings kept on rebind, ``<sites configSource>``, ``serverAutoStart``, on emulated machines shaped like
real ones (tests/fixtures/iis/real_servers.py) and driven through the CLI as a user would."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.adapters.iis.appconfig import AppHostConfig, make_binding
from reconciler.adapters.iis.changes import resolve
from reconciler.adapters.iis.emulated import EmulatedHost
from reconciler.adapters.iis.httpsys import SslRecord, dump_json, entry_for, load_json
from reconciler.app.loader import load
from reconciler.core.model import IIS_APPID, HostState, SiteState
from reconciler.entry.cli import main
from reconciler.ports import BindingChange
from tests.fixtures.iis import make_sample, real_servers

AT = "2026-03-01"  # the fixtures' certificates run through 2026: valid and not yet due then

BASE = real_servers.DESIRED_BASE


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()


def world(base: Path) -> Path:
    desired = base / "desired"
    desired.mkdir(parents=True)
    (desired / "base.yaml").write_text(BASE)
    return desired


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(list(args))
    out = capsys.readouterr()
    assert rc == 0, out.err
    return rc, out.out


def served(state: HostState) -> dict[tuple[str, str], str | None]:
    """(site, bindingInformation) -> the thumbprint HTTP.sys serves for every https binding."""
    table = {(e.kind, e.key.lower()): e.certhash for e in state.httpsys}
    return {
        (b.site, b.information): table.get(entry_for(b))
        for s in state.sites
        for b in s.bindings
        if b.protocol == "https" and not b.parse_error
    }


def plan_json(capsys: pytest.CaptureFixture[str], desired: Path, *extra: str) -> dict[str, Any]:
    return json.loads(cli(capsys, "plan", "-d", str(desired), "--json", *extra)[1])


def renewed_everything(
    capsys: pytest.CaptureFixture[str],
    desired: Path,
    host: EmulatedHost,
    before: dict[tuple[str, str], str | None],
    store: str,
) -> None:
    """Force a renewal of every imported Certificate, then check every binding follows its certificate."""
    names = sorted(load(desired, revision=False).certificates)
    assert names
    for name in names:
        cli(capsys, "renew", name, "-d", str(desired))
    after = served(host.observe())
    certs = {c.ref: c for c in host.store(store).observe().certs}
    for binding, old in before.items():
        if old is None or old not in certs:
            continue
        new = after[binding]
        assert new != old, f"{binding} still serves the old certificate {old}"
        assert new in certs and certs[new].managed_by in names, binding
        assert certs[new].info.sans == certs[old].info.sans, binding


# --- item 2: import writes what renews every binding it found --------------------------------------


def test_iis75_wildcard_on_ip_specific_blank_hosts_is_imported_in_site_mode_and_renewed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tp = real_servers.iis75(tmp_path / "web01")
    desired = world(tmp_path)
    config_before = (tmp_path / "web01" / "applicationHost.config").read_bytes()
    _rc, out = cli(capsys, "import", "--iis-host", "web01", "-d", str(desired))
    assert "auto mode leaves those bindings alone" not in out
    spec = load(desired, revision=False).certificates["wildcard-corp-example-com"].spec
    assert [(t.mode.value, t.site) for t in spec.iis] == [
        ("site", "Extranet"),
        ("site", "Portal"),
        ("site", "Services"),
    ]
    plan = plan_json(capsys, desired, "--at", AT)
    assert plan["actions"] == [], "an import changes nothing until a renewal"
    host = EmulatedHost("web01", tmp_path / "web01")
    before = served(host.observe())
    assert set(before.values()) == {tp["wildcard"]} and len(before) == 4
    renewed_everything(capsys, desired, host, before, "My")
    # rebinding changes only HTTP.sys: the XML, with its net.* bindings and CRLF, is byte-identical
    assert (tmp_path / "web01" / "applicationHost.config").read_bytes() == config_before
    table = {r.key: r for r in load_json((tmp_path / "web01" / "httpsys.json").read_bytes())}
    assert table["0.0.0.0:8172"].certhash == tp["wmsvc"]  # another application's entry: untouched
    # item 4: the ADFS-like entry keeps its client-certificate settings through the rebind
    assert dict(table["10.20.0.13:8443"].flags) == real_servers.ADFS_SETTINGS


CORP = ["*.corp.example.com"]
LEGACY = ["legacy.example.net", "www.legacy.example.net"]
HOSTS = {"corp": ["a.corp.example.com", "b.corp.example.com"], "legacy": LEGACY}


@st.composite
def layouts(draw: st.DrawFn) -> list[tuple[str, str, int, str]]:
    """https bindings (site, bindingInformation, sslFlags, certificate) as servers have them: IP-specific or
    All Unassigned endpoints shared by blank, '*' and named hosts of several sites, and SNI bindings."""
    bindings: list[tuple[str, str, int, str]] = []
    taken: set[str] = set()
    for _ in range(draw(st.integers(1, 4))):
        cert = draw(st.sampled_from(["corp", "legacy"]))
        if draw(st.booleans()):  # SNI
            info = f"*:443:{draw(st.sampled_from(HOSTS[cert]))}"
            if info not in taken:
                taken.add(info)
                bindings.append((draw(st.sampled_from(["Portal", "Extranet", "Api"])), info, 1, cert))
            continue
        ip = draw(st.sampled_from(["10.20.0.11", "10.20.0.12", "*"]))
        port = draw(st.sampled_from([443, 8443]))
        if any(b[1].startswith(f"{ip}:{port}:") and not b[2] for b in bindings):
            continue  # that endpoint exists already (with its own certificate)
        for _ in range(draw(st.integers(1, 2))):
            host = draw(st.sampled_from(["", "*", *HOSTS[cert]]))
            info = f"{ip}:{port}:{host}"
            if info.rsplit(":", 1)[0] + ":" + ("" if host == "*" else host) in {
                t.rsplit(":", 1)[0] + ":" + t.rsplit(":", 1)[1].replace("*", "") for t in taken
            }:
                continue
            taken.add(info)
            bindings.append((draw(st.sampled_from(["Portal", "Extranet", "Api"])), info, 0, cert))
    return bindings


def build_layout(root: Path, layout: list[tuple[str, str, int, str]]) -> dict[str, str]:
    _ca_root, inter = make_sample._ca()
    certs = {
        "corp": make_sample.issue(inter, CORP, seed="layout-corp"),
        "legacy": make_sample.issue(inter, LEGACY, seed="layout-legacy"),
    }
    tps = {k: real_servers.install_by_hand(root, c, "My", f"{k} by hand") for k, c in certs.items()}
    sites = []
    for i, name in enumerate(["Portal", "Extranet", "Api"], start=2):
        lines = "".join(
            f'<binding protocol="https" bindingInformation="{info}"{f" sslFlags={chr(34)}{flags}{chr(34)}" if flags else ""} />'
            for site, info, flags, _c in layout
            if site == name
        )
        sites.append(
            f'<site name="{name}" id="{i}"><application path="/"><virtualDirectory path="/" '
            f'physicalPath="E:\\{name}" /></application><bindings>{lines}</bindings></site>'
        )
    (root / "applicationHost.config").write_text(
        "<configuration><system.applicationHost><sites>"
        + "".join(sites)
        + "</sites></system.applicationHost></configuration>"
    )
    table: dict[tuple[str, str], SslRecord] = {}
    for site, info, flags, cert in layout:
        kind, key = entry_for(make_binding(site, "https", info, flags))
        table.setdefault((kind, key), SslRecord(kind, key, tps[cert], "MY", IIS_APPID, {}))
    (root / "httpsys.json").write_bytes(dump_json(table.values()))
    (root / "server.json").write_text('{"iis_version": "10.0"}\n')
    return tps


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(layout=layouts())
def test_import_then_forced_renewal_moves_every_binding_to_the_new_certificate(
    layout: list[tuple[str, str, int, str]], capsys: pytest.CaptureFixture[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        build_layout(base / "web01", layout)
        desired = world(base)
        cli(capsys, "import", "--iis-host", "web01", "-d", str(desired))
        assert plan_json(capsys, desired, "--at", AT)["actions"] == []
        host = EmulatedHost("web01", base / "web01")
        renewed_everything(capsys, desired, host, served(host.observe()), "My")
        structlog.reset_defaults()


# --- item 3: host "*" (IIS Express) --------------------------------------------------------------------


def test_iis_express_star_host_is_imported_in_site_mode_reported_and_renewed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tp = real_servers.iisexpress(tmp_path / "web01")
    desired = world(tmp_path)
    config = tmp_path / "web01" / "applicationHost.config"
    before_bytes = config.read_bytes()
    _rc, out = cli(capsys, "import", "--iis-host", "web01", "-d", str(desired))
    assert "mode: site for each site that uses it" in out
    certs = load(desired, revision=False).certificates
    assert [(t.mode.value, t.site) for t in certs["shop-example-com"].spec.iis] == [("site", "Shop.Web")]
    assert [(t.mode.value, t.site) for t in certs["ftp-example-com"].spec.iis] == [("site", "Files")]
    # the same certificate in auto mode: the plan reports the '*' binding instead of saying nothing
    auto = tmp_path / "auto"
    shutil.copytree(desired, auto)
    (auto / "imported-web01.yaml").write_text(
        (auto / "imported-web01.yaml").read_text().replace("mode: site\n      site: Shop.Web", "mode: auto")
    )
    notes = plan_json(capsys, auto, "--at", AT)["notes"]
    assert any(n["code"] == "BlankHost" and n["target"] == "iis/web01/Shop.Web/https :44300:*" for n in notes)
    host = EmulatedHost("web01", tmp_path / "web01")
    renewed_everything(capsys, desired, host, served(host.observe()), "My")
    site = next(s for s in host.observe().sites if s.name == "Files")
    assert site.ftp_cert_hash not in (None, tp["ftp"])  # the blank-host FTP site follows in site mode too
    after = config.read_bytes()
    assert after.count(b"[enc:") == before_bytes.count(b"[enc:") == 2
    assert b'password="[enc:IISCngProvider:ZGVwbG95LXBhc3N3b3JkLWZha2UtY2lwaGVydGV4dA==:enc]"' in after
    # WebSite1 has only an http binding (localhost:8080): import proposed a certificate for it, and the plan
    # added https beside it; apart from that binding, only certificate hashes changed
    added = re.search(
        rb'\s*<binding protocol="https" bindingInformation="\*:443:localhost" sslFlags="1" />', after
    )
    assert added is not None, after.decode()
    after = after[: added.start()] + after[added.end() :]
    assert after.replace(tp["ftp"].encode(), b"").replace(
        site.ftp_cert_hash.encode(), b""
    ) == before_bytes.replace(tp["ftp"].encode(), b"")


# --- item 4: HTTP.sys settings kept on rebind -----------------------------------------------------


def test_emulated_rebind_recreates_the_entry_like_iis_and_puts_its_settings_back(tmp_path: Path) -> None:
    tp = real_servers.iis75(tmp_path / "web01")
    host = EmulatedHost("web01", tmp_path / "web01")
    _ca_root, inter = make_sample._ca()
    new = make_sample.issue(inter, CORP, seed="iis75-wildcard-next")
    stored = host.store("My").install("corp", make_sample.material(new, inter), make_sample.NOT_BEFORE)
    table = load_json((tmp_path / "web01" / "httpsys.json").read_bytes())
    sites = AppHostConfig.parse((tmp_path / "web01" / "applicationHost.config").read_bytes()).sites()
    change = BindingChange(
        "update", "Services", "https", "10.20.0.13:8443:", 0, stored.ref, "My", tp["wildcard"]
    )
    resolution = resolve("web01", sites, table, [change], has_cert=host.has_cert)
    assert [s.op for s in resolution.steps] == ["replace", "settings"]
    assert resolution.steps[1].settings == (
        ("Ctl Store Name", "ClientAuthIssuer"),
        ("DS Mapper Usage", "Enabled"),
        ("Negotiate Client Certificate", "Enabled"),
    )
    host.apply([change])
    entry = next(e for e in host.observe().httpsys if e.key == "10.20.0.13:8443")
    assert entry.certhash == stored.ref
    assert dict(entry.settings) == real_servers.ADFS_SETTINGS


# --- item 5: <sites configSource> ---------------------------------------------------------------------


def test_sites_in_a_config_source_file_are_read_and_bound_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_servers.configsource(tmp_path / "web01")
    host = EmulatedHost("web01", tmp_path / "web01")
    state = host.observe()
    assert state.reachable and [s.name for s in state.sites] == ["www", "blog"]
    main_config = (tmp_path / "web01" / "applicationHost.config").read_bytes()
    desired = world(tmp_path)
    (desired / "blog.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: blog}\nspec:\n  issuer: local\n"
        "  domains: [blog.example.com]\n  stores: [web01-webhosting]\n  iis: [{host: web01}]\n"
    )
    cli(capsys, "apply", "-d", str(desired))
    assert (tmp_path / "web01" / "applicationHost.config").read_bytes() == main_config
    sites_file = (tmp_path / "web01" / "sites.config").read_text()
    assert (
        '<binding protocol="https" bindingInformation="*:443:blog.example.com" sslFlags="1" />' in sites_file
    )
    assert sites_file.startswith(
        '<?xml version="1.0" encoding="UTF-8"?>\n<!-- moved out of applicationHost.config'
    )
    assert plan_json(capsys, desired)["actions"] == []


@pytest.mark.parametrize(
    "source",
    [
        "../sites.config",
        "/etc/sites.config",
        "sub\\sites.config",
        "httpsys.json",
        "missing.config",
        "linked.config",
    ],
)
def test_a_config_source_outside_the_folder_or_missing_is_a_clear_problem(
    tmp_path: Path, source: str
) -> None:
    real_servers.configsource(tmp_path / "web01")
    (tmp_path / "sites.config").write_bytes((tmp_path / "web01" / "sites.config").read_bytes())
    (tmp_path / "web01" / "linked.config").symlink_to(tmp_path / "sites.config")
    config = tmp_path / "web01" / "applicationHost.config"
    config.write_text(config.read_text().replace('configSource="sites.config"', f'configSource="{source}"'))
    state = EmulatedHost("web01", tmp_path / "web01").observe()
    assert not state.reachable and state.sites == ()
    assert f"applicationHost.config:8: <sites configSource={source!r}>" in state.problems[0]
    assert "the sites cannot be read" in state.problems[0]


# --- item 6: serverAutoStart ---------------------------------------------------------------------


def test_server_auto_start_false_means_stopped_unless_the_running_server_started_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real_servers.panel(tmp_path / "web01")
    host = EmulatedHost("web01", tmp_path / "web01")
    states = {s.name: s.state for s in host.observe().sites}
    assert len(states) == 12 and states["juwelier-stern.example"] is SiteState.stopped
    assert {s for s, v in states.items() if v is SiteState.stopped} == {"juwelier-stern.example"}
    desired = world(tmp_path)
    (desired / "certs.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: juwelier}\nspec:\n  issuer: local\n"
        "  domains: [juwelier-stern.example, www.juwelier-stern.example]\n  stores: [web01-webhosting]\n"
        "  iis: [{host: web01}]\n"
    )
    plan = plan_json(capsys, desired)
    assert not [a for a in plan["actions"] if a["kind"] == "bind"]
    assert any("site juwelier-stern.example is stopped" in n["message"] for n in plan["notes"])
    # started by hand since the server came up: what runs now is the server's state
    (tmp_path / "web01" / "server.json").write_text(
        json.dumps({"iis_version": "10.0", "started_sites": ["juwelier-stern.example"]})
    )
    plan = plan_json(capsys, desired)
    assert sorted(a["detail"]["binding"] for a in plan["actions"] if a["kind"] == "bind") == [
        "*:443:juwelier-stern.example",
        "*:443:www.juwelier-stern.example",
    ]
