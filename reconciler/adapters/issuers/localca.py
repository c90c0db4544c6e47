"""The built-in private CA (the embedded default issuer: needs no server and no network).

It also revokes what it issued: the revoked serials are kept with the CA (``<state>/localca/<issuer>/revoked.json``,
or in the database in fleet mode)
and published as a signed CRL (PEM) in ``crl.pem`` beside the CA, and at ``crlPath`` when the spec gives
one. A CRL is valid for ``CRL_VALIDITY`` and is published afresh once less than half of that is left
(the daemon's maintenance pass asks), so a consumer that checks ``nextUpdate`` never sees a stale one.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from reconciler.core.model import CertInfo
from reconciler.core.spec import LocalCA
from reconciler.ports import Blobs, IssueError, IssueRequest, Material, RevocationStatus, RevokeError
from reconciler.state.statedir import FileBlobs
from reconciler.support import pki
from reconciler.support.fs import UnsafePath, atomic_write, read_regular, safe_folder

CRL_VALIDITY = timedelta(days=7)
MAX_STATE_BYTES = 16 << 20
REVOKED = "revoked.json"


class LocalCAIssuer:
    """Signs leaf certificates with a CA key kept in ``<state>/localca/<issuer>/`` (created on first use),
    or in ``blobs`` (fleet mode: encrypted in the database, one CA for every node)."""

    runs_locally = True  # no network: only the CPU and this machine's disk

    def __init__(
        self,
        name: str,
        spec: LocalCA,
        state_dir: Path,
        clock: object | None = None,
        *,
        blobs: Blobs | None = None,
    ) -> None:
        self.name = name
        self.spec = spec
        self.folder = Path(state_dir) / "localca" / name
        self.blobs: Blobs = blobs if blobs is not None else FileBlobs(self.folder)
        self._lock = threading.Lock()
        self._ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self._crl: tuple[tuple[int, int, int], x509.CertificateRevocationList] | None = None
        self._signer_cache: _Signer | None = None

    def identity(self) -> str:
        return f"localca:{self.name}"

    # --- revocation -----------------------------------------------------------------------------------------

    @property
    def crl_file(self) -> Path:
        return self.folder / "crl.pem"

    def revoke(self, material: Material, reason: str) -> None:
        """Add the certificate's serial to the revoked list and publish the CRL; idempotent."""
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        now = datetime.now(UTC).replace(microsecond=0)
        ca_cert, _ = self._load_or_create(now)
        if cert.issuer != ca_cert.subject:
            raise RevokeError(f"the certificate was not issued by the local CA {self.name}")
        with self._lock:
            data = self._revoked()
            serial = format(cert.serial_number, "x")
            if not any(e.get("serial") == serial for e in data["revoked"]):
                data["revoked"].append({"serial": serial, "at": now.isoformat(), "reason": reason})
                self.blobs.put(REVOKED, (json.dumps(data, indent=1) + "\n").encode())
        self.publish_crl(now)

    def revocation_status(self, material: Material) -> RevocationStatus | None:
        """The certificate's entry in the CRL this CA publishes (read back and verified), or None."""
        crl = self._published_crl()
        if crl is None:
            return None
        ca_cert, _ = self._load_or_create(datetime.now(UTC))
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        try:
            entry = pki.crl_entry(crl, ca_cert, cert.serial_number)
        except ValueError as exc:
            raise RevokeError(f"{self.crl_file}: {exc}") from None
        return RevocationStatus(entry[0], entry[1], f"CRL {self.crl_file}") if entry else None

    def _published_crl(self) -> x509.CertificateRevocationList | None:
        """crl.pem as published (parsed once per version of the file), or None when none is published."""
        try:
            st = self.crl_file.stat()
        except FileNotFoundError:
            return None
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._crl
        if cached is not None and cached[0] == key:
            return cached[1]
        try:
            crl = pki.load_crl(read_regular(self.crl_file, MAX_STATE_BYTES))
        except (OSError, ValueError) as exc:
            raise RevokeError(f"cannot read the local CA's CRL {self.crl_file}: {exc}") from None
        self._crl = (key, crl)
        return crl

    def refresh_crl(self, now: datetime) -> bool:
        """Publish the CRL afresh when one is published (or ``crlPath`` asks for one) and less than half of its
        validity is left; True when it was written."""
        if not self.crl_file.exists() and self.spec.crlPath is None:
            return False
        try:
            crl = self._published_crl()
            fresh = (
                crl is not None
                and crl.next_update_utc is not None
                and crl.next_update_utc - now > CRL_VALIDITY / 2
            )
        except RevokeError:
            fresh = False  # a damaged CRL is published afresh
        if fresh and (self.spec.crlPath is None or Path(self.spec.crlPath).exists()):
            return False
        self.publish_crl(now)
        return True

    def publish_crl(self, now: datetime) -> None:
        """Sign a CRL of every revoked serial and write it to crl.pem (and ``crlPath``)."""
        now = now.astimezone(UTC).replace(microsecond=0)
        ca_cert, ca_key = self._load_or_create(now)
        with self._lock:
            data = self._revoked()
            data["crl_number"] = int(data.get("crl_number", 0)) + 1
            builder = (
                x509.CertificateRevocationListBuilder()
                .issuer_name(ca_cert.subject)
                .last_update(now)
                .next_update(now + CRL_VALIDITY)
                .add_extension(x509.CRLNumber(data["crl_number"]), critical=False)
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
                )
            )
            for entry in data["revoked"]:
                revoked = (
                    x509.RevokedCertificateBuilder()
                    .serial_number(int(entry["serial"], 16))
                    .revocation_date(datetime.fromisoformat(entry["at"]))
                )
                flag = pki.CRL_REASONS.get(str(entry.get("reason")))
                if flag is not None:
                    revoked = revoked.add_extension(x509.CRLReason(flag), critical=False)
                builder = builder.add_revoked_certificate(revoked.build())
            crl_pem = builder.sign(ca_key, hashes.SHA384()).public_bytes(serialization.Encoding.PEM)
            self.blobs.put(REVOKED, (json.dumps(data, indent=1) + "\n").encode())
            atomic_write(self.crl_file, crl_pem, 0o644)
            if self.spec.crlPath is not None:
                target = Path(self.spec.crlPath)
                try:
                    safe_folder(target.parent, 0o755, "crlPath folder")
                except UnsafePath as exc:
                    raise RevokeError(str(exc)) from None
                atomic_write(target, crl_pem, 0o644)

    def _revoked(self) -> dict[str, Any]:
        """The revoked list (``{"revoked": [{serial, at, reason}], "crl_number": n}``); RevokeError when damaged.
        It is kept with the CA (in fleet mode in the database, so every node publishes the same CRL)."""
        path = f"the revoked list of local CA {self.name}"
        try:
            raw = self.blobs.get(REVOKED)
            if raw is None:
                return {"revoked": [], "crl_number": 0}
            data = json.loads(raw)
        except (OSError, ValueError) as exc:
            raise RevokeError(f"cannot read {path}: {exc}") from None
        entries = data.get("revoked") if isinstance(data, dict) else None
        if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("serial"), str) and isinstance(e.get("at"), str)
            for e in entries
        ):
            raise RevokeError(f"{path} is damaged (not {{revoked: [{{serial, at, reason}}]}})")
        try:
            for e in entries:
                int(e["serial"], 16)
                datetime.fromisoformat(e["at"])
        except ValueError as exc:
            raise RevokeError(f"{path} is damaged: {exc}") from None
        return {
            "revoked": entries,
            "crl_number": data.get("crl_number", 0) if isinstance(data.get("crl_number"), int) else 0,
        }

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
                cert_pem = self.blobs.create(
                    "ca.pem", self._ca_certificate(key, now).public_bytes(serialization.Encoding.PEM)
                )
            cert = x509.load_pem_x509_certificate(cert_pem)
            self._ca = (cert, key)
            return self._ca

    def _ca_certificate(self, key: ec.EllipticCurvePrivateKey, now: datetime) -> x509.Certificate:
        subject = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.COMMON_NAME, self.spec.commonName or f"certctl local CA {self.name}"
                ),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "certctl"),
            ]
        )
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + self.spec.caValidity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA384())
        )

    def issue(self, request: IssueRequest) -> Material:
        now = (request.at or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
        ca_cert, ca_key = self._load_or_create(now)
        signer = self._signer()
        key = pki.load_key(request.key_pem) if request.key_pem else pki.generate_key(request.key_algorithm)
        not_after = min(now + self.spec.validity, ca_cert.not_valid_after_utc)
        names = [_general_name(d) for d in request.domains]
        # a CN holds at most 64 characters; a longer (valid) first name lives in the SAN alone (RFC 5280)
        subject = request.domains[0] if len(request.domains[0]) <= 64 else ""
        serial = x509.random_serial_number()
        public_key = key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)] if subject else []))
            .issuer_name(ca_cert.subject)
            .public_key(public_key)
            .serial_number(serial)
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_LEAF_USAGE, critical=False)
            .add_extension(signer.authority_key_id, critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )
        cert = builder.sign(ca_key, hashes.SHA256())
        info = CertInfo(  # what pki.cert_info reads back, taken from what was just signed (no parse)
            thumbprint=cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - Windows' thumbprint
            sha256=cert.fingerprint(hashes.SHA256()).hex(),
            subject=subject,
            sans=tuple(str(n.value).lower() for n in names),
            key_algorithm=pki.key_algorithm(public_key),
            not_before=now,
            not_after=not_after.astimezone(UTC),
            issuer=signer.issuer,
            serial=format(serial, "x"),
        )
        return Material(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            chain_pem=signer.chain_pem,
            key_pem=pki.key_to_pem(key),
            info=info,
        )

    def _signer(self) -> _Signer:
        """What every certificate of this CA repeats (computed once per CA)."""
        signer = self._signer_cache
        if signer is None:
            ca_cert, ca_key = self._load_or_create(datetime.now(UTC))
            signer = self._signer_cache = _Signer(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                ca_cert.subject.rfc4514_string(),
                ca_cert.public_bytes(serialization.Encoding.PEM),
            )
        return signer


_LEAF_USAGE = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


@dataclass(frozen=True)
class _Signer:
    authority_key_id: x509.AuthorityKeyIdentifier
    issuer: str  # the CA's subject, as a leaf's CertInfo.issuer reads
    chain_pem: bytes


def _general_name(name: str) -> x509.GeneralName:
    import ipaddress

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
