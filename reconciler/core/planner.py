"""plan(desired, observed, at) -> Plan. Pure: no I/O, no clock; the same inputs give the same plan."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime

from reconciler.core import iis_rules
from reconciler.core.durations import humanize, iso
from reconciler.core.fleet import issuing_elsewhere
from reconciler.core.model import (
    DesiredState,
    EndpointState,
    IssuedVersion,
    Named,
    ObservedState,
    StoredCert,
    canonical_json,
)
from reconciler.core.plan import (
    ACTION_ORDER,
    ISSUANCE,
    Action,
    ActionDetail,
    ActionKind,
    BindingDetail,
    CertState,
    CertSummary,
    CleanupDetail,
    DeployDetail,
    InstallDetail,
    IssueDetail,
    Note,
    Plan,
    Reason,
    Target,
)
from reconciler.core.policies import (
    Input,
    backing_off,
    evaluate,
    issuer_id,
    issuer_of,
    renewal_point,
    spec_digest,
)
from reconciler.core.spec import CertificateSpec, IssuerSpec, Renewal

NEW = "(new)"


def desired_fingerprint(desired: DesiredState) -> str:
    import hashlib

    data = {
        "settings": desired.settings,
        "issuers": {k: v.spec for k, v in desired.issuers.items()},
        "stores": {k: v.spec for k, v in desired.stores.items()},
        "hosts": {k: v.spec for k, v in desired.iis_hosts.items()},
        "certificates": {k: v.spec for k, v in desired.certificates.items()},
    }
    return hashlib.sha256(canonical_json(data).encode()).hexdigest()


def current_version(versions: Iterable[IssuedVersion]) -> IssuedVersion | None:
    newest: IssuedVersion | None = None
    for version in versions:
        if newest is None or (version.issued_at, version.info.not_before) > (
            newest.issued_at,
            newest.info.not_before,
        ):
            newest = version
    return newest


def _act(
    kind: ActionKind,
    name: str,
    target: str,
    reason: Reason,
    message: str,
    depends: Iterable[str | None] = (),
    detail: ActionDetail | None = None,
) -> Action:
    suffix = f"/{target}" if kind not in ISSUANCE else ""
    return Action(
        id=f"{kind.value}/{name}{suffix}",
        kind=kind,
        certificate=name,
        target=target,
        reason=reason,
        message=message,
        depends_on=tuple(sorted({d for d in depends if d})),
        detail=detail,
    )


def _cleaned(action: Action) -> str:
    assert isinstance(action.detail, CleanupDetail)
    return action.detail.thumbprint


def plan(
    desired: DesiredState, observed: ObservedState, at: datetime, forced: frozenset[str] = frozenset()
) -> Plan:
    actions: list[Action] = []
    notes: list[Note] = []
    summaries: list[CertSummary] = []
    targets: dict[str, Target] = {}

    index = _store_index(observed)
    issuer_specs = {n: i.spec for n, i in desired.issuers.items()}
    for name in sorted(desired.certificates):
        named = desired.certificates[name]
        target, summary, cert_actions, cert_notes = _plan_certificate(
            desired, observed, index, named, at, name in forced, issuer_specs
        )
        targets[name] = target
        summaries.append(summary)
        actions.extend(cert_actions)
        notes.extend(cert_notes)

    host_actions, host_notes, referenced = iis_rules.plan_hosts(
        desired, observed, targets, at, tuple(actions)
    )
    actions.extend(host_actions)
    notes.extend(host_notes)

    endpoints: dict[str, list[EndpointState]] = {}
    for endpoint in observed.endpoints:
        endpoints.setdefault(endpoint.certificate, []).append(endpoint)
    for name in sorted(desired.certificates):
        spec = desired.certificates[name].spec
        actions.extend(_deploy_actions(name, spec, targets[name], observed, endpoints.get(name, [])))

    referenced |= {t.thumbprint for t in observed.tasks.values() if t.thumbprint}
    cleanup, cleanup_notes = _cleanup_actions(desired, observed, targets, referenced, at)
    unbinds: dict[str, set[str]] = {}  # a pruned certificate is removed only after its bindings are
    for action in host_actions:
        if (
            isinstance(action.detail, BindingDetail)
            and action.kind is ActionKind.unbind
            and action.detail.old_thumbprint
        ):
            unbinds.setdefault(action.detail.old_thumbprint, set()).add(action.id)
    cleanup = [
        replace(c, depends_on=tuple(sorted({*c.depends_on, *unbinds.get(_cleaned(c), ())}))) for c in cleanup
    ]
    actions.extend(cleanup)
    notes.extend(cleanup_notes)
    with_actions = {a.certificate for a in actions}
    summaries = [
        replace(s, state=CertState.pending) if s.state is CertState.ready and s.name in with_actions else s
        for s in summaries
    ]

    order = {k: i for i, k in enumerate(ACTION_ORDER)}
    actions.sort(key=lambda a: (a.certificate, order[a.kind], a.id))
    made = Plan(
        at=at,
        directory=desired.directory,
        revision=desired.revision,
        actions=tuple(actions),
        certificates=tuple(summaries),
        notes=tuple(sorted(notes, key=lambda n: (n.certificate or "", n.target, n.message))),
        forced=tuple(sorted(forced)),
    )
    return issuing_elsewhere(made, observed.issuing) if observed.issuing else made


def with_fingerprints(plan: Plan, desired: DesiredState, observed: ObservedState) -> Plan:
    """The plan with the digests of what it was made from (for saved plans; computed only when asked)."""
    return replace(
        plan, observed_fingerprint=observed.fingerprint(), desired_fingerprint=desired_fingerprint(desired)
    )


StoreIndex = dict[str, dict[str, StoredCert]]


def _store_index(observed: ObservedState) -> StoreIndex:
    """store -> thumbprint -> the stored certificate (the live copy when a store holds it twice)."""
    index: StoreIndex = {}
    for name, state in observed.stores.items():
        table: dict[str, StoredCert] = {}
        for cert in state.certs:
            known = table.get(cert.info.thumbprint)
            if known is None or (cert.current and not known.current):
                table[cert.info.thumbprint] = cert
        index[name] = table
    return index


def _plan_certificate(
    desired: DesiredState,
    observed: ObservedState,
    index: StoreIndex,
    named: Named[CertificateSpec],
    at: datetime,
    force: bool,
    issuer_specs: Mapping[str, IssuerSpec],
) -> tuple[Target, CertSummary, list[Action], list[Note]]:
    name, spec = named.name, named.spec
    renewal: Renewal = spec.renewal or desired.settings.renewal
    versions = observed.issued.get(name, ())
    current = current_version(versions)
    attempts = observed.attempts.get(name)
    names = spec.issuers
    first = names[0]
    ids = tuple(issuer_id(n, desired.issuers[n].spec) for n in names if n in desired.issuers)
    decision = evaluate(Input(name, spec, renewal, ids, current, attempts, at, force))
    actions: list[Action] = []
    notes: list[Note] = []
    previous = frozenset(
        v.info.thumbprint for v in versions if current is None or v.info.thumbprint != current.info.thumbprint
    )
    point = renewal_point(current, renewal, attempts) if current else None
    issued_by = issuer_of(current, issuer_specs, names) if current else None
    issuer_note = (
        current.issuer_note if current is not None and issued_by is not None and issued_by != first else None
    )
    if issued_by is not None and issued_by != first and decision is None:
        notes.append(
            Note(
                name,
                f"issuer/{issued_by}",
                f"the current certificate was issued by {issued_by}, not {first}"
                + (f" ({issuer_note})" if issuer_note else "")
                + f"; {first} is tried first again at the next renewal"
                + (f" ({iso(point.at)})" if point else ""),
                code="FallbackIssuer",
            )
        )
    state = CertState.ready
    deferred_until = None
    reason_text = None
    issuance_id: str | None = None
    if decision is not None:
        kind, reason, message = decision
        reason_text = message
        state = {
            Reason.DoesNotExist: CertState.missing,
            Reason.Expired: CertState.expired,
            Reason.RenewalDue: CertState.due,
            Reason.RenewalWindow: CertState.due,
            Reason.RenewalWindowPassed: CertState.due,
            Reason.Forced: CertState.due,
            Reason.Revoked: CertState.revoked,
        }.get(reason, CertState.outdated)
        if (
            attempts
            and attempts.next_retry
            and not force
            and backing_off(attempts, spec_digest(spec, issuer_specs), at)
        ):
            deferred_until = attempts.next_retry
            state = CertState.deferred
            notes.append(
                Note(
                    name,
                    f"issuer/{first}",
                    f"{message}; deferred until {iso(attempts.next_retry)} after {attempts.consecutive_failures} "
                    f"failed attempt(s) (last error: {attempts.last_error}); `certctl renew {name}` retries now",
                    code="Deferred",
                )
            )
        else:
            if attempts and attempts.next_retry and attempts.next_retry > at and not force:
                message += (
                    f"; the backoff after {attempts.consecutive_failures} failed attempt(s) no longer applies: "
                    f"certificate {name} or one of its issuers was edited since"
                )
            issuer = desired.issuers[first].spec
            new_key = (
                current is not None and current.revocation is not None and current.revocation.key_compromised
            )
            detail = IssueDetail(
                tuple(spec.domains),
                spec.key.algorithm.value,
                first,
                current.info.thumbprint if current is not None else None,
                iso(current.info.not_after) if current is not None else None,
                fallbacks=names[1:],
                profile=issuer.acme.profile if issuer.acme else None,
                new_key=new_key,
            )
            action = _act(kind, name, f"issuer/{first}", reason, message, detail=detail)
            actions.append(action)
            issuance_id = action.id
            notes.extend(_profile_notes(desired, observed, name, names))
    previous_set = previous if current is not None else frozenset()
    if issuance_id is not None and current is not None:
        previous_set = previous_set | {current.info.thumbprint}
    target = Target(
        name=name,
        thumbprint=None if issuance_id else (current.info.thumbprint if current else None),
        issuance=issuance_id,
        previous=previous_set,
    )
    summary = CertSummary(
        name=name,
        state=state,
        not_after=current.info.not_after if current else None,
        renew_at=point.at if point else None,
        thumbprint=current.info.thumbprint if current else None,
        reason=reason_text,
        deferred_until=deferred_until,
        last_error=attempts.last_error if attempts else None,
        consecutive_failures=attempts.consecutive_failures if attempts else 0,
        issuer=issued_by,
        issuer_note=issuer_note,
    )
    if target.thumbprint is None and target.issuance is None:
        return target, summary, actions, notes  # nothing to install yet (deferred first issuance)
    actions.extend(_install_actions(name, spec, target, index))
    return target, summary, actions, notes


PROFILE_UNKNOWN = "ProfileUnknown"


def profile_problem(issuer: str, profile: str | None, offered: tuple[str, ...] | None) -> str | None:
    """Why an ACME ``profile`` cannot be ordered from a CA whose directory lists ``offered`` (None: not
    fetched yet, nothing to say), or None when it can."""
    if profile is None or offered is None or profile in offered:
        return None
    if not offered:
        return (
            f"Issuer {issuer} asks for profile {profile!r}, but its CA offers no profiles "
            "(its directory lists no meta.profiles); remove profile"
        )
    return (
        f"Issuer {issuer} asks for profile {profile!r}, which its CA does not offer "
        f"(it offers: {', '.join(offered)})"
    )


def _profile_notes(
    desired: DesiredState, observed: ObservedState, name: str, names: Sequence[str]
) -> list[Note]:
    """An error note for each Issuer of an issuance whose profile the CA's directory does not list."""
    out = []
    for issuer_name in names:
        acme = desired.issuers[issuer_name].spec.acme
        problem = profile_problem(
            issuer_name, acme.profile if acme else None, observed.issuer_profiles.get(issuer_name)
        )
        if problem is not None:
            out.append(Note(name, f"issuer/{issuer_name}", problem, code=PROFILE_UNKNOWN))
    return out


