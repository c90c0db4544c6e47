"""certctl itself (the CLI, the planner, the executor) against a real ACME CA: Pebble, and BIND for dns-01.

Each test writes a desired-state directory with an ``acme`` Issuer pointing at a Pebble of the
session (http-01 through the standalone listener on the port Pebble's VA connects to) and a PEM
store, and runs ``certctl`` in-process, as a user would run it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509

from reconciler.adapters.issuers.acme.retry import RetryPolicy
from reconciler.app.executor import Executor
from reconciler.app.loader import load
from reconciler.app.observe import observe
from reconciler.core.planner import plan as make_plan
from reconciler.state.statedir import StateDir
from reconciler.support.clock import FixedClock
from reconciler.wiring import build, build_acme_issuer
from tests.conftest import Workspace
from tests.integration.servers import AriProxy, Bind, Pebble, wait_until

pytestmark = pytest.mark.integration

RunCli = Callable[..., tuple[int, str, str]]
TSIG_ENV = "CERTCTL_E2E_TSIG"


# --- the desired-state directory ---------------------------------------------------------------------------


def http01(port: int) -> str:
    return f"    solvers:\n      - http01: {{standalone: {{address: 127.0.0.1, port: {port}}}}}\n"


def dns01(bind: Bind, nameserver: str, propagation: str) -> str:
    """A dns01 solver updating ``bind`` with TSIG and waiting for the record on ``nameserver``."""
    return f"""\
    solvers:
      - dns01:
          rfc2136:
            server: {bind.address}
            zone: {bind.zone}
            tsigKeyName: {bind.key_name}
            tsigAlgorithm: {bind.algorithm}
            tsigSecret: {{fromEnv: {TSIG_ENV}}}
            nameservers: ["{nameserver}"]
            propagationTimeout: {propagation}
"""


def write_base(
    ws: Workspace, directory_url: str, ca_bundle: str, solvers: str, *, concurrency: int = 8
) -> None:
    ws.write(
        "base.yaml",
        f"""\
apiVersion: certctl/v1
kind: Settings
metadata: {{name: settings}}
spec:
  stateDir: ../state
  concurrency: {concurrency}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {{name: pebble}}
spec:
  acme:
    directoryUrl: {directory_url}
    email: ops@example.com
    agreeToS: true
    caBundle: {ca_bundle}
    timeout: 10s
{solvers}---
apiVersion: certctl/v1
kind: Store
metadata: {{name: pem}}
spec:
  pemDirectory: {{path: ../pem}}
""",
    )


def add_cert(ws: Workspace, name: str, domains: list[str], file: str | None = None) -> None:
    quoted = ", ".join(f'"{d}"' for d in domains)
    body = (
        f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: {name}}}\nspec:\n  issuer: pebble\n"
        f"  domains: [{quoted}]\n  stores: [pem]\n"
    )
    if file is None:
        ws.write(f"{name}.yaml", body)
    else:
        path = ws.desired / file
        path.write_text((path.read_text() + "---\n" if path.exists() else "") + body)


def status(run_cli: RunCli, ws: Workspace) -> dict[str, dict[str, Any]]:
    code, out, err = run_cli("status", "-d", str(ws.desired), "--json")
    assert code == 0, err
    return {c["name"]: c for c in json.loads(out)["certificates"]}


def plan_json(run_cli: RunCli, ws: Workspace, *extra: str) -> dict[str, Any]:
    code, out, err = run_cli("plan", "-d", str(ws.desired), "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def ari_id(cert_pem: bytes) -> str:
    """RFC 9773 §4.1, written out independently of the code under test."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    serial = cert.serial_number

    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")

    return f"{enc(aki)}.{enc(serial.to_bytes((serial.bit_length() + 8) // 8, 'big'))}"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# --- tests -------------------------------------------------------------------------------------------------------


def test_apply_issues_and_the_second_plan_is_empty(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int
) -> None:
    write_base(ws, pebble.directory_url, pebble.ca_bundle, http01(va_http_port))
    add_cert(ws, "www", ["www.example.com", "example.com"])
    add_cert(ws, "api", ["api.example.com"])
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert "Apply complete: 4 done, 0 failed, 0 skipped." in out
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")
    assert (code, out.strip()) == (0, "No changes. Everything is up to date.")
    rows = status(run_cli, ws)
    assert {n: r["state"] for n, r in rows.items()} == {"www": "ready", "api": "ready"}
    served = x509.load_pem_x509_certificate((ws.pem / "www" / "cert.pem").read_bytes())
    assert served.issuer.rfc4514_string().startswith("CN=Pebble Intermediate CA")
    assert served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    ) == ["www.example.com", "example.com"]
    assert json.loads((ws.state / "acme" / "pebble" / "account.json").read_text())["uri"].startswith(
        pebble.directory_url.rsplit("/", 1)[0]
    )


