"""Properties of the IIS binding rules over random hosts and specs.

The planned binding changes are carried out with the adapters' own change semantics
(``reconciler.adapters.iis.changes.resolve``: what Microsoft.Web.Administration does to the XML and the
HTTP.sys table, shared-endpoint overwrite included), then the host is planned again.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.adapters.iis.appconfig import make_binding
from reconciler.adapters.iis.changes import resolve
from reconciler.adapters.iis.httpsys import SslRecord
from reconciler.core import domains, iis_rules
from reconciler.core.model import (
    IIS_APPID,
    Binding,
    CertInfo,
    DesiredState,
    HostState,
    HttpSysEntry,
    IssuedVersion,
    Named,
    ObservedState,
    Site,
    SiteState,
    Source,
    StoredCert,
    StoreState,
)
from reconciler.core.plan import ActionKind, BindingDetail, Plan
from reconciler.core.planner import plan
from reconciler.core.spec import CertificateSpec, IisHostSpec, IssuerSpec, SettingsSpec, StoreSpec
from reconciler.ports import BindingChange

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AT = T0 + timedelta(days=10)
HOST = "h"
STORE = "st"
OTHER_APPID = "{00000000-0000-0000-0000-000000000001}"

DOMAIN_SETS = {
    "www": ("www.example.com", "example.com"),
    "wild": ("*.example.com",),
    "a": ("a.example.com",),
    "apps": ("*.apps.example.com",),
    "shop": ("shop.example.net",),
}
HOSTS = [
    "www.example.com",
    "example.com",
    "a.example.com",
    "b.example.com",
    "x.a.example.com",
    "*.apps.example.com",
    "q.apps.example.com",
    "shop.example.net",
    "other.example.org",
    "",
]
IPS = ["*", "*", "10.0.0.1", "[2001:db8::1]"]
FLAGS = [0, 1, 1, 1, 5, 65, 3]


def thumb(seed: str) -> str:
    return hashlib.sha1(seed.encode()).hexdigest().upper()


def info(seed: str, sans: tuple[str, ...]) -> CertInfo:
    return CertInfo(
        thumb(seed),
        hashlib.sha256(seed.encode()).hexdigest(),
        sans[0],
        sans,
        "ecdsa-p256",
        T0,
        T0 + timedelta(days=90),
        "CN=test",
        "01",
    )


CURRENT = {name: info(name, sans) for name, sans in DOMAIN_SETS.items()}
OLD = {name: info(name + "-old", sans) for name, sans in DOMAIN_SETS.items()}
FOREIGN = info("foreign", ("foreign.example.com",))
GONE = info("gone", ("gone.example.com",))
THUMBS = [c.thumbprint for c in (*CURRENT.values(), *OLD.values(), FOREIGN, GONE)] + [None]


@st.composite
def hosts(draw: Any) -> tuple[list[Site], list[HttpSysEntry]]:
    sites: list[Site] = []
    for index in range(draw(st.integers(1, 4))):
        name = f"site{index}"
        bindings: list[Binding] = []
        seen: set[tuple[str, str]] = set()
        for _ in range(draw(st.integers(0, 6))):
            protocol = draw(st.sampled_from(["http", "https", "https", "ftp"]))
            ip, host = draw(st.sampled_from(IPS)), draw(st.sampled_from(HOSTS))
            port = {"http": 80, "ftp": 21}.get(protocol) or draw(st.sampled_from([443, 443, 8443]))
            flags = draw(st.sampled_from(FLAGS)) if protocol == "https" else 0
            if flags & 1 and not host:
                flags &= ~1
            information = f"{ip}:{port}:{host}"
            if (protocol, information) in seen:
                continue
            seen.add((protocol, information))
            bindings.append(make_binding(name, protocol, information, flags))
        if draw(st.booleans()):
            bindings.append(make_binding(name, "net.tcp", "808:*"))
        stopped = draw(st.integers(0, 5)) == 0
        ftp = draw(st.sampled_from(THUMBS)) if any(b.protocol == "ftp" for b in bindings) else None
        sites.append(
            Site(
                name,
                index + 1,
                "D:\\",
                SiteState.stopped if stopped else SiteState.started,
                tuple(bindings),
                ftp,
                "WebHosting" if ftp else None,
            )
        )
    entries: dict[tuple[str, str], HttpSysEntry] = {}
    all_https = [b for s in sites for b in s.bindings if b.protocol == "https"]
    # two https bindings on one IP:port:host never coexist (IIS would not start both)
    unique: dict[tuple[str, int, str], Binding] = {}
    for b in all_https:
        unique.setdefault((b.ip, b.port, b.host), b)
    keep = set(map(id, unique.values()))
    sites = [
        replace(s, bindings=tuple(b for b in s.bindings if b.protocol != "https" or id(b) in keep))
        for s in sites
    ]
    for b in unique.values():
        kind, key = iis_rules.entry_key(b)
        if kind == "ccs" or (kind, key) in entries or draw(st.integers(0, 9)) == 0:
            continue
        appid = OTHER_APPID if draw(st.integers(0, 15)) == 0 else IIS_APPID
        entries[(kind, key)] = HttpSysEntry(kind, key, draw(st.sampled_from(THUMBS)), "WebHosting", appid)
    return sites, list(entries.values())


@st.composite
def specs(draw: Any, site_names: list[str]) -> dict[str, tuple[tuple[str, ...], dict[str, Any]]]:
    names = draw(st.lists(st.sampled_from(sorted(DOMAIN_SETS)), min_size=2, max_size=5, unique=True))
    out = {}
    for name in names:
        mode = draw(st.sampled_from(["auto", "auto", "auto", "site", "none"]))
        iis: dict[str, Any] = {"host": HOST, "mode": mode, "ftp": draw(st.booleans())}
        if mode == "site":
            iis["site"] = draw(st.sampled_from([*site_names, "missing"]))
        out[name] = (DOMAIN_SETS[name], iis)
    return out


def desired_state(certs: dict[str, tuple[tuple[str, ...], dict[str, Any]]], prune: bool) -> DesiredState:
    src = Source("x.yaml")
    return DesiredState(
        directory="d",
        settings=SettingsSpec(prune=prune),
        settings_source=None,
        issuers={"local": Named("local", IssuerSpec.model_validate({"localCA": {}}), src)},
        stores={
            STORE: Named(
                STORE, StoreSpec.model_validate({"windows": {"host": HOST, "name": "WebHosting"}}), src
            )
        },
        iis_hosts={
            HOST: Named(HOST, IisHostSpec.model_validate({"backend": "emulated", "root": "/srv/h"}), src)
        },
        certificates={
            n: Named(
                n,
                CertificateSpec.model_validate(
                    {"issuer": "local", "domains": list(d), "stores": [STORE], "iis": [iis]}
                ),
                src,
            )
            for n, (d, iis) in certs.items()
        },
    )


def observed_state(sites: list[Site], entries: list[HttpSysEntry], certs: list[str]) -> ObservedState:
    stored = [StoredCert(STORE, CURRENT[n], CURRENT[n].thumbprint, n) for n in certs]
    stored += [StoredCert(STORE, OLD[n], OLD[n].thumbprint, n) for n in certs]
    stored += [
        StoredCert(STORE, FOREIGN, FOREIGN.thumbprint, None),
        StoredCert(STORE, GONE, GONE.thumbprint, "gone"),
    ]
    return ObservedState(
        issued={
            n: (
                IssuedVersion(n, OLD[n], "localca:local", T0 - timedelta(days=1), OLD[n].sans),
                IssuedVersion(n, CURRENT[n], "localca:local", T0, CURRENT[n].sans),
            )
            for n in certs
        },
        stores={STORE: StoreState(STORE, tuple(stored))},
        hosts={HOST: HostState(HOST, "10.0", tuple(sites), tuple(entries), ("WebHosting",))},
    )


def host_changes(p: Plan) -> list[BindingChange]:
    out = []
    for a in p.actions:
        if a.kind not in (ActionKind.bind, ActionKind.rebind, ActionKind.unbind):
            continue
        d = a.detail
        assert isinstance(d, BindingDetail)
        out.append(
            BindingChange(
                op=d.op,
                site=d.site,
                protocol=d.protocol,
                information=d.binding,
                ssl_flags=d.ssl_flags,
                thumbprint=d.thumbprint,
                store=d.store,
                old_thumbprint=d.old_thumbprint,
            )
        )
    return out


def apply(observed: ObservedState, changes: list[BindingChange]) -> ObservedState:
    host = observed.hosts[HOST]
    table = [SslRecord(e.kind, e.key, e.certhash, e.certstorename, e.appid) for e in host.httpsys]
    result = resolve(HOST, host.sites, table, changes, has_cert=lambda store, tp: True)
    new_host = replace(host, sites=result.sites, httpsys=tuple(r.to_entry() for r in result.table))
    return replace(observed, hosts={HOST: new_host})


def served(host: HostState) -> dict[tuple[str, str], str | None]:
    """(site, information) of every https binding -> the thumbprint its HTTP.sys entry holds."""
    table = {(e.kind, iis_rules.normalize_key(e.kind, e.key)): e.certhash for e in host.httpsys}
    return {
        (b.site, b.information): table.get(iis_rules.entry_key(b))
        for s in host.sites
        for b in s.bindings
        if b.protocol == "https" and b.parse_error is None and not b.ccs
    }


def covering(
    certs: dict[str, tuple[tuple[str, ...], dict[str, Any]]], site: str, host: str
) -> dict[str, int]:
    """certificate -> how well a claim in scope covers the host (2 exact, 1 wildcard or site-mode blank)."""
    out = {}
    for name, (names, iis) in certs.items():
        if iis["mode"] == "none" or (iis["mode"] == "site" and iis.get("site") != site):
            continue
        p = (1 if iis["mode"] == "site" else 0) if not host else domains.match_precision(names, host)
        if p:
            out[name] = p
    return out


@st.composite
def worlds(draw: Any) -> tuple[list[Site], list[HttpSysEntry], dict[str, Any], bool]:
    sites, entries = draw(hosts())
    certs = draw(specs([s.name for s in sites]))
    return sites, entries, certs, draw(st.booleans())


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(worlds())
def test_applying_the_plan_converges_and_touches_only_covered_bindings(
    world: tuple[list[Site], list[HttpSysEntry], dict[str, Any], bool],
) -> None:
    sites, entries, certs, prune = world
    desired = desired_state(certs, prune)
    before = observed_state(sites, entries, list(certs))
    first = plan(desired, before, AT)
    assert not any(a.kind in (ActionKind.issue, ActionKind.renew, ActionKind.reissue) for a in first.actions)
    ids = [a.id for a in first.actions]
    assert len(ids) == len(set(ids))
    after = apply(before, host_changes(first))
    second = plan(desired, after, AT)
    left = [a.id for a in second.actions if a.kind in (ActionKind.bind, ActionKind.rebind, ActionKind.unbind)]
    assert left == [], f"not converged after one apply: {left}"

    # the shared-endpoint hazard: a binding's certificate changes only to the certificate that owns its host
    old, new = served(before.hosts[HOST]), served(after.hosts[HOST])
    by_thumb = {c.thumbprint: n for n, c in CURRENT.items()}
    stopped = {s.name for s in sites if s.state is SiteState.stopped}
    for (site, information), tp in old.items():
        if (site, information) not in new or new[(site, information)] == tp:
            continue
        owner = by_thumb.get(new[(site, information)] or "")
        host = information.rsplit(":", 2)[2]
        cover = covering(certs, site, host)
        assert owner is not None and owner in cover, (
            f"{site} {information}: its certificate changed from {tp} to {new[(site, information)]}, "
            f"which no certificate covering {host!r} owns"
        )
        assert cover[owner] == max(cover.values()), f"{site} {information}: {owner} is not the best match"
        key = iis_rules.entry_key(
            next(
                b
                for s in sites
                for b in s.bindings
                if b.site == site and b.information == information and b.protocol == "https"
            )
        )
        follows = any(
            b.site not in stopped and iis_rules.entry_key(b) == key
            for s in sites
            for b in s.bindings
            if b.protocol == "https" and b.parse_error is None
        )
        assert site not in stopped or follows, f"{site} is stopped but its binding {information} changed"

    # bindings that no spec covers are never changed or removed (only pruned ones may go)
    pruned = {
        (a.detail.site, a.detail.binding)
        for a in first.actions
        if a.kind is ActionKind.unbind and isinstance(a.detail, BindingDetail)
    }
    after_bindings = {
        (b.site, b.protocol, b.information, b.ssl_flags) for s in after.hosts[HOST].sites for b in s.bindings
    }
    for s in sites:
        for b in s.bindings:
            if (b.site, b.information) in pruned:
                continue
            assert (b.site, b.protocol, b.information, b.ssl_flags) in after_bindings, f"{b.label} changed"


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_no_planned_change_moves_a_binding_its_certificate_does_not_cover(
    world: tuple[list[Site], list[HttpSysEntry], dict[str, Any], bool],
) -> None:
    """Checked on the plan itself, before anything is applied: every change of an existing https binding, and
    every other binding sharing its HTTP.sys entry, has a host the planned certificate covers best."""
    sites, entries, certs, prune = world
    desired = desired_state(certs, prune)
    before = observed_state(sites, entries, list(certs))
    p = plan(desired, before, AT)
    everything = [b for s in sites for b in s.bindings if b.protocol == "https" and b.parse_error is None]
    for a in p.actions:
        if (
            a.kind is not ActionKind.rebind
            or not isinstance(a.detail, BindingDetail)
            or a.detail.protocol != "https"
        ):
            continue
        target = next(b for b in everything if b.site == a.detail.site and b.information == a.detail.binding)
        key = iis_rules.entry_key(target)
        for b in everything:
            if iis_rules.entry_key(b) != key:
                continue
            cover = covering(certs, b.site, b.host)
            assert a.certificate in cover and cover[a.certificate] == max(cover.values()), (
                f"{a.id} would change {b.site} {b.information} (shares {key}) to {a.certificate}"
            )
