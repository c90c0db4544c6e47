"""The Protocols every outside system sits behind (one module per implementation under adapters/).

The core never imports this module's implementations; ``wiring.py`` picks them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from reconciler.core import spec as specs
from reconciler.core.model import (
    Attempts,
    CertInfo,
    HostState,
    IssuedVersion,
    Issuing,
    Revocation,
    StoredCert,
    StoreState,
)


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

    def __init__(
        self,
        message: str,
        *,
        transient: bool = False,
        problem: dict[str, object] | None = None,
        retry_after: datetime | None = None,
        outage: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.transient = transient
        self.problem = problem or {}
        self.retry_after = retry_after
        self.outage = transient if outage is None else outage


@runtime_checkable
class IssuerBackend(Protocol):
    """Where certificates come from (local CA, ACME)."""

    @property
    def runs_locally(self) -> bool:
        """True when issuing needs only this machine's CPU and disk (a local CA), never the network: the
        executor then runs it in its lane, one at a time on the CPU (``ActionRunner.runs_locally``)."""
        ...

    def identity(self) -> str:
        """A stable id of the CA this issuer talks to; a certificate from another identity is reissued."""
        ...

    def issue(self, request: IssueRequest) -> Material:
        """Obtain a certificate; raise IssueError."""
        ...


REVOCATION_REASONS = {  # RFC 5280 §5.3.1 CRLReason codes an ACME client may ask for (RFC 8555 §7.6)
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
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

    @property
    def runs_locally(self) -> bool:
        """True when installing only writes files of this machine (no remote host to wait for)."""
        ...

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


class Blobs(Protocol):
    """Small named secrets an issuer keeps (the local CA's key and certificate, an ACME account): files in
    the state dir, or (fleet mode) encrypted rows in the database that every node shares."""

    def get(self, key: str) -> bytes | None: ...

    def create(self, key: str, value: bytes) -> bytes:
        """Store ``value`` unless ``key`` exists; the value stored (the first writer's wins)."""
        ...

    def put(self, key: str, value: bytes) -> None: ...

    def delete(self, key: str) -> None: ...


class RecordLog(Protocol):
    """A map of JSON records (the ACME challenge journal): each change durable when the call returns, except
    a ``delete`` with ``wait=False``, which becomes durable with a later change or at the end of the apply."""

    def read(self) -> dict[str, Any]: ...

    def set(self, key: str, value: Any) -> None: ...

    def set_all(self, values: Mapping[str, Any]) -> None:
        """Set every key of ``values``: one commit for all of them."""
        ...

    def delete(self, key: str, *, wait: bool = True) -> None: ...


@dataclass(frozen=True)
class IssuanceGrant:
    """What holding the issuance of a certificate allows: order it (``adopt`` None), or install the version
    another node issued meanwhile (``adopt``: its thumbprint). ``taken_from``: the node whose expired lease
    this one replaced (its order's challenges are to be cleaned up)."""

    adopt: str | None = None
    taken_from: str | None = None


class LeaseLost(Exception):
    """The issuance lease of ``certificate`` is no longer this node's (it was cut off from the database
    longer than ``leaseTimeout`` and ``holder`` took the lease over): the version it ordered is not stored."""

    def __init__(self, certificate: str, holder: str | None, thumbprint: str) -> None:
        held = f"{holder} took over its lease" if holder else "its lease is no longer held"
        super().__init__(
            f"the version {thumbprint} ordered for {certificate} is not stored: {held} (this node was cut off "
            "from the database longer than leaseTimeout); the version the other node issues is installed instead"
        )
        self.certificate = certificate
        self.holder = holder
        self.thumbprint = thumbprint


class BackendUnavailable(OSError):
    """The state backend (the database) cannot be reached or used; the message says what to do, never a secret."""


class StateBackend(Protocol):
    """Where certctl keeps what it issued and did: the local state dir (the embedded default) or, for a
    fleet, PostgreSQL for issuance (versions, keys, attempts, leases) beside a node-local state dir
    (journal, lock, deployment and binding records, caches)."""

    path: Path  # the node-local state dir

    @property
    def runs_locally(self) -> bool:
        """True when every record is a file of this machine; False when actions may wait on a shared
        database and its leases (a fleet), so that none of them runs in the executor's lane."""
        ...

    @property
    def vault(self) -> Path: ...

    def report_access(self) -> None: ...

    def lock(self, wait: float = 10.0, purpose: str = "apply") -> AbstractContextManager[None]: ...

    def recovery_needed(self) -> bool:
        """Whether the lock's previous holder may have left debris (it did not finish cleanly), so that crash
        recovery must look through every folder; asked while holding the lock."""
        ...

    def swept(self) -> frozenset[str]:
        """The places (stores, hosts, task folders, as ``recover`` names them) the clean mark vouches for."""
        ...

    def recovered(self, swept: Collection[str]) -> None:
        """A recovery looked through ``swept`` and left nothing behind, on disk."""
        ...

    def mark_unclean(self) -> None:
        """Something the lock's holder did failed midway: the next recovery looks through every folder."""
        ...

    # issuance (shared in fleet mode)
    def issued(self) -> dict[str, tuple[IssuedVersion, ...]]: ...

    def issued_for(self, name: str) -> tuple[IssuedVersion, ...]: ...

    def issued_of(self, names: Collection[str]) -> dict[str, tuple[IssuedVersion, ...]]:
        """``issued()`` restricted to ``names`` (fleet: without reading the whole table)."""
        ...

    def material(self, name: str, thumbprint: str) -> Material: ...

    def chain_kept_at(self, name: str, thumbprint: str) -> str:
        """Where the chain of a kept version is read from, for messages (a file, or a database row)."""
        ...

    def store_issued(
        self,
        name: str,
        material: Material,
        issuer_id: str,
        domains: tuple[str, ...],
        at: datetime,
        replaced: str | None,
        *,
        issuer: str | None = None,
        issuer_note: str | None = None,
    ) -> IssuedVersion: ...

    def mark_revoked(self, name: str, thumbprint: str, revocation: Revocation) -> bool: ...

    def forget_issued(self, name: str, thumbprint: str) -> None: ...

    def attempts(self) -> dict[str, Attempts]: ...

    def attempts_of(self, names: Collection[str]) -> dict[str, Attempts]: ...

    def update_attempts(self, name: str, *, wait: bool = True, **changes: Any) -> Attempts: ...

    def issuance(self, name: str, replaces: str | None) -> AbstractContextManager[IssuanceGrant]:
        """Hold the right to order a new version of ``name`` (fleet: a lease in the database, renewed while
        held, lost after ``leaseTimeout`` when its holder dies), or learn of the version another node issued
        since ``replaces`` was current."""
        ...

    def issuing(self) -> dict[str, Issuing]:
        """Certificates another node holds a live issuance lease for."""
        ...

    def blobs(self, scope: str) -> Blobs: ...

    def record_log(self, scope: str) -> RecordLog: ...

    def report(self, summary: Mapping[str, Any]) -> None:
        """What this node serves after a pass (fleet: for ``certctl status --fleet``)."""
        ...

    # node-local records
    def deployments(self) -> dict[str, str]: ...

    def record_deployment(self, name: str, index: int, thumbprint: str) -> None: ...

    def applied(self) -> dict[str, Any] | None: ...

    def record_applied(
        self, revision: str | None, directory: str, desired_fingerprint: str, ok: bool, actions: int
    ) -> None: ...

    def made_bindings(self) -> tuple[tuple[str, str, str], ...]: ...

    def record_binding(self, host: str, site: str, information: str, certificate: str) -> None: ...

    def forget_binding(self, host: str, site: str, information: str) -> None: ...

    def journal(self, event: str, *, wait: bool = False, **fields: Any) -> None: ...

    def flush(self) -> None:
        """Make durable whatever was written without waiting for the disk (the end of an apply)."""
        ...

    def close_unfinished(self, by: str) -> list[dict[str, Any]]: ...

    def recover_vault(self) -> tuple[int, int]: ...
