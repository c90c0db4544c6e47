"""The ACME account of one Issuer: its key and URL, kept in ``<state_dir>/acme/<issuer>/``, and its registration.

``account.key`` is an ECDSA P-256 key (PKCS#8 PEM, mode 0600); ``account.json`` records the
directory URL the account belongs to, its URL (the JWS ``kid``) and the contact it was registered
with. Both are written atomically; the key is made once and reused for the life of the account.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from acme import errors as acme_errors
from acme import messages
from acme.client import ClientV2
from cryptography.hazmat.primitives.asymmetric import ec
from josepy.b64 import b64decode
from josepy.json_util import JSONObjectWithFields, field
from josepy.jwa import ES256, ES384, ES512, RS256, JWASignature
from josepy.jwk import JWK, JWKEC, JWKRSA

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.record import RECORD, AccountRecord, load_record
from reconciler.core import spec as specs
from reconciler.ports import Blobs, IssueError
from reconciler.state.statedir import FileBlobs
from reconciler.support import pki
from reconciler.support.logging import get_logger
from reconciler.support.secrets import SecretError, resolve

log = get_logger()


def jwa_for(jwk: JWK) -> JWASignature:
    """The JWS algorithm of an account (or certificate) key."""
    if isinstance(jwk, JWKRSA):
        return RS256
    curve = jwk.key.curve.name
    return {"secp256r1": ES256, "secp384r1": ES384, "secp521r1": ES512}[curve]


class ContactUpdate(JSONObjectWithFields):
    """An account update that sets ``contact`` (also to an empty list, which acme's Registration omits)."""

    contact: tuple[str, ...] = field("contact")


class AccountStore:
    """The account key and record: files of ``folder``, or ``blobs`` (fleet mode: one account for every node)."""

    def __init__(self, folder: Path, blobs: Blobs | None = None) -> None:
        self.folder = folder
        self.key_path = folder / "account.key"
        self.record_path = folder / "account.json"
        self.blobs: Blobs = blobs if blobs is not None else FileBlobs(folder)
        self._lock = threading.Lock()
        self._key: JWK | None = None

    def key(self) -> JWK:
        """The account key, made (and saved 0600) on first use."""
        with self._lock:
            if self._key is not None:
                return self._key
            pem = self.blobs.get("account.key")
            if pem is None:  # created only where missing and read back: concurrent nodes share the first key
                pem = self.blobs.create(
                    "account.key", pki.key_to_pem(ec.generate_private_key(ec.SECP256R1()))
                )
                log.info("acme.account.key_created", path=str(self.key_path))
            try:
                private = pki.load_key(pem)
            except ValueError as exc:
                raise ValueError(f"the ACME account key {self.key_path} is unreadable: {exc}") from None
            self._key = (
                JWKEC(key=private) if isinstance(private, ec.EllipticCurvePrivateKey) else JWKRSA(key=private)
            )
            return self._key

    def alg(self) -> JWASignature:
        return jwa_for(self.key())

    # --- key rollover (RFC 8555 §7.3.5): the new key is staged first, and made the key once the CA took it

    STAGED = "account.key.new"

    def stage_key(self) -> JWK:
        """A new account key, kept as ``account.key.new`` (0600, or sealed in the database) before the CA is
        asked to switch to it."""
        private = ec.generate_private_key(ec.SECP256R1())
        self.blobs.put(self.STAGED, pki.key_to_pem(private))
        return JWKEC(key=private)

    def staged(self) -> JWK | None:
        """The staged key of a rollover that was interrupted, or None."""
        pem = self.blobs.get(self.STAGED)
        if pem is None:
            return None
        try:
            private = pki.load_key(pem)
        except ValueError as exc:
            raise ValueError(f"the staged ACME account key ({self.STAGED}) is unreadable: {exc}") from None
        return JWKEC(key=private) if isinstance(private, ec.EllipticCurvePrivateKey) else JWKRSA(key=private)

    def promote_staged(self) -> None:
        """The CA now knows the account by the staged key: make it the account key (then drop the staged copy;
        a crash in between leaves an interrupted rollover, which the next rollover settles with the CA)."""
        with self._lock:
            pem = self.blobs.get(self.STAGED)
            if pem is None:
                return
            self.blobs.put("account.key", pem)
            self.blobs.delete(self.STAGED)
            self._key = None

    def discard_staged(self) -> None:
        self.blobs.delete(self.STAGED)

    def load(self, directory_url: str) -> AccountRecord | None:
        """The saved account for this directory URL, or None (none yet, or one of another CA)."""
        return load_record(self.blobs, directory_url, str(self.record_path))

    def save(
        self, directory_url: str, uri: str, email: str | None, created: str | None = None
    ) -> AccountRecord:
        record = AccountRecord(
            directory_url, uri, email, created or datetime.now(UTC).isoformat(timespec="seconds")
        )
        body = {"directoryUrl": directory_url, "uri": uri, "email": email, "created": record.created}
        self.blobs.put(RECORD, (json.dumps(body, indent=1) + "\n").encode())
        return record


class Registration:
    """Registers the account of one Issuer with its CA (terms of service, EAB), once, and forgets it on request."""

    def __init__(
        self, name: str, spec: specs.Acme, store: AccountStore, environ: Mapping[str, str] | None
    ) -> None:
        self.name = name
        self.spec = spec
        self.store = store
        self.environ = environ
        self._lock = threading.Lock()  # one registration at a time

    def forget(self) -> None:
        """The CA no longer knows the saved account: register again on the next order."""
        with self._lock:
            self.store.blobs.delete(RECORD)

    def ensure(self, client: ClientV2, directory: messages.Directory, key: JWK) -> None:
        """Point ``client`` at the saved account, registering one first (once, under a lock) when there is none;
        a saved account whose contact is not the spec's ``email`` any more gets its contact updated."""
        with self._lock:
            record = self.store.load(self.spec.directoryUrl)
            if record is not None:
                client.net.account = messages.RegistrationResource(
                    uri=record.uri, body=messages.Registration()
                )
                if record.email != self.spec.email:
                    self._update_contact(client, directory, record)
                return
            tos = directory.meta.terms_of_service
            if tos and not self.spec.agreeToS:
                raise IssueError(
                    f"Issuer {self.name}: the CA at {self.spec.directoryUrl} requires agreeing to its terms of service "
                    f"({tos}); read them, then set agreeToS: true in the Issuer",
                    transient=False,
                )
            eab = None
            if self.spec.eab is not None:
                eab = self._eab(key, directory)
            elif client.external_account_required():
                raise IssueError(
                    f"Issuer {self.name}: the CA at {self.spec.directoryUrl} requires External Account Binding; "
                    "set eab: {keyId, hmacKey} with the values the CA gave you",
                    transient=False,
                )
            registration = messages.NewRegistration.from_data(
                email=self.spec.email,
                terms_of_service_agreed=True if self.spec.agreeToS else None,
                external_account_binding=eab,
            )
            try:
                regr = client.new_account(registration)
                uri = regr.uri
            except acme_errors.ConflictError as exc:
                uri = exc.location  # the key already has an account there
            except messages.Error as exc:
                if retry.problem_code(exc) == "rateLimited":
                    raise retry.to_issue_error(
                        exc, f"Issuer {self.name}: new account at {self.spec.directoryUrl}"
                    ) from None
                what = (
                    "refused the External Account Binding"
                    if eab is not None
                    and retry.problem_code(exc)
                    in ("unauthorized", "malformed", "badPublicKey", "externalAccountRequired")
                    else "refused the new account"
                )
                raise IssueError(
                    f"Issuer {self.name}: the CA at {self.spec.directoryUrl} {what}: {retry.describe(exc)}",
                    transient=retry.is_transient(exc),
                    problem=retry.problem_of(exc),
                ) from None
            if not uri:
                raise IssueError(
                    f"Issuer {self.name}: the CA created an account without a URL", transient=True
                )
            client.net.account = messages.RegistrationResource(uri=uri, body=messages.Registration())
            self.store.save(self.spec.directoryUrl, uri, self.spec.email)
            log.info("acme.account.registered", issuer=self.name, account=uri, eab=eab is not None)

    def _update_contact(self, client: ClientV2, directory: messages.Directory, record: AccountRecord) -> None:
        """RFC 8555 §7.3.2: POST the new contact to the account URL (an empty list when email was removed)."""
        contact = (f"mailto:{self.spec.email}",) if self.spec.email else ()
        try:
            client.net.post(record.uri, ContactUpdate(contact=contact), new_nonce_url=directory["newNonce"])
        except messages.Error as exc:
            raise IssueError(
                f"Issuer {self.name}: the CA at {self.spec.directoryUrl} refused to change the account's contact "
                f"to {self.spec.email or 'none'}: {retry.describe(exc)}",
                transient=retry.is_transient(exc),
                problem=retry.problem_of(exc),
            ) from None
        self.store.save(self.spec.directoryUrl, record.uri, self.spec.email, created=record.created)
        log.info(
            "acme.account.contact_updated",
            issuer=self.name,
            account=record.uri,
            before=record.email,
            after=self.spec.email,
        )

    def _eab(self, key: JWK, directory: messages.Directory) -> dict[str, Any]:
        assert self.spec.eab is not None
        try:
            secret = resolve(self.spec.eab.hmacKey, dict(self.environ) if self.environ is not None else None)
        except SecretError as exc:
            raise IssueError(f"Issuer {self.name}: eab.hmacKey: {exc}", transient=False) from None
        hmac_key = secret.decode("ascii", "replace").strip()
        try:
            b64decode(hmac_key)
        except (ValueError, TypeError):
            raise IssueError(
                f"Issuer {self.name}: eab.hmacKey is not base64url as the CA hands it out", transient=False
            ) from None
        return messages.ExternalAccountBinding.from_data(
            account_public_key=key.public_key(),
            kid=self.spec.eab.keyId,
            hmac_key=hmac_key,
            directory=directory,
        )
