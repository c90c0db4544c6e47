"""What a list of BindingChange does to an IIS host, decided before anything is written.

Pure: given the sites, the HTTP.sys table and a way to ask whether a certificate is in a store,
:func:`resolve` checks every change and returns the concrete steps (as Microsoft.Web.Administration
carries them out) and the HTTP.sys table after the commit. Both backends use it: the emulated host
edits its files from the steps, the windows backend sends them to PowerShell. Any invalid change
raises :class:`ChangeError` before anything is touched, so a commit is all or nothing.

Semantics, as on a real server:
- ``add``: a new https binding; its HTTP.sys entry (derived from the binding) is created or, when it
  already exists for IIS, overwritten: on a shared non-SNI endpoint that changes the certificate of
  every binding on it.
- ``update``: replace the binding (remove config-only, add a copy with the new hash): IP, port, host
  and every sslFlags bit stay; ``ssl_flags`` must be 0 (keep) or equal to the binding's flags.
- Replacing a binding (and adding one over an existing entry) makes IIS delete and re-create its HTTP.sys
  entry: the entry's own settings that IIS does not write (client certificate negotiation, CTL store, DS
  mapper, revocation checks; see ``httpsys.KEPT_SETTINGS``) go back to their defaults. So every such
  commit is followed by a ``settings`` step that re-applies them to the new entry
  (``netsh http update sslcert`` on Windows).
- ``remove``: removes the binding; its HTTP.sys entry is deleted only when no other binding uses it
  (otherwise the removal is config-only).
- ``ftp``: sets the site's ftpServer/security/ssl certificate (None clears it).
- HTTP.sys entries of other applications (another AppID) are never changed: such a change fails.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from reconciler.adapters.iis.appconfig import make_binding, same_binding
from reconciler.adapters.iis.httpsys import SslRecord, entry_for, normalize_hash, without_kept_settings
from reconciler.core.iis_rules import normalize_key
from reconciler.core.model import IIS_APPID, Binding, Site
from reconciler.ports import BindingChange

_HEX40 = re.compile(r"^[0-9A-F]{40}$")


class ChangeError(ValueError):
    """A change cannot be carried out on this host (nothing was changed)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One concrete operation of the commit."""

    op: str  # add | replace | remove | ftp | settings
    site: str
    protocol: str
    information: str
    ssl_flags: int = 0
    thumbprint: str | None = None
    store: str | None = None
    config_only: bool = False  # remove: leave the HTTP.sys entry (another binding uses it)
    entry: str = ""  # settings: the HTTP.sys entry (``ipport=0.0.0.0:443``) whose settings are re-applied
    settings: tuple[tuple[str, str], ...] = ()  # settings: (netsh label, value), see httpsys.KEPT_SETTINGS


@dataclass(frozen=True, slots=True)
class Resolution:
    steps: tuple[Step, ...]
    sites: tuple[Site, ...]
    table: tuple[SslRecord, ...]


def _thumbprint(host: str, change: BindingChange, required: bool) -> str | None:
    tp = normalize_hash(change.thumbprint)
    if tp is None:
        if required:
            raise ChangeError(
                f"IIS host {host!r}: {change.op} {change.protocol} {change.information!r} on site "
                f"{change.site!r} needs a certificate thumbprint"
            )
        return None
    if not _HEX40.match(tp):
        raise ChangeError(f"IIS host {host!r}: {tp!r} is not a certificate thumbprint (40 hex digits)")
    return tp


def _endpoint_key(b: Binding) -> tuple[str, int, str]:
    ip = b.ip if b.ip in ("*", "") else normalize_key("ipport", f"{b.ip}:0").rsplit(":", 1)[0]
    return ("*" if ip in ("*", "") else ip, b.port, b.host.lower())


def resolve(
    host: str,
    sites: Sequence[Site],
    table: Sequence[SslRecord],
    changes: Sequence[BindingChange],
    *,
    has_cert: Callable[[str, str], bool],
) -> Resolution:
    """Check ``changes`` against the host and work out the steps and the resulting HTTP.sys table."""
    work: dict[str, Site] = {s.name.lower(): s for s in sites}
    records = list(table)
    steps: list[Step] = []
    restore: dict[tuple[str, str], Step] = {}  # HTTP.sys entry -> the settings step after the commit

    def site_of(change: BindingChange) -> Site:
        site = work.get(change.site.lower())
        if site is None:
            raise ChangeError(f"IIS host {host!r}: no site named {change.site!r}")
        return site

    def need_cert(store: str, tp: str) -> None:
        if not has_cert(store, tp):
            raise ChangeError(
                f"IIS host {host!r}: certificate {tp} is not in store {store!r} "
                "(install it before binding it)"
            )

    def record_index(kind: str, key: str) -> int | None:
        ident = (kind, normalize_key(kind, key))
        return next((i for i, r in enumerate(records) if r.ident == ident), None)

    def set_entry(binding: Binding, tp: str | None, store: str | None) -> None:
        kind, key = entry_for(binding)
        i = record_index(kind, key)
        if i is None:
            records.append(
                SslRecord(kind=kind, key=key, certhash=tp, certstorename=store, appid=IIS_APPID, flags={})
            )
            return
        old = records[i]
        if not old.owned_by_iis:
            raise ChangeError(
                f"IIS host {host!r}: HTTP.sys entry {kind}={old.key} belongs to another "
                f"application (AppID {old.appid}); certctl never changes it"
            )
        if kind == "ccs":
            return
        # IIS re-creates the entry: its own settings are reset, then the settings step puts them back
        records[i] = replace(old, certhash=tp, certstorename=store, flags=without_kept_settings(old.flags))
        kept = old.kept_settings()
        if kept:
            records[i] = replace(records[i], flags=dict(old.flags))
            restore[(kind, records[i].ident[1])] = Step(
                "settings",
                binding.site,
                "https",
                binding.information,
                binding.ssl_flags,
                tp,
                store,
                entry=f"{kind}={old.key}",
                settings=kept,
            )

    def find_binding(site: Site, change: BindingChange) -> Binding:
        for b in site.bindings:
            if same_binding(b.protocol, b.information, change.protocol, change.information):
                return b
        raise ChangeError(
            f"IIS host {host!r}: site {site.name!r} has no {change.protocol} binding {change.information!r}"
        )

    def all_https() -> list[Binding]:
        return [
            b
            for s in work.values()
            for b in s.bindings
            if b.protocol.lower() == "https" and not b.parse_error
        ]

    for change in changes:
        op = change.op
        if op == "ccs":
            raise ChangeError(
                f"IIS host {host!r}: ccs changes are made by the ccs task (it writes the certificate "
                "file to the share); the host has nothing to change"
            )
        if op not in ("add", "update", "remove", "ftp"):
            raise ChangeError(f"IIS host {host!r}: unknown change {op!r}")
        site = site_of(change)
        if op == "ftp":
            tp = _thumbprint(host, change, required=False)
            if tp is not None:
                need_cert(change.store, tp)
            work[site.name.lower()] = replace(
                site, ftp_cert_hash=tp, ftp_cert_store=change.store if tp else None
            )
            steps.append(Step("ftp", site.name, "ftp", "", thumbprint=tp, store=change.store if tp else None))
            continue
        if change.protocol.lower() != "https":
            raise ChangeError(
                f"IIS host {host!r}: certctl only {op}s https bindings, not {change.protocol!r}"
            )
        if op == "add":
            new = make_binding(site.name, "https", change.information, change.ssl_flags)
            if new.parse_error:
                raise ChangeError(f"IIS host {host!r}: site {site.name!r}: {new.parse_error}")
            if any(
                same_binding(b.protocol, b.information, "https", change.information) for b in site.bindings
            ):
                raise ChangeError(
                    f"IIS host {host!r}: site {site.name!r} already has https binding {change.information!r}"
                )
            clash = next((b for b in all_https() if _endpoint_key(b) == _endpoint_key(new)), None)
            if clash is not None:
                raise ChangeError(
                    f"IIS host {host!r}: https {change.information!r} is already bound on site "
                    f"{clash.site!r} ({clash.information!r}); IIS would not start both"
                )
            tp = None if new.ccs else _thumbprint(host, change, required=True)
            if tp is not None:
                need_cert(change.store, tp)
            set_entry(new, tp, None if new.ccs else change.store)
            work[site.name.lower()] = replace(site, bindings=(*site.bindings, new))
            steps.append(
                Step(
                    "add",
                    site.name,
                    "https",
                    change.information,
                    change.ssl_flags,
                    tp,
                    None if new.ccs else change.store,
                )
            )
        elif op == "update":
            b = find_binding(site, change)
            if b.parse_error:
                raise ChangeError(
                    f"IIS host {host!r}: site {site.name!r}: binding {b.information!r} is left alone: "
                    f"{b.parse_error}"
                )
            if b.ccs:
                raise ChangeError(
                    f"IIS host {host!r}: site {site.name!r}: {b.information!r} uses the Centralized "
                    "Certificate Store; its certificate is a file the ccs task writes"
                )
            if change.ssl_flags not in (0, b.ssl_flags):
                raise ChangeError(
                    f"IIS host {host!r}: site {site.name!r}: an update keeps the binding's sslFlags "
                    f"({b.ssl_flags}); it cannot set {change.ssl_flags}"
                )
            tp = _thumbprint(host, change, required=True)
            assert tp is not None
            need_cert(change.store, tp)
            set_entry(b, tp, change.store)
            steps.append(
                Step(
                    "replace",
                    site.name,
                    b.protocol,
                    b.information,
                    b.ssl_flags,
                    tp,
                    change.store,
                    config_only=True,
                )
            )
        else:  # remove
            b = find_binding(site, change)
            work[site.name.lower()] = replace(site, bindings=tuple(x for x in site.bindings if x is not b))
            config_only = True
            if not b.parse_error:
                kind, key = entry_for(b)
                shared = any(entry_for(o) == (kind, key) for o in all_https())
                i = record_index(kind, key)
                if not shared and i is not None and records[i].owned_by_iis:
                    del records[i]
                    config_only = False
            steps.append(
                Step("remove", site.name, b.protocol, b.information, b.ssl_flags, config_only=config_only)
            )
    live = {r.ident for r in records}
    steps.extend(step for ident, step in restore.items() if ident in live)
    return Resolution(
        steps=tuple(steps), sites=tuple(work[s.name.lower()] for s in sites), table=tuple(records)
    )


def thumbprint_users(
    thumbprint: str, table: Sequence[SslRecord], sites: Sequence[Site], site_defaults_ftp: str | None
) -> list[str]:
    """Where a host still uses a certificate (HTTP.sys entries, FTP ssl of a site or of <siteDefaults>),
    as readable text; a certificate with any user is never removed from a store."""
    used = [f"HTTP.sys {r.kind}={r.key}" for r in table if r.certhash == thumbprint]
    used += [f"FTP ssl of site {s.name!r}" for s in sites if s.ftp_cert_hash == thumbprint]
    if site_defaults_ftp == thumbprint:
        used.append("FTP ssl of <siteDefaults>")
    return used
