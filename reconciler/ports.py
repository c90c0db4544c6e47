"""The Protocols every outside system sits behind (one module per implementation under adapters/).

The core never imports this module's implementations; ``wiring.py`` picks them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, runtime_checkable

from reconciler.core import spec as specs
from reconciler.core.model import CertInfo, HostState, StoredCert, StoreState


@dataclass(frozen=True)
class Material:
    """A certificate with its chain and private key, as PEM."""

    cert_pem: bytes  # the leaf
    chain_pem: bytes  # intermediates, leaf excluded (may be empty)
    key_pem: bytes  # PKCS#8 PEM, unencrypted; never logged
    info: CertInfo

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


@dataclass(frozen=True)
class IssueRequest:
    certificate: str  # the Certificate's metadata.name
    domains: tuple[str, ...]  # normalised; the first is the CN
    key_algorithm: str  # ecdsa-p256 … rsa-4096
    key_pem: bytes | None = None  # reuse this key (key.reuse: true) instead of making one
    replaces: CertInfo | None = None  # the certificate this one replaces (ACME ARI `replaces`)
    at: datetime | None = None
    replaces_pem: bytes | None = None  # that certificate itself (PEM), when known: its ARI id needs its AKI


class IssueError(Exception):
    """Issuance failed. ``transient`` errors are worth a quick retry; the others need a fix or a backoff.

    ``outage``: the CA cannot serve now through no fault of the certificate (unreachable, 5xx after the
    retries, ``serverInternal``, a rate limit), so the next Issuer of a certificate's list is tried.
    It defaults to ``transient``; a refused name, a failed challenge or CAA is never an outage.
    """

    def __init__(self, message: str, *, transient: bool = False, problem: dict[str, object] | None = None,
                 retry_after: datetime | None = None, outage: bool | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.problem = problem or {}
        self.retry_after = retry_after
        self.outage = transient if outage is None else outage


@runtime_checkable
class IssuerBackend(Protocol):
    """Where certificates come from (local CA, ACME)."""

    def identity(self) -> str:
        """A stable id of the CA this issuer talks to; a certificate from another identity is reissued."""
        ...

    def issue(self, request: IssueRequest) -> Material:
        """Obtain a certificate; raise IssueError."""
        ...


REVOCATION_REASONS = {  # RFC 5280 §5.3.1 CRLReason codes an ACME client may ask for (RFC 8555 §7.6)
    "unspecified": 0, "keyCompromise": 1, "affiliationChanged": 3, "superseded": 4, "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
}


class RevokeError(Exception):
    """A revocation (or a revocation check) failed; the message says why."""


@dataclass(frozen=True)
class RevocationStatus:
    """A certificate found revoked by its issuer (its CRL lists the serial)."""

    reason: str
    at: datetime
    source: str


@runtime_checkable
class Revoker(Protocol):
    """An issuer that can revoke what it issued, and say whether it has revoked a certificate."""

    def revoke(self, material: Material, reason: str) -> None:
        """Revoke ``material``'s certificate with an RFC 5280 reason name; raise RevokeError."""
        ...

    def revocation_status(self, material: Material) -> RevocationStatus | None:
        """The certificate's status in the CRL its issuer publishes: None when not listed (or the issuer
        publishes none); raise RevokeError when the CRL cannot be read or trusted."""
        ...


@dataclass(frozen=True)
class RenewalWindow:
    start: datetime
    end: datetime
    retry_after: datetime | None = None


class RenewalInfoSource(Protocol):
    """ACME Renewal Information (RFC 9773), for issuers that offer it."""

    def renewal_window(self, cert_pem: bytes) -> RenewalWindow | None: ...


@runtime_checkable
class Store(Protocol):
    """Where certificates live."""

    name: str

    def observe(self) -> StoreState: ...

    def install(self, certificate: str, material: Material, at: datetime) -> StoredCert:
        """Add the certificate (and key) and make it the certificate's current one; atomic."""
        ...

    def remove(self, ref: str) -> None:
        """Delete one certificate certctl installed (``StoredCert.ref``)."""
        ...

    def read(self, ref: str) -> Material | None:
        """The material of a stored certificate, when the store can give its key back."""
        ...


@dataclass(frozen=True)
class BindingChange:
    """One change to an IIS host, as the planner's action detail describes it."""

    op: str  # add | update | remove | ftp | ccs
    site: str
    protocol: str  # https | ftp
    information: str  # IP:port:host of the binding (new binding for add)
    ssl_flags: int = 0
    thumbprint: str | None = None  # new certificate (upper-case hex); None for remove
    store: str = "WebHosting"  # Windows store name of the certificate
    old_thumbprint: str | None = None


@runtime_checkable
class BindingHost(Protocol):
    """An IIS server: sites, bindings, the HTTP.sys table and its certificate stores."""

    name: str

    def observe(self) -> HostState: ...

    def apply(self, changes: Sequence[BindingChange]) -> None:
        """Carry out the changes as one commit: all of them, or (on any failure) none."""
        ...

    def store(self, store_name: str, *, name: str | None = None) -> Store:
        """The host's Windows certificate store ``My`` or ``WebHosting`` (LocalMachine); ``name`` is the
        Store's name in the desired state (default: the Windows store name)."""
        ...


@dataclass(frozen=True)
class ChallengeTask:
    domain: str  # the identifier (wildcards without '*.')
    kind: str  # http-01 | dns-01
    token: str
    key_authorization: str  # http-01: the file content; dns-01: the TXT value is its digest
    txt_value: str = ""
    record: str = ""  # dns-01 delegated by CNAME: where the TXT goes (default: _acme-challenge.<domain>)


class Solver(Protocol):
    """Makes an ACME challenge answerable, and always cleans up."""

    def prepare(self, tasks: Sequence[ChallengeTask]) -> None: ...

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None: ...


@runtime_checkable
class DelegatingSolver(Protocol):
    """A dns-01 solver that follows ``_acme-challenge`` CNAMEs (challenge delegation)."""

    def delegation_chain(self, domain: str) -> list[str]:
        """``[_acme-challenge.<domain>]``, or that name and its CNAME chain: the TXT record goes where the
        chain ends. Raises SolverError for a loop or a dangling chain."""
        ...


@runtime_checkable
class SiteFolders(Protocol):
    """An IIS host whose sites' folders certctl can write (http-01 on IIS as shipped)."""

    name: str

    def observe(self) -> HostState: ...

    def local_path(self, physical_path: str) -> str:
        """The local file-system path of a site's ``physicalPath`` (environment variables expanded)."""
        ...


class SolverError(Exception):
    """A challenge could not be made answerable (or cleaned up); the message says what to fix."""


SolverFactory = Callable[[specs.Solver, Mapping[str, str] | None], Solver]
"""Builds the solver for one entry of ``Issuer.spec.acme.solvers`` (``wiring`` passes the real one)."""


class Prober(Protocol):
    """What a TLS endpoint serves for an SNI name."""

    def probe(self, endpoint: str, sni: str | None, timeout: float) -> CertInfo: ...


class Clock(Protocol):
    def now(self) -> datetime: ...


@dataclass
class ApplyContext:
    """What the executor hands to adapters while carrying out one action."""

    at: datetime
    log_fields: dict[str, object] = field(default_factory=dict)
