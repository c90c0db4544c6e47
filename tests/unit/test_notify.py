"""reconciler.core.notify_rules: when an alert or a recovery goes out; reconciler.adapters.notify: the webhook's retries (a real local server)."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from reconciler.adapters.notify import DeliveryError, send_webhook
from reconciler.core.notify_rules import ALERT, RECOVERED, condition, decide, record_sent
from reconciler.core.plan import CertState
from reconciler.core.spec import Notify, SecretRef, Webhook
from reconciler.core.status import StatusRow
from reconciler.support.logging import configure

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _logs_to_this_tests_stderr() -> None:
    """Another test may have bound structlog to a stream pytest has closed since (cli.main configures it)."""
    configure("console", "warning")


SETTINGS = Notify(afterFailures=3, expiryWarning=timedelta(days=7))


def row(
    name: str = "web",
    failures: int = 0,
    not_after: datetime | None = NOW + timedelta(days=60),
    renew_at: datetime | None = NOW + timedelta(days=30),
    error: str | None = None,
) -> StatusRow:
    return StatusRow(
        name,
        CertState.ready,
        not_after=not_after,
        renew_at=renew_at,
        thumbprint="AB" * 20,
        consecutive_failures=failures,
        last_error=error,
    )


def run(
    state: dict[str, Any],
    rows: list[StatusRow],
    at: datetime = NOW,
    channels: tuple[str, ...] = ("webhook", "email"),
) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
    sends, new = decide(state, rows, SETTINGS, channels, at)
    for channel, notice in sends:
        record_sent(new, channel, notice, at)
    return [(c, n.certificate, n.event) for c, n in sends], new


@pytest.mark.parametrize(("failures", "expected"), [(0, None), (2, None), (3, "failing"), (9, "failing")])
def test_failures_threshold(failures: int, expected: str | None) -> None:
    found = condition(row(failures=failures, error="boom"), SETTINGS, NOW)
    assert (found[0] if found else None) == expected
    if found:
        assert "boom" in found[1] and f"{failures} consecutive" in found[1]


def test_expiring_only_once_the_renewal_point_has_passed() -> None:
    # a 6-day certificate is always within 7 days of expiry: not an alert while it waits for its renewal point
    assert (
        condition(row(not_after=NOW + timedelta(days=5), renew_at=NOW + timedelta(days=1)), SETTINGS, NOW)
        is None
    )
    found = condition(
        row(not_after=NOW + timedelta(days=5), renew_at=NOW - timedelta(hours=1)), SETTINGS, NOW
    )
    assert found is not None and found[0] == "expiring" and "has not been renewed" in found[1]
    # far from expiry, even past the renewal point: the renewal is simply happening
    assert (
        condition(row(not_after=NOW + timedelta(days=20), renew_at=NOW - timedelta(hours=1)), SETTINGS, NOW)
        is None
    )
    found = condition(
        row(not_after=NOW - timedelta(hours=1), renew_at=NOW - timedelta(days=2)), SETTINGS, NOW
    )
    assert found is not None and "expired" in found[1]


def test_alert_once_then_recovered_once_per_channel() -> None:
    sent, state = run({}, [row(failures=3)])
    assert sent == [("webhook", "web", ALERT), ("email", "web", ALERT)]
    sent, state = run(state, [row(failures=4)], NOW + timedelta(hours=1))
    assert sent == [], "an alert is sent once, not on every pass"
    sent, state = run(state, [row(failures=0)], NOW + timedelta(hours=2))
    assert sent == [("webhook", "web", RECOVERED), ("email", "web", RECOVERED)]
    sent, state = run(state, [row(failures=0)], NOW + timedelta(hours=3))
    assert sent == []


def test_at_most_one_alert_per_certificate_per_day() -> None:
    _, state = run({}, [row(failures=3)])
    _, state = run(state, [row(failures=0)], NOW + timedelta(hours=1))
    sent, state = run(state, [row(failures=3)], NOW + timedelta(hours=2))
    assert sent == [], "flapping: the second alert of the day is held back"
    sent, state = run(state, [row(failures=3)], NOW + timedelta(days=1))
    assert [s[2] for s in sent] == [ALERT, ALERT]


def test_a_failed_channel_is_retried_and_the_other_is_not_repeated() -> None:
    sends, state = decide({}, [row(failures=3)], SETTINGS, ("webhook", "email"), NOW)
    record_sent(state, "email", next(n for c, n in sends if c == "email"), NOW)  # the webhook failed
    sent, _ = run(state, [row(failures=3)], NOW + timedelta(minutes=5))
    assert sent == [("webhook", "web", ALERT)]


def test_recovery_without_an_alert_sends_nothing_and_removed_certificates_are_forgotten() -> None:
    sent, state = run({}, [row(failures=0), row("api", failures=3)])
    assert sent == [("webhook", "api", ALERT), ("email", "api", ALERT)]
    sent, state = run(state, [row(failures=0)])
    assert sent == [] and set(state) == {"web"}


def test_decide_does_not_modify_its_input() -> None:
    _, state = run({}, [row(failures=3)])
    frozen = json.dumps(state, sort_keys=True)
    run(state, [row(failures=0)])
    assert json.dumps(state, sort_keys=True) == frozen


class _Server:
    """Answers POSTs with ``codes`` in turn (then 200); with ``location``, every answer carries that Location."""

    def __init__(self, codes: list[int], location: str | None = None) -> None:
        self.codes = codes
        self.seen: list[tuple[dict[str, str], dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.seen.append(
                    (dict(self.headers), json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                )
                code = outer.codes.pop(0) if outer.codes else 200
                self.send_response(code)
                if location:
                    self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_webhook_retries_server_errors_with_secret_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKEN", "Bearer t0")
    server = _Server([500, 502])
    try:
        send_webhook(Webhook(url=server.url, headers={"Authorization": SecretRef(fromEnv="TOKEN")}), {"a": 1})
    finally:
        server.close()
    assert len(server.seen) == 3
    assert all(h["Authorization"] == "Bearer t0" and b == {"a": 1} for h, b in server.seen)


def test_webhook_client_errors_are_not_retried() -> None:
    server = _Server([404])
    try:
        with pytest.raises(DeliveryError, match="404"):
            send_webhook(Webhook(url=server.url), {"a": 1})
    finally:
        server.close()
    assert len(server.seen) == 1


# --- secrets on the wire -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 307, 308])
def test_a_redirect_is_not_followed_and_carries_no_credentials(
    monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    monkeypatch.setenv("TOKEN", "Bearer t0")
    elsewhere = _Server([])  # "localhost" is another origin than 127.0.0.1
    redirector = _Server([code], location=elsewhere.url.replace("127.0.0.1", "localhost"))
    try:
        with pytest.raises(DeliveryError, match=f"answered {code}.*redirects are not followed"):
            send_webhook(
                Webhook(url=redirector.url, headers={"Authorization": SecretRef(fromEnv="TOKEN")}), {"a": 1}
            )
    finally:
        redirector.close()
        elsewhere.close()
    assert len(redirector.seen) == 1 and redirector.seen[0][0]["Authorization"] == "Bearer t0"
    assert elsewhere.seen == [], "the redirect was followed"


def test_the_url_can_be_a_secret_and_its_path_and_query_never_show(monkeypatch: pytest.MonkeyPatch) -> None:
    server = _Server([404])
    monkeypatch.setenv("HOOK_URL", server.url + "services/T0/B1/s3cr3t?token=s3cr3t")
    hook = Webhook.model_validate({"url": {"fromEnv": "HOOK_URL"}})
    try:
        with pytest.raises(DeliveryError) as caught:
            send_webhook(hook, {"a": 1})
        send_webhook(hook, {"b": 2})  # the next answer is 200
    finally:
        server.close()
    assert "s3cr3t" not in str(caught.value) and "services" not in str(caught.value)
    assert str(caught.value).startswith("webhook http://127.0.0.1:")
    assert [body for _, body in server.seen] == [{"a": 1}, {"b": 2}]


def test_webhook_url_as_literal_still_needs_a_scheme() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="must start with https://"):
        Webhook.model_validate({"url": "hooks.example.com/x"})
    monkeypatch_free = Webhook.model_validate({"url": {"fromFile": "/run/secrets/hook"}})
    assert isinstance(monkeypatch_free.url, SecretRef)
