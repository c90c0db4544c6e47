"""AcmeIssuer against a small scripted ACME server (rate limits, 5xx), and its pure helpers."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from reconciler.adapters.issuers.acme.chains import choose_chain, make_csr
from reconciler.adapters.issuers.acme.issuer import normalize_url
from reconciler.adapters.issuers.acme.order import Order
from reconciler.adapters.issuers.acme.retry import RetryPolicy
from reconciler.core.spec import Acme
from reconciler.ports import IssueError, IssueRequest
from reconciler.wiring import build_acme_issuer


class ScriptedCA:
    """Directory, nonces and accounts work; the directory fails ``directory_failures`` times with 503;
    newOrder answers with ``order_reply`` (status, headers, problem document)."""

    def __init__(self) -> None:
        self.directory_failures = 0
        self.account_reply: tuple[int, dict[str, str], dict[str, Any]] | None = None
        self.directory_calls = 0
        self.order_reply: tuple[int, dict[str, str], dict[str, Any]] = (
            429,
            {"Retry-After": "120"},
            {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many new orders recently"},
        )
        ca = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(
                self,
                status: int,
                body: dict[str, Any] | None,
                headers: dict[str, str] | None = None,
                ctype: str = "application/json",
            ) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Replay-Nonce", secrets.token_urlsafe(16))
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                if self.path == "/dir":
                    ca.directory_calls += 1
                    if ca.directory_calls <= ca.directory_failures:
                        self._send(503, None, ctype="text/plain")
                        return
                    self._send(
                        200,
                        {
                            "newNonce": ca.url("/nonce"),
                            "newAccount": ca.url("/acct"),
                            "newOrder": ca.url("/order"),
                            "meta": {},
                        },
                    )
                    return
                self._send(404, None)

            def do_HEAD(self) -> None:
                self._send(200, None)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path == "/acct" and ca.account_reply is not None:
                    status, headers, doc = ca.account_reply
                    self._send(status, doc, headers, ctype="application/problem+json")
                elif self.path == "/acct":
                    self._send(201, {"status": "valid"}, {"Location": ca.url("/acct/1")})
                elif self.path == "/order":
                    status, headers, doc = ca.order_reply
                    self._send(status, doc, headers, ctype="application/problem+json")
                else:
                    self._send(404, None)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def ca() -> Iterator[ScriptedCA]:
    server = ScriptedCA()
    yield server
    server.stop()


def spec(url: str, **fields: Any) -> Acme:
    return Acme.model_validate(
        {"directoryUrl": url, "solvers": [{"http01": {"standalone": {"port": 1}}}], **fields}
    )


QUICK = RetryPolicy(attempts=4, budget=5, initial=0.01, maximum=0.05)


def test_rate_limited_order_carries_retry_after(ca: ScriptedCA, tmp_path: Path) -> None:
    issuer = build_acme_issuer("scripted", spec(ca.url("/dir")), tmp_path, retry_policy=QUICK)
    with pytest.raises(IssueError) as caught:
        issuer.issue(IssueRequest("www", ("www.example.com",), "ecdsa-p256"))
    err = caught.value
    assert not err.transient
    assert err.retry_after is not None
    assert err.problem["type"] == "urn:ietf:params:acme:error:rateLimited"
    assert "too many new orders recently" in str(err) and "retry after" in str(err)


def test_rate_limited_new_account_carries_retry_after(ca: ScriptedCA, tmp_path: Path) -> None:
    ca.account_reply = (
        429,
        {"Retry-After": "60"},
        {"type": "urn:ietf:params:acme:error:rateLimited", "detail": "too many new accounts"},
    )
    issuer = build_acme_issuer("scripted", spec(ca.url("/dir")), tmp_path, retry_policy=QUICK)
    with pytest.raises(IssueError, match="too many new accounts") as caught:
        issuer.issue(IssueRequest("www", ("www.example.com",), "ecdsa-p256"))
    assert not caught.value.transient
    assert caught.value.retry_after is not None


def test_5xx_is_retried_then_a_permanent_problem_is_not(ca: ScriptedCA, tmp_path: Path) -> None:
    ca.directory_failures = 2
    ca.order_reply = (
        400,
        {},
        {"type": "urn:ietf:params:acme:error:caa", "detail": "CAA record forbids issuance"},
    )
    issuer = build_acme_issuer("scripted", spec(ca.url("/dir")), tmp_path, retry_policy=QUICK)
    with pytest.raises(IssueError, match="caa: CAA record forbids issuance") as caught:
        issuer.issue(IssueRequest("www", ("www.example.com",), "ecdsa-p256"))
    assert ca.directory_calls == 3
    assert not caught.value.transient


def test_persistent_5xx_is_transient(ca: ScriptedCA, tmp_path: Path) -> None:
    ca.directory_failures = 100
    issuer = build_acme_issuer("scripted", spec(ca.url("/dir")), tmp_path, retry_policy=QUICK)
    with pytest.raises(IssueError, match="HTTP 503") as caught:
        issuer.issue(IssueRequest("www", ("www.example.com",), "ecdsa-p256"))
    assert caught.value.transient
    assert ca.directory_calls == QUICK.attempts


def test_never_two_orders_for_one_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    issuer = build_acme_issuer("x", spec("https://ca.invalid/dir"), tmp_path)
    entered, release = threading.Event(), threading.Event()

    def slow(request: IssueRequest) -> Any:
        entered.set()
        release.wait(5)
        return request.certificate

    monkeypatch.setattr(issuer, "_issue", slow)
    first = threading.Thread(
        target=issuer.issue, args=(IssueRequest("www", ("www.example.com",), "ecdsa-p256"),)
    )
    first.start()
    assert entered.wait(5)
    with pytest.raises(IssueError, match="already running") as caught:
        issuer.issue(IssueRequest("www", ("www.example.com",), "ecdsa-p256"))
    assert caught.value.transient
    # another certificate is not held up
    release.set()
    assert issuer.issue(IssueRequest("api", ("api.example.com",), "ecdsa-p256")) == "api"
    first.join()


def test_no_matching_solver_fails_before_any_request(tmp_path: Path) -> None:
    acme = Acme.model_validate(
        {
            "directoryUrl": "https://ca.invalid/dir",
            "solvers": [{"domains": ["example.com"], "http01": {"standalone": {"port": 1}}}],
        }
    )
    with pytest.raises(IssueError, match=r"no solver of Issuer x matches www\.example\.org") as caught:
        build_acme_issuer("x", acme, tmp_path).issue(IssueRequest("o", ("www.example.org",), "ecdsa-p256"))
    assert not caught.value.transient


def test_unknown_key_algorithm(tmp_path: Path) -> None:
    with pytest.raises(IssueError, match="cannot use the certificate key"):
        build_acme_issuer("x", spec("https://ca.invalid/dir"), tmp_path).issue(
            IssueRequest("o", ("a.example.com",), "dsa-1024")
        )


def test_identity_is_stable() -> None:
    assert normalize_url("HTTPS://Acme.Example.COM/Directory/") == "https://acme.example.com/Directory"
    a = build_acme_issuer("a", spec("https://acme.example.com/dir"), Path("/nonexistent"))
    b = build_acme_issuer("b", spec("https://ACME.example.com/dir/"), Path("/nonexistent"))
    assert a.identity() == b.identity() == "acme:https://acme.example.com/dir"


def test_csr_names_every_domain() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = make_csr(key, ("www.example.com", "*.example.org", "example.com"))
    sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName
    )
    assert sans == ["www.example.com", "*.example.org", "example.com"]
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "www.example.com"
    long_name = "a" * 63 + ".example.com"
    assert make_csr(key, (long_name,)).subject == x509.Name([])


def _chain(*names: tuple[str, str]) -> str:
    """A fake chain: one certificate per (subject, issuer) pair, leaf first."""
    import datetime as dt

    from cryptography.hazmat.primitives import hashes, serialization

    out = ""
    for subject, issuer in names:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        out += cert.public_bytes(serialization.Encoding.PEM).decode()
    return out


def test_choose_chain() -> None:
    default = _chain(("leaf", "Int A"), ("Int A", "Root X"))
    alternate = _chain(("leaf", "Int B"), ("Int B", "Root Y"))
    cross = _chain(("leaf", "Int C"), ("Int C", "Root Y"), ("Root Y", "Old Root Z"))
    assert choose_chain([default, alternate], "Root Y") is alternate
    assert choose_chain([default, alternate], None) is default
    assert choose_chain([default, alternate], "Nobody") is default
    assert choose_chain([default, cross], "Old Root Z") is cross
    assert choose_chain([default, cross], "Root Y") is cross  # named inside the chain


class _Reply:
    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc, self.headers = doc, {}  # type: ignore[var-annotated]

    def json(self) -> dict[str, Any]:
        return self.doc


class _LostFinalize:
    """A session whose finalize POST fails (its answer lost) while the order itself is in ``status``."""

    def __init__(self, status: str) -> None:
        self.status = status

    def post(self, url: str, obj: Any) -> Any:
        raise IssueError("POST /finalize: timed out", transient=True)

    def get_as_post(self, url: str) -> _Reply:
        doc: dict[str, Any] = {
            "status": self.status,
            "identifiers": [],
            "authorizations": [],
            "finalize": "https://ca/finalize/1",
        }
        if self.status == "valid":
            doc["certificate"] = "https://ca/cert/1"
        return _Reply(doc)


@pytest.mark.parametrize(
    ("status", "outcome"),
    [("valid", "certificate"), ("processing", "certificate"), ("ready", "error"), ("invalid", "error")],
)
def test_a_lost_finalize_answer_asks_the_order_instead_of_ordering_again(
    tmp_path: Path, status: str, outcome: str
) -> None:
    import structlog
    from acme import messages

    issuer = build_acme_issuer("ca", spec("https://ca/dir"), tmp_path)
    session = _LostFinalize(status)
    if status == "processing":  # the CA finishes it a moment later
        real = session.get_as_post
        calls = {"n": 0}

        def later(url: str) -> _Reply:
            calls["n"] += 1
            session.status = "valid" if calls["n"] > 1 else "processing"
            return real(url)

        session.get_as_post = later  # type: ignore[method-assign]
    order = messages.Order.from_json(
        {"status": "ready", "identifiers": [], "authorizations": [], "finalize": "https://ca/finalize/1"}
    )
    flow = Order(
        session,  # type: ignore[arg-type]
        issuer.spec.solvers,
        [],
        issuer._solver_index,
        issuer.challenges,
        issuer.ari,
        5.0,
        None,
        structlog.get_logger(),
    )

    def run() -> messages.Order:
        return flow._finalize(
            session,  # type: ignore[arg-type]
            order,
            "https://ca/order/1",
            None,
            time.monotonic() + 5,
            structlog.get_logger(),
        )

    if outcome == "certificate":
        assert run().certificate == "https://ca/cert/1"
    else:
        with pytest.raises(IssueError, match="timed out"):
            run()
