"""TlsProber against nginx serving certificates from files, and against endpoints that fail."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from reconciler.adapters.prober import ProbeError, TlsProber
from reconciler.ports import IssueRequest
from reconciler.wiring import build_acme_issuer
from tests.integration.servers import (
    LOOPBACK,
    Nginx,
    Pebble,
    acme_spec,
    free_port,
    standalone,
    without_hanging,
)

pytestmark = pytest.mark.integration


def test_probe_sees_what_nginx_serves_after_reload(
    nginx: Nginx, pebble: Pebble, va_http_port: int, state_dir: Path
) -> None:
    issuer = build_acme_issuer("pebble", acme_spec(pebble, [standalone(va_http_port)]), state_dir)
    prober = TlsProber()
    before = prober.probe(nginx.endpoint, "www.example.com", 5)

    material = issuer.issue(IssueRequest("www", ("www.example.com", "example.com"), "ecdsa-p256"))
    nginx.install(material.fullchain_pem, material.key_pem)
    nginx.reload(expect_sha256=material.info.sha256)

    served = prober.probe(nginx.endpoint, "www.example.com", 5)
    assert served == material.info
    assert served.thumbprint != before.thumbprint
    assert served.sans == ("www.example.com", "example.com")
    # without SNI (an IP address endpoint) the same default server answers
    assert prober.probe(nginx.endpoint, None, 5).thumbprint == material.info.thumbprint


def test_refused_is_a_clear_error() -> None:
    port = free_port()
    with pytest.raises(ProbeError, match=rf"{LOOPBACK}:{port}: connection refused"):
        TlsProber().probe(f"{LOOPBACK}:{port}", "www.example.com", 2)


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says a word (a hung TLS server)."""
    server = socket.socket()
    server.bind((LOOPBACK, 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                held.append(conn)
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_timeout_is_bounded_and_clear(silent_listener: int) -> None:
    # the listener never answers: only the probe's own timeout can end the handshake
    with pytest.raises(ProbeError, match=r"no TLS handshake within 0.5s"):
        without_hanging(
            lambda: TlsProber().probe(f"{LOOPBACK}:{silent_listener}", "www.example.com", 0.5), "the probe"
        )


def test_not_tls_is_a_clear_error(webroot_nginx: Nginx, va_http_port: int) -> None:
    with pytest.raises(ProbeError, match=r"TLS handshake failed for SNI www.example.com"):
        TlsProber().probe(f"{LOOPBACK}:{va_http_port}", "www.example.com", 2)


def test_bad_endpoint() -> None:
    with pytest.raises(ProbeError, match="is not host:port"):
        TlsProber().probe("no-port", None, 1)
