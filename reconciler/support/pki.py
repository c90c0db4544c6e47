"""X.509 and key helpers shared by every adapter (no I/O: bytes in, values out)."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from reconciler.core.model import CertInfo

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
_PEM_END = b"-----END CERTIFICATE-----"


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "ecdsa-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if algorithm.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(algorithm[4:]))
    raise ValueError(f"unknown key algorithm {algorithm}")


def key_to_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError("only ECDSA and RSA keys are supported")
    return key


def key_algorithm(public_key: object) -> str:
    if isinstance(public_key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        return {"secp256r1": "ecdsa-p256", "secp384r1": "ecdsa-p384", "secp521r1": "ecdsa-p521"}.get(
            public_key.curve.name, f"ecdsa-{public_key.curve.name}"
        )
    if isinstance(public_key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        return f"rsa-{public_key.key_size}"
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return "ed25519"
    if isinstance(public_key, ed448.Ed448PublicKey):
        return "ed448"
    return "unknown"


def split_pem_chain(data: bytes) -> list[bytes]:
    """Every CERTIFICATE block of a PEM bundle, in order, each ending in a newline."""
    out: list[bytes] = []
    pos = 0
    while True:
        start = data.find(_PEM_BEGIN, pos)
        if start < 0:
            return out
        end = data.find(_PEM_END, start)
        if end < 0:
            raise ValueError("a PEM certificate block is not terminated")
        end += len(_PEM_END)
        out.append(data[start:end] + b"\n")
        pos = end


def cert_info(cert: x509.Certificate) -> CertInfo:
    try:
        cn_attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject = str(cn_attrs[0].value) if cn_attrs else ""
    except ValueError:
        subject = ""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(  # in certificate order: DNS names and IP addresses (the local CA issues both)
            str(entry.value).lower() for entry in san if isinstance(entry, x509.DNSName | x509.IPAddress)
        )
    except x509.ExtensionNotFound:
        sans = ()
    return CertInfo(
        thumbprint=cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - Windows' thumbprint is SHA-1
        sha256=cert.fingerprint(hashes.SHA256()).hex(),
        subject=subject,
        sans=sans,
        key_algorithm=key_algorithm(cert.public_key()),
        not_before=cert.not_valid_before_utc.astimezone(UTC),
        not_after=cert.not_valid_after_utc.astimezone(UTC),
        issuer=cert.issuer.rfc4514_string(),
        serial=format(cert.serial_number, "x"),
    )


def info_from_pem(pem: bytes) -> CertInfo:
    """CertInfo of the first certificate in a PEM blob (ValueError if there is none or it is corrupt)."""
    return cert_info(x509.load_pem_x509_certificate(pem))


def chain_as_written(cert_pem: bytes, chain_pem: bytes, fullchain_pem: bytes) -> bool:
    """Are a chain.pem and fullchain.pem as certctl writes them beside ``cert_pem``: the chain holds
    certificates only (each one parses), and the full chain is the certificate followed by the chain?"""
    if fullchain_pem != cert_pem + chain_pem:
        return False
    # one CA's chain serves many certificates: each is parsed once, remembered by its digest (never by its
    # bytes, which hold a private key in the very case this check is for)
    digest = hashlib.sha256(chain_pem).digest()
    known = _CHAINS_CHECKED.get(digest)
    if known is None:
        known = _certificates_only(chain_pem)
        if len(_CHAINS_CHECKED) >= 256:
            _CHAINS_CHECKED.clear()
        _CHAINS_CHECKED[digest] = known
    return known


_CHAINS_CHECKED: dict[bytes, bool] = {}


def _certificates_only(chain_pem: bytes) -> bool:
    if _CERT_BLOCK.sub(b"", chain_pem).strip():  # anything but certificate blocks: a key, text, base64
        return False
    try:
        for block in split_pem_chain(chain_pem):
            x509.load_pem_x509_certificate(block)
    except ValueError:
        return False
    return True


_CERT_BLOCK = re.compile(rb"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", re.DOTALL)


def key_matches(cert_pem: bytes, key_pem: bytes) -> bool:
    cert = x509.load_pem_x509_certificate(cert_pem)
    key = load_key(key_pem)
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return cert.public_key().public_bytes(*fmt) == key.public_key().public_bytes(*fmt)


def to_pfx(
    cert_pem: bytes,
    chain_pem: bytes,
    key_pem: bytes,
    password: bytes | None,
    friendly_name: str | None,
    *,
    legacy: bool = False,
) -> bytes:
    """PKCS#12 as Windows imports it: with a password, AES-256 (Windows Server 2019 and later), or with
    ``legacy`` 3DES/SHA-1, which every Windows and IIS version reads; unencrypted without a password."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cas = [x509.load_pem_x509_certificate(c) for c in split_pem_chain(chain_pem)]
    if password and legacy:
        enc: serialization.KeySerializationEncryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(2048)
            .key_cert_algorithm(pkcs12.PBES.PBESv1SHA1And3KeyTripleDESCBC)
            .hmac_hash(hashes.SHA1())  # noqa: S303 - what older Windows can read
            .build(password)
        )
    elif password:
        enc = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(50000)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password)
        )
    else:
        enc = serialization.NoEncryption()
    return pkcs12.serialize_key_and_certificates(
        friendly_name.encode() if friendly_name else None, load_key(key_pem), cert, cas or None, enc
    )


