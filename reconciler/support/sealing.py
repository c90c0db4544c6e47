"""Sealing secrets at rest with AES-256-GCM (fleet mode: private keys in the database).

A sealed value is ``0x01 || 12-byte nonce || ciphertext+tag``. The associated data names what the value
is (``version:<certificate>:<thumbprint>``), so a sealed key moved to another row does not open.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

FORMAT = b"\x01"
NONCE = 12


class KeyProblem(ValueError):
    """The encryption key is malformed, or not the key a value was sealed with."""


def parse_key(raw: bytes) -> bytes:
    """32 raw bytes from the base64 text of a key (``openssl rand -base64 32``)."""
    text = raw.strip()
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise KeyProblem(
            "the encryption key must be 32 bytes, base64-encoded (make one with: openssl rand -base64 32)"
        )
    return key


class Sealer:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise KeyProblem("the encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, context: str) -> bytes:
        nonce = os.urandom(NONCE)
        return FORMAT + nonce + self._aead.encrypt(nonce, plaintext, context.encode())

    def open(self, sealed: bytes, context: str) -> bytes:
        if not sealed.startswith(FORMAT) or len(sealed) < 1 + NONCE + 16:
            raise KeyProblem(f"{context}: not a sealed value")
        try:
            return self._aead.decrypt(sealed[1 : 1 + NONCE], sealed[1 + NONCE :], context.encode())
        except InvalidTag:
            raise KeyProblem(f"{context}: cannot be decrypted with this encryption key") from None
