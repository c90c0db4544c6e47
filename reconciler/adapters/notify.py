"""Delivery of alerts: a webhook (JSON POST) and/or an email (SMTP with STARTTLS).

``reconciler.core.notify_rules`` decides what goes out and when (pure: state in, sends and new state
out); ``Notifier`` keeps each channel's record in ``<state>/notify.json``, so a restart never resends,
and a channel that could not be reached is retried on the next reconcile.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_exponential

from reconciler import __version__
from reconciler.core.durations import iso
from reconciler.core.notify_rules import RECOVERED, Notice, decide, record_sent
from reconciler.core.spec import IMPLICIT_TLS_PORT, WEBHOOK_URL, Email, Notify, SecretRef, Webhook
from reconciler.core.status import StatusRow
from reconciler.support.fs import atomic_write
from reconciler.support.logging import get_logger
from reconciler.support.secrets import resolve

log = get_logger()

STATE_FILE = "notify.json"


# --- delivery -----------------------------------------------------------------------------------------


class DeliveryError(Exception):
    pass


def payload(notice: Notice, source: dict[str, Any], now: datetime) -> dict[str, Any]:
    row = notice.row.to_json()
    return {
        "event": notice.event,
        "certificate": notice.certificate,
        "condition": notice.condition,
        "message": notice.message,
        "at": iso(now),
        "host": socket.gethostname(),
        "source": source,
        "state": row.get("state"),
        "not_after": row.get("not_after"),
        "renew_at": row.get("renew_at"),
        "thumbprint": row.get("thumbprint"),
        "consecutive_failures": row.get("consecutive_failures", 0),
        "last_error": row.get("last_error"),
    }


def subject(notice: Notice) -> str:
    if notice.event == RECOVERED:
        return f"[certctl] {notice.certificate} recovered"
    what = "renewal failing" if notice.condition == "failing" else "about to expire"
    return f"[certctl] {notice.certificate}: {what}"


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500 or exc.code in (408, 429)
    if isinstance(exc, smtplib.SMTPResponseException):
        return 400 <= exc.smtp_code < 500
    return isinstance(exc, OSError | smtplib.SMTPServerDisconnected)


def _retrying(attempts: int) -> Callable[[Callable[[], None]], Callable[[], None]]:
    return retry(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=0.5, max=5),
        retry=retry_if_exception(_retryable),
        reraise=True,
    )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an answer, never followed: following it would carry the headers (tokens) elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL: what logs and errors may show (a path or query can hold a token)."""
    match = WEBHOOK_URL.match(url)
    return match.group(0).rsplit("@", 1)[-1] if match else "(webhook)"  # user:password@ is dropped too


def webhook_url(webhook: Webhook) -> str:
    if not isinstance(webhook.url, SecretRef):
        return webhook.url
    url = resolve(webhook.url).decode().strip()
    if not WEBHOOK_URL.match(url):
        raise DeliveryError("the webhook url read from its secret does not start with https:// (or http://)")
    return url


def send_webhook(webhook: Webhook, body: dict[str, Any], *, timeout: float = 10.0, attempts: int = 4) -> None:
    """POST ``body`` as JSON; transient failures (connection, 5xx, 429) are retried with backoff.

    Redirects are not followed (a 3xx is a failed delivery), and errors name only the URL's origin.
    """
    url = webhook_url(webhook)
    where = origin(url)
    headers = {"Content-Type": "application/json", "User-Agent": f"certctl/{__version__}"}
    for name, ref in webhook.headers.items():
        headers[name] = resolve(ref).decode()
    data = json.dumps(body, sort_keys=True).encode()

    @_retrying(attempts)
    def post() -> None:
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with _OPENER.open(request, timeout=timeout) as response:  # the URL is https?:// by schema
            response.read()

    try:
        post()
    except urllib.error.HTTPError as exc:
        hint = (
            "; redirects are not followed, so set url to the final address" if 300 <= exc.code < 400 else ""
        )
        raise DeliveryError(f"webhook {where} answered {exc.code} {exc.reason}{hint}") from None
    except urllib.error.URLError as exc:
        raise DeliveryError(f"webhook {where} could not be reached: {exc.reason}") from None
    except OSError as exc:
        raise DeliveryError(
            f"webhook {where} could not be reached: {exc.strerror or type(exc).__name__}"
        ) from None


