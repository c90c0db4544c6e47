"""Fleet rules (pure): what of a desired state one node acts on, and how another node's issuance shows in a plan.

A node (one certctl process, ``--node``) acts on the IisHosts and Stores that name it or name no node,
and on the certificates that go there. ``{node}`` in a path is replaced by the node's name. An issuance
that another node holds a live lease for is not this node's action: it is a note, "issuing on web02
since ...", and what would depend on it waits for the new version (the daemon is told when it lands).
"""

from __future__ import annotations

import functools
from dataclasses import replace
from datetime import datetime
from typing import Any, get_args

from pydantic import BaseModel

from reconciler.core import spec as specs
from reconciler.core.durations import iso
from reconciler.core.model import DesiredState, Issuing, Named, ObservedState
from reconciler.core.plan import ISSUANCE, Note, Plan

NODE_PLACEHOLDER = "{node}"
ISSUING_ELSEWHERE = "IssuingElsewhere"

# The path fields of the spec models: the only strings where {node} is replaced.
PATH_FIELDS: frozenset[tuple[type[BaseModel], str]] = frozenset(
    {
        (specs.SettingsSpec, "stateDir"),
        (specs.Webroot, "path"),
        (specs.Acme, "caBundle"),
        (specs.PemDirectory, "path"),
        (specs.IisHostSpec, "root"),
        (specs.FilesTask, "path"),
        (specs.PfxTask, "path"),
        (specs.CcsTask, "path"),
        (specs.SecretRef, "fromFile"),
    }
)


def with_node_paths(value: Any, node: str) -> Any:
    """``value`` (a spec model, or lists/dicts of them) with ``{node}`` replaced in every path field."""
    if isinstance(value, BaseModel):
        changes: dict[str, Any] = {}
        for name in _toward_paths(type(value)):
            current = getattr(value, name)
            if isinstance(current, str):
                if (type(value), name) in PATH_FIELDS and NODE_PLACEHOLDER in current:
                    changes[name] = current.replace(NODE_PLACEHOLDER, node)
                continue
            new = with_node_paths(current, node)
            if new is not current:
                changes[name] = new
        return value.model_copy(update=changes) if changes else value
    if isinstance(value, list):
        items = [with_node_paths(v, node) for v in value]
        return items if any(a is not b for a, b in zip(items, value, strict=True)) else value
    if isinstance(value, dict):
        mapped = {k: with_node_paths(v, node) for k, v in value.items()}
        return mapped if any(mapped[k] is not value[k] for k in value) else value
    return value


