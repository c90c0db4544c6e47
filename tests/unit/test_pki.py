"""PKCS#12 as its consumers read it (checked with OpenSSL, an implementation other than ours), and the facts
the local CA reports of a certificate as parsing finds them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.adapters.issuers.localca import LocalCAIssuer
from reconciler.core.spec import LocalCA
from reconciler.ports import IssueRequest
from reconciler.support import pki


@pytest.mark.parametrize(
    ("legacy", "algorithm"), [(False, "AES-256-CBC"), (True, "pbeWithSHA1And3-KeyTripleDES-CBC")]
)
def test_pfx_encryption_as_openssl_sees_it(tmp_path: Path, legacy: bool, algorithm: str) -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is installed by scripts/install-system-deps"
    m = LocalCAIssuer("ca", LocalCA(), tmp_path).issue(IssueRequest("a", ("a.example.com",), "ecdsa-p256"))
    pfx = tmp_path / "a.pfx"
    pfx.write_bytes(pki.to_pfx(m.cert_pem, m.chain_pem, m.key_pem, b"s3cret", "certctl:a", legacy=legacy))
    info = subprocess.run(
        [openssl, "pkcs12", "-in", str(pfx), "-info", "-noout", "-passin", "pass:s3cret"],
        capture_output=True,
        text=True,
        check=True,
    )
    shrouded = next(
        line for line in (info.stdout + info.stderr).splitlines() if line.startswith("Shrouded Keybag")
    )
    assert algorithm in shrouded
    assert pki.from_pfx(pfx.read_bytes(), b"s3cret")[0] == m.cert_pem


@pytest.mark.parametrize(
    "domains",
    [
        ("www.example.com", "example.com"),
        ("192.0.2.7", "2001:db8::1", "ip.example.com"),
        ("a" * 60 + ".long-first-name.example.com", "short.example.com"),  # no CN: the SAN alone
    ],
)
@pytest.mark.parametrize("algorithm", ["ecdsa-p256", "rsa-2048"])
def test_the_local_ca_reports_what_reading_its_certificate_back_finds(
    tmp_path: Path, domains: tuple[str, ...], algorithm: str
) -> None:
    """The local CA builds a certificate's facts from what it signed instead of parsing it again: they must be
    exactly what parsing finds."""
    material = LocalCAIssuer("ca", LocalCA(), tmp_path).issue(IssueRequest("a", domains, algorithm))
    assert material.info == pki.info_from_pem(material.cert_pem)
    assert pki.key_matches(material.cert_pem, material.key_pem)
