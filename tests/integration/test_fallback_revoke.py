"""Issue 14 against real Pebble: fallback issuers (two Pebbles as two CAs, one stopped or refusing every
order), revocation through Pebble's revokeCert (checked on Pebble's management API), ACME profiles (through
the proxy that adds meta.profiles, as Pebble 2.4 has none), account contact updates and key rollover."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from acme import messages
from acme.client import ClientV2

from reconciler.adapters.issuers.acme.account import AccountStore
from reconciler.adapters.issuers.acme.retry import RetryPolicy
from reconciler.adapters.issuers.acme.transport import Network
from reconciler.app.executor import Executor
from reconciler.app.loader import load
from reconciler.app.observe import observe
from reconciler.core.planner import current_version
from reconciler.core.planner import plan as make_plan
from reconciler.core.render import status_text
from reconciler.core.status import status_rows
from reconciler.state.statedir import StateDir
from reconciler.support.clock import FixedClock
from reconciler.wiring import build, build_acme_issuer
from tests.conftest import BASE, Workspace
from tests.integration.servers import AriProxy, Pebble

pytestmark = pytest.mark.integration

RunCli = Callable[..., tuple[int, str, str]]
QUICK = RetryPolicy(attempts=2, budget=1.0, initial=0.05, maximum=0.1)


def issuer_doc(
    name: str, url: str, ca_bundle: str, port: int, extra: str = "", email: str = "ops@example.com"
) -> str:
    return f"""\
apiVersion: certctl/v1
kind: Issuer
metadata: {{name: {name}}}
spec:
  acme:
    directoryUrl: {url}
    email: {email}
    agreeToS: true
    caBundle: {ca_bundle}
    timeout: 5s
{extra}    solvers:
      - http01: {{standalone: {{address: 127.0.0.1, port: {port}}}}}