def send_email(
    email: Email, subject_line: str, text: str, *, timeout: float = 30.0, attempts: int = 3
) -> None:
    """Send a plain-text mail over TLS verified against the system CAs (or $SSL_CERT_FILE): implicit TLS on
    port 465, STARTTLS elsewhere. A password is never sent without TLS (a server without STARTTLS fails)."""
    message = EmailMessage()
    message["From"] = email.sender
    message["To"] = ", ".join(email.to)
    message["Subject"] = subject_line
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=socket.gethostname() or "certctl")
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(text)
    username = resolve(email.username).decode() if email.username else None
    password = resolve(email.password).decode() if email.password else None
    context = ssl.create_default_context()

    implicit = email.smtpPort == IMPLICIT_TLS_PORT
    if (username is not None or password is not None) and not implicit and not email.starttls:
        raise DeliveryError(
            f"email via {email.smtpHost}:{email.smtpPort}: refusing to send credentials without TLS"
        )

    @_retrying(attempts)
    def deliver() -> None:
        if implicit:
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                email.smtpHost, email.smtpPort, timeout=timeout, context=context
            )
        else:
            smtp = smtplib.SMTP(email.smtpHost, email.smtpPort, timeout=timeout)
        with smtp:
            smtp.ehlo()
            if email.starttls and not implicit:
                smtp.starttls(context=context)  # raises when the server does not offer it: no silent fallback
                smtp.ehlo()
            if username is not None and password is not None:
                smtp.login(username, password)
            smtp.send_message(message)

    try:
        deliver()
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"email via {email.smtpHost}:{email.smtpPort} failed: {exc}") from None


def email_text(notice: Notice, body: dict[str, Any]) -> str:
    lines = [f"Certificate {notice.certificate}: {notice.message}", ""]
    for key in ("state", "not_after", "renew_at", "thumbprint", "consecutive_failures", "last_error"):
        lines.append(f"{key.replace('_', ' ')}: {body.get(key)}")
    lines += [
        "",
        f"host: {body['host']}",
        f"desired state: {body['source'].get('dir')} (revision {body['source'].get('revision') or 'none'})",
        "",
        "-- certctl daemon",
    ]
    return "\n".join(lines) + "\n"


class Notifier:
    """Decides and delivers notices; remembers per certificate and channel what went out (<state>/notify.json)."""

    def __init__(self, state_path: Path, on_result: Callable[[str, str, str], None] | None = None) -> None:
        self.path = Path(state_path) / STATE_FILE
        self.on_result = on_result

    def _load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("notify.state.unreadable", path=str(self.path), error=str(exc))
            return {}
        return data if isinstance(data, dict) else {}

    def process(
        self, settings: Notify, rows: list[StatusRow], source: dict[str, Any], now: datetime | None = None
    ) -> list[tuple[str, Notice]]:
        """Send what is due; return what was sent."""
        now = now or datetime.now(UTC)
        channels = [
            c for c, on in (("webhook", settings.webhook), ("email", settings.email)) if on is not None
        ]
        previous = self._load()
        sends, state = decide(previous, rows, settings, channels, now)
        sent: list[tuple[str, Notice]] = []
        for channel, notice in sends:
            body = payload(notice, source, now)
            try:
                if channel == "webhook":
                    assert settings.webhook is not None
                    send_webhook(settings.webhook, body)
                else:
                    assert settings.email is not None
                    send_email(settings.email, subject(notice), email_text(notice, body))
            except Exception as exc:  # noqa: BLE001 - a channel that fails is retried on the next reconcile
                log.error(
                    "notify.failed",
                    channel=channel,
                    certificate=notice.certificate,
                    notice=notice.event,
                    error=str(exc),
                )
                self._count(channel, notice.event, "failed")
                continue
            log.info(
                "notify.sent",
                channel=channel,
                certificate=notice.certificate,
                notice=notice.event,
                condition=notice.condition,
                message=notice.message,
            )
            record_sent(state, channel, notice, now)
            self._count(channel, notice.event, "sent")
            sent.append((channel, notice))
        if state != previous:
            atomic_write(self.path, json.dumps(state, indent=1, sort_keys=True) + "\n", 0o600)
        return sent

    def _count(self, channel: str, event: str, result: str) -> None:
        if self.on_result:
            self.on_result(channel, event, result)