@functools.cache
def _toward_paths(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of ``model`` that are path fields or can hold a model with one (read from the field types,
    once per model): a certificate's domains, key and renewal settings are never walked."""
    return tuple(
        name for name, field in model.model_fields.items() if _reaches(model, name, field.annotation)
    )


def _reaches(
    model: type[BaseModel], name: str, annotation: Any, within: frozenset[type] = frozenset()
) -> bool:
    if (model, name) in PATH_FIELDS:
        return True
    return any(
        inner not in within and _reaches(inner, field, sub.annotation, within | {model})
        for inner in _models_in(annotation)
        for field, sub in inner.model_fields.items()
    )


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The spec models a field's type names, however nested (lists, dicts, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _mine(node_field: str | None, node: str) -> bool:
    return node_field is None or node_field == node


def node_view(desired: DesiredState, node: str) -> DesiredState:
    """What ``node`` acts on: its IisHosts and Stores (those naming it or no node; a windows Store follows
    its host), each certificate's stores, IIS targets and tasks among them, with ``{node}`` in paths
    replaced. A task without ``node`` runs where the certificate is installed (on every node when the
    certificate names no Store and no IIS host). A certificate with nothing on this node is left out
    (its issuance is another node's business); one that names no Store, IIS host or task is kept."""
    hosts = {n: _named(h, node) for n, h in desired.iis_hosts.items() if _mine(h.spec.node, node)}
    stores = {}
    for name, store in desired.stores.items():
        kind = store.spec
        if kind.node is not None:
            if kind.node == node:
                stores[name] = _named(store, node)
        elif kind.windows is None or kind.windows.host in hosts:
            stores[name] = _named(store, node)
    certificates = {}
    for name, cert in desired.certificates.items():
        spec = cert.spec
        kept_stores = [s for s in spec.stores if s in stores]
        kept_iis = [t for t in spec.iis if t.host in hosts]
        installed_here = bool(kept_stores or kept_iis) or not (spec.stores or spec.iis)
        kept_tasks = [t for t in spec.tasks if t.node == node or (t.node is None and installed_here)]
        nothing_anywhere = not (spec.stores or spec.iis or spec.tasks)
        if not (kept_stores or kept_iis or kept_tasks or nothing_anywhere):
            continue
        changed = (len(kept_stores), len(kept_iis), len(kept_tasks)) != (
            len(spec.stores),
            len(spec.iis),
            len(spec.tasks),
        )
        if changed:
            spec = spec.model_copy(
                update={
                    "stores": kept_stores,
                    "iis": kept_iis,
                    "tasks": kept_tasks,
                    "verify": spec.verify if installed_here else [],
                }
            )
        certificates[name] = _named(replace(cert, spec=spec) if changed else cert, node)
    settings = with_node_paths(desired.settings, node)
    issuers = {n: _named(i, node) for n, i in desired.issuers.items()}
    return replace(
        desired, settings=settings, issuers=issuers, stores=stores, iis_hosts=hosts, certificates=certificates
    )


def focused(desired: DesiredState, names: frozenset[str]) -> DesiredState:
    """The part of ``desired`` a pass woken for ``names`` works on: those certificates, and the Stores and
    IisHosts they go to (a windows Store's host too). Issuers and settings stay whole."""
    certificates = {n: c for n, c in desired.certificates.items() if n in names}
    store_names = {s for c in certificates.values() for s in c.spec.stores}
    stores = {n: s for n, s in desired.stores.items() if n in store_names}
    host_names = {t.host for c in certificates.values() for t in c.spec.iis} | {
        s.spec.windows.host for s in stores.values() if s.spec.windows is not None
    }
    hosts = {n: h for n, h in desired.iis_hosts.items() if n in host_names}
    return replace(desired, stores=stores, iis_hosts=hosts, certificates=certificates)


def only_for(plan: Plan, names: frozenset[str]) -> Plan:
    """``plan`` restricted to the actions, notes and summaries of ``names`` (a focused pass never acts on
    another certificate: a binding or version of one outside the focus is not an orphan)."""
    return replace(
        plan,
        actions=tuple(a for a in plan.actions if a.certificate in names),
        notes=tuple(n for n in plan.notes if n.certificate in names),
        certificates=tuple(s for s in plan.certificates if s.name in names),
    )


def _named(named: Named[Any], node: str) -> Named[Any]:
    spec = with_node_paths(named.spec, node)
    return named if spec is named.spec else replace(named, spec=spec)


def issuing_elsewhere(plan: Plan, issuing: dict[str, Issuing]) -> Plan:
    """``plan`` without the issuances other nodes hold live leases for (and whatever depends on them),
    each one replaced by a note naming the node and since when."""
    dropped: set[str] = set()
    notes: list[Note] = []
    for action in plan.actions:
        held = issuing.get(action.certificate)
        if action.kind in ISSUANCE and held is not None:
            dropped.add(action.id)
            notes.append(
                Note(
                    action.certificate,
                    f"certificate/{action.certificate}",
                    f"issuing on {held.node} since {iso(held.since)}; this node installs the new version "
                    "when it lands",
                    code=ISSUING_ELSEWHERE,
                )
            )
    if not dropped:
        return plan
    grew = True
    while grew:  # whatever depends on a dropped action is dropped too
        before = len(dropped)
        dropped.update(a.id for a in plan.actions if dropped.intersection(a.depends_on))
        grew = len(dropped) != before
    kept = [a for a in plan.actions if a.id not in dropped]
    return replace(
        plan,
        actions=tuple(kept),
        notes=tuple(sorted((*plan.notes, *notes), key=lambda n: (n.certificate or "", n.target, n.message))),
    )


def node_report(
    desired: DesiredState, observed: ObservedState, plan: Plan, at: datetime, applied: dict[str, Any] | None
) -> dict[str, Any]:
    """What a node reports after a pass: revision, last apply, converged or not, and for each of its
    certificates the thumbprint it serves (what its stores hold; the current version once nothing is left to do)."""
    pending: dict[str, int] = {}
    for action in plan.actions:
        pending[action.certificate] = pending.get(action.certificate, 0) + 1
    held: dict[str, str] = {}
    for store in observed.stores.values():
        for stored in store.certs:
            if stored.current and stored.managed_by and stored.managed_by not in held:
                held[stored.managed_by] = stored.info.thumbprint
    serving: dict[str, Any] = {}
    for summary in plan.certificates:
        thumbprint = summary.thumbprint if not pending.get(summary.name) else held.get(summary.name)
        serving[summary.name] = {
            "thumbprint": thumbprint,
            "converged": not pending.get(summary.name),
            "pending": pending.get(summary.name, 0),
            "state": summary.state.value,
        }
    issuing = sorted(n.certificate for n in plan.notes if n.code == ISSUING_ELSEWHERE and n.certificate)
    return {
        "at": iso(at),
        "revision": desired.revision,
        "converged": not plan.actions and not issuing,
        "pending_actions": len(plan.actions),
        "waiting_for": issuing,
        "reconcile_interval_seconds": desired.settings.reconcileInterval.total_seconds(),
        "last_apply": {k: applied.get(k) for k in ("at", "ok", "revision", "actions")} if applied else None,
        "certificates": serving,
    }


def merged_report(previous: dict[str, Any], focused: dict[str, Any], names: frozenset[str]) -> dict[str, Any]:
    """The node's report after a pass focused on ``names`` (``focused`` is that pass's ``node_report``): the
    previous full report with those certificates replaced, and the node's totals recounted from them."""
    certificates = {
        n: c for n, c in (previous.get("certificates") or {}).items() if n not in names
    } | focused["certificates"]
    waiting = sorted(
        {w for w in previous.get("waiting_for") or [] if w not in names} | set(focused["waiting_for"])
    )
    pending = sum(
        int(c.get("pending", 0 if c.get("converged") else 1)) for c in certificates.values() if c is not None
    )
    return {
        **focused,
        "converged": not pending and not waiting,
        "pending_actions": pending,
        "waiting_for": waiting,
        "certificates": dict(sorted(certificates.items())),
    }


def fleet_document(
    now: datetime, nodes: list[tuple[str, datetime, datetime, dict[str, Any]]], newest: dict[str, str]
) -> dict[str, Any]:
    """`certctl status --fleet`: every node (stale once silent for 3 × its reconcileInterval) and, per
    certificate, which nodes serve which version."""
    rows = []
    certificates: dict[str, dict[str, list[str]]] = {}
    for name, first_seen, last_seen, report in nodes:
        interval = float(report.get("reconcile_interval_seconds") or 300.0)
        silent = (now - last_seen).total_seconds()
        stale = silent > 3 * interval
        rows.append(
            {
                "node": name,
                "first_seen": iso(first_seen),
                "last_seen": iso(last_seen),
                "stale": stale,
                "revision": report.get("revision"),
                "converged": bool(report.get("converged")) and not stale,
                "pending_actions": report.get("pending_actions"),
                "last_apply": report.get("last_apply"),
                "waiting_for": report.get("waiting_for") or [],
            }
        )
        for cert, serving in sorted((report.get("certificates") or {}).items()):
            thumbprint = (serving or {}).get("thumbprint") or "none"
            certificates.setdefault(cert, {}).setdefault(thumbprint, []).append(name)
    return {
        "at": iso(now),
        "nodes": rows,
        "certificates": [
            {
                "name": cert,
                "newest": newest.get(cert),
                "serving": [
                    {"thumbprint": t if t != "none" else None, "current": t == newest.get(cert), "nodes": ns}
                    for t, ns in sorted(by.items())
                ],
            }
            for cert, by in sorted(certificates.items())
        ],
    }