---
"""


def write(ws: Workspace, issuers: str, cert_issuer: str, domains: list[str]) -> None:
    ws.write("base.yaml", issuers + BASE)  # with the tests' Settings, local Issuer and PEM store
    quoted = ", ".join(f'"{d}"' for d in domains)
    ws.write(
        "www.yaml",
        f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: www}}\nspec:\n"
        f"  issuer: {cert_issuer}\n  domains: [{quoted}]\n  stores: [pem]\n",
    )


def quick_world(ws: Workspace) -> Any:
    """The world of the workspace, its ACME issuers retrying for about a second (a CA that is down fails fast)."""
    desired = load(ws.desired)
    world = build(desired, StateDir(ws.state))
    for name, issuer in desired.issuers.items():
        if issuer.spec.acme is not None:
            world.issuers[name] = build_acme_issuer(name, issuer.spec.acme, ws.state, retry_policy=QUICK)
    return desired, world


def apply(desired: Any, world: Any, forced: frozenset[str] = frozenset()) -> Any:
    now = datetime.now(UTC)  # not rounded: two applies within one second must still order their versions
    result = Executor(world, clock=FixedClock(now)).run(make_plan(desired, observe(world), now, forced))
    return result


def issued_by_pebble(ws: Workspace, run_cli: RunCli, pebble: Pebble, port: int, domain: str) -> Any:
    """One certificate ``www`` for ``domain`` from one Issuer ``pebble``, applied; its current version."""
    write(ws, issuer_doc("pebble", pebble.directory_url, pebble.ca_bundle, port), "pebble", [domain])
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    return current(ws)


def current(ws: Workspace) -> Any:
    version = current_version(StateDir(ws.state).issued_for("www"))
    assert version is not None
    return version


# --- fallback issuers ---------------------------------------------------------------------------------------


def test_a_stopped_ca_falls_back_to_the_second_and_the_first_serves_again_at_the_next_renewal(
    ws: Workspace, pebble: Pebble, pebble_factory: Callable[..., Pebble], va_http_port: int
) -> None:
    second = pebble_factory(name="second-ca")
    primary = AriProxy(pebble, offer_ari=False)  # the first CA's address: stopped, nothing listens there yet
    write(
        ws,
        issuer_doc("first", primary.directory_url, pebble.ca_bundle, va_http_port)
        + issuer_doc("second", second.directory_url, second.ca_bundle, va_http_port),
        "[first, second]",
        ["fallback.example.com"],
    )
    desired, world = quick_world(ws)
    plan = make_plan(desired, observe(world), datetime.now(UTC))
    issue = next(a for a in plan.actions if a.id == "issue/www")
    assert issue.to_json()["detail"]["issuer"] == "first" and issue.to_json()["detail"]["fallbacks"] == [
        "second"
    ]

    result = apply(desired, world)
    assert result.ok, [o.error for o in result.outcomes]
    version = current(ws)
    assert version.issuer == "second" and version.issuer_id.startswith(
        f"acme:{second.directory_url}".lower()[:20]
    )
    assert "first could not serve" in (version.issuer_note or "") and "connection refused" in (
        version.issuer_note or ""
    )
    assert world.state.attempts()["www"].consecutive_failures == 0  # a fallback that served is no failure

    now = datetime.now(UTC)
    plan = make_plan(desired, observe(world), now)
    assert plan.actions == (), "issued by a listed Issuer: no reissue"
    note = next(n for n in plan.notes if n.code == "FallbackIssuer")
    assert "issued by second, not first" in note.message and "next renewal" in note.message
    row = status_rows(desired, observe(world), now)[0]
    assert (row.issuer, row.state.value) == ("second", "ready")
    assert "first could not serve" in (row.issuer_note or "")
    assert "www: issued by second (first could not serve: " in status_text([row])

    primary.start()  # the first CA is back: nothing happens until the next renewal
    try:
        assert make_plan(desired, observe(world), datetime.now(UTC)).actions == ()
        result = apply(desired, world, frozenset({"www"}))  # the next renewal (forced here)
        assert result.ok, [o.error for o in result.outcomes]
    finally:
        primary.stop()
    assert len(primary.orders) == 1
    version = current(ws)
    assert (version.issuer, version.issuer_note) == ("first", None)


@pytest.mark.parametrize(("status", "problem"), [(500, "serverInternal"), (429, "rateLimited")])
def test_a_ca_refusing_every_order_falls_back(
    ws: Workspace,
    pebble: Pebble,
    pebble_factory: Callable[..., Pebble],
    va_http_port: int,
    status: int,
    problem: str,
) -> None:
    second = pebble_factory(name="second-ca")
    refusing = AriProxy(pebble, offer_ari=False, fail_orders=(status, problem)).start()
    try:
        write(
            ws,
            issuer_doc("first", refusing.directory_url, pebble.ca_bundle, va_http_port)
            + issuer_doc("second", second.directory_url, second.ca_bundle, va_http_port),
            "[first, second]",
            [f"refused-{status}.example.com"],
        )
        desired, world = quick_world(ws)
        result = apply(desired, world)
    finally:
        refusing.stop()
    assert result.ok, [o.error for o in result.outcomes]
    assert refusing.orders, "the first CA was asked first"
    version = current(ws)
    assert version.issuer == "second" and problem in (version.issuer_note or "")


def test_a_failure_that_is_the_certificates_own_does_not_fall_through(
    ws: Workspace, pebble_factory: Callable[..., Pebble], va_http_port: int
) -> None:
    strict = pebble_factory(name="strict-ca", blocklist=("blocked.example.com",))
    second = pebble_factory(name="second-ca")
    watched = AriProxy(second, offer_ari=False).start()
    try:
        write(
            ws,
            issuer_doc("first", strict.directory_url, strict.ca_bundle, va_http_port)
            + issuer_doc("second", watched.directory_url, second.ca_bundle, va_http_port),
            "[first, second]",
            ["blocked.example.com"],
        )
        desired, world = quick_world(ws)
        result = apply(desired, world)
    finally:
        watched.stop()
    failed = next(o for o in result.outcomes if o.action.id == "issue/www")
    assert failed.status == "failed" and "rejectedIdentifier" in (failed.error or "")
    assert watched.orders == [], "a refused name is the spec's fault: the second CA is never asked"
    assert world.state.attempts()["www"].consecutive_failures == 1


def test_every_ca_down_is_one_failure_naming_each(ws: Workspace, pebble: Pebble, va_http_port: int) -> None:
    one, two = AriProxy(pebble, offer_ari=False), AriProxy(pebble, offer_ari=False)  # neither listens
    write(
        ws,
        issuer_doc("first", one.directory_url, pebble.ca_bundle, va_http_port)
        + issuer_doc("second", two.directory_url, pebble.ca_bundle, va_http_port),
        "[first, second]",
        ["down.example.com"],
    )
    desired, world = quick_world(ws)
    result = apply(desired, world)
    error = next(o for o in result.outcomes if o.action.id == "issue/www").error or ""
    assert "first could not serve" in error and "second:" in error and error.count("connection refused") == 2
    attempts = world.state.attempts()["www"]
    assert attempts.consecutive_failures == 1 and attempts.next_retry is not None


# --- revocation ----------------------------------------------------------------------------------------------


def pebble_status(pebble: Pebble, serial_hex: str) -> str:
    response = requests.get(
        f"{pebble.management_url}/cert-status-by-serial/{serial_hex}", verify=pebble.ca_bundle, timeout=5
    )
    response.raise_for_status()
    return str(response.json()["Status"])


def test_revoke_through_pebble_then_the_next_apply_replaces_it(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int
) -> None:
    first = issued_by_pebble(ws, run_cli, pebble, va_http_port, "revoke.example.com")
    assert pebble_status(pebble, first.info.serial) == "Valid"
    code, out, err = run_cli("revoke", "www", "-d", str(ws.desired), "--reason", "keyCompromise", "--yes")
    assert code == 0, out + err
    assert pebble_status(pebble, first.info.serial) == "Revoked"
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    renew = next(a for a in json.loads(out)["actions"] if a["id"] == "renew/www")
    assert renew["reason_code"] == "Revoked" and renew["detail"]["new_key"] is True
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    second = current(ws)
    assert second.info.serial != first.info.serial and second.revocation is None
    assert pebble_status(pebble, second.info.serial) == "Valid"
    assert run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")[0] == 0


def test_revoke_with_the_certificate_key_when_the_account_is_not_the_one_that_issued_it(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int
) -> None:
    first = issued_by_pebble(ws, run_cli, pebble, va_http_port, "revoke-by-key.example.com")
    for name in ("account.key", "account.json"):  # the account is lost: the next one is another account
        (ws.state / "acme" / "pebble" / name).unlink()
    code, out, err = run_cli("revoke", "www", "-d", str(ws.desired), "--yes")
    assert code == 0, out + err
    assert pebble_status(pebble, first.info.serial) == "Revoked"


# --- profiles -------------------------------------------------------------------------------------------------


PROFILES = {"classic": "the usual 90 days", "shortlived": "about six days"}


def test_the_order_carries_the_profile_and_renewal_follows_the_short_lifetime(
    ws: Workspace, run_cli: RunCli, pebble_factory: Callable[..., Pebble], va_http_port: int
) -> None:
    six_days = pebble_factory(name="short-lived", validity_seconds=6 * 86400)
    proxy = AriProxy(six_days, offer_ari=False, profiles=PROFILES).start()
    try:
        write(
            ws,
            issuer_doc(
                "pebble", proxy.directory_url, six_days.ca_bundle, va_http_port, "    profile: shortlived\n"
            ),
            "pebble",
            ["short.example.com"],
        )
        ws.write("www.yaml", (ws.desired / "www.yaml").read_text() + "  renewal: {beforeExpiry: 30d}\n")
        code, out, err = run_cli("plan", "-d", str(ws.desired), "--json")
        assert code == 0, err
        assert (
            next(a for a in json.loads(out)["actions"] if a["id"] == "issue/www")["detail"]["profile"]
            == "shortlived"
        )
        assert run_cli("apply", "-d", str(ws.desired))[0] == 0
    finally:
        proxy.stop()
    assert [o.get("profile") for o in proxy.orders] == ["shortlived"]
    info = current(ws).info
    assert abs(info.not_after - info.not_before - timedelta(days=6)) <= timedelta(
        seconds=1
    )  # Pebble: 6 d - 1 s
    _, out, _ = run_cli("status", "-d", str(ws.desired), "--json")
    renew_at = datetime.fromisoformat(json.loads(out)["certificates"][0]["renew_at"].replace("Z", "+00:00"))
    assert abs(renew_at - info.not_before - timedelta(days=4, hours=12)) <= timedelta(seconds=1), (
        "75% of six days, not 30 days before expiry"
    )


def test_an_unknown_profile_is_a_plan_error_then_a_validation_error(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int
) -> None:
    proxy = AriProxy(pebble, offer_ari=False, profiles=PROFILES).start()
    try:
        write(
            ws,
            issuer_doc(
                "pebble", proxy.directory_url, pebble.ca_bundle, va_http_port, "    profile: tlsclient\n"
            ),
            "pebble",
            ["profile.example.com"],
        )
        code, _, err = run_cli("validate", "-d", str(ws.desired))
        assert code == 0, "the directory has not been fetched yet: nothing to check offline"
        code, _, err = run_cli("plan", "-d", str(ws.desired))
        assert code == 1
        assert "profile 'tlsclient', which its CA does not offer (it offers: classic, shortlived)" in err
        code, _, err = run_cli("validate", "-d", str(ws.desired))
    finally:
        proxy.stop()
    assert code == 1
    assert "base.yaml:11:14: spec.acme.profile: Issuer pebble asks for profile 'tlsclient'" in err
    assert proxy.orders == []


def test_a_profile_at_a_ca_without_profiles_fails_the_order_clearly(
    ws: Workspace, pebble: Pebble, va_http_port: int, state_dir: Path
) -> None:
    from reconciler.ports import IssueError, IssueRequest
    from tests.integration.servers import acme_spec, standalone

    issuer = build_acme_issuer(
        "plain", acme_spec(pebble, [standalone(va_http_port)], profile="shortlived"), state_dir
    )
    with pytest.raises(IssueError) as caught:
        issuer.issue(IssueRequest("p", ("plain-profile.example.com",), "ecdsa-p256"))
    assert "offers no profiles" in str(caught.value) and not caught.value.outage


# --- accounts --------------------------------------------------------------------------------------------------


def account_contact(ws: Workspace, pebble: Pebble, issuer: str = "pebble") -> tuple[str, ...]:
    store = AccountStore(ws.state / "acme" / issuer)
    net = Network(QUICK, key=store.key(), alg=store.alg(), verify=pebble.ca_bundle)
    client = ClientV2(messages.Directory.from_json(net.get(pebble.directory_url).json()), net)
    regr = client.query_registration(messages.RegistrationResource(uri="", body=messages.Registration()))
    return tuple(regr.body.contact)


def test_a_changed_email_updates_the_account_contact(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int
) -> None:
    issued_by_pebble(ws, run_cli, pebble, va_http_port, "contact.example.com")
    account = json.loads((ws.state / "acme" / "pebble" / "account.json").read_text())
    assert account_contact(ws, pebble) == ("mailto:ops@example.com",)
    base = (ws.desired / "base.yaml").read_text().replace("email: ops@example.com", "email: pki@example.org")
    (ws.desired / "base.yaml").write_text(base)
    assert run_cli("apply", "-d", str(ws.desired))[0] == 0  # nothing to issue: the contact is updated anyway
    assert account_contact(ws, pebble) == ("mailto:pki@example.org",)
    after = json.loads((ws.state / "acme" / "pebble" / "account.json").read_text())
    assert (after["uri"], after["email"], after["created"]) == (
        account["uri"],
        "pki@example.org",
        account["created"],
    )


def test_account_key_rollover(ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int) -> None:
    issued_by_pebble(ws, run_cli, pebble, va_http_port, "rollover.example.com")
    folder = ws.state / "acme" / "pebble"
    old_key = (folder / "account.key").read_bytes()
    uri = json.loads((folder / "account.json").read_text())["uri"]
    code, out, err = run_cli("account", "rollover", "pebble", "-d", str(ws.desired))
    assert code == 0, out + err
    assert uri in out
    new_key = (folder / "account.key").read_bytes()
    assert new_key != old_key and not (folder / "account.key.new").exists()
    assert (folder / "account.key").stat().st_mode & 0o777 == 0o600
    assert (
        run_cli("renew", "www", "-d", str(ws.desired))[0] == 0
    )  # orders go on with the new key, same account
    assert json.loads((folder / "account.json").read_text())["uri"] == uri
    (folder / "account.key").write_bytes(old_key)  # the old key no longer opens the account
    store = AccountStore(folder)
    net = Network(QUICK, key=store.key(), alg=store.alg(), verify=pebble.ca_bundle)
    client = ClientV2(messages.Directory.from_json(net.get(pebble.directory_url).json()), net)
    with pytest.raises(messages.Error) as caught:
        client.query_registration(messages.RegistrationResource(uri="", body=messages.Registration()))
    assert "accountDoesNotExist" in str(caught.value.typ)


def test_an_interrupted_rollover_is_settled(
    ws: Workspace, run_cli: RunCli, pebble: Pebble, va_http_port: int
) -> None:
    issued_by_pebble(ws, run_cli, pebble, va_http_port, "staged.example.com")
    folder = ws.state / "acme" / "pebble"
    old_key = (folder / "account.key").read_bytes()
    AccountStore(folder).stage_key()  # a crash right after staging: the CA never saw this key
    assert run_cli("renew", "www", "-d", str(ws.desired))[0] == 0
    assert not (folder / "account.key.new").exists() and (folder / "account.key").read_bytes() == old_key


# --- the CRL an ACME CA publishes (Pebble 2.4 publishes none: a CA and its CRL made here, served over HTTP) -----


def _crl_world(
    tmp_path: Path, revoked_serials: list[int], sign_with_other_key: bool = False
) -> tuple[Any, Any, Any]:
    import http.server
    import threading

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from reconciler.ports import Material
    from reconciler.support import pki
    from tests.integration.servers import LOOPBACK, free_port, pem, self_signed_ca

    ca_key, ca_cert = self_signed_ca("crl test CA")
    port = free_port()
    url = f"http://{LOOPBACK}:{port}/ca.crl"
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "crl.example.com")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(revoked_serials[0] if revoked_serials else 4242)
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.CRLDistributionPoints(
                [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    signer = ec.generate_private_key(ec.SECP256R1()) if sign_with_other_key else ca_key
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + timedelta(days=1))
    )
    for serial in revoked_serials:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(now - timedelta(minutes=5))
            .add_extension(x509.CRLReason(x509.ReasonFlags.superseded), critical=False)
            .build()
        )
    body = builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.DER)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer((LOOPBACK, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    material = Material(pem(leaf), pem(ca_cert), pem(key), pki.cert_info(leaf))
    from reconciler.core.spec import Acme

    spec = Acme.model_validate(
        {"directoryUrl": "https://127.0.0.1:9/dir", "solvers": [{"http01": {"standalone": {}}}]}
    )
    return build_acme_issuer("crl", spec, tmp_path / "state"), material, server


def test_an_acme_certificate_listed_in_its_crl_is_found_revoked(tmp_path: Path) -> None:
    issuer, material, server = _crl_world(tmp_path, [0x51DE])
    try:
        status = issuer.revocation_status(material)
    finally:
        server.shutdown()
    assert (
        status is not None
        and status.reason == "superseded"
        and status.source.startswith("CRL http://127.0.0.1:")
    )


def test_an_acme_certificate_absent_from_its_crl_is_not_revoked(tmp_path: Path) -> None:
    issuer, material, server = _crl_world(tmp_path, [])
    try:
        assert issuer.revocation_status(material) is None
    finally:
        server.shutdown()


def test_a_crl_not_signed_by_the_issuer_never_counts(tmp_path: Path) -> None:
    from reconciler.ports import RevokeError

    issuer, material, server = _crl_world(tmp_path, [0x51DE], sign_with_other_key=True)
    try:
        with pytest.raises(RevokeError, match="not signed by"):
            issuer.revocation_status(material)
    finally:
        server.shutdown()
