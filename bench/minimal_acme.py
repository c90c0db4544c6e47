"""The limit for `bench/acme_bench.py`: a minimal ACME client that does nothing but issue, as fast as it can.

Per certificate: newOrder, each authorization fetched, its http-01 challenge answered (the key
authorization served from memory by a listener in this process), the authorizations polled without
any pause, finalize, the order polled without any pause, the certificate downloaded. One account;
each worker thread has its own HTTP connection (kept alive) and reuses the nonce of every answer. No
journal, no state, no files, no retries except of a refused nonce (at once, with the fresh one): whatever certctl spends
beyond this is its own overhead. Not a test, and not a client to use anywhere else.
"""

from __future__ import annotations

import socket
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from acme import challenges, messages
from acme.client import ClientNetwork
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from josepy.jwa import ES256
from josepy.jwk import JWKEC


@dataclass
class Result:
    seconds: float  # wall time of the whole batch
    per_certificate: list[float]  # seconds of each issuance

    @property
    def median(self) -> float:
        return statistics.median(self.per_certificate)


class _Server(ThreadingHTTPServer):
    request_queue_size = socket.SOMAXCONN  # the default (5) drops SYNs when many validations arrive at once


class Listener:
    """An HTTP server on 127.0.0.1:``port`` in a background thread, answering with ``handler``."""

    def __init__(self, handler: Callable[..., BaseHTTPRequestHandler], port: int) -> None:
        self.server = _Server(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class ChallengeServer(Listener):
    """Answers http-01 requests (``/.well-known/acme-challenge/<token>``) from a dict, on ``port``."""

    def __init__(self, port: int) -> None:
        self.answers: dict[str, str] = {}
        answers = self.answers

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                body = answers.get(self.path.rsplit("/", 1)[-1], "").encode()
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        super().__init__(Handler, port)


class MinimalClient:
    def __init__(self, directory_url: str, ca_bundle: str, challenge_port: int) -> None:
        self.key = JWKEC(key=ec.generate_private_key(ec.SECP256R1()))
        self.ca_bundle = ca_bundle
        self.port = challenge_port
        first = self._network()
        self.directory = messages.Directory.from_json(first.get(directory_url).json())
        reg = messages.NewRegistration.from_data(email="limit@example.com", terms_of_service_agreed=True)
        response = first.post(self.directory["newAccount"], reg, new_nonce_url=self.directory["newNonce"])
        self.account = messages.RegistrationResource(
            uri=response.headers["Location"], body=messages.Registration()
        )
        self._local = threading.local()

    def _network(self) -> ClientNetwork:
        return ClientNetwork(self.key, alg=ES256, verify_ssl=self.ca_bundle, user_agent="minimal-bench")  # type: ignore[arg-type]

    def _net(self) -> ClientNetwork:
        net = getattr(self._local, "net", None)
        if net is None:
            net = self._local.net = self._network()
            net.account = self.account
        return net

    def _post(self, url: str, obj: Any) -> Any:
        for _ in range(20):
            try:
                return self._net().post(url, obj, new_nonce_url=self.directory["newNonce"])
            except messages.Error as exc:
                if exc.code != "badNonce":
                    raise
        raise RuntimeError(f"POST {url}: the CA refused 20 nonces in a row")

    def issue(self, domains: list[str], answers: dict[str, str]) -> float:
        started = time.perf_counter()
        identifiers = [messages.Identifier(typ=messages.IDENTIFIER_FQDN, value=d) for d in domains]
        response = self._post(self.directory["newOrder"], messages.NewOrder(identifiers=identifiers))
        order_url = response.headers["Location"]
        order = messages.Order.from_json(response.json())
        for url in order.authorizations:
            authz = messages.Authorization.from_json(self._post(url, None).json())
            challb = next(c for c in authz.challenges if isinstance(c.chall, challenges.HTTP01))
            answer, _ = challb.chall.response_and_validation(self.key)
            answers[challb.chall.encode("token")] = answer.key_authorization
            self._post(challb.uri, answer)
            self._poll(url, lambda doc: doc["status"] not in ("pending", "processing"))
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
            .sign(key, hashes.SHA256())
        )
        self._post(order.finalize, messages.CertificateRequest(csr=csr))
        done = self._poll(order_url, lambda doc: doc["status"] in ("valid", "invalid"))
        if done["status"] != "valid":
            raise RuntimeError(f"order {order_url} is {done['status']}")
        self._post(done["certificate"], None)
        return time.perf_counter() - started

    def _poll(self, url: str, finished: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:  # tight polling: ask again at once
            doc: dict[str, Any] = self._post(url, None).json()
            if finished(doc):
                return doc


def run(directory_url: str, ca_bundle: str, port: int, names: list[list[str]], threads: int) -> Result:
    """Issue one certificate per entry of ``names`` with ``threads`` at once; the batch's wall time."""
    server = ChallengeServer(port)
    try:
        client = MinimalClient(directory_url, ca_bundle, port)
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            per = list(pool.map(lambda domains: client.issue(domains, server.answers), names))
        return Result(time.perf_counter() - started, per)
    finally:
        server.stop()
