"""The HTTP.sys SSL table: ``httpsys.json`` (the emulation), a ``reg export`` of the HTTP service's
``SslBindingInfo``/``SslSniBindingInfo``/``SslCcsBindingInfo`` keys (what the windows backend reads: the same
on every display language), ``netsh http show sslcert`` text (its fallback), and which entry a binding uses.

Pure: text in, values out. Hashes are kept upper-case and compared case-insensitively; netsh prints
them lower-case. The readers of Windows output return ``(records, problems)``: text that is not empty
but yields nothing they recognise, a hash that is not 40 hex digits or a CCS entry that is not a port
is a problem (never silently an empty or wrong table), and the caller blocks destructive actions on it.
"""

from __future__ import annotations

import json
import re
import uuid
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
        return HttpSysEntry(
            kind=self.kind,
            key=self.key,
            certhash=self.certhash,
            certstorename=self.certstorename,
            appid=self.appid,
            settings=self.kept_settings(),
        )

    def kept_settings(self) -> tuple[tuple[str, str], ...]:
        """The entry's own settings that differ from their defaults and that IIS does not re-create when it
        replaces a binding (see :data:`KEPT_SETTINGS`), as (netsh label, value)."""
        out = []
        for label, (default, _param) in KEPT_SETTINGS.items():
            value = _flag(self.flags, label)
            if value is not None and value.strip().lower() not in (default.lower(), ""):
                out.append((label, value.strip()))
        return tuple(out)

    @property
    def ident(self) -> tuple[str, str]:
        return self.kind, normalize_key(self.kind, self.key)

    @property
    def owned_by_iis(self) -> bool:
        return self.appid.lower() == IIS_APPID.lower()

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "key": self.key,
            "certhash": self.certhash,
            "certstorename": self.certstorename,
            "appid": self.appid,
            "flags": dict(self.flags),
        }


def _flag(flags: Mapping[str, Any], label: str) -> str | None:
    want = label.lower()
    return next((str(v) for k, v in flags.items() if k.lower() == want), None)


# The per-entry settings of an HTTP.sys SSL entry that IIS never writes itself (so replacing a binding resets
# them): netsh label -> (default value, ``netsh http update sslcert`` parameter). The Disable HTTP2/QUIC/TLS
# and OCSP lines are not among them: IIS derives those from the binding's sslFlags, which a rebind keeps.
KEPT_SETTINGS: dict[str, tuple[str, str]] = {
    "Verify Client Certificate Revocation": ("Enabled", "verifyclientcertrevocation"),
    "Verify Revocation Using Cached Client Certificate Only": (
        "Disabled",
        "verifyrevocationwithcachedclientcertonly",
    ),
    "Usage Check": ("Enabled", "usagecheck"),
    "Revocation Freshness Time": ("0", "revocationfreshnesstime"),
    "URL Retrieval Timeout": ("0", "urlretrievaltimeout"),
    "Ctl Identifier": ("(null)", "sslctlidentifier"),
    "Ctl Store Name": ("(null)", "sslctlstorename"),
    "DS Mapper Usage": ("Disabled", "dsmapperusage"),
    "Negotiate Client Certificate": ("Disabled", "clientcertnegotiation"),
    "Reject Connections": ("Disabled", "reject"),
}


def netsh_settings_args(settings: Iterable[tuple[str, str]]) -> list[str]:
    """``netsh http update sslcert`` parameters that re-apply kept settings (``clientcertnegotiation=enable``)."""
    out = []
    for label, value in settings:
        _default, param = KEPT_SETTINGS[label]
        text = {"enabled": "enable", "disabled": "disable"}.get(value.lower(), value)
        out.append(f"{param}={text}")
    return out


def without_kept_settings(flags: Mapping[str, Any]) -> dict[str, Any]:
    """The flags an entry has after IIS re-created it: the kept settings are back at their defaults."""
    kept = {k.lower() for k in KEPT_SETTINGS}
    return {k: v for k, v in flags.items() if k.lower() not in kept}


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
        raise HttpSysError(
            f"entry {index} ({kind} {key}): certhash {certhash!r} is not 40 hex digits", host=host
        )
    store = item.get("certstorename")
    appid = item.get("appid")
    if not isinstance(appid, str):
        raise HttpSysError(f"entry {index} ({kind} {key}): appid is missing", host=host)
    flags = item.get("flags") or {}
    if not isinstance(flags, dict):
        raise HttpSysError(f"entry {index} ({kind} {key}): flags is not an object", host=host)
    return SslRecord(
        kind=kind, key=key, certhash=normalize_hash(certhash), certstorename=store, appid=appid, flags=flags
    )


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


_QUOTE_MARK = re.compile(r"^\s*(?:>\s*)+")
_SPACES = re.compile(r"[\s\u00a0\u2000-\u200b\u202f\u205f\u3000\ufeff]+")
_PORT = re.compile(r"^[0-9]{1,5}$")
_EN_TITLE = "ssl certificate bindings:"


