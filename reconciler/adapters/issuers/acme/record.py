"""The saved record of an Issuer's ACME account (``account.json``: the directory URL it belongs to, its URL,
the contact it was registered with), read without the ACME client: an apply that orders nothing checks
whether the contact changed without importing it (0.15 s)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol

from reconciler.support.logging import get_logger

log = get_logger()

RECORD = "account.json"


class Readable(Protocol):
    """What reading the record needs of ``ports.Blobs``."""

    def get(self, key: str) -> bytes | None: ...


@dataclass(frozen=True)
class AccountRecord:
    directory_url: str
    uri: str
    email: str | None
    created: str


def load_record(blobs: Readable, directory_url: str, where: str) -> AccountRecord | None:
    """The account saved in ``blobs`` for this directory URL, or None: none yet, one of another CA, or a
    record that does not read as one (logged, naming ``where``; the next order registers afresh)."""
    try:
        raw = blobs.get(RECORD)
        if raw is None:
            return None
        data = json.loads(raw)
    except (OSError, ValueError, RecursionError) as exc:
        log.warning("acme.account.record_unreadable", path=where, error=str(exc) or repr(exc))
        return None
    if not isinstance(data, dict):
        log.warning("acme.account.record_unreadable", path=where, error="not a JSON object")
        return None
    uri, email, created = data.get("uri"), data.get("email"), data.get("created", "")
    if data.get("directoryUrl") != directory_url or not uri:
        return None
    if not isinstance(uri, str) or not isinstance(email, str | None) or not isinstance(created, str):
        log.warning(
            "acme.account.record_unreadable", path=where, error="uri, email or created of the wrong type"
        )
        return None
    return AccountRecord(directory_url, uri, email, created)
