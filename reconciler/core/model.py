"""Immutable values shared by the core and the shell: desired state, observed state, plans.

Everything here is a frozen dataclass or a frozen pydantic model; times are UTC-aware.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from reconciler.core.spec import (
    CertificateSpec,
    IisHostSpec,
    IssuerSpec,
    SettingsSpec,
    StoreSpec,
)

MANAGED_PREFIX = "certctl:"
T = TypeVar("T")


# --- desired ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Source:
    """Where a document came from: the file and the document's index in it (0-based)."""

    file: str
    document: int = 0


@dataclass(frozen=True, slots=True)
class Named(Generic[T]):
    name: str
    spec: T
    source: Source


@dataclass(frozen=True, slots=True)
class DesiredState:
    directory: str
    settings: SettingsSpec
    settings_source: Source | None
    issuers: dict[str, Named[IssuerSpec]]
    stores: dict[str, Named[StoreSpec]]
    iis_hosts: dict[str, Named[IisHostSpec]]
    certificates: dict[str, Named[CertificateSpec]]
    revision: str | None = None


# --- observed: certificates ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertInfo:
    """What can be read off an X.509 certificate."""

    thumbprint: str  # SHA-1, 40 upper-case hex digits, as Windows shows it
    sha256: str  # lower-case hex
    subject: str  # the subject CN ('' if none)
    sans: tuple[str, ...]  # DNS names, lower-case, in certificate order
    key_algorithm: str  # ecdsa-p256 … rsa-4096, or e.g. rsa-1024 / ed25519 for others
    not_before: datetime
    not_after: datetime
    issuer: str  # the issuer's RFC 4514 string
    serial: str  # hex

    @property
    def lifetime_seconds(self) -> float:
        return (self.not_after - self.not_before).total_seconds()


@dataclass(frozen=True, slots=True)
class IssuedVersion:
    """One certificate certctl issued, kept with its key in the state dir (the vault)."""

    certificate: str
    info: CertInfo
    issuer_id: str  # identity of the Issuer that issued it (see planner.issuer_id)
    issued_at: datetime
    domains: tuple[str, ...]  # the spec's domains at issuance, in order
    replaced: str | None = None  # thumbprint of the certificate it replaced
    lost: str | None = (
        None  # vault files of this version that are gone (e.g. "key.pem"): it cannot be deployed
    )
    issuer: str | None = None  # the Issuer (name) that issued it
    issuer_note: str | None = (
        None  # why that one: the earlier issuers of the list that could not serve, and why
    )
    revocation: Revocation | None = None  # revoked (certctl revoke, or found in its issuer's CRL)


@dataclass(frozen=True, slots=True)
class Revocation:
    """A certificate known to be revoked: why (RFC 5280 reason name), since when, and how certctl learnt it."""

    reason: str  # unspecified, keyCompromise, superseded, ...
    at: datetime
    source: str  # "certctl revoke" | "CRL <url or path>"

    @property
    def key_compromised(self) -> bool:
        return self.reason == "keyCompromise"


@dataclass(frozen=True, slots=True)
class StoredCert:
    """A certificate found in a store (PEM directory or Windows store)."""

    store: str
    info: CertInfo
    ref: str  # where it is inside the store (PEM: version folder; Windows: thumbprint)
    managed_by: str | None  # Certificate name from the certctl marker, or None
    current: bool = True  # PEM: the live version; Windows: always True
    installed_at: datetime | None = None
    superseded_at: datetime | None = None  # PEM: when a newer version became live
    has_key: bool = True
    friendly_name: str = ""
    drift: str | None = (
        None  # PEM, live version: what a consumer reads differs (a file gone, a key that does not match)
    )


@dataclass(frozen=True, slots=True)
class StoreState:
    name: str
    certs: tuple[StoredCert, ...] = ()
    problems: tuple[str, ...] = ()  # unreadable folder, corrupt PEM: reported, never fatal
    reachable: bool = True


# --- observed: IIS -----------------------------------------------------------------------------


class SiteState(StrEnum):
    started = "Started"
    stopped = "Stopped"


@dataclass(frozen=True, slots=True)
class Binding:
    """One <binding> of a site. For http/https/ftp the information is parsed as IP:port:host."""

    site: str
    protocol: str  # http, https, ftp, net.tcp, …
    information: str  # the raw bindingInformation, kept as written
    ip: str = "*"  # '*' (All Unassigned), an IPv4 address, or '[v6]'
    port: int = 0
    host: str = ""
    ssl_flags: int = 0
    parse_error: str | None = None

    @property
    def sni(self) -> bool:
        return bool(self.ssl_flags & 1)

    @property
    def ccs(self) -> bool:
        return bool(self.ssl_flags & 2)

    @property
    def label(self) -> str:
        return (
            f"{self.protocol} {self.information}"
            + (" (SNI)" if self.sni else "")
            + (" (CCS)" if self.ccs else "")
        )


