"""One codec for what the state dir keeps: core values <-> plain JSON, by pydantic's TypeAdapter.

Reading validates the shape (a record of the wrong shape raises ValueError, which the logs report and
skip); writing gives ISO 8601 times in UTC.
"""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from reconciler.core.model import Attempts, CertInfo, Revocation

_CERT_INFO: TypeAdapter[CertInfo] = TypeAdapter(CertInfo)
_ATTEMPTS: TypeAdapter[Attempts] = TypeAdapter(Attempts)
_REVOCATION: TypeAdapter[Revocation] = TypeAdapter(Revocation)


def info_to_json(info: CertInfo) -> dict[str, Any]:
    data: dict[str, Any] = _CERT_INFO.dump_python(info, mode="json")
    return data


def info_from_json(data: Any) -> CertInfo:
    return _CERT_INFO.validate_python(data)


def attempts_to_json(attempts: Attempts) -> dict[str, Any]:
    """The record of ``attempts`` without its certificate name (the log's key)."""
    data: dict[str, Any] = _ATTEMPTS.dump_python(attempts, mode="json")
    del data["certificate"]
    return data


def attempts_from_json(name: str, data: Any) -> Attempts:
    if not isinstance(data, dict):
        raise TypeError(f"the attempts of {name} are not a JSON object")
    return _ATTEMPTS.validate_python({**data, "certificate": name})


def revocation_to_json(revocation: Revocation) -> dict[str, Any]:
    data: dict[str, Any] = _REVOCATION.dump_python(revocation, mode="json")
    return data


def revocation_from_json(data: Any) -> Revocation | None:
    """The ``revoked`` record of a version (None when it has none)."""
    return None if data is None else _REVOCATION.validate_python(data)
