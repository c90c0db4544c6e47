"""Is an ACME certificate revoked? Its CRL distribution points, fetched (bounded in size and time, cached
for a while: the certificates of one CA share a few CRLs) and verified against the certificate's issuer."""

from __future__ import annotations

import threading
import time

import requests
from cryptography import x509

from reconciler.ports import Material, RevocationStatus, RevokeError
from reconciler.support import pki

CRL_TIMEOUT = 10.0  # seconds per CRL download
CRL_TTL = 600.0  # seconds a downloaded CRL is reused
CRL_MAX_BYTES = 32 << 20  # a CRL larger than this is refused (Let's Encrypt shards its CRLs far below it)


class CrlChecker:
    def __init__(self, verify: bool | str, timeout: float) -> None:
        self.verify = verify
        self.timeout = min(timeout, CRL_TIMEOUT)
        self._lock = threading.Lock()
        self._crls: dict[str, tuple[float, x509.CertificateRevocationList]] = {}

    def status(self, material: Material) -> RevocationStatus | None:
        """The certificate's entry in the CRL named by its CRL distribution points (verified against its
        issuer in the chain), or None when it is listed in none or names no CRL."""
        cert = x509.load_pem_x509_certificate(material.cert_pem)
        urls = pki.crl_urls(cert)
        if not urls:
            return None
        issuer = pki.issuer_of_cert(cert, material.chain_pem)
        if issuer is None:
            raise RevokeError("the certificate's issuer is not in its chain; its CRL cannot be verified")
        problems = []
        for url in urls:
            try:
                entry = pki.crl_entry(self._crl(url), issuer, cert.serial_number)
            except (requests.RequestException, ValueError) as exc:
                problems.append(f"{url}: {exc}")
                continue
            return RevocationStatus(entry[0], entry[1], f"CRL {url}") if entry else None
        raise RevokeError("; ".join(problems))

    def _crl(self, url: str) -> x509.CertificateRevocationList:
        """The CRL at ``url``, fetched at most once per CRL_TTL."""
        with self._lock:
            cached = self._crls.get(url)
        if cached is not None and time.monotonic() - cached[0] < CRL_TTL:
            return cached[1]
        crl = pki.load_crl(fetch_limited(url, self.verify, self.timeout, CRL_MAX_BYTES))
        with self._lock:
            self._crls[url] = (time.monotonic(), crl)
        return crl


def fetch_limited(url: str, verify: bool | str, timeout: float, limit: int) -> bytes:
    """The body of ``url`` (http or https), at most ``limit`` bytes; raises requests.RequestException or ValueError."""
    with requests.get(
        url,
        timeout=timeout,
        verify=verify,
        stream=True,
        allow_redirects=True,
        headers={"User-Agent": "certctl"},
    ) as response:
        response.raise_for_status()
        chunks, size = [], 0
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > limit:
                raise ValueError(f"the CRL is larger than {limit:,} bytes")
            chunks.append(chunk)
    return b"".join(chunks)