@dataclass(frozen=True, slots=True)
class Site:
    name: str
    id: int
    physical_path: str
    state: SiteState
    bindings: tuple[Binding, ...]
    ftp_cert_hash: str | None = None  # ftpServer/security/ssl serverCertHash (upper-case)
    ftp_cert_store: str | None = None


@dataclass(frozen=True, slots=True)
class HttpSysEntry:
    kind: str  # ipport | hostnameport | ccs
    key: str  # 0.0.0.0:443 | www.example.com:443 | 443
    certhash: str | None  # upper-case hex or None
    certstorename: str | None
    appid: str
    # the entry's own settings that IIS does not re-create when it replaces a binding (client certificate
    # negotiation, CTL store, DS mapper, revocation checks …), as (netsh label, value), only those not at default
    settings: tuple[tuple[str, str], ...] = ()


IIS_APPID = "{4dc3e181-e14b-4a21-b022-59fc669b0914}"


@dataclass(frozen=True, slots=True)
class HostState:
    name: str
    iis_version: str = "10.0"
    sites: tuple[Site, ...] = ()
    httpsys: tuple[HttpSysEntry, ...] = ()
    stores: tuple[str, ...] = ()  # Windows store names present (My, WebHosting)
    ccs_files: tuple[tuple[str, str], ...] = ()  # (file name, thumbprint) on the CCS share
    problems: tuple[str, ...] = ()
    reachable: bool = True
    # what could not be read where a wrong answer could delete something still in use (the HTTP.sys table):
    # while any is listed, nothing destructive (cleanup, prune, store removal) happens on this host
    blocking: tuple[str, ...] = ()


# --- observed: tasks, endpoints, attempts ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TaskState:
    """What a deployment task's output holds now (thumbprint) or why it cannot be read."""

    certificate: str
    index: int
    thumbprint: str | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class EndpointState:
    certificate: str
    endpoint: str
    sni: str | None
    thumbprint: str | None
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class Issuing:
    """A live issuance lease another node holds (fleet mode): that node is ordering this certificate."""

    node: str
    since: datetime


@dataclass(frozen=True, slots=True)
class Attempts:
    """Issuance history of one certificate, kept in the state dir."""

    certificate: str
    consecutive_failures: int = 0
    last_attempt: datetime | None = None
    last_success: datetime | None = None
    last_error: str | None = None
    next_retry: datetime | None = None
    ari_window_start: datetime | None = None  # ACME renewalInfo suggested window, if the CA gave one
    ari_window_end: datetime | None = None
    ari_for: str | None = None  # thumbprint the ARI window was fetched for
    ari_fetched_at: datetime | None = None  # when renewalInfo was last asked for (for ``ari_for``)
    ari_next_fetch: datetime | None = None  # not asked again before this (the CA's Retry-After, else 6 h)
    # digest of the Certificate and Issuer specs the last failure was for (policies.spec_digest): the backoff
    # belongs to that spec, and an edit of either lifts it
    spec_digest: str | None = None
    action_failures: int = 0  # consecutive applies in which an install, bind, deploy or verify of it failed
    action_error: str | None = None  # the last such failure ("deploy/www/task/0-files: ...")


@dataclass(frozen=True, slots=True)
class ObservedState:
    issued: dict[str, tuple[IssuedVersion, ...]] = field(default_factory=dict)  # newest last
    stores: dict[str, StoreState] = field(default_factory=dict)
    hosts: dict[str, HostState] = field(default_factory=dict)
    tasks: dict[tuple[str, int], TaskState] = field(default_factory=dict)
    endpoints: tuple[EndpointState, ...] = ()
    attempts: dict[str, Attempts] = field(default_factory=dict)
    issuer_ids: dict[str, str] = field(default_factory=dict)  # Issuer name -> identity now
    made_bindings: tuple[tuple[str, str, str], ...] = ()  # (host, site, bindingInformation) certctl added
    # ACME Issuer name -> the profiles its CA's directory lists (meta.profiles), when it has been fetched
    issuer_profiles: dict[str, tuple[str, ...]] = field(default_factory=dict)
    issuing: dict[str, Issuing] = field(default_factory=dict)  # fleet: certificates another node is issuing

    def fingerprint(self) -> str:
        """A stable digest of everything the planner looks at (a saved plan is stale when it differs)."""
        return hashlib.sha256(canonical_json(self).encode()).hexdigest()


def to_plain(value: Any) -> Any:
    """Dataclasses, enums, tuples, dicts and datetimes as plain JSON values (deterministic)."""
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {
            ("|".join(map(str, k)) if isinstance(k, tuple) else str(k)): to_plain(v)
            for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))
        }
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, StrEnum):
        return value.value
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True)
    return value


def canonical_json(value: Any) -> str:
    return json.dumps(to_plain(value), sort_keys=True, separators=(",", ":"))