def _install_actions(name: str, spec: CertificateSpec, target: Target, index: StoreIndex) -> list[Action]:
    out: list[Action] = []
    for store in spec.stores:
        if target.thumbprint is None:
            out.append(
                _act(
                    ActionKind.install,
                    name,
                    f"store/{store}",
                    Reason.Renewed,
                    f"the new certificate goes into store {store}",
                    [target.issuance],
                    InstallDetail(store),
                )
            )
            continue
        found = index.get(store, {}).get(target.thumbprint)
        thumb = target.thumbprint[:8]
        if found is None:
            reason, why = Reason.NotInStore, f"store {store} lacks the current certificate {thumb}"
        elif not found.current:
            reason, why = (
                Reason.StoreDrift,
                f"store {store} holds {thumb} but serves another version as current",
            )
        elif found.drift:
            reason, why = Reason.StoreDrift, f"store {store} serves {thumb}, but {found.drift}"
        else:
            continue
        out.append(
            _act(
                ActionKind.install,
                name,
                f"store/{store}",
                reason,
                why,
                detail=InstallDetail(store, target.thumbprint),
            )
        )
    return out


def _deploy_actions(
    name: str,
    spec: CertificateSpec,
    target: Target,
    observed: ObservedState,
    endpoints: Sequence[EndpointState],
) -> list[Action]:
    out: list[Action] = []
    if target.thumbprint is None and target.issuance is None:
        return out
    drift = [
        e
        for e in endpoints
        if target.thumbprint and e.thumbprint is not None and e.thumbprint != target.thumbprint
    ]
    for index, task in enumerate(spec.tasks):
        label = f"task/{index}-{task.kind}"
        state = observed.tasks.get((name, index))
        if target.thumbprint is None:
            out.append(
                _act(
                    ActionKind.deploy,
                    name,
                    label,
                    Reason.Renewed,
                    f"{task.kind} task runs for the new certificate",
                    [target.issuance],
                    DeployDetail(index),
                )
            )
        elif state is None or state.thumbprint is None:
            why = state.problem if state and state.problem else "its output is missing"
            reason = Reason.NotDeployed if task.kind == "script" else Reason.OutputMissing
            out.append(
                _act(
                    ActionKind.deploy,
                    name,
                    label,
                    reason,
                    f"{task.kind} task: {why}",
                    detail=DeployDetail(index, target.thumbprint),
                )
            )
        elif state.thumbprint != target.thumbprint:
            out.append(
                _act(
                    ActionKind.deploy,
                    name,
                    label,
                    Reason.OutputOutdated,
                    f"{task.kind} task output holds {state.thumbprint[:8]}, current is {target.thumbprint[:8]}",
                    detail=DeployDetail(index, target.thumbprint),
                )
            )
        elif drift and (
            task.kind == "script" or getattr(task.files, "reload", None) or getattr(task.pfx, "reload", None)
        ):
            first = drift[0]
            out.append(
                _act(
                    ActionKind.deploy,
                    name,
                    label,
                    Reason.EndpointDrift,
                    f"{first.endpoint} serves {first.thumbprint[:8] if first.thumbprint else 'nothing'}, "
                    f"current is {target.thumbprint[:8]}",
                    detail=DeployDetail(index, target.thumbprint),
                )
            )
    return out


