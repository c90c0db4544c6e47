"""The built-in private CA (the embedded default issuer: needs no server and no network)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.core.spec import LocalCA
from reconciler.ports import Blobs, IssueError, IssueRequest, Material
from reconciler.state.statedir import FileBlobs
from reconciler.support import pki


class LocalCAIssuer:
    """Signs leaf certificates with a CA key kept in ``<state>/localca/<issuer>/`` (created on first use),
    or in ``blobs`` (fleet mode: encrypted in the database, one CA for every node)."""

    def __init__(self, name: str, spec: LocalCA, state_dir: Path, clock: object | None = None, *,
                 blobs: Blobs | None = None) -> None:
        self.name = name
        self.spec = spec
        self.folder = Path(state_dir) / "localca" / name
        self.blobs: Blobs = blobs if blobs is not None else FileBlobs(self.folder)
        self._lock = threading.Lock()
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None

    def identity(self) -> str:
        return f"localca:{self.name}"

    def ca_certificate_pem(self) -> bytes:
        cert, _ = self._load_or_create(datetime.now(UTC))
        return cert.public_bytes(serialization.Encoding.PEM)

    def _load_or_create(self, now: datetime) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """The CA, made on first use. Each part is created only where it is missing and read back, so
        processes that make it at once (fleet nodes sharing the database) all end up with the first one."""
        with self._lock:
            if self._ca is not None:
                return self._ca
            key_pem = self.blobs.get("ca.key")
            if key_pem is None:  # the key first: a CA certificate without its key is useless
                key_pem = self.blobs.create("ca.key", pki.key_to_pem(ec.generate_private_key(ec.SECP384R1())))
            key = serialization.load_pem_private_key(key_pem, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise IssueError(f"the key of local CA {self.name} is not an ECDSA key")
            cert_pem = self.blobs.get("ca.pem")
            if cert_pem is None:
                cert_pem = self.blobs.create("ca.pem", self._ca_certificate(key, now).public_bytes(serialization.Encoding.PEM))
            cert = x509.load_pem_x509_certificate(cert_pem)
            self._ca = (cert, key)
            return self._ca

    def _ca_certificate(self, key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
        subject = x509.Name([
            x509.NameAttribute(NameOID.COMMON_NAME, self.spec.commonName or f"certctl local CA {self.name}"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certctl"),
        ])
        return (
            x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + self.spec.caValidity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )

    def issue(self, request: IssueRequest) -> Material:
        now = (request.at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        ca_cert, ca_key = self._load_or_create(now)
        key = pki.load_key(request.key_pem) if request.key_pem else pki.generate_key(request.key_algorithm)
        not_after = min(now + self.spec.validity, ca_cert.not_valid_after_utc)
        builder = (
            x509.CertificateBuilder()
            # a CN holds at most 64 characters; a longer (valid) first name lives in the SAN alone (RFC 5280)
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, request.domains[0])]
                                    if len(request.domains[0]) <= 64 else []))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([_general_name(d) for d in request.domains]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        )
        cert = builder.sign(ca_key, hashes.SHA256())
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return Material(
            cert_pem=cert_pem,
            chain_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
            key_pem=pki.key_to_pem(key),
            info=pki.cert_info(cert),
        )


def _general_name(name: str) -> x509.GeneralName:
    import ipaddress

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
