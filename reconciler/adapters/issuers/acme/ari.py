"""ACME Renewal Information (RFC 9773): certificate identifiers, and remembering them.

A certificate's ARI identifier is ``base64url(AKI keyIdentifier) "." base64url(serial as DER INTEGER
content bytes)``, both without padding (RFC 9773 §4.1). A renewal order names the certificate it
replaces with that identifier (``replaces``).

The executor hands the replaced certificate itself to the issuer (``IssueRequest.replaces_pem``, from
the vault), and its identifier is computed from it. For a caller that gives only ``CertInfo`` (the
serial but not the Authority Key Identifier), the issuer remembers, in its state folder, the
identifier of every certificate it issued (by serial) and the AKI each issuing CA certificate it has
seen (by the issuer's name): a renewal can then name the certificate it replaces from its
``CertInfo`` alone.
"""

from __future__ import annotations

import base64
from pathlib import Path

from cryptography import x509

from reconciler.core.model import CertInfo
from reconciler.state.statedir import KeyedLog
from reconciler.support.logging import get_logger

log = get_logger()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def serial_bytes(serial: int) -> bytes:
    """The content octets of the DER INTEGER encoding of a (non-negative) serial number."""
    return serial.to_bytes(serial.bit_length() // 8 + 1, "big", signed=True)


def authority_key_id(cert: x509.Certificate) -> bytes | None:
    try:
        ext = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    except x509.ExtensionNotFound:
        return None
    return ext.value.key_identifier


def cert_id_from(aki: bytes, serial: int) -> str:
    return f"{b64url(aki)}.{b64url(serial_bytes(serial))}"


def cert_id(cert: x509.Certificate | bytes) -> str:
    """The RFC 9773 identifier of a certificate (an x509 object or PEM bytes); ValueError without an AKI."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    aki = authority_key_id(cert)
    if aki is None:
        raise ValueError("the certificate has no Authority Key Identifier, so it has no ARI identifier")
    return cert_id_from(aki, cert.serial_number)


class AriIndex:
    """Serial → ARI identifier of issued certificates, and issuer name → AKI: an append-only keyed log,
    so remembering one certificate costs one append, not a rewrite of everything ever issued."""

    def __init__(self, path: Path) -> None:
        self._log = KeyedLog(path)

    def remember(self, cert: x509.Certificate) -> None:
        aki = authority_key_id(cert)
        if aki is None:
            return
        serial = format(cert.serial_number, "x")
        issuer = cert.issuer.rfc4514_string()
        ident = cert_id_from(aki, cert.serial_number)
        # not waited for: a lost line only means this certificate's ARI identifier is derived again
        if self._log.get(f"serial:{serial}") != ident:
            self._log.set(f"serial:{serial}", ident, wait=False)
        if self._log.get(f"issuer:{issuer}") != b64url(aki):
            self._log.set(f"issuer:{issuer}", b64url(aki), wait=False)

    def lookup(self, info: CertInfo) -> str | None:
        """The ARI identifier of a certificate, from its serial or from its issuer's known AKI."""
        serial = info.serial.lower().lstrip("0") or "0"
        known = self._log.get(f"serial:{serial}")
        if known:
            return str(known)
        aki = self._log.get(f"issuer:{info.issuer}")
        if aki:
            return f"{aki}.{b64url(serial_bytes(int(serial, 16)))}"
        return None
