"""RFC 9773 certificate identifiers and the issuer's memory of them."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given
from hypothesis import strategies as st

from reconciler.adapters.issuers.acme.ari import AriIndex, cert_id, cert_id_from, serial_bytes
from reconciler.support import pki


def test_rfc9773_example() -> None:
    aki = bytes.fromhex("69885B6B87464041E1B37B847BA0AE2CDE01C8D4")
    assert cert_id_from(aki, 0x0087654321) == "aYhba4dGQEHhs3uEe6CuLN4ByNQ.AIdlQyE"


@given(st.integers(min_value=1, max_value=2**159 - 1))
def test_serial_bytes_are_minimal_der_integer_content(serial: int) -> None:
    data = serial_bytes(serial)
    assert int.from_bytes(data, "big", signed=True) == serial
    # minimal: no leading 0x00 unless the next byte has its top bit set
    assert not (len(data) > 1 and data[0] == 0 and data[1] < 0x80)


def _cert(serial: int) -> x509.Certificate:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf.example")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Intermediate")]))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def test_cert_id_of_a_certificate_matches_acme_pythons() -> None:
    from acme.client import _renewal_info_path_component

    for serial in (1, 0x7F, 0x80, 0xFF00, 0x0087654321, 2**159 - 1):
        cert = _cert(serial)
        assert cert_id(cert) == _renewal_info_path_component(cert)


def test_index_finds_a_certificate_by_serial_or_by_its_issuer(tmp_path: Path) -> None:
    index = AriIndex(tmp_path / "ari.json")
    issued = _cert(0x1234)
    index.remember(issued)
    info = pki.cert_info(issued)
    assert index.lookup(info) == cert_id(issued)
    assert (tmp_path / "ari.json").stat().st_mode & 0o777 == 0o600

    # another certificate from the same issuer (same name and key id), never seen by serial
    fake = dataclasses.replace(pki.cert_info(_cert(0x99)), issuer=info.issuer)
    aki = issued.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    assert aki is not None
    assert index.lookup(fake) == cert_id_from(aki, 0x99)


def test_index_knows_nothing_of_strangers(tmp_path: Path) -> None:
    index = AriIndex(tmp_path / "ari.json")
    assert index.lookup(pki.cert_info(_cert(5))) is None
    (tmp_path / "ari.json").write_text("{not json")
    assert index.lookup(pki.cert_info(_cert(5))) is None
