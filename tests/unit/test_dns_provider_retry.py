"""A provider API that stumbles (5xx, 429, a dropped connection) is retried; a refusal (401, 404) is not.

Served by a small local HTTP server speaking the PowerDNS API shape, through lexicon's real powerdns provider."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from reconciler.adapters.solvers import provider as provider_module
from reconciler.adapters.solvers.provider import LexiconSolver
from reconciler.core.spec import DnsProvider
from reconciler.ports import SolverError


class Api:
    def __init__(self) -> None:
        self.failures: list[int] = []  # statuses to answer before answering properly
        self.requests: list[str] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self) -> None:
                api.requests.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                status = api.failures.pop(0) if api.failures else 200
                body = json.dumps(
                    {"name": "example.com.", "kind": "Native", "rrsets": []}
                    if status == 200
                    else {"error": f"status {status}"}
                ).encode()
                self.send_response(status if status != 200 or self.command == "GET" else 204)
                self.send_header("Content-Type", "application/json")
                self.send_header(
                    "Content-Length", str(len(body) if self.command == "GET" or status != 200 else 0)
                )
                self.end_headers()
                if self.command == "GET" or status != 200:
                    self.wfile.write(body)

            do_GET = do_PATCH = do_PUT = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    monkeypatch.setattr(provider_module, "RETRY_PAUSES", (0.0, 0.0, 0.0, 0.0))
    server = Api()
    yield server
    server.httpd.shutdown()


def solver(api: Api) -> LexiconSolver:
    spec = DnsProvider.model_validate(
        {
            "name": "powerdns",
            "zone": "example.com",
            "options": {"pdns_server": api.url, "pdns_server_id": "localhost", "pdns_disable_notify": True},
            "secrets": {"auth_token": {"fromEnv": "K"}},
        }
    )
    return LexiconSolver(spec, environ={"K": "sekrit-token"})


def test_server_errors_and_throttling_are_retried(api: Api) -> None:
    api.failures = [500, 429, 503]
    solver(api)._create("example.com", "_acme-challenge.www.example.com", "v1")
    assert [r.split()[0] for r in api.requests].count("PATCH") == 1
    assert len(api.requests) == 5  # three refused GETs, then GET + PATCH


def test_a_refusal_fails_at_once_with_the_providers_answer_and_no_secret(api: Api) -> None:
    api.failures = [401]
    with pytest.raises(SolverError) as err:
        solver(api)._create("example.com", "_acme-challenge.www.example.com", "v1")
    assert len(api.requests) == 1
    assert "401 Unauthorized" in str(err.value) and "status 401" in str(err.value)
    assert "sekrit-token" not in str(err.value)


def test_retries_end(api: Api) -> None:
    api.failures = [500] * 10
    with pytest.raises(SolverError, match="500 Internal Server Error"):
        solver(api)._create("example.com", "_acme-challenge.www.example.com", "v1")
    assert len(api.requests) == 5
