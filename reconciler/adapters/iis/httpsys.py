"""The HTTP.sys SSL table: ``httpsys.json`` (the emulation), ``netsh http show sslcert`` text, and which
entry a binding uses.

Pure: text in, values out. Hashes are kept upper-case and compared case-insensitively; netsh prints
them lower-case.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from reconciler.core.iis_rules import entry_key, normalize_key
from reconciler.core.model import IIS_APPID, HttpSysEntry

FILE_NAME = "httpsys.json"
KINDS = ("ipport", "hostnameport", "ccs")
_HEX40 = re.compile(r"^[0-9A-Fa-f]{40}$")


class HttpSysError(ValueError):
    """httpsys.json cannot be read: names the host and the file."""

    def __init__(self, message: str, *, host: str = "", file: str = FILE_NAME) -> None:
        self.host = host
        self.file = file
        super().__init__(f"IIS host {host!r}: {file}: {message}" if host else f"{file}: {message}")


@dataclass(frozen=True, slots=True)
class SslRecord:
    """One HTTP.sys SSL entry, as httpsys.json holds it (``flags``: the other netsh settings, by label)."""

    kind: str
    key: str
    certhash: str | None
    certstorename: str | None
    appid: str
    flags: Mapping[str, Any] = field(default_factory=dict)

    def to_entry(self) -> HttpSysEntry:
        return HttpSysEntry(kind=self.kind, key=self.key, certhash=self.certhash, certstorename=self.certstorename,
                            appid=self.appid)

    @property
    def ident(self) -> tuple[str, str]:
        return self.kind, normalize_key(self.kind, self.key)

    @property
    def owned_by_iis(self) -> bool:
        return self.appid.lower() == IIS_APPID.lower()

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "certhash": self.certhash, "certstorename": self.certstorename,
                "appid": self.appid, "flags": dict(self.flags)}


def normalize_hash(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip().replace(" ", "")
    return value.upper() if value and value.lower() != "(null)" else None


# Which HTTP.sys entry a binding uses is one rule, kept in the pure core and shared with the planner.
entry_for = entry_key


def find(records: Iterable[SslRecord], kind: str, key: str) -> SslRecord | None:
    want = (kind, normalize_key(kind, key))
    return next((r for r in records if r.ident == want), None)


# --- httpsys.json ---------------------------------------------------------------------------------


def _record_from_json(item: Any, index: int, host: str) -> SslRecord:
    if not isinstance(item, dict):
        raise HttpSysError(f"entry {index} is not an object", host=host)
    kind, key = item.get("kind"), item.get("key")
    if kind not in KINDS:
        raise HttpSysError(f"entry {index}: kind {kind!r} is not one of {', '.join(KINDS)}", host=host)
    if not isinstance(key, str) or not key:
        raise HttpSysError(f"entry {index}: key is missing", host=host)
    certhash = item.get("certhash")
    if certhash is not None and (not isinstance(certhash, str) or not _HEX40.match(certhash)):
        raise HttpSysError(f"entry {index} ({kind} {key}): certhash {certhash!r} is not 40 hex digits", host=host)
    store = item.get("certstorename")
    appid = item.get("appid")
    if not isinstance(appid, str):
        raise HttpSysError(f"entry {index} ({kind} {key}): appid is missing", host=host)
    flags = item.get("flags") or {}
    if not isinstance(flags, dict):
        raise HttpSysError(f"entry {index} ({kind} {key}): flags is not an object", host=host)
    return SslRecord(kind=kind, key=key, certhash=normalize_hash(certhash), certstorename=store, appid=appid, flags=flags)


def load_json(text: str | bytes, *, host: str = "") -> tuple[SslRecord, ...]:
    try:
        data = json.loads(text)
    except ValueError as err:
        raise HttpSysError(f"not valid JSON: {err}", host=host) from None
    if not isinstance(data, list):
        raise HttpSysError("the top level must be a list of entries", host=host)
    records = tuple(_record_from_json(item, i, host) for i, item in enumerate(data))
    seen: set[tuple[str, str]] = set()
    for r in records:
        if r.ident in seen:
            raise HttpSysError(f"entry {r.kind} {r.key} is listed twice", host=host)
        seen.add(r.ident)
    return records


def dump_json(records: Iterable[SslRecord]) -> bytes:
    return (json.dumps([r.to_json() for r in records], indent=2, ensure_ascii=False) + "\n").encode()


# --- netsh http show sslcert ------------------------------------------------------------------------

_HEADERS = {"ip:port": "ipport", "hostname:port": "hostnameport", "central certificate store": "ccs"}
_LABELS = {
    "ipport": "IP:port",
    "hostnameport": "Hostname:port",
    "ccs": "Central Certificate Store",
}
# the lines every entry shows after hash, application id and store, with their usual values
_STANDARD_LINES: tuple[tuple[str, str], ...] = (
    ("Verify Client Certificate Revocation", "Enabled"),
    ("Verify Revocation Using Cached Client Certificate Only", "Disabled"),
    ("Usage Check", "Enabled"),
    ("Revocation Freshness Time", "0"),
    ("URL Retrieval Timeout", "0"),
    ("Ctl Identifier", "(null)"),
    ("Ctl Store Name", "(null)"),
    ("DS Mapper Usage", "Disabled"),
    ("Negotiate Client Certificate", "Disabled"),
    ("Reject Connections", "Disabled"),
    ("Disable HTTP2", "Not Set"),
    ("Disable QUIC", "Not Set"),
    ("Disable TLS1.2", "Not Set"),
    ("Disable TLS1.3", "Not Set"),
    ("Disable OCSP Stapling", "Not Set"),
    ("Enable Token Binding", "Not Set"),
    ("Log Extended Events", "Not Set"),
    ("Disable Legacy TLS Versions", "Not Set"),
    ("Enable Session Ticket", "Not Set"),
)
_LINE = re.compile(r"^\s*(?P<label>\S.*?)\s*:\s+(?P<value>.*?)\s*$")


def _line(label: str, value: object) -> str:
    return f"    {label:<29}: {'(null)' if value is None else value}"


def render_netsh(records: Iterable[SslRecord]) -> str:
    """The table as ``netsh http show sslcert`` prints it (Server 2022 style, CRLF-free)."""
    out = ["", "SSL Certificate bindings:", "-------------------------", ""]
    for r in records:
        out.append(_line(_LABELS[r.kind], r.key))
        out.append(_line("Certificate Hash", r.certhash.lower() if r.certhash else None))
        out.append(_line("Application ID", r.appid))
        out.append(_line("Certificate Store Name", r.certstorename))
        flags = dict(r.flags)
        for label, default in _STANDARD_LINES:
            out.append(_line(label, flags.pop(label, default)))
        for label, value in flags.items():
            out.append(_line(label, value))
        out.append("")
    return "\n".join(out) + "\n"


def parse_netsh(text: str) -> tuple[SslRecord, ...]:
    """Parse ``netsh http show sslcert`` output, tolerantly: unknown lines are ignored, ``(null)`` is None,
    blocks start at an ``IP:port``, ``Hostname:port`` or ``Central Certificate Store`` line."""
    records: list[SslRecord] = []
    current: dict[str, Any] | None = None

    def close() -> None:
        if current is not None:
            records.append(SslRecord(kind=current["kind"], key=current["key"], certhash=current.get("certhash"),
                                     certstorename=current.get("certstorename"), appid=current.get("appid", ""),
                                     flags=current["flags"]))

    for raw in text.splitlines():
        m = _LINE.match(raw.replace("\t", " "))
        if not m:
            continue
        label, value = m.group("label"), m.group("value")
        lower = label.lower()
        none_value = None if value.lower() == "(null)" or value == "" else value
        if lower in _HEADERS:
            close()
            current = {"kind": _HEADERS[lower], "key": value, "flags": {}}
        elif current is None:
            continue
        elif lower == "certificate hash":
            current["certhash"] = normalize_hash(none_value)
        elif lower in ("application id", "appid"):
            current["appid"] = value
        elif lower == "certificate store name":
            current["certstorename"] = none_value
        else:
            current["flags"][label] = value
    close()
    return tuple(records)
