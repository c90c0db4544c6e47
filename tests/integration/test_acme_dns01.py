"""dns-01 through BIND 9 with RFC 2136 updates signed with TSIG; Pebble resolves through BIND."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.adapters.issuers.acme.issuer import AcmeIssuer
from reconciler.ports import IssueError, IssueRequest
from reconciler.wiring import build_acme_issuer
from tests.integration.servers import (
    Bind,
    ChallTestSrv,
    Pebble,
    acme_spec,
    rfc2136,
    standalone,
    without_hanging,
)

pytestmark = pytest.mark.integration

ENV = "CERTCTL_TEST_TSIG"


def _issuer(
    pebble: Pebble,
    bind: Bind,
    state_dir: Path,
    solvers: list[dict],  # type: ignore[type-arg]
    secret: str | None = None,
) -> AcmeIssuer:
    return build_acme_issuer(
        "bind", acme_spec(pebble, solvers), state_dir, environ={ENV: secret or bind.secret}
    )


def test_wildcard_with_its_apex(pebble_bind: Pebble, bind: Bind, state_dir: Path) -> None:
    zone = bind.zone
    issuer = _issuer(pebble_bind, bind, state_dir, [rfc2136(bind, ENV)])
    material = issuer.issue(IssueRequest("wild", (f"*.w1.{zone}", f"w1.{zone}"), "ecdsa-p256"))
    assert material.info.sans == (f"*.w1.{zone}", f"w1.{zone}")
    # both TXT values (wildcard and apex share the name) were removed afterwards
    assert bind.txt(f"_acme-challenge.w1.{zone}") == set()


def test_dns01_and_http01_in_one_certificate(
    pebble_bind: Pebble, bind: Bind, va_http_port: int, state_dir: Path
) -> None:
    zone = bind.zone
    solvers = [{"domains": [f"dns.{zone}"], **rfc2136(bind, ENV)}, standalone(va_http_port)]
    issuer = _issuer(pebble_bind, bind, state_dir, solvers)
    material = issuer.issue(IssueRequest("mixed", (f"*.dns.{zone}", f"web.{zone}"), "ecdsa-p256"))
    assert material.info.sans == (f"*.dns.{zone}", f"web.{zone}")
    assert bind.txt(f"_acme-challenge.dns.{zone}") == set()


def test_wrong_tsig_secret_is_a_clear_permanent_error(
    pebble_bind: Pebble, bind: Bind, state_dir: Path
) -> None:
    wrong = "c2VjcmV0LXRoYXQtaXMtbm90LXRoZS1rZXk="
    issuer = _issuer(pebble_bind, bind, state_dir, [rfc2136(bind, ENV)], secret=wrong)
    with pytest.raises(IssueError, match=r"rejected the TSIG signature of key certctl-test-key") as caught:
        issuer.issue(IssueRequest("badkey", (f"badkey.{bind.zone}",), "ecdsa-p256"))
    assert not caught.value.transient


def test_missing_secret_names_the_variable(pebble_bind: Pebble, bind: Bind, state_dir: Path) -> None:
    issuer = build_acme_issuer("bind", acme_spec(pebble_bind, [rfc2136(bind, ENV)]), state_dir, environ={})
    with pytest.raises(IssueError, match=rf"environment variable {ENV} is not set"):
        issuer.issue(IssueRequest("nosecret", (f"nosecret.{bind.zone}",), "ecdsa-p256"))


def test_propagation_wait_is_bounded_and_cleans_up(
    pebble_bind: Pebble, bind: Bind, challtestsrv: ChallTestSrv, state_dir: Path
) -> None:
    # challtestsrv stands in for an authoritative server that never receives the record
    solver = rfc2136(bind, ENV, nameservers=[bind.address, challtestsrv.dns_address], propagationTimeout="1s")
    issuer = _issuer(pebble_bind, bind, state_dir, [solver])
    # the record never appears on challtestsrv: only propagationTimeout can end the wait
    with pytest.raises(IssueError) as caught:
        without_hanging(
            lambda: issuer.issue(IssueRequest("slow", (f"slow.{bind.zone}",), "ecdsa-p256")), "the order"
        )
    message = str(caught.value)
    assert "did not appear on the zone's authoritative servers within 1s (propagationTimeout)" in message
    assert challtestsrv.dns_address in message
    assert bind.txt(f"_acme-challenge.slow.{bind.zone}") == set()


def test_name_outside_the_zone(pebble_bind: Pebble, bind: Bind, state_dir: Path) -> None:
    issuer = _issuer(pebble_bind, bind, state_dir, [rfc2136(bind, ENV)])
    with pytest.raises(IssueError, match=rf"outside the zone {bind.zone}"):
        issuer.issue(IssueRequest("out", ("www.example.org",), "ecdsa-p256"))