def _clean_line(raw: str) -> str:
    """One line of netsh text as copied from a console, a forum quote or a web page: quote markers
    removed, non-breaking and other Unicode spaces and tabs made plain spaces."""
    return _SPACES.sub(" ", _QUOTE_MARK.sub("", raw)).strip()


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'\u201c\u201d":
        return value[1:-1].strip()
    return value


def _port_ok(text: str) -> bool:
    return bool(_PORT.match(text)) and 0 < int(text) < 65536


def _check_record(
    kind: str, key: str, certhash: str | None, has_hash_line: bool, appid: str | None, where: str
) -> tuple[str | None, str | None]:
    """(problem, certhash) for one entry read from Windows output."""
    name = f"{kind}={key}"
    if kind == "ccs":
        if not _port_ok(key):
            return f"{where}: Central Certificate Store entry {key!r} is not a port", None
        return (None if appid else f"{where}: entry {name} has no Application ID certctl can read"), None
    if not has_hash_line:
        return f"{where}: entry {name} has no certificate hash certctl can read", None
    if certhash is None or not _HEX40.match(certhash):
        return f"{where}: entry {name}: certificate hash {certhash!r} is not 40 hex digits", None
    if not appid:
        return f"{where}: entry {name} has no Application ID certctl can read", None
    return None, certhash


def read_netsh(text: str) -> tuple[tuple[SslRecord, ...], tuple[str, ...]]:
    """Parse ``netsh http show sslcert`` output (English labels, the only ones it knows): ``(records, problems)``.

    Tolerant of layout: quote markers, non-breaking spaces, tabs, dash rules and unknown lines are ignored;
    ``(null)`` is None; blocks start at an ``IP:port``, ``Hostname:port`` or ``Central Certificate Store``
    line. Strict about meaning: a block without a readable hash (a translated label) or with a hash that is
    not 40 hex digits, a CCS entry that is not a port, or text that is not empty but has neither the English
    title nor any entry, is a problem, and that entry is left out."""
    where = "netsh http show sslcert"
    records: list[SslRecord] = []
    problems: list[str] = []
    current: dict[str, Any] | None = None
    titled = False

    def close() -> None:
        if current is None:
            return
        problem, certhash = _check_record(
            current["kind"],
            current["key"],
            current.get("certhash"),
            "certhash" in current,
            current.get("appid"),
            where,
        )
        if problem:
            problems.append(problem)
            return
        records.append(
            SslRecord(
                kind=current["kind"],
                key=current["key"],
                certhash=certhash,
                certstorename=current.get("certstorename"),
                appid=current["appid"],
                flags=current["flags"],
            )
        )

    for raw in text.splitlines():
        line = _clean_line(raw)
        if line.lower() == _EN_TITLE:
            titled = True
            continue
        m = _LINE.match(line)
        if not m:
            continue
        label, value = m.group("label"), _unquote(m.group("value"))
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
    if text.strip() and not titled and not records and not problems:
        first = next((_clean_line(x) for x in text.splitlines() if x.strip()), "")
        problems.append(
            f"{where}: printed text certctl cannot read (another display language or layout?), "
            f"starting {first[:80]!r}; its HTTP.sys entries are unknown"
        )
    return tuple(records), tuple(problems)


def parse_netsh(text: str) -> tuple[SslRecord, ...]:
    """The entries :func:`read_netsh` could read (its problems dropped)."""
    return read_netsh(text)[0]


# --- reg export of HKLM\SYSTEM\CurrentControlSet\Services\HTTP\Parameters ------------------------------

REGISTRY_KEY = "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\HTTP\\Parameters"
_REG_KINDS = {"sslbindinginfo": "ipport", "sslsnibindinginfo": "hostnameport", "sslccsbindinginfo": "ccs"}
_REG_VALUE = re.compile(r'^(?:"(?P<name>(?:[^"\\]|\\.)*)"|@)=(?P<data>.*)$')
# DefaultFlags bits (HTTP_SERVICE_CONFIG_SSL_FLAG_*) and DefaultSslCertCheckMode bits, as netsh labels
_REG_FLAG_BITS = (
    (0x1, "DS Mapper Usage"),
    (0x2, "Negotiate Client Certificate"),
    (0x8, "Reject Connections"),
)


def _reg_data(data: str) -> str | int | bytes | None:
    """A value's data as ``reg export`` writes it: ``"text"``, ``dword:0000001f`` or ``hex[(n)]:aa,bb``."""
    if data.startswith('"') and data.endswith('"') and len(data) >= 2:
        return re.sub(r"\\(.)", r"\1", data[1:-1])
    if data.lower().startswith("dword:"):
        try:
            return int(data[6:], 16)
        except ValueError:
            return None
    m = re.match(r"^hex(?:\((?P<type>[0-9a-f]+)\))?:(?P<bytes>[0-9a-fA-F,\s]*)$", data)
    if m:
        try:
            raw = bytes(int(b, 16) for b in m.group("bytes").replace(" ", "").split(",") if b)
        except ValueError:
            return None
        if m.group("type") in ("1", "2", "7"):  # REG_SZ / EXPAND_SZ / MULTI_SZ written as hex: UTF-16LE
            return raw.decode("utf-16-le", errors="replace").split("\x00")[0]
        return raw
    return None


