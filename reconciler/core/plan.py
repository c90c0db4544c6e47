"""Plan values: actions with reason codes, per-certificate summaries, and the plan itself."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from reconciler.core.durations import iso

FORMAT_VERSION = 1


class ActionKind(StrEnum):
    issue = "issue"
    renew = "renew"
    reissue = "reissue"
    install = "install"
    bind = "bind"
    rebind = "rebind"
    deploy = "deploy"
    cleanup = "cleanup"
    unbind = "unbind"


@dataclass(frozen=True, slots=True)
class Target:
    """What a certificate's stores, bindings and tasks should hold after this plan."""

    name: str
    thumbprint: str | None  # None: the certificate an issuance action of this plan will produce
    issuance: str | None  # id of that issuance action
    previous: frozenset[str]  # thumbprints of every earlier version of this certificate


ACTION_ORDER = tuple(ActionKind)
ISSUANCE = frozenset({ActionKind.issue, ActionKind.renew, ActionKind.reissue})


class Reason(StrEnum):
    """Why an action is planned (a closed set, as cert-manager's policy chain)."""

    DoesNotExist = "DoesNotExist"
    VaultIncomplete = (
        "VaultIncomplete"  # the current version's key (or certificate) is gone from the state dir
    )
    DomainsChanged = "DomainsChanged"
    KeyAlgorithmChanged = "KeyAlgorithmChanged"
    IssuerChanged = "IssuerChanged"
    Expired = "Expired"
    Forced = "Forced"
    RenewalDue = "RenewalDue"
    RenewalWindow = "RenewalWindow"  # the CA's ARI window starts before the planned renewal
    RenewalWindowPassed = (
        "RenewalWindowPassed"  # the CA's ARI window has ended: it wants the certificate replaced now
    )
    Revoked = "Revoked"  # the current certificate was revoked (certctl revoke, or its issuer's CRL lists it)
    Renewed = "Renewed"  # follow-up of an issuance in the same plan
    NotInStore = "NotInStore"
    StoreDrift = "StoreDrift"
    BindingMissing = "BindingMissing"
    BindingDrift = "BindingDrift"
    FtpDrift = "FtpDrift"
    OutputMissing = "OutputMissing"
    OutputOutdated = "OutputOutdated"
    NotDeployed = "NotDeployed"
    EndpointDrift = "EndpointDrift"
    Superseded = "Superseded"
    Orphaned = "Orphaned"
    Pruned = "Pruned"


class CertState(StrEnum):
    ready = "ready"  # current certificate valid, not due
    missing = "missing"  # nothing issued yet
    due = "due"  # renewal point reached
    expired = "expired"
    outdated = "outdated"  # no longer matches the spec
    deferred = "deferred"  # would act, but backing off after failures
    revoked = "revoked"  # the current certificate is revoked; a replacement is due at once
    pending = "pending"  # certificate fine, but installs/bindings/deployments to do


@dataclass(frozen=True, slots=True)
class IssueDetail:
    """issue, renew, reissue: what the new certificate is, and the certificate it replaces."""

    domains: tuple[str, ...]
    key_algorithm: str
    issuer: str
    replaces: str | None = None  # thumbprint of the current certificate
    not_after: str | None = None  # its expiry (ISO)
    fallbacks: tuple[str, ...] = ()  # the Issuers tried next, in order, when ``issuer``'s CA cannot serve
    profile: str | None = None  # the ACME profile ordered
    new_key: bool = False  # a new key whatever key.reuse says (the current key was compromised)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "domains": list(self.domains),
            "issuer": self.issuer,
            "key_algorithm": self.key_algorithm,
        }
        if self.not_after is not None:
            out["not_after"] = self.not_after
        if self.replaces is not None:
            out["replaces"] = self.replaces
        if self.fallbacks:
            out["fallbacks"] = list(self.fallbacks)
        if self.profile is not None:
            out["profile"] = self.profile
        if self.new_key:
            out["new_key"] = True
        return out


