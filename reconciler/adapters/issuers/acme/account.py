"""The ACME account of one Issuer: its key and URL, kept in ``<state_dir>/acme/<issuer>/``.

``account.key`` is an ECDSA P-256 key (PKCS#8 PEM, mode 0600); ``account.json`` records the
directory URL the account belongs to, its URL (the JWS ``kid``) and the contact it was registered
with. Both are written atomically; the key is made once and reused for the life of the account.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.jwa import ES256, ES384, ES512, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from reconciler.support import pki
from reconciler.support.fs import atomic_write

log = structlog.get_logger()


@dataclass(frozen=True)
class AccountRecord:
    directory_url: str
    uri: str
    email: str | None
    created: str


class AccountStore:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.key_path = folder / "account.key"
        self.record_path = folder / "account.json"
        self._lock = threading.Lock()
        self._key: JWK | None = None

    def key(self) -> JWK:
        """The account key, made (and saved 0600) on first use."""
        with self._lock:
            if self._key is not None:
                return self._key
            if self.key_path.exists():
                try:
                    private = pki.load_key(self.key_path.read_bytes())
                except (OSError, ValueError) as exc:
                    raise ValueError(f"the ACME account key {self.key_path} is unreadable: {exc}") from None
            else:
                private = ec.generate_private_key(ec.SECP256R1())
                atomic_write(self.key_path, pki.key_to_pem(private), mode=0o600)
                log.info("acme.account.key_created", path=str(self.key_path))
            self._key = JWKEC(key=private) if isinstance(private, ec.EllipticCurvePrivateKey) else JWKRSA(key=private)
            return self._key

    def alg(self) -> JWASignature:
        key = self.key()
        if isinstance(key, JWKRSA):
            return RS256
        curve = key.key.curve.name
        return {"secp256r1": ES256, "secp384r1": ES384, "secp521r1": ES512}[curve]

    def load(self, directory_url: str) -> AccountRecord | None:
        """The saved account for this directory URL, or None (none yet, or one of another CA)."""
        try:
            data = json.loads(self.record_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("acme.account.record_unreadable", path=str(self.record_path), error=str(exc))
            return None
        if data.get("directoryUrl") != directory_url or not data.get("uri"):
            return None
        return AccountRecord(directory_url, data["uri"], data.get("email"), data.get("created", ""))

    def save(self, directory_url: str, uri: str, email: str | None) -> AccountRecord:
        record = AccountRecord(directory_url, uri, email, datetime.now(UTC).isoformat(timespec="seconds"))
        body = {"directoryUrl": directory_url, "uri": uri, "email": email, "created": record.created}
        atomic_write(self.record_path, json.dumps(body, indent=1) + "\n", mode=0o600)
        return record
