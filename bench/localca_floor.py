"""The floor for `bench/localca_bench.py`: the files a local-CA first apply leaves, written as cheaply as
the same order of durability allows (not a test, and not a tool to use anywhere else).

Per certificate it does what certctl's layout needs and nothing else: an ECDSA P-256 key signed by a
P-384 CA (SHA-256, the same extensions), a vault version (a temporary folder with key, certificate,
chain, full chain and metadata, renamed into place), a store version (the same five files) with its
four name links and a `current` link, and a line each in the vault index, the store index and the
journal. Certificates go in batches of ``batch`` (certctl's `concurrency`), one thread, and durability
costs four `syncfs` per batch in the order certctl keeps per certificate: vault versions, then their
index lines, then store versions with their links, then the `current` flips. What it leaves out is all
certctl adds: process start, desired state, plan, path and ownership checks, reading back what was
written, the journal's intent before each action, logging, threads.

  python bench/localca_floor.py N FOLDER [--batch 8]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import json
import os
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
PEM, PKCS8 = serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8
NAMES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem")


def _write_version(folder: str, files: dict[str, bytes]) -> None:
    """``folder`` appearing at once with ``files`` (a temporary folder beside it, renamed)."""
    tmp = f"{os.path.dirname(folder)}/.{os.path.basename(folder)}.tmp"
    os.mkdir(tmp, 0o700)
    for name, data in files.items():
        fd = os.open(f"{tmp}/{name}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
    os.rename(tmp, folder)


def _append(path: str, lines: list[bytes]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, b"".join(lines))
    os.close(fd)


def _link(target: str, link: str) -> None:
    os.symlink(target, link + ".tmp")
    os.rename(link + ".tmp", link)


def run(n: int, root: Path, batch: int = 8) -> float:
    """Seconds to write ``n`` certificates' files under ``root`` (which must be empty or missing)."""
    vault, store, state = f"{root}/state/vault", f"{root}/pem", f"{root}/state"
    for folder in (vault, store):
        os.makedirs(folder, mode=0o700)
    sync_fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)

    def sync() -> None:
        if LIBC.syncfs(sync_fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs failed")

    now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "floor CA")])
    chain = (  # the CA's own certificate, as certctl's local CA puts in chain.pem (made once, before the clock)
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA384())
        .public_bytes(PEM)
    )
    usage = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    started = time.perf_counter()
    try:
        for first in range(0, n, batch):
            made = []
            for i in range(first, min(n, first + batch)):
                name = f"cert-{i:05d}"
                key = ec.generate_private_key(ec.SECP256R1())
                cert = (
                    x509.CertificateBuilder()
                    .subject_name(
                        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"www.site{i}.example.com")])
                    )
                    .issuer_name(ca_name)
                    .public_key(key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now)
                    .not_valid_after(now + datetime.timedelta(days=90))
                    .add_extension(
                        x509.SubjectAlternativeName(
                            [x509.DNSName(f"www.site{i}.example.com"), x509.DNSName(f"site{i}.example.com")]
                        ),
                        critical=False,
                    )
                    .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                    .add_extension(usage, critical=False)
                    .add_extension(authority, critical=False)
                    .add_extension(
                        x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
                    )
                    .sign(ca_key, hashes.SHA256())
                )
                cert_pem = cert.public_bytes(PEM)
                key_pem = key.private_bytes(PEM, PKCS8, serialization.NoEncryption())
                thumbprint = cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303 - as certctl names it
                meta = json.dumps({"thumbprint": thumbprint, "at": now.isoformat()}).encode()
                files = {
                    "cert.pem": cert_pem,
                    "chain.pem": chain,
                    "fullchain.pem": cert_pem + chain,
                    "meta.json": meta,
                }
                made.append((name, thumbprint, key_pem, files))
            for name, thumbprint, key_pem, files in made:
                os.mkdir(f"{vault}/{name}")
                _write_version(f"{vault}/{name}/{thumbprint}", {"key.pem": key_pem, **files})
            sync()  # the vault's versions, then their commit
            _append(
                f"{vault}/index.jsonl", [json.dumps({"k": m[0], "v": m[1]}).encode() + b"\n" for m in made]
            )
            sync()
            for name, thumbprint, key_pem, files in made:
                folder = f"{store}/{name}"
                os.makedirs(f"{folder}/versions", mode=0o700)
                _write_version(f"{folder}/versions/{thumbprint[:8]}", {"privkey.pem": key_pem, **files})
                for link in NAMES:
                    _link(f"current/{link}", f"{folder}/{link}")
            sync()  # the store's versions and links, then the flips
            for name, thumbprint, _key, _files in made:
                _link(f"versions/{thumbprint[:8]}", f"{store}/{name}/current")
            sync()
            _append(
                f"{store}/.index.jsonl", [json.dumps({"k": m[0], "v": m[1]}).encode() + b"\n" for m in made]
            )
            _append(f"{state}/journal.jsonl", [json.dumps({"done": m[0]}).encode() + b"\n" for m in made])
        sync()
    finally:
        os.close(sync_fd)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("n", type=int)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    seconds = run(args.n, args.folder, args.batch)
    print(f"{args.n} certificates in {seconds:.2f} s: {args.n / seconds:.0f}/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