@dataclass(frozen=True, slots=True)
class InstallDetail:
    """install: into which Store, and which certificate (None: the one an issuance of this plan makes)."""

    store: str
    thumbprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"thumbprint": self.thumbprint} if self.thumbprint is not None else {}


@dataclass(frozen=True, slots=True)
class DeployDetail:
    """deploy: the index of the task in the certificate's ``tasks``, and which certificate it deploys."""

    task: int
    thumbprint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"thumbprint": self.thumbprint} if self.thumbprint is not None else {}


@dataclass(frozen=True, slots=True)
class CleanupDetail:
    """cleanup: which stored certificate goes, from which Store."""

    store: str
    ref: str
    thumbprint: str

    def to_json(self) -> dict[str, Any]:
        return {"ref": self.ref, "store": self.store, "thumbprint": self.thumbprint}


@dataclass(frozen=True, slots=True)
class BindingDetail:
    """bind, rebind, unbind: the binding change on one IIS host (``op``: add, update, remove or ftp)."""

    host: str
    site: str
    protocol: str
    binding: str  # bindingInformation, IP:port:host
    op: str
    ssl_flags: int
    store: str
    thumbprint: str | None  # None: the certificate an issuance of this plan makes (or none, to remove)
    old_thumbprint: str | None
    keeps_settings: str | None = None  # the HTTP.sys entry's own settings that the change re-applies

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "binding": self.binding,
            "host": self.host,
            "old_thumbprint": self.old_thumbprint,
            "op": self.op,
            "protocol": self.protocol,
            "site": self.site,
            "ssl_flags": self.ssl_flags,
            "store": self.store,
            "thumbprint": self.thumbprint,
        }
        if self.keeps_settings is not None:
            out["keeps_settings"] = self.keeps_settings
        return dict(sorted(out.items()))


ActionDetail = IssueDetail | InstallDetail | DeployDetail | CleanupDetail | BindingDetail


@dataclass(frozen=True, slots=True)
class Action:
    id: str
    kind: ActionKind
    certificate: str
    target: str
    reason: Reason
    message: str
    depends_on: tuple[str, ...] = ()
    detail: ActionDetail | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind.value,
            "certificate": self.certificate,
            "target": self.target,
            "reason": self.message,
            "reason_code": self.reason.value,
            "depends_on": list(self.depends_on),
            "detail": self.detail.to_json() if self.detail is not None else {},
        }


@dataclass(frozen=True, slots=True)
class CertSummary:
    name: str
    state: CertState
    not_after: datetime | None = None
    renew_at: datetime | None = None
    thumbprint: str | None = None
    reason: str | None = None
    deferred_until: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    issuer: str | None = None  # the Issuer that issued the current certificate
    issuer_note: str | None = None  # why that one, when it is not the first of the list

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state.value,
            "not_after": iso(self.not_after),
            "renew_at": iso(self.renew_at),
            "thumbprint": self.thumbprint,
            "reason": self.reason,
            "deferred_until": iso(self.deferred_until),
            "last_error": self.last_error,
            "consecutive_failures": self.consecutive_failures,
            "issuer": self.issuer,
            "issuer_note": self.issuer_note,
        }


@dataclass(frozen=True, slots=True)
class Note:
    """Something observed and deliberately left alone (reported, never silently skipped)."""

    certificate: str | None
    target: str
    message: str
    code: str = "LeftAlone"

    def to_json(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "target": self.target,
            "code": self.code,
            "message": self.message,
        }