def _reg_record(
    kind: str, name: str, values: Mapping[str, Any], where: str
) -> tuple[SslRecord | None, str | None]:
    key = name
    if kind == "ccs":
        key = name.rsplit(":", 1)[-1]
    raw_hash = values.get("sslcerthash")
    certhash: str | None = None
    if isinstance(raw_hash, bytes):
        certhash = raw_hash.hex().upper()
    elif isinstance(raw_hash, str):
        certhash = normalize_hash(raw_hash)
    appid_raw = values.get("appid")
    appid: str | None = None
    if isinstance(appid_raw, bytes) and len(appid_raw) == 16:
        appid = "{" + str(uuid.UUID(bytes_le=appid_raw)) + "}"
    elif isinstance(appid_raw, str) and appid_raw.strip():
        appid = appid_raw.strip()
    problem, certhash = _check_record(
        kind, key, certhash, raw_hash is not None and kind != "ccs", appid, where
    )
    if problem:
        return None, problem
    flags: dict[str, str] = {}
    mode = values.get("defaultsslcertcheckmode")
    if isinstance(mode, int):
        flags["Verify Client Certificate Revocation"] = "Disabled" if mode & 0x1 else "Enabled"
        flags["Verify Revocation Using Cached Client Certificate Only"] = (
            "Enabled" if mode & 0x2 else "Disabled"
        )
        flags["Usage Check"] = "Disabled" if mode & 0x10000 else "Enabled"
    for value_name, label in (
        ("defaultsslrevocationfreshnesstime", "Revocation Freshness Time"),
        ("defaultsslrevocationurlretrievaltimeout", "URL Retrieval Timeout"),
    ):
        if isinstance(values.get(value_name), int):
            flags[label] = str(values[value_name])
    for value_name, label in (
        ("defaultsslctlidentifier", "Ctl Identifier"),
        ("defaultsslctlstorename", "Ctl Store Name"),
    ):
        if isinstance(values.get(value_name), str) and values[value_name]:
            flags[label] = str(values[value_name])
    bits = values.get("defaultflags")
    if isinstance(bits, int):
        for bit, label in _REG_FLAG_BITS:
            flags[label] = "Enabled" if bits & bit else "Disabled"
    store = values.get("sslcertstorename")
    return SslRecord(
        kind=kind,
        key=key,
        certhash=certhash if kind != "ccs" else None,
        certstorename=store if isinstance(store, str) and store else None,
        appid=appid or "",
        flags=flags,
    ), None


def read_registry_export(text: str) -> tuple[tuple[SslRecord, ...], tuple[str, ...]]:
    """Parse a ``reg export`` of the HTTP service's Parameters key: the ``SslBindingInfo`` (ipport),
    ``SslSniBindingInfo`` (hostnameport) and ``SslCcsBindingInfo`` (ccs) subkeys, one subkey per entry.
    Value names and data are the same on every display language. Returns ``(records, problems)``."""
    where = "HTTP.sys registry export"
    lines: list[str] = []
    for raw in text.lstrip("\ufeff").splitlines():
        if lines and lines[-1].endswith("\\"):
            lines[-1] = lines[-1][:-1] + raw.strip()
        else:
            lines.append(raw.strip())
    blocks: list[tuple[str, str, dict[str, Any]]] = []
    problems: list[str] = []
    headed = False
    current: dict[str, Any] | None = None
    for line in lines:
        if line.lower().startswith(("windows registry editor", "regedit4")):
            headed = True
        elif line.startswith("[") and line.endswith("]"):
            current = None
            path = line[1:-1]
            head, _, rest = path.partition("\\Parameters\\")
            if not rest or not head.lower().endswith("\\services\\http"):
                continue
            group, _, entry = rest.partition("\\")
            kind = _REG_KINDS.get(group.lower())
            if kind is None or not entry or "\\" in entry:
                continue
            current = {}
            blocks.append((kind, entry, current))
        elif current is not None and (m := _REG_VALUE.match(line)):
            data = _reg_data(m.group("data").strip())
            if data is None:
                problems.append(f"{where}: value {m.group('name')!r} of entry {blocks[-1][1]} cannot be read")
                continue
            current[(m.group("name") or "").lower()] = data
    records: list[SslRecord] = []
    for kind, entry, values in blocks:
        record, problem = _reg_record(kind, entry, values, where)
        if problem:
            problems.append(problem)
        elif record is not None:
            records.append(record)
    if text.strip() and not headed and not blocks and not problems:
        problems.append(
            f"{where}: text certctl cannot read (not a reg export of {REGISTRY_KEY}); "
            "its HTTP.sys entries are unknown"
        )
    return tuple(records), tuple(problems)
