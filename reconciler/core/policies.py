"""Renewal policy chain: small pure checks over one certificate's inputs (cert-manager's idea).

Each check returns (kind, Reason, sentence) or None; the first that fires decides the issuance action and
its reason code, and the sentence names every check that fires ("issuer changed (...) and key algorithm
changed (...)"), so a plan never hides a second cause behind the first.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from reconciler.core.durations import humanize, iso
from reconciler.core.model import Attempts, IssuedVersion
from reconciler.core.plan import ActionKind, Reason
from reconciler.core.spec import DEFAULT_RENEWAL, CertificateSpec, IssuerSpec, Renewal


def issuer_id(name: str, spec: IssuerSpec) -> str:
    """The identity of an Issuer: a certificate from another identity no longer matches the spec."""
    if spec.acme is not None:
        return f"acme:{spec.acme.directoryUrl}"
    return f"localca:{name}"


def spec_digest(spec: CertificateSpec, issuers: Mapping[str, IssuerSpec]) -> str:
    """A digest of what an issuance is made from: the Certificate's spec and the specs of its Issuers. A
    failure is recorded with it, and its backoff no longer applies once any of them is edited."""
    data = {
        "certificate": spec.model_dump(mode="json"),
        "issuers": [issuers[n].model_dump(mode="json") if n in issuers else None for n in spec.issuers],
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def backing_off(attempts: Attempts | None, digest: str, at: datetime) -> bool:
    """Is the certificate waiting out a backoff at ``at``? Only for the spec that failed: an edit of the
    Certificate or its Issuer since the failure lifts it (a failure recorded without a digest keeps it)."""
    if attempts is None or attempts.next_retry is None or attempts.next_retry <= at:
        return False
    return attempts.spec_digest is None or attempts.spec_digest == digest


def issuer_of(version: IssuedVersion, issuers: Mapping[str, IssuerSpec], names: Sequence[str]) -> str | None:
    """The Issuer of ``names`` (a certificate's list) that issued ``version``: the one recorded with it while it
    still has the same identity, else the first whose identity matches; None when none of them did."""
    recorded = version.issuer
    if (
        recorded is not None
        and recorded in names
        and recorded in issuers
        and issuer_id(recorded, issuers[recorded]) == version.issuer_id
    ):
        return recorded
    return next((n for n in names if n in issuers and issuer_id(n, issuers[n]) == version.issuer_id), None)


@dataclass(frozen=True, slots=True)
class Input:
    name: str
    spec: CertificateSpec
    renewal: Renewal
    issuer_ids: tuple[str, ...]  # the identities of the certificate's Issuers, in the order they are tried
    current: IssuedVersion | None
    attempts: Attempts | None
    at: datetime
    forced: bool


@dataclass(frozen=True, slots=True)
class RenewalPoint:
    at: datetime
    reason: Reason
    sentence: str


def renewal_point(current: IssuedVersion, renewal: Renewal, attempts: Attempts | None = None) -> RenewalPoint:
    """When the current certificate should be renewed: the policy point, or an earlier ARI window."""
    info = current.info
    lifetime = info.not_after - info.not_before
    if renewal.beforeExpiry is not None and renewal.beforeExpiry < lifetime:
        point = info.not_after - renewal.beforeExpiry
        sentence = f"renewal point is {humanize(renewal.beforeExpiry)} before expiry"
    else:
        percent = renewal.lifetimePercent or DEFAULT_RENEWAL.lifetimePercent or 75
        if renewal.beforeExpiry is not None:
            sentence = (
                f"beforeExpiry {humanize(renewal.beforeExpiry)} is not shorter than the certificate's lifetime "
                f"({humanize(lifetime)}), so the renewal point is {percent}% of its lifetime"
            )
        else:
            sentence = f"renewal point is {percent}% of lifetime"
        point = info.not_before + lifetime * percent / 100
    point = point.replace(microsecond=0)
    if (
        attempts is not None
        and attempts.ari_for == info.thumbprint
        and attempts.ari_window_start is not None
        and attempts.ari_window_end is not None
    ):
        window = attempts.ari_window_end - attempts.ari_window_start
        # A fixed point inside the window, derived from the serial (never random: planning twice agrees).
        offset = window * ((int(info.serial, 16) % 1000) / 1000) if window > timedelta(0) else timedelta(0)
        ari_at = (attempts.ari_window_start + offset).replace(microsecond=0)
        if ari_at < point:
            return RenewalPoint(
                ari_at,
                Reason.RenewalWindow,
                f"the CA's renewal window (ARI) opens {iso(attempts.ari_window_start)}, earlier than the policy point {iso(point)}",
            )
    return RenewalPoint(point, Reason.RenewalDue, sentence)


Check = Callable[[Input], "tuple[ActionKind, Reason, str] | None"]


def does_not_exist(i: Input) -> tuple[ActionKind, Reason, str] | None:
    if i.current is None:
        return ActionKind.issue, Reason.DoesNotExist, "no certificate yet"
    return None


def material_lost(i: Input) -> tuple[ActionKind, Reason, str] | None:
    assert i.current is not None
    if i.current.lost:
        return (
            ActionKind.issue,
            Reason.VaultIncomplete,
            f"the state dir's copy of {i.current.info.thumbprint[:8]} lacks {i.current.lost}, so it cannot be "
            "deployed any more; a new certificate is issued",
        )
    return None


def domains_changed(i: Input) -> tuple[ActionKind, Reason, str] | None:
    assert i.current is not None
    want, have = set(i.spec.domains), set(i.current.info.sans)
    if want != have or (i.current.info.subject and i.current.info.subject != i.spec.domains[0]):
        added, removed = sorted(want - have), sorted(have - want)
        parts = [f"+{n}" for n in added] + [f"-{n}" for n in removed]
        text = (
            ", ".join(parts)
            if parts
            else f"subject is {i.current.info.subject}, the spec's first domain is {i.spec.domains[0]}"
        )
        return ActionKind.reissue, Reason.DomainsChanged, f"domains changed ({text})"
    return None


def key_algorithm_changed(i: Input) -> tuple[ActionKind, Reason, str] | None:
    assert i.current is not None
    if i.current.info.key_algorithm != i.spec.key.algorithm.value:
        return (
            ActionKind.reissue,
            Reason.KeyAlgorithmChanged,
            f"key algorithm changed ({i.current.info.key_algorithm} -> {i.spec.key.algorithm.value})",
        )
    return None


def issuer_changed(i: Input) -> tuple[ActionKind, Reason, str] | None:
    """Only when the current certificate's CA is none of the certificate's Issuers: reordering the list, or
    adding a fallback, reissues nothing (the first Issuer is tried again at the next renewal)."""
    assert i.current is not None
    if i.current.issuer_id not in i.issuer_ids:
        return (
            ActionKind.reissue,
            Reason.IssuerChanged,
            f"issuer changed ({i.current.issuer_id} -> {i.issuer_ids[0]})",
        )
    return None


def revoked(i: Input) -> tuple[ActionKind, Reason, str] | None:
    assert i.current is not None
    r = i.current.revocation
    if r is None:
        return None
    key = (
        "; a new certificate with a new key is issued"
        if r.key_compromised
        else "; a new certificate is issued"
    )
    return ActionKind.renew, Reason.Revoked, f"revoked ({r.reason}) {iso(r.at)}, learnt from {r.source}{key}"


def renewal_window_passed(i: Input) -> tuple[ActionKind, Reason, str] | None:
    """The CA's renewal window (ARI) has ended: it wants the certificate replaced now (as before a mass
    revocation), whatever the renewal policy says."""
    assert i.current is not None
    a = i.attempts
    if (
        a is None
        or a.ari_for != i.current.info.thumbprint
        or a.ari_window_end is None
        or i.at < a.ari_window_end
    ):
        return None
    return (
        ActionKind.renew,
        Reason.RenewalWindowPassed,
        f"the CA's renewal window (ARI) ended {iso(a.ari_window_end)}: the CA wants this certificate replaced now",
    )


def expired(i: Input) -> tuple[ActionKind, Reason, str] | None:
    assert i.current is not None
    if i.at >= i.current.info.not_after:
        return ActionKind.renew, Reason.Expired, f"certificate expired {iso(i.current.info.not_after)}"
    return None


def forced(i: Input) -> tuple[ActionKind, Reason, str] | None:
    if i.forced:
        return ActionKind.renew, Reason.Forced, "renewal forced (certctl renew)"
    return None


def renewal_due(i: Input) -> tuple[ActionKind, Reason, str] | None:
    assert i.current is not None
    point = renewal_point(i.current, i.renewal, i.attempts)
    if i.at >= point.at:
        info = i.current.info
        elapsed = (i.at - info.not_before) / (info.not_after - info.not_before) * 100
        return ActionKind.renew, point.reason, f"{int(elapsed)}% of lifetime elapsed, {point.sentence}"
    return None


CHAIN: tuple[Check, ...] = (
    does_not_exist,
    material_lost,
    domains_changed,
    key_algorithm_changed,
    issuer_changed,
    revoked,
    expired,
    forced,
    renewal_window_passed,
    renewal_due,
)


DECISIVE = frozenset(
    {does_not_exist, material_lost}
)  # nothing else can be said about a certificate they fire for


def evaluate(i: Input) -> tuple[ActionKind, Reason, str] | None:
    """The first check that fires decides the action and its reason code; the sentence names every cause
    that fires (None when the current certificate is fine)."""
    fired: list[tuple[ActionKind, Reason, str]] = []
    for check in CHAIN:
        result = check(i)
        if result is None:
            continue
        if check in DECISIVE:
            return result
        if result[1] in (Reason.RenewalDue, Reason.RenewalWindow) and any(
            r in (Reason.Expired, Reason.RenewalWindowPassed) for _k, r, _m in fired
        ):
            continue  # "expired", or "the CA's window has ended", already says it, and more
        fired.append(result)
    if not fired:
        return None
    kind, reason, _ = fired[0]
    return kind, reason, " and ".join(message for _k, _r, message in fired)
