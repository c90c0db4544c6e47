"""SMTP never sends a password in clear: port 465 is implicit TLS, any other port needs STARTTLS
(a real aiosmtpd server with a generated certificate, on a free loopback port)."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pydantic import ValidationError

from reconciler.adapters import notify
from reconciler.core.spec import Email
from tests.e2e.test_daemon import free_port


def _tls_files(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
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


class _Mailbox:
    def __init__(self) -> None:
        self.messages: list[bytes] = []
        self.logins: list[tuple[bytes, bool]] = []  # (user, over TLS)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: ANN001 - aiosmtpd's hook signature
        self.messages.append(envelope.content)
        return "250 OK"


def test_port_465_is_implicit_tls_even_with_starttls_true(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = _tls_files(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    mailbox = _Mailbox()

    def authenticate(server, session, envelope, mechanism, auth_data):  # noqa: ANN001, ANN202
        mailbox.logins.append((auth_data.login, server.transport.get_extra_info("ssl_object") is not None))
        return AuthResult(
            success=isinstance(auth_data, LoginPassword) and auth_data.password == b"mail-secret"
        )

    port = free_port()
    # 465 needs no special server: the client decides whether it speaks TLS from the first byte. The test
    # server cannot bind 465 beside other jobs, so the client is told that this free port is "465".
    monkeypatch.setattr(notify, "IMPLICIT_TLS_PORT", port)
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        ssl_context=context,
        authenticator=authenticate,
        auth_require_tls=False,
    )  # aiosmtpd only counts STARTTLS as TLS; recorded below
    controller.start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    monkeypatch.setenv("SMTP_PASSWORD", "mail-secret")
    monkeypatch.setenv("SMTP_USER", "certctl")
    email = Email.model_validate(
        {
            "smtpHost": "127.0.0.1",
            "smtpPort": port,
            "from": "certctl@example.com",
            "to": ["ops@example.com"],
            "username": {"fromEnv": "SMTP_USER"},
            "password": {"fromEnv": "SMTP_PASSWORD"},
        }
    )
    assert email.starttls is True  # the default, as in the report
    try:
        notify.send_email(email, "subject", "body\n", timeout=10, attempts=1)
    finally:
        controller.stop()
    assert mailbox.logins == [(b"certctl", True)]
    assert len(mailbox.messages) == 1


def test_a_password_without_tls_is_a_validation_error() -> None:
    base = {
        "smtpHost": "smtp.example.com",
        "from": "a@example.com",
        "to": ["b@example.com"],
        "password": {"fromEnv": "P"},
        "username": {"fromEnv": "U"},
    }
    with pytest.raises(ValidationError, match="would send the SMTP password in clear text"):
        Email.model_validate({**base, "smtpPort": 25, "starttls": False})
    assert Email.model_validate({**base, "smtpPort": 465, "starttls": False}).smtpPort == 465
    assert Email.model_validate({**base, "smtpPort": 587}).starttls is True
    no_credentials = {k: v for k, v in base.items() if k not in ("password", "username")}
    assert Email.model_validate({**no_credentials, "smtpPort": 25, "starttls": False}).starttls is False
