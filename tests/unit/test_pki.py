"""PKCS#12 as its consumers read it (checked with OpenSSL, an implementation other than ours), and the facts
the local CA reports of a certificate as parsing finds them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reconciler.adapters.issuers.localca import LocalCAIssuer
from reconciler.core.spec import LocalCA
from reconciler.ports import IssueRequest, Material
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


def _issued(tmp_path: Path) -> Material:
    return LocalCAIssuer("local", LocalCA(), tmp_path / "state").issue(
        IssueRequest("web", ("www.example.com",), "ecdsa-p256")
    )


@pytest.mark.parametrize(
    ("case", "ok"),
    [
        ("as written", True),
        ("no chain", True),
        ("CRLF line ends", True),
        ("fullchain without the chain", False),
        ("fullchain of another order", False),
        ("text between blocks", False),
        ("a key after the chain", False),
        ("a lowercase block", False),
        ("base64 without a header", False),
        ("a block cut short", False),
        ("a certificate that does not parse", False),
    ],
)
def test_a_chain_is_as_written_only_with_certificate_blocks_and_the_full_chain_they_make(
    tmp_path: Path, case: str, ok: bool
) -> None:
    m = _issued(tmp_path)
    cert, chain, key = m.cert_pem, m.chain_pem, m.key_pem
    body = b"".join(key.splitlines(keepends=True)[1:-1])  # the key's base64 lines alone
    chains = {
        "as written": chain,
        "no chain": b"",
        "CRLF line ends": chain.replace(b"\n", b"\r\n"),
        "fullchain without the chain": chain,
        "fullchain of another order": chain,
        "text between blocks": chain + b"Issued by the example CA\n" + chain,
        "a key after the chain": chain + key,
        "a lowercase block": chain + key.replace(b"PRIVATE KEY", b"private key").lower(),
        "base64 without a header": chain + body,
        "a block cut short": chain + chain[: len(chain) // 2],
        "a certificate that does not parse": chain
        + b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    }
    used = chains[case]
    full = {
        "fullchain without the chain": cert,
        "fullchain of another order": _issued(tmp_path).cert_pem + used,
    }
    assert pki.chain_as_written(cert, used, full.get(case, cert + used)) is ok


def test_a_checked_chain_is_remembered_by_its_digest_never_by_its_bytes(tmp_path: Path) -> None:
    """The chains checked are remembered so one CA's chain is parsed once, but a rejected one may hold a
    private key: only digests are kept."""
    m = _issued(tmp_path)
    damaged = m.chain_pem + m.key_pem
    pki._CHAINS_CHECKED.clear()
    assert not pki.chain_as_written(m.cert_pem, damaged, m.cert_pem + damaged)
    assert pki.chain_as_written(m.cert_pem, m.chain_pem, m.fullchain_pem)
    assert len(pki._CHAINS_CHECKED) == 2
    assert all(len(k) == 32 and m.key_pem not in k for k in pki._CHAINS_CHECKED)
    assert not pki.chain_as_written(m.cert_pem, damaged, m.cert_pem + damaged), "remembered as refused"
