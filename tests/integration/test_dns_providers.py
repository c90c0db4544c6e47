"""dns-01 through a DNS provider's API (dns-lexicon's ``powerdns`` provider), challenge delegation by
CNAME, and the script solver — against a real PowerDNS authoritative server, with a real Pebble that
resolves every name through it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler.app.loader import load
from reconciler.state.statedir import StateDir
from reconciler.wiring import build_acme_issuer
from tests.conftest import Workspace
from tests.integration import test_certctl_acme as acme
from tests.integration.servers import Pebble, PebbleOptions, PowerDns, ServerError, wait_until
from tests.integration.test_certctl_acme import add_cert, status

pytestmark = pytest.mark.integration

RunCli = Callable[..., tuple[int, str, str]]
ZONE = "certctl-pdns.net"
ALIAS_ZONE = "certctl-alias.org"
KEY_ENV = "CERTCTL_TEST_PDNS_KEY"


@pytest.fixture(scope="module")
def pdns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerDns]:
    server = PowerDns(tmp_path_factory.mktemp("pdns"))
    try:
        server.start()
        server.add_zone(
            ZONE,
            [
                (f"_acme-challenge.deleg.{ZONE}", "CNAME", f"_acme-challenge.deleg.{ALIAS_ZONE}."),
                (f"_acme-challenge.loop1.{ZONE}", "CNAME", f"_acme-challenge.loop2.{ZONE}."),
                (f"_acme-challenge.loop2.{ZONE}", "CNAME", f"_acme-challenge.loop1.{ZONE}."),
            ],
        )
        server.add_zone(ALIAS_ZONE)
    except ServerError as exc:
        server.stop()
        pytest.fail(f"a test server could not start: {exc}", pytrace=False)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble_pdns(
    tmp_path_factory: pytest.TempPathFactory, pdns: PowerDns, va_http_port: int
) -> Iterator[Pebble]:
    server = Pebble(
        tmp_path_factory.mktemp("pebble-pdns"), PebbleOptions(dns="bind"), pdns.address, va_http_port
    )
    try:
        server.start()
    except ServerError as exc:
        server.stop()
        pytest.fail(f"a test server could not start: {exc}", pytrace=False)
    yield server
    server.stop()


def provider_solver(
    pdns: PowerDns,
    *,
    domains: list[str] | None = None,
    key_env: str = KEY_ENV,
    zone: str | None = None,
    nameservers: list[str] | None = None,
    propagation: str = "20s",
) -> str:
    lines = ["      - "]
    if domains is not None:
        lines.append(f"domains: [{', '.join(domains)}]\n        ")
    lines.append(
        textwrap.dedent(f"""\
        dns01:
          provider:
            name: powerdns
            options: {{pdns_server: "{pdns.api_url}", pdns_server_id: localhost}}
            secrets: {{auth_token: {{fromEnv: {key_env}}}}}
            ttl: 60
            propagationTimeout: {propagation}
            nameservers: {json.dumps(nameservers or [pdns.address])}
            resolvers: ["{pdns.address}"]
        """)
        .replace("\n", "\n        ")
        .rstrip()
        + "\n"
    )
    if zone:
        lines.append(f"            zone: {zone}\n")
    return "".join(lines)


def write_base(ws: Workspace, pebble: Pebble, solvers: str) -> None:
    acme.write_base(ws, pebble.directory_url, pebble.ca_bundle, "    solvers:\n" + solvers)


def test_wildcard_and_apex_through_the_powerdns_provider(
    ws: Workspace, run_cli: RunCli, pdns: PowerDns, pebble_pdns: Pebble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, pdns.api_key)
    write_base(ws, pebble_pdns, provider_solver(pdns))  # no zone: found by SOA lookup
    add_cert(ws, "wild", [f"*.{ZONE}", ZONE])
    code, out, err = run_cli("apply", "-d", str(ws.desired), "--log-format", "json")
    assert code == 0, out + err
    assert StateDir(ws.state).issued_for("wild")[-1].info.sans == (f"*.{ZONE}", ZONE)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    added = [e for e in events if e.get("event") == "dns01.record.added"]
    assert [e["name"] for e in added] == [f"_acme-challenge.{ZONE}"] * 2  # two values at one name
    assert all(e["zone"] == ZONE for e in added)
    assert pdns.txt(f"_acme-challenge.{ZONE}") == set()  # both removed
    assert pdns.api_key not in out + err  # the credential is never logged
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0


def test_a_cname_delegated_name_gets_its_txt_in_the_other_zone(
    ws: Workspace, run_cli: RunCli, pdns: PowerDns, pebble_pdns: Pebble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, pdns.api_key)
    monkeypatch.setenv("CERTCTL_TEST_ALIAS_KEY", pdns.api_key)
    solvers = provider_solver(pdns, domains=[ZONE], zone=ZONE) + provider_solver(
        pdns, domains=[ALIAS_ZONE], key_env="CERTCTL_TEST_ALIAS_KEY", zone=ALIAS_ZONE
    )
    write_base(ws, pebble_pdns, solvers)
    add_cert(ws, "deleg", [f"deleg.{ZONE}"])

    code, out, err = run_cli("plan", "-d", str(ws.desired), "--json")
    assert code == 0, err
    notes = [n for n in json.loads(out)["notes"] if n["code"] == "ChallengeDelegated"]
    assert len(notes) == 1 and notes[0]["certificate"] == "deleg"
    assert f"_acme-challenge.deleg.{ZONE} -> _acme-challenge.deleg.{ALIAS_ZONE}" in notes[0]["message"]
    assert "by solver 1 (provider powerdns)" in notes[0]["message"]

    code, out, err = run_cli("apply", "-d", str(ws.desired), "--log-format", "json")
    assert code == 0, out + err
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    delegated = [e for e in events if e.get("event") == "acme.challenge.delegated"]
    assert (
        delegated
        and delegated[0]["record"] == f"_acme-challenge.deleg.{ALIAS_ZONE}"
        and delegated[0]["solver"] == 1
    )
    added = [e for e in events if e.get("event") == "dns01.record.added"]
    assert [(e["name"], e["zone"]) for e in added] == [(f"_acme-challenge.deleg.{ALIAS_ZONE}", ALIAS_ZONE)]
    assert pdns.txt(f"_acme-challenge.deleg.{ALIAS_ZONE}") == set()
    assert StateDir(ws.state).issued_for("deleg")


def test_a_cname_loop_is_a_plan_error_and_fails_only_that_certificate(
    ws: Workspace, run_cli: RunCli, pdns: PowerDns, pebble_pdns: Pebble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, pdns.api_key)
    write_base(ws, pebble_pdns, provider_solver(pdns, zone=ZONE))
    add_cert(ws, "loop", [f"loop1.{ZONE}"])
    add_cert(ws, "fine", [f"fine.{ZONE}"])
    code, out, err = run_cli("plan", "-d", str(ws.desired))
    assert code == 1
    assert f"certificate loop: dns-01 for loop1.{ZONE}: CNAME loop: _acme-challenge.loop1.{ZONE} -> " in err
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert "CNAME loop" in out + err
    assert code == 1
    rows = status(run_cli, ws)
    assert "CNAME loop" in rows["loop"]["last_error"]
    assert rows["fine"]["state"] == "ready"


def test_a_wrong_api_key_fails_only_that_certificate_with_the_providers_message(
    ws: Workspace, run_cli: RunCli, pdns: PowerDns, pebble_pdns: Pebble, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, pdns.api_key)
    monkeypatch.setenv("CERTCTL_TEST_BAD_KEY", "not-the-key")
    solvers = provider_solver(
        pdns, domains=[f"bad.{ZONE}"], key_env="CERTCTL_TEST_BAD_KEY"
    ) + provider_solver(pdns)
    write_base(ws, pebble_pdns, solvers)
    add_cert(ws, "bad", [f"bad.{ZONE}"])
    add_cert(ws, "good", [f"good.{ZONE}"])
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 1, out + err
    rows = status(run_cli, ws)
    assert rows["good"]["state"] == "ready"
    error = rows["bad"]["last_error"]
    assert "dns01 provider powerdns" in error and "401 Unauthorized" in error, error
    assert "not-the-key" not in out + err + error
    assert pdns.txt(f"_acme-challenge.bad.{ZONE}") == set()


def test_kill_9_during_propagation_then_apply_removes_the_leftover_record(
    ws: Workspace,
    run_cli: RunCli,
    pdns: PowerDns,
    pebble_pdns: Pebble,
    challtestsrv: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(KEY_ENV, pdns.api_key)
    # a name server that never shows the record: the order waits for propagation ...
    write_base(
        ws,
        pebble_pdns,
        provider_solver(pdns, zone=ZONE, nameservers=[challtestsrv.dns_address], propagation="120s"),
    )
    add_cert(ws, "crashy", [f"crashy.{ZONE}"])
    record = f"_acme-challenge.crashy.{ZONE}"
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", "-d", str(ws.desired)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        wait_until(lambda: pdns.txt(record) != set(), timeout=30, what="the challenge record in PowerDNS")
    finally:
        process.send_signal(signal.SIGKILL)  # ... and dies in the middle of it
        process.wait(10)
    assert pdns.txt(record) != set(), "the crash left the record (what recovery must remove)"

    write_base(ws, pebble_pdns, provider_solver(pdns, zone=ZONE))
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert pdns.txt(record) == set()
    spec = load(ws.desired, revision=False).issuers["pebble"].spec.acme
    assert build_acme_issuer("pebble", spec, ws.state).challenges.pending() == {}
    assert StateDir(ws.state).issued_for("crashy")


SCRIPT = """\
import json, os, sys, urllib.request
action, name, value = sys.argv[1], os.environ["CERTCTL_DNS_NAME"], sys.argv[2]
zone = os.environ["CERTCTL_DNS_ZONE"]
api, key = os.environ["PDNS_API"], os.environ["PDNS_KEY"]
def call(method, body=None):
    request = urllib.request.Request(f"{api}/api/v1/servers/localhost/zones/{zone}.", method=method,
                                     data=json.dumps(body).encode() if body else None,
                                     headers={"X-API-Key": key, "Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return json.loads(response.read() or b"null")
current = next((r for r in call("GET")["rrsets"] if r["name"] == name + "." and r["type"] == "TXT"), None)
values = {x["content"] for x in (current or {}).get("records", [])}
values = values | {f'"{value}"'} if action == "add" else values - {f'"{value}"'}
rrset = {"name": name + ".", "type": "TXT", "ttl": 60, "changetype": "REPLACE" if values else "DELETE",
         "records": [{"content": v, "disabled": False} for v in sorted(values)]}
call("PATCH", {"rrsets": [rrset]})
with open(os.environ["SCRIPT_LOG"], "a") as log:
    log.write(f"{action} {name} {zone}\\n")
"""


def test_the_script_solver_against_powerdns(
    ws: Workspace,
    run_cli: RunCli,
    pdns: PowerDns,
    pebble_pdns: Pebble,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    script = tmp_path / "pdns-txt.py"
    script.write_text(SCRIPT)
    calls = tmp_path / "calls.log"
    monkeypatch.setenv("PDNS_API", pdns.api_url)
    monkeypatch.setenv("PDNS_KEY", pdns.api_key)
    monkeypatch.setenv("SCRIPT_LOG", str(calls))
    solver = f"""\
      - dns01:
          script:
            create: ["{sys.executable}", "{script}", "add", "{{value}}"]
            delete: ["{sys.executable}", "{script}", "remove", "{{value}}"]
            timeout: 30s
            propagationTimeout: 20s
            nameservers: ["{pdns.address}"]
            resolvers: ["{pdns.address}"]
"""
    write_base(ws, pebble_pdns, solver)
    add_cert(ws, "scripted", [f"*.scripted.{ZONE}", f"scripted.{ZONE}"])
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert StateDir(ws.state).issued_for("scripted")
    record = f"_acme-challenge.scripted.{ZONE}"
    assert calls.read_text().splitlines() == [f"add {record} {ZONE}"] * 2 + [f"remove {record} {ZONE}"] * 2
    assert pdns.txt(record) == set()
