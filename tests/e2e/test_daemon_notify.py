"""Alerts from the daemon (a real subprocess) to a real local HTTP server and a real SMTP server
(aiosmtpd, STARTTLS with a generated certificate, AUTH with secrets from the environment and a file).

One issuer is broken (its CA files are garbage), so its certificate fails; the other certificate
must not be held up. After ``afterFailures`` failures one alert goes out on each channel; after the
issuer is repaired one ``recovered``; nothing is sent twice, not even after a restart.
"""

from __future__ import annotations

import json
import signal
import ssl
import threading
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.e2e.test_daemon import Daemon, Site, free_port


class Hook:
    """A webhook receiver that answers 503 to the first request (the daemon must retry)."""

    def __init__(self) -> None:
        self.requests: list[tuple[int, dict[str, str], dict[str, Any]]] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                code = 503 if not hook.requests else 200
                hook.requests.append((code, dict(self.headers), body))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def delivered(self) -> list[dict[str, Any]]:
        return [body for code, _, body in self.requests if code == 200]


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[bool, bytes]] = []  # (over TLS, content)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((bool(session.ssl), envelope.original_content))
        return "250 OK"


def tls_certificate(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certctl test smtp")])
    now = datetime.now(UTC)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp.pem", folder / "smtp.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_alert_after_failures_and_once_on_recovery_by_webhook_and_email(tmp_path: Path) -> None:
    cert_path, key_path = tls_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    logins: list[tuple[str, str]] = []

    def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        if isinstance(data, LoginPassword):
            logins.append((data.login.decode(), data.password.decode()))
            return AuthResult(success=(data.login, data.password) == (b"certctl", b"mail-secret"))
        return AuthResult(success=False)

    mailbox = Mailbox()
    smtp_port = free_port()
    smtp = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=smtp_port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator,
    )
    smtp.start()
    hook = Hook()
    (tmp_path / "smtp-password").write_text("mail-secret\n")
    site = Site(
        tmp_path,
        settings=f"""\
        notify:
          afterFailures: 2
          webhook:
            url: {hook.url}
            headers:
              Authorization: {{fromEnv: HOOK_TOKEN}}
          email:
            smtpHost: 127.0.0.1
            smtpPort: {smtp_port}
            from: certctl@example.test
            to: [ops@example.test]
            username: {{fromEnv: SMTP_USER}}
            password: {{fromFile: ../smtp-password}}
        """,
    )
    site.write(
        "broken.yaml",
        """\
        apiVersion: certctl/v1
        kind: Issuer
        metadata: {name: broken}
        spec:
          localCA: {validity: 1h}
        """,
    )
    site.certificate("web", ["web.example.test"], issuer="broken")
    site.certificate("fine", ["fine.example.test"])
    ca = site.state / "localca" / "broken"
    ca.mkdir(parents=True)
    (ca / "ca.pem").write_text("not a certificate\n")
    (ca / "ca.key").write_text("not a key\n")
    environment = {
        "HOOK_TOKEN": "Bearer hook-secret",
        "SMTP_USER": "certctl",
        "SSL_CERT_FILE": str(cert_path),
    }

    daemon = Daemon(site, extra_env=environment)
    try:
        daemon.wait_healthy()
        # isolation: the failing certificate holds nothing up
        assert site.live("fine") is not None
        web = daemon.wait(
            "web failed once", lambda: (c := daemon.cert("web")) and c["consecutive_failures"] == 1 and c
        )
        assert web["state"] == "deferred" and web["last_error"]
        assert hook.requests == [] and mailbox.messages == [], "one failure is below afterFailures: 2"

        # a second failure (a forced renewal from the CLI) reaches the threshold: one alert per channel
        assert site.cli("renew", "web").returncode == 1
        daemon.hup()
        daemon.wait("the webhook alert", hook.delivered, timeout=20)
        daemon.wait("the mail alert", lambda: mailbox.messages, timeout=20)
        assert [code for code, _, _ in hook.requests] == [503, 200], "a 503 is retried"
        body = hook.delivered()[0]
        assert body["event"] == "alert" and body["certificate"] == "web" and body["condition"] == "failing"
        assert body["consecutive_failures"] == 2 and "2 consecutive failed attempt" in body["message"]
        headers = {k.lower(): v for k, v in hook.requests[-1][1].items()}
        assert headers["authorization"] == "Bearer hook-secret"
        assert headers["content-type"] == "application/json"
        over_tls, raw = mailbox.messages[0]
        assert over_tls, "the mail went over STARTTLS"
        assert logins == [("certctl", "mail-secret")]
        mail = message_from_bytes(raw)
        assert mail["Subject"] == "[certctl] web: renewal failing"
        assert mail["To"] == "ops@example.test" and mail["From"] == "certctl@example.test"
        assert "2 consecutive failed attempt" in mail.get_payload()

        # still failing: nothing more
        daemon.hup()
        assert len(hook.delivered()) == 1 and len(mailbox.messages) == 1

        # repaired: one `recovered` per channel
        (ca / "ca.pem").unlink()
        (ca / "ca.key").unlink()
        renew = site.cli("renew", "web")
        assert renew.returncode == 0, renew.stdout + renew.stderr
        daemon.hup()
        daemon.wait("the webhook recovery", lambda: len(hook.delivered()) == 2, timeout=20)
        daemon.wait("the mail recovery", lambda: len(mailbox.messages) == 2, timeout=20)
        assert hook.delivered()[1]["event"] == "recovered" and hook.delivered()[1]["certificate"] == "web"
        assert message_from_bytes(mailbox.messages[1][1])["Subject"] == "[certctl] web recovered"
        assert (
            daemon.metrics()[
                (
                    "certctl_notifications_total",
                    (("channel", "email"), ("event", "recovered"), ("result", "sent")),
                )
            ]
            == 1
        )
    finally:
        assert daemon.stop(signal.SIGTERM) == 0, daemon.tail()

    # a restart resends nothing
    again = Daemon(site, extra_env=environment, port=daemon.port)
    try:
        again.wait_healthy()
        again.hup()
    finally:
        assert again.stop() == 0, again.tail()
        smtp.stop()
        hook.server.shutdown()
    assert len(hook.delivered()) == 2 and len(mailbox.messages) == 2
    assert len(logins) == 2
