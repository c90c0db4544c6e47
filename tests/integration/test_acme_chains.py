"""Chains and lifetimes: ``preferredChain`` picks Pebble's alternate chain; short-lived certificates."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from reconciler.ports import IssueRequest, Material
from reconciler.support import pki
from reconciler.wiring import build_acme_issuer
from tests.integration.servers import Pebble, acme_spec, standalone

pytestmark = pytest.mark.integration


def _top_issuer(material: Material) -> str:
    top = x509.load_pem_x509_certificate(pki.split_pem_chain(material.chain_pem)[-1])
    return str(top.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_preferred_chain_picks_the_alternate(
    pebble_factory: Callable[..., Pebble], va_http_port: int, state_dir: Path
) -> None:
    pebble = pebble_factory(alternate_roots=1)
    default_root, alternate_root = pebble.root_name(0), pebble.root_name(1)
    assert default_root != alternate_root

    plain = build_acme_issuer("chains", acme_spec(pebble, [standalone(va_http_port)]), state_dir)
    assert _top_issuer(plain.issue(IssueRequest("c", ("chain.example.com",), "ecdsa-p256"))) == default_root

    spec = acme_spec(pebble, [standalone(va_http_port)], preferredChain=alternate_root)
    preferring = build_acme_issuer("chains", spec, state_dir)
    material = preferring.issue(IssueRequest("c", ("chain.example.com",), "ecdsa-p256"))
    assert _top_issuer(material) == alternate_root
    leaf = x509.load_pem_x509_certificate(material.cert_pem)
    assert leaf.issuer == x509.load_pem_x509_certificate(pki.split_pem_chain(material.chain_pem)[0]).subject

    missing = acme_spec(pebble, [standalone(va_http_port)], preferredChain="No Such Root")
    fallback = build_acme_issuer("chains", missing, state_dir).issue(
        IssueRequest("c", ("chain.example.com",), "ecdsa-p256")
    )
    assert _top_issuer(fallback) == default_root


def test_short_lived_certificates(
    pebble_factory: Callable[..., Pebble], va_http_port: int, state_dir: Path
) -> None:
    pebble = pebble_factory(validity_seconds=30)
    issuer = build_acme_issuer("short", acme_spec(pebble, [standalone(va_http_port)]), state_dir)
    first = issuer.issue(IssueRequest("s", ("short.example.com",), "ecdsa-p256"))
    assert 28 <= first.info.lifetime_seconds <= 30
    renewed = issuer.issue(IssueRequest("s", ("short.example.com",), "ecdsa-p256", replaces=first.info))
    assert renewed.info.serial != first.info.serial
    assert renewed.info.not_after >= first.info.not_after
