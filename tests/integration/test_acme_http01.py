"""ACME issuance from a real Pebble with http-01: the built-in listener and a webroot served by nginx."""

from __future__ import annotations

import json
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from reconciler.adapters.issuers.acme.issuer import AcmeIssuer
from reconciler.adapters.solvers.http01 import LISTENERS
from reconciler.ports import IssueError, IssueRequest
from reconciler.support import pki
from reconciler.wiring import build_acme_issuer
from tests.integration.servers import LOOPBACK, Nginx, Pebble, acme_spec, free_port, standalone

pytestmark = pytest.mark.integration


def _issuer(pebble: Pebble, state_dir: Path, solvers: list[dict], **fields: object) -> AcmeIssuer:  # type: ignore[type-arg]
    return build_acme_issuer("pebble", acme_spec(pebble, solvers, **fields), state_dir)


def test_issue_with_the_standalone_listener(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    issuer = _issuer(pebble, state_dir, [standalone(va_http_port)])
    material = issuer.issue(IssueRequest("www", ("www.example.com", "example.com"), "ecdsa-p256"))

    assert material.info.sans == ("www.example.com", "example.com")
    assert material.info.subject == "www.example.com"
    assert material.info.key_algorithm == "ecdsa-p256"
    assert pki.key_matches(material.cert_pem, material.key_pem)
    chain = pki.split_pem_chain(material.chain_pem)
    assert chain, "the intermediate must come with the certificate"
    leaf = x509.load_pem_x509_certificate(material.cert_pem)
    assert leaf.issuer == x509.load_pem_x509_certificate(chain[0]).subject
    assert material.fullchain_pem.startswith(material.cert_pem)
    # the listener is gone once no order needs it
    assert LISTENERS.active() == {}
    with pytest.raises(OSError):
        socket.create_connection((LOOPBACK, va_http_port), timeout=0.5).close()


def test_the_account_is_stored_0600_and_reused(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    first = _issuer(pebble, state_dir, [standalone(va_http_port)])
    first.issue(IssueRequest("a", ("a.example.com",), "ecdsa-p256"))
    folder = state_dir / "acme" / "pebble"
    key_file, record_file = folder / "account.key", folder / "account.json"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(record_file.stat().st_mode) == 0o600
    key_before, record_before = key_file.read_bytes(), json.loads(record_file.read_text())
    assert record_before["directoryUrl"] == pebble.directory_url
    assert "/my-account/" in record_before["uri"]

    second = _issuer(pebble, state_dir, [standalone(va_http_port)])  # a new process would do the same
    second.issue(IssueRequest("b", ("b.example.com",), "ecdsa-p256"))
    assert key_file.read_bytes() == key_before
    assert json.loads(record_file.read_text()) == record_before


def test_rsa_key_and_reused_key(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    issuer = _issuer(pebble, state_dir, [standalone(va_http_port)])
    rsa = issuer.issue(IssueRequest("r", ("rsa.example.com",), "rsa-2048"))
    assert rsa.info.key_algorithm == "rsa-2048"

    again = issuer.issue(IssueRequest("r", ("rsa.example.com",), "rsa-2048", key_pem=rsa.key_pem))
    assert again.info.serial != rsa.info.serial
    public = serialization.load_pem_private_key(rsa.key_pem, None).public_key()
    assert x509.load_pem_x509_certificate(again.cert_pem).public_key() == public


def test_concurrent_orders_share_the_listener(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    issuer = _issuer(pebble, state_dir, [standalone(va_http_port)])
    requests = [
        IssueRequest(f"c{i}", (f"c{i}.example.com", f"www.c{i}.example.com"), "ecdsa-p256") for i in range(6)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(issuer.issue, requests))
    assert [m.info.sans[0] for m in results] == [r.domains[0] for r in requests]
    assert len({m.info.serial for m in results}) == 6
    assert LISTENERS.active() == {}


def test_webroot_served_by_nginx(pebble: Pebble, webroot_nginx: Nginx, state_dir: Path) -> None:
    assert webroot_nginx.webroot is not None
    issuer = _issuer(pebble, state_dir, [{"http01": {"webroot": {"path": str(webroot_nginx.webroot)}}}])
    material = issuer.issue(IssueRequest("web", ("web.example.com", "www.web.example.com"), "ecdsa-p384"))
    assert material.info.key_algorithm == "ecdsa-p384"
    assert material.info.sans == ("web.example.com", "www.web.example.com")
    # every challenge file is gone, and so are the folders the solver made
    assert list(webroot_nginx.webroot.rglob("*")) == []


def test_webroot_files_are_removed_when_validation_fails(
    pebble: Pebble, state_dir: Path, tmp_path: Path
) -> None:
    webroot = tmp_path / "not-served"
    webroot.mkdir()
    issuer = _issuer(pebble, state_dir, [{"http01": {"webroot": {"path": str(webroot)}}}])
    with pytest.raises(IssueError) as caught:
        issuer.issue(IssueRequest("ns", ("notserved.example.com",), "ecdsa-p256"))
    assert not caught.value.transient
    assert "validation failed: notserved.example.com" in str(caught.value)
    assert str(caught.value.problem.get("type", "")).startswith("urn:ietf:params:acme:error:")
    assert list(webroot.rglob("*")) == []


def test_solver_chosen_per_domain(pebble: Pebble, va_http_port: int, state_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    solvers = [
        {"domains": ["other.test"], "http01": {"webroot": {"path": str(missing)}}},
        standalone(va_http_port),
    ]
    issuer = _issuer(pebble, state_dir, solvers)
    assert issuer.issue(IssueRequest("s", ("pick.example.com",), "ecdsa-p256")).info.sans == (
        "pick.example.com",
    )
    with pytest.raises(IssueError, match=r"does not exist"):
        issuer.issue(IssueRequest("o", ("www.other.test",), "ecdsa-p256"))


def test_terms_of_service_must_be_agreed(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    issuer = _issuer(pebble, state_dir, [standalone(va_http_port)], agreeToS=False)
    with pytest.raises(IssueError, match=r"terms of service .*agreeToS: true") as caught:
        issuer.issue(IssueRequest("t", ("tos.example.com",), "ecdsa-p256"))
    assert not caught.value.transient
    assert not (state_dir / "acme" / "pebble" / "account.json").exists()


def test_wildcard_needs_dns01(pebble: Pebble, va_http_port: int, state_dir: Path) -> None:
    issuer = _issuer(pebble, state_dir, [standalone(va_http_port)])
    with pytest.raises(IssueError, match="Wildcard certificates require DNS validation") as caught:
        issuer.issue(IssueRequest("w", ("*.example.com",), "ecdsa-p256"))
    assert not caught.value.transient


def test_standalone_port_taken_is_a_clear_error(pebble: Pebble, state_dir: Path) -> None:
    port = free_port()
    with socket.socket() as squatter:
        squatter.bind((LOOPBACK, port))
        squatter.listen()
        issuer = _issuer(pebble, state_dir, [standalone(port)])
        with pytest.raises(
            IssueError, match=rf"cannot listen on {LOOPBACK}:{port}.*another program"
        ) as caught:
            issuer.issue(IssueRequest("p", ("port.example.com",), "ecdsa-p256"))
    assert not caught.value.transient
    assert LISTENERS.active() == {}


def test_later_orders_reuse_the_connection_and_the_nonces_of_earlier_ones(
    pebble: Pebble, va_http_port: int, state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib3.connectionpool

    from reconciler.adapters.issuers.acme.transport import Network

    heads: list[str] = []
    connections: list[str] = []
    real_head, real_new_conn = Network.head, urllib3.connectionpool.HTTPSConnectionPool._new_conn

    def head(self: Network, *args: object, **kwargs: object) -> object:
        heads.append(str(args[0]))
        return real_head(self, *args, **kwargs)

    def new_conn(self: urllib3.connectionpool.HTTPSConnectionPool) -> object:
        connections.append(f"{self.host}:{self.port}")
        return real_new_conn(self)

    monkeypatch.setattr(Network, "head", head)
    monkeypatch.setattr(urllib3.connectionpool.HTTPSConnectionPool, "_new_conn", new_conn)
    issuer = _issuer(pebble, state_dir, [standalone(va_http_port)])
    issuer.issue(IssueRequest("first", ("first.example.com", "www.first.example.com"), "ecdsa-p256"))
    assert heads and connections  # the first order had to open a connection and fetch a nonce
    heads.clear()
    connections.clear()
    for name in ("second", "third"):
        issuer.issue(IssueRequest(name, (f"{name}.example.com", f"www.{name}.example.com"), "ecdsa-p256"))
    assert heads == []  # every request used a nonce an earlier answer brought
    assert connections == []  # over the connection the first order opened (kept alive)
