"""The certificate an order produced: the CSR that asks for it, the chain to keep, the material to store."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from reconciler.ports import IssueError, Material
from reconciler.support import pki


def make_csr(key: pki.PrivateKey, domains: tuple[str, ...] | list[str]) -> x509.CertificateSigningRequest:
    """A CSR naming every domain (the first also as CN when it fits in 64 characters)."""
    subject = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, domains[0])] if len(domains[0]) <= 64 else []
    )
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    builder = builder.add_extension(
        x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False
    )
    return builder.sign(key, hashes.SHA256())


def _cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else None


def chosen_top_issuer(chain_pem: str) -> str | None:
    blocks = pki.split_pem_chain(chain_pem.encode())
    if not blocks:
        return None
    return _cn(x509.load_pem_x509_certificate(blocks[-1]).issuer)


def choose_chain(chains: list[str], preferred: str | None) -> str:
    """The chain whose topmost certificate was issued by ``preferred`` (its CN); else one holding a
    certificate of that name; else the CA's default (the first)."""
    if not preferred or len(chains) == 1:
        return chains[0]
    for chain in chains:
        if chosen_top_issuer(chain) == preferred:
            return chain
    for chain in chains:
        certs = [x509.load_pem_x509_certificate(b) for b in pki.split_pem_chain(chain.encode())]
        if any(_cn(c.subject) == preferred for c in certs[1:]):
            return chain
    return chains[0]


def material_from(fullchain: str, key: pki.PrivateKey) -> Material:
    blocks = pki.split_pem_chain(fullchain.encode())
    if not blocks:
        raise IssueError("the CA's certificate download holds no PEM certificate", transient=True)
    leaf = x509.load_pem_x509_certificate(blocks[0])
    key_pem = pki.key_to_pem(key)
    if not pki.key_matches(blocks[0], key_pem):
        raise IssueError("the CA returned a certificate for another key", transient=False)
    return Material(
        cert_pem=blocks[0], chain_pem=b"".join(blocks[1:]), key_pem=key_pem, info=pki.cert_info(leaf)
    )
