"""ACME Renewal Information (RFC 9773): the suggested window, and ``replaces`` on renewal orders.

Pebble 2.4.0 (Debian's) offers no renewalInfo in its directory — the first test checks that — so the
others put ``AriProxy`` in front of it: the proxy adds renewalInfo to the directory, answers
renewalInfo requests, and records each newOrder payload; orders are still Pebble's.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from reconciler.adapters.issuers.acme.issuer import AcmeIssuer
from reconciler.ports import IssueRequest
from reconciler.wiring import build_acme_issuer
from tests.integration.servers import AriProxy, Pebble, acme_spec, standalone

pytestmark = pytest.mark.integration


def _ari_id(cert_pem: bytes) -> str:
    """RFC 9773 §4.1, written out independently of the code under test."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    serial = cert.serial_number
    der = serial.to_bytes(
        (serial.bit_length() + 8) // 8, "big"
    )  # DER INTEGER content: a leading 0 if the top bit is set

    def enc(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).decode().rstrip("=")

    return f"{enc(aki)}.{enc(der)}"


@pytest.fixture
def ari_proxy(pebble: Pebble) -> Iterator[AriProxy]:
    proxy = AriProxy(pebble).start()
    yield proxy
    proxy.stop()


def _issuer(url: str, pebble: Pebble, port: int, state_dir: Path) -> AcmeIssuer:
    return build_acme_issuer("ari", acme_spec(pebble, [standalone(port)], directoryUrl=url), state_dir)


def test_plain_pebble_offers_no_renewal_info(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    assert "renewalInfo" not in pebble.directory()
    issuer = _issuer(pebble.directory_url, pebble, va_http_port, state_dir)
    material = issuer.issue(IssueRequest("p", ("plain.example.com",), "ecdsa-p256"))
    assert issuer.renewal_window(material.cert_pem) is None


def test_renewal_window_from_the_ca(
    ari_proxy: AriProxy, pebble: Pebble, va_http_port: int, state_dir: Path
) -> None:
    issuer = _issuer(ari_proxy.directory_url, pebble, va_http_port, state_dir)
    material = issuer.issue(IssueRequest("w", ("window.example.com",), "ecdsa-p256"))
    window = issuer.renewal_window(material.cert_pem)
    assert window is not None
    assert (window.start, window.end) == ari_proxy.window
    assert window.retry_after is not None
    assert ari_proxy.renewal_info_requests == [_ari_id(material.cert_pem)]


def test_renewal_order_names_the_certificate_it_replaces(
    ari_proxy: AriProxy, pebble: Pebble, va_http_port: int, state_dir: Path
) -> None:
    issuer = _issuer(ari_proxy.directory_url, pebble, va_http_port, state_dir)
    first = issuer.issue(IssueRequest("r", ("renew.example.com",), "ecdsa-p256"))
    second = issuer.issue(IssueRequest("r", ("renew.example.com",), "ecdsa-p256", replaces=first.info))
    assert second.info.serial != first.info.serial
    assert len(ari_proxy.orders) == 2
    assert "replaces" not in ari_proxy.orders[0]
    assert ari_proxy.orders[1]["replaces"] == _ari_id(first.cert_pem)
    assert ari_proxy.orders[1]["identifiers"] == [{"type": "dns", "value": "renew.example.com"}]


def test_replaces_known_from_the_issuing_ca_alone(
    ari_proxy: AriProxy, pebble: Pebble, va_http_port: int, tmp_path: Path
) -> None:
    # A certificate this state dir never issued (say, restored from a backup), from the same intermediate.
    other = _issuer(ari_proxy.directory_url, pebble, va_http_port, tmp_path / "elsewhere")
    foreign = other.issue(IssueRequest("x", ("foreign.example.com",), "ecdsa-p256"))
    issuer = _issuer(ari_proxy.directory_url, pebble, va_http_port, tmp_path / "here")
    issuer.issue(IssueRequest("y", ("other.example.com",), "ecdsa-p256"))  # learns the intermediate's key id
    issuer.issue(IssueRequest("x", ("foreign.example.com",), "ecdsa-p256", replaces=foreign.info))
    assert ari_proxy.orders[-1]["replaces"] == _ari_id(foreign.cert_pem)


def test_no_replaces_when_the_ca_offers_no_ari(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    proxy = AriProxy(pebble, offer_ari=False).start()
    try:
        issuer = _issuer(proxy.directory_url, pebble, va_http_port, state_dir)
        first = issuer.issue(IssueRequest("n", ("noari.example.com",), "ecdsa-p256"))
        issuer.issue(IssueRequest("n", ("noari.example.com",), "ecdsa-p256", replaces=first.info))
    finally:
        proxy.stop()
    assert len(proxy.orders) == 2
    assert all("replaces" not in order for order in proxy.orders)