def from_pfx(data: bytes, password: bytes | None) -> tuple[bytes, bytes, bytes | None, str | None]:
    """(cert_pem, chain_pem, key_pem or None, friendly name) from PKCS#12 bytes."""
    pfx = pkcs12.load_pkcs12(data, password)
    if pfx.cert is None:
        raise ValueError("the PFX holds no certificate")
    cert_pem = pfx.cert.certificate.public_bytes(serialization.Encoding.PEM)
    chain = b"".join(c.certificate.public_bytes(serialization.Encoding.PEM) for c in pfx.additional_certs)
    key_pem = (
        key_to_pem(pfx.key) if isinstance(pfx.key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None
    )
    name = pfx.cert.friendly_name.decode() if pfx.cert.friendly_name else None
    return cert_pem, chain, key_pem, name


# --- certificate revocation lists (RFC 5280 §5) ------------------------------------------------------------

CRL_REASONS: dict[str, x509.ReasonFlags] = {
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "cACompromise": x509.ReasonFlags.ca_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "certificateHold": x509.ReasonFlags.certificate_hold,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
    "aACompromise": x509.ReasonFlags.aa_compromise,
    "removeFromCRL": x509.ReasonFlags.remove_from_crl,
}


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL as DER or PEM; ValueError when it is neither."""
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_crl(data)
    return x509.load_der_x509_crl(data)


def crl_entry(
    crl: x509.CertificateRevocationList, issuer: x509.Certificate, serial: int
) -> tuple[str, datetime] | None:
    """(reason name, revocation time) when ``crl`` lists ``serial``, else None. ValueError when the CRL was
    not signed by ``issuer`` (or names another issuer): an unverified CRL never counts."""
    if crl.issuer != issuer.subject or not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
        raise ValueError(f"the CRL is not signed by {issuer.subject.rfc4514_string()}")
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    if entry is None:
        return None
    reason = "unspecified"
    try:
        flag = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    except x509.ExtensionNotFound:
        pass
    else:
        reason = next((name for name, f in CRL_REASONS.items() if f is flag), "unspecified")
    return reason, entry.revocation_date_utc


def crl_urls(cert: x509.Certificate) -> list[str]:
    """The http(s) URLs of a certificate's CRL distribution points."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [
        name.value
        for point in points
        for name in (point.full_name or ())
        if isinstance(name, x509.UniformResourceIdentifier) and name.value.startswith(("http://", "https://"))
    ]


def issuer_of_cert(cert: x509.Certificate, chain_pem: bytes) -> x509.Certificate | None:
    """The certificate of ``chain_pem`` that issued ``cert`` (its subject is ``cert``'s issuer), or None."""
    for pem in split_pem_chain(chain_pem):
        candidate = x509.load_pem_x509_certificate(pem)
        if candidate.subject == cert.issuer:
            return candidate
    return None