@dataclass(frozen=True)
class Plan:
    at: datetime
    directory: str
    revision: str | None
    actions: tuple[Action, ...]
    certificates: tuple[CertSummary, ...]
    notes: tuple[Note, ...] = ()
    observed_fingerprint: str = ""
    desired_fingerprint: str = ""
    forced: tuple[str, ...] = field(default=())

    @property
    def changes(self) -> bool:
        return bool(self.actions)

    @property
    def deferred(self) -> tuple[CertSummary, ...]:
        """Certificates that need an issuance but wait out a backoff after failures: pending work."""
        return tuple(c for c in self.certificates if c.state is CertState.deferred)

    @property
    def failing(self) -> tuple[CertSummary, ...]:
        """Certificates whose last issuance failed and that are not deferred (their retry is an action of this plan,
        or nothing needs it now, e.g. after a failed forced renewal): pending work until an issuance succeeds."""
        return tuple(
            c for c in self.certificates if c.consecutive_failures and c.state is not CertState.deferred
        )

    @property
    def pending(self) -> bool:
        """Anything left to do: actions, deferred or failing certificates (`plan --detailed-exitcode` exits 2)."""
        return bool(self.actions or self.deferred or self.failing)

    def summary(self) -> dict[str, int]:
        counts = {k.value: 0 for k in ACTION_ORDER}
        for action in self.actions:
            counts[action.kind.value] += 1
        return counts

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "at": iso(self.at),
            "source": {"dir": self.directory, "revision": self.revision},
            "changes": self.changes,
            "summary": self.summary(),
            "actions": [a.to_json() for a in self.actions],
            "certificates": [c.to_json() for c in self.certificates],
            "deferred": [
                {
                    "certificate": c.name,
                    "until": iso(c.deferred_until),
                    "consecutive_failures": c.consecutive_failures,
                    "last_error": c.last_error,
                    "retry": f"certctl renew {c.name}",
                }
                for c in self.deferred
            ],
            "failing": [
                {
                    "certificate": c.name,
                    "consecutive_failures": c.consecutive_failures,
                    "last_error": c.last_error,
                }
                for c in self.failing
            ],
            "notes": [n.to_json() for n in self.notes],
            "fingerprints": {"observed": self.observed_fingerprint, "desired": self.desired_fingerprint},
            "forced": list(self.forced),
        }


def without_cleanup(plan: Plan) -> Plan:
    """The plan of an ordinary daemon pass: removals wait for a maintenance pass."""
    return replace(plan, actions=tuple(a for a in plan.actions if a.kind is not ActionKind.cleanup))


def action_from_json(data: dict[str, Any]) -> Action:
    """An action of a saved plan file (``certctl plan --out``), with its typed detail."""
    kind = ActionKind(data["kind"])
    return Action(
        id=data["id"],
        kind=kind,
        certificate=data["certificate"],
        target=data["target"],
        reason=Reason(data["reason_code"]),
        message=data["reason"],
        depends_on=tuple(data.get("depends_on", ())),
        detail=detail_from_json(kind, data["target"], data.get("detail") or {}),
    )


def detail_from_json(kind: ActionKind, target: str, d: dict[str, Any]) -> ActionDetail | None:
    """The typed detail of a saved action. Install and deploy details keep the store and task in the
    action's ``target`` (``store/<name>``, ``task/<index>-<kind>``) rather than in ``detail``, as plan files
    of format_version 1 have always written them."""
    if kind in ISSUANCE:
        return IssueDetail(
            tuple(d.get("domains", ())),
            str(d.get("key_algorithm", "")),
            str(d.get("issuer", "")),
            d.get("replaces"),
            d.get("not_after"),
            tuple(str(f) for f in d.get("fallbacks", ())),
            d.get("profile"),
            bool(d.get("new_key", False)),
        )
    if kind is ActionKind.install:
        return InstallDetail(target.removeprefix("store/"), d.get("thumbprint"))
    if kind is ActionKind.deploy:
        index = target.removeprefix("task/").partition("-")[0]
        if not index.isdigit():
            raise ValueError(f"action target {target!r} names no task")
        return DeployDetail(int(index), d.get("thumbprint"))
    if kind is ActionKind.cleanup:
        return CleanupDetail(str(d["store"]), str(d["ref"]), str(d["thumbprint"]))
    return BindingDetail(
        host=str(d["host"]),
        site=str(d["site"]),
        protocol=str(d.get("protocol", "https")),
        binding=str(d["binding"]),
        op=str(d["op"]),
        ssl_flags=int(d.get("ssl_flags", 0)),
        store=str(d.get("store", "WebHosting")),
        thumbprint=d.get("thumbprint"),
        old_thumbprint=d.get("old_thumbprint"),
        keeps_settings=d.get("keeps_settings"),
    )