@pytest.fixture
def ari_proxy(pebble: Pebble) -> Iterator[AriProxy]:
    proxy = AriProxy(pebble).start()
    yield proxy
    proxy.stop()


def test_ari_window_moves_the_renewal_and_the_order_names_the_old_certificate(
    ws: Workspace, run_cli: RunCli, ari_proxy: AriProxy, pebble: Pebble, va_http_port: int
) -> None:
    write_base(ws, ari_proxy.directory_url, pebble.ca_bundle, http01(va_http_port))
    add_cert(ws, "ari", ["ari.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    assert ari_proxy.renewal_info_requests == []  # nothing was issued when apply looked
    old = (ws.pem / "ari" / "cert.pem").read_bytes()
    thumbprint = StateDir(ws.state).issued_for("ari")[-1].info.thumbprint

    # The CA suggests a window that has already ended, long before 75% of a 5-year certificate: it wants
    # the certificate replaced now.
    now = datetime.now(UTC).replace(microsecond=0)
    ari_proxy.window = (now - timedelta(hours=2), now - timedelta(hours=1))
    plan = plan_json(run_cli, ws)
    assert ari_proxy.renewal_info_requests == [ari_id(old)]
    renew = next(a for a in plan["actions"] if a["kind"] == "renew")
    assert renew["reason_code"] == "RenewalWindowPassed"
    assert "the CA's renewal window (ARI) ended" in renew["reason"]
    summary = next(c for c in plan["certificates"] if c["name"] == "ari")
    assert ari_proxy.window[0] <= parse_time(summary["renew_at"]) <= ari_proxy.window[1]

    attempts = StateDir(ws.state).attempts()["ari"]
    assert attempts.ari_for == thumbprint
    assert (attempts.ari_window_start, attempts.ari_window_end) == ari_proxy.window
    assert attempts.ari_fetched_at is not None and attempts.ari_next_fetch is not None
    assert (
        timedelta(hours=6)
        <= attempts.ari_next_fetch - attempts.ari_fetched_at
        <= timedelta(hours=6, seconds=5)
    )

    _, text, _ = run_cli("plan", "-d", str(ws.desired))
    assert "the CA wants this certificate replaced now" in text
    assert len(ari_proxy.renewal_info_requests) == 1  # the CA's Retry-After (6 h) is honoured

    # The order's `replaces` comes from the old certificate itself, not from the issuer's records.
    (ws.state / "acme" / "pebble" / "ari.jsonl").unlink()
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert "renew" in out
    assert len(ari_proxy.orders) == 2
    assert "replaces" not in ari_proxy.orders[0]
    assert ari_proxy.orders[1]["replaces"] == ari_id(old)
    assert (ws.pem / "ari" / "cert.pem").read_bytes() != old

    # The new certificate gets its own window; one in the future (still before 75%) leaves nothing to do now.
    ari_proxy.window = (now + timedelta(days=20), now + timedelta(days=21))
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode", "--json")
    assert code == 0, out
    summary = next(c for c in json.loads(out)["certificates"] if c["name"] == "ari")
    assert ari_proxy.window[0] <= parse_time(summary["renew_at"]) <= ari_proxy.window[1]
    assert len(ari_proxy.renewal_info_requests) == 2


def test_a_blocked_name_fails_only_its_certificate_and_renew_overrides_the_backoff(
    ws: Workspace, run_cli: RunCli, pebble_factory: Callable[..., Pebble], va_http_port: int
) -> None:
    pebble = pebble_factory(blocklist=("blocked.example.org",))
    write_base(ws, pebble.directory_url, pebble.ca_bundle, http01(va_http_port))
    add_cert(ws, "ok1", ["ok1.example.com"])
    add_cert(ws, "bad", ["www.blocked.example.org", "fine.example.com"])
    add_cert(ws, "ok2", ["ok2.example.com"])
    started = datetime.now(UTC)
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 1, out + err
    assert "Apply complete: 4 done, 1 failed, 1 skipped." in out
    assert "failed: issue/bad:" in out and "rejectedIdentifier" in out

    rows = status(run_cli, ws)
    assert rows["ok1"]["state"] == rows["ok2"]["state"] == "ready"
    bad = rows["bad"]
    assert bad["state"] == "deferred"
    assert "rejectedIdentifier" in bad["last_error"] and "www.blocked.example.org" in bad["last_error"]
    deferred_until = parse_time(bad["deferred_until"])
    assert (
        started + timedelta(minutes=59) <= deferred_until <= datetime.now(UTC) + timedelta(hours=1, seconds=5)
    )
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")
    # no action until then, but pending work: the plan says why, when, and how to retry now (exit 2)
    assert code == 2 and "deferred until" in out and "1 certificate deferred (bad until" in out

    code, out, _ = run_cli("renew", "bad", "-d", str(ws.desired))
    assert code == 1
    assert "failed: issue/bad:" in out and "rejectedIdentifier" in out
    issue_runs = {
        e["run"]
        for e in StateDir(ws.state).journal_entries()
        if e["event"] == "intent" and e["action"] == "issue/bad"
    }
    assert len(issue_runs) == 2  # attempted again despite the backoff
    attempts = StateDir(ws.state).attempts()["bad"]
    assert attempts.consecutive_failures == 2
    assert attempts.next_retry is not None and attempts.next_retry - (
        attempts.last_attempt or started
    ) >= timedelta(hours=2)


def test_a_ca_that_is_down_backs_off_and_the_run_after_the_backoff_succeeds(
    ws: Workspace, pebble: Pebble, va_http_port: int
) -> None:
    proxy = AriProxy(pebble, offer_ari=False)  # the CA's address; nothing listens there yet
    write_base(ws, proxy.directory_url, pebble.ca_bundle, http01(va_http_port))
    add_cert(ws, "later", ["later.example.com"])
    desired = load(ws.desired)
    world = build(desired, StateDir(ws.state))
    quick = RetryPolicy(attempts=3, budget=2.0, initial=0.1)
    world.issuers["pebble"] = build_acme_issuer(
        "pebble", desired.issuers["pebble"].spec.acme, ws.state, retry_policy=quick
    )

    t0 = datetime.now(UTC).replace(microsecond=0)
    result = Executor(world, clock=FixedClock(t0)).run(make_plan(desired, observe(world), t0))
    failed = {o.action.id: o for o in result.outcomes if o.status == "failed"}
    assert set(failed) == {"issue/later"}
    assert proxy.directory_url in (failed["issue/later"].error or "")
    assert "connection refused" in (failed["issue/later"].error or "")
    attempts = world.state.attempts()["later"]
    assert attempts.next_retry == t0 + timedelta(hours=1)

    proxy.start()  # the CA is back
    try:
        waiting = make_plan(desired, observe(world), t0 + timedelta(minutes=59))
        assert waiting.actions == ()
        assert waiting.certificates[0].state.value == "deferred"
        t1 = t0 + timedelta(hours=1, seconds=1)
        after = make_plan(desired, observe(world), t1)
        assert [a.id for a in after.actions] == ["issue/later", "install/later/store/pem"]
        result = Executor(world, clock=FixedClock(t1)).run(after)
    finally:
        proxy.stop()
    assert result.ok, [o.error for o in result.outcomes]
    attempts = world.state.attempts()["later"]
    assert (attempts.consecutive_failures, attempts.last_error, attempts.next_retry) == (0, None, None)
    assert make_plan(desired, observe(world), t1).actions == ()


def test_renewal_at_75_percent_in_real_time(
    ws: Workspace, run_cli: RunCli, pebble_factory: Callable[..., Pebble], va_http_port: int
) -> None:
    pebble = pebble_factory(validity_seconds=12)
    write_base(ws, pebble.directory_url, pebble.ca_bundle, http01(va_http_port))
    add_cert(ws, "short", ["short.example.com"])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    first = StateDir(ws.state).issued_for("short")[-1].info
    assert 10 <= first.lifetime_seconds <= 12
    due_at = first.not_before + (first.not_after - first.not_before) * 0.75
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0

    seen: dict[str, Any] = {}

    def renewal_planned() -> bool:
        plan = plan_json(run_cli, ws)
        seen["at"] = datetime.now(UTC)
        seen["actions"] = {a["id"]: a for a in plan["actions"]}
        return "renew/short" in seen["actions"]

    wait_until(renewal_planned, 15, "a renewal in the plan")
    assert seen["at"] >= due_at - timedelta(seconds=1)  # not before 75% (the plan works in whole seconds)
    assert seen["actions"]["renew/short"]["reason_code"] == "RenewalDue"
    assert "renewal point is 75% of lifetime" in seen["actions"]["renew/short"]["reason"]

    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    second = StateDir(ws.state).issued_for("short")[-1].info
    assert second.serial != first.serial and second.not_after > first.not_after
    # the store keeps the old version, superseded, beside the new live one (cleanup waits cleanupAfter)
    versions = sorted((ws.pem / "short" / "versions").iterdir())
    assert [first.thumbprint[:8].lower() in v.name.lower() for v in versions].count(True) == 1, versions
    assert len(versions) == 2
    old_version = next(v for v in versions if first.thumbprint[:8].lower() in v.name.lower())
    assert x509.load_pem_x509_certificate((old_version / "cert.pem").read_bytes()).serial_number == int(
        first.serial, 16
    )
    assert x509.load_pem_x509_certificate((ws.pem / "short" / "cert.pem").read_bytes()).serial_number == int(
        second.serial, 16
    )
    entries = [e for e in StateDir(ws.state).journal_entries() if e.get("event") in ("intent", "done")]
    order = [(e["event"], e["action"]) for e in entries[-4:]]
    assert order == [
        ("intent", "renew/short"),
        ("done", "renew/short"),
        ("intent", "install/short/store/pem"),
        ("done", "install/short/store/pem"),
    ]
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0


def test_wildcard_and_apex_through_bind(
    ws: Workspace,
    run_cli: RunCli,
    public_bind: Bind,
    pebble_public_bind: Pebble,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    zone = public_bind.zone
    monkeypatch.setenv(TSIG_ENV, public_bind.secret)
    write_base(
        ws,
        pebble_public_bind.directory_url,
        pebble_public_bind.ca_bundle,
        dns01(public_bind, public_bind.address, "10s"),
    )
    add_cert(ws, "wild", [f"*.{zone}", zone])
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    info = StateDir(ws.state).issued_for("wild")[-1].info
    assert info.sans == (f"*.{zone}", zone)
    assert public_bind.txt(f"_acme-challenge.{zone}") == set()  # both TXT values removed
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0


def test_twenty_certificates_in_parallel_one_order_each(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int
) -> None:
    write_base(ws, pebble.directory_url, pebble.ca_bundle, http01(va_http_port), concurrency=8)
    names = [f"par{i:02d}" for i in range(20)]
    for name in names:
        add_cert(ws, name, [f"{name}.example.com", f"www.{name}.example.com"], file="many.yaml")
    code, out, err = run_cli("apply", "-d", str(ws.desired), "--log-format", "json")
    assert code == 0, out + err[-3000:]
    assert "Apply complete: 40 done, 0 failed, 0 skipped." in out

    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    orders = [e["certificate"] for e in events if e.get("event") == "acme.order.created"]
    assert sorted(orders) == names  # every certificate had exactly one order
    assert [e["event"] for e in events if e.get("event", "").startswith("acme.account.")] == [
        "acme.account.key_created",
        "acme.account.registered",
    ]  # one account for all the parallel orders

    # From the journal: the issuances overlapped, never more than the configured 8 at once.
    spans: dict[str, list[datetime]] = {}
    for e in StateDir(ws.state).journal_entries():
        if str(e.get("action", "")).startswith("issue/") and e["event"] in ("intent", "done"):
            spans.setdefault(e["action"], []).append(parse_time(e["at"]))
    assert len(spans) == 20 and all(len(s) == 2 for s in spans.values())
    edges = sorted(
        [(s[0], 1) for s in spans.values()] + [(s[1], -1) for s in spans.values()], key=lambda x: (x[0], x[1])
    )
    running, most = 0, 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert 4 <= most <= 8, most


def test_kill_9_while_a_dns_challenge_is_out_then_the_next_apply_removes_it(
    ws: Workspace,
    run_cli: RunCli,
    public_bind: Bind,
    pebble_public_bind: Pebble,
    challtestsrv: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash mid-order must not leave a challenge record behind: the next apply removes it, then issues."""
    import os
    import signal
    import subprocess
    import sys

    zone = public_bind.zone
    monkeypatch.setenv(TSIG_ENV, public_bind.secret)
    # first: a name server that never shows the record, so the order waits for propagation ...
    write_base(
        ws,
        pebble_public_bind.directory_url,
        pebble_public_bind.ca_bundle,
        dns01(public_bind, challtestsrv.dns_address, "120s"),
    )
    add_cert(ws, "crashy", [f"crashy.{zone}"])
    record = f"_acme-challenge.crashy.{zone}"
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "apply", "-d", str(ws.desired)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=os.environ.copy(),
    )
    try:
        wait_until(lambda: public_bind.txt(record) != set(), timeout=30, what="the challenge record in BIND")
    finally:
        process.send_signal(signal.SIGKILL)  # ... and dies in the middle of it
        process.wait(10)
    assert public_bind.txt(record) != set(), "the crash left the record (what recovery must remove)"
    pending = (ws.state / "acme" / "pebble" / "challenges.jsonl").read_text()
    assert record.removeprefix("_acme-challenge.") in pending

    # the next apply (with a name server that does show it) first removes the leftover, then issues
    write_base(
        ws,
        pebble_public_bind.directory_url,
        pebble_public_bind.ca_bundle,
        dns01(public_bind, public_bind.address, "10s"),
    )
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    assert public_bind.txt(record) == set()
    assert (
        build_acme_issuer(
            "pebble",
            load(ws.desired, revision=False).issuers["pebble"].spec.acme,
            ws.state,
        ).challenges.pending()
        == {}
    )
    assert StateDir(ws.state).issued_for("crashy")