def _cleanup_blocked(desired: DesiredState, observed: ObservedState, store_name: str) -> str | None:
    """Why nothing may be removed from a Windows store: its IIS host could not be read, or has unreadable
    HTTP.sys data (a certificate could still be bound there); None when cleanup may go ahead."""
    named = desired.stores.get(store_name)
    windows = named.spec.windows if named is not None else None
    if windows is None or windows.host not in desired.iis_hosts:
        return None
    host = observed.hosts.get(windows.host)
    if host is None or not host.reachable:
        return f"IIS host {windows.host} could not be read"
    if host.blocking:
        return f"IIS host {windows.host} has unreadable data ({'; '.join(host.blocking)})"
    return None


def _cleanup_actions(
    desired: DesiredState,
    observed: ObservedState,
    targets: dict[str, Target],
    referenced: set[str],
    at: datetime,
) -> tuple[list[Action], list[Note]]:
    grace = desired.settings.cleanupAfter
    out: list[Action] = []
    notes: list[Note] = []
    for store_name in sorted(observed.stores):
        state = observed.stores[store_name]
        for problem in state.problems:
            notes.append(Note(None, f"store/{store_name}", problem, code="StoreProblem"))
        by_cert: dict[str, list[StoredCert]] = {}
        for cert in state.certs:
            if cert.managed_by:
                by_cert.setdefault(cert.managed_by, []).append(cert)
        for owner, certs in sorted(by_cert.items()):
            target = targets.get(owner)
            if target is None:
                for cert in certs:
                    if cert.info.thumbprint in referenced:
                        notes.append(
                            Note(
                                owner,
                                f"store/{store_name}",
                                f"{cert.info.thumbprint[:8]} belongs to certificate {owner}, whose spec was "
                                "deleted; still in use, kept",
                                code="Orphaned",
                            )
                        )
                    elif desired.settings.prune:
                        out.append(
                            _act(
                                ActionKind.cleanup,
                                owner,
                                f"store/{store_name}/{cert.ref}",
                                Reason.Orphaned,
                                f"certificate {owner} has no spec any more and {cert.info.thumbprint[:8]} is "
                                "used nowhere (prune: true)",
                                detail=CleanupDetail(store_name, cert.ref, cert.info.thumbprint),
                            )
                        )
                    else:
                        notes.append(
                            Note(
                                owner,
                                f"store/{store_name}",
                                f"{cert.info.thumbprint[:8]} belongs to certificate {owner}, whose spec was "
                                "deleted; kept (set prune: true in Settings to remove it)",
                                code="Orphaned",
                            )
                        )
                continue
            live = [c for c in certs if c.current and c.info.thumbprint == target.thumbprint]
            if target.thumbprint is None or not live:
                continue  # the replacement is not in place yet: keep everything
            older = sorted(
                (
                    c
                    for c in certs
                    if c.info.thumbprint != target.thumbprint and c.info.not_before <= live[0].info.not_before
                ),
                key=lambda c: (c.info.not_before, c.ref),
            )
            rollback = older[-1] if older and older[-1].info.not_after > at else None
            since = live[0].installed_at
            for cert in older:
                if cert is rollback or cert.info.thumbprint in referenced:
                    continue
                superseded = cert.superseded_at or since
                expired_ = cert.info.not_after <= at
                if expired_ or (superseded is not None and at - superseded >= grace):
                    why = (
                        f"expired {iso(cert.info.not_after)}"
                        if expired_
                        else f"superseded {humanize(at - superseded)} ago"
                        if superseded
                        else "superseded"
                    )
                    out.append(
                        _act(
                            ActionKind.cleanup,
                            owner,
                            f"store/{store_name}/{cert.ref}",
                            Reason.Superseded,
                            f"{cert.info.thumbprint[:8]} {why} and used nowhere",
                            detail=CleanupDetail(store_name, cert.ref, cert.info.thumbprint),
                        )
                    )
    kept: list[Action] = []
    for action in out:
        assert isinstance(action.detail, CleanupDetail)
        blocked = _cleanup_blocked(desired, observed, action.detail.store)
        if blocked is None:
            kept.append(action)
        else:
            notes.append(
                Note(
                    action.certificate,
                    action.target,
                    f"{action.message}, but it is not removed: {blocked}, so certctl cannot tell whether "
                    "it is still bound",
                    code="Blocked",
                )
            )
    return kept, notes
