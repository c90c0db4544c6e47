"""IIS binding rules (docs/iis.md, "Choosing bindings"): bind, rebind, unbind, FTP, and what is left alone.

``plan_hosts`` returns the host actions, the notes for bindings deliberately left alone, and every
thumbprint something on a host still references (so cleanup never removes a certificate in use).

How a binding is decided, on each IIS host that a Certificate's ``iis`` names:

- Every https binding has at most one *owner*: the claim (certificate + iis entry) that matches its
  host best. Exact beats a one-label wildcard, across certificates; a wildcard binding host
  (``*.apps.example.org``) is matched only by the same wildcard; a blank host is matched only by a
  ``mode: site`` claim for that site (a host written ``*`` is read as blank). ``auto`` claims see every
  site, ``site`` claims one site. A tie between certificates goes to the one the binding serves, if any.
- An owned binding that does not serve the owner's certificate (from a store that holds it) gets a
  ``rebind``: ``Renewed`` when it served one of the certificate's earlier thumbprints, else
  ``BindingDrift``. It is left alone, with a Note, when its site is stopped, it uses the Centralized
  Certificate Store, its HTTP.sys entry belongs to another application, or the entry is shared with a
  binding the same claim does not own (the shared-endpoint hazard).
- An http binding whose host a claim covers, on a site with no https binding for that host, gets a
  ``bind``: ``<ip>:443:<host>`` with SNI — unless any site already has https on ``<host>:443``.
- FTP: a site's ftpServer/security/ssl certificate follows the owner of its ftp bindings' hosts.
- With ``Settings.prune``: an https binding that certctl itself added (recorded in the state dir, see
  ``ObservedState.made_bindings``) and that serves a certificate whose store marker names a deleted
  Certificate spec is removed (``unbind``). A binding that existed before certctl is never removed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from reconciler.core import domains
from reconciler.core.model import (
    IIS_APPID,
    Binding,
    DesiredState,
    HostState,
    HttpSysEntry,
    ObservedState,
    Site,
    SiteState,
)
from reconciler.core.plan import Action, ActionKind, BindingDetail, Note, Reason, Target
from reconciler.core.spec import IisMode

ADDRESS_PROTOCOLS = frozenset(
    {"http", "https", "ftp"}
)  # bindingInformation is IP:port:host; others are kept as they are
SNI = 1
HTTPS_PORT = 443


def _short(thumbprint: str | None) -> str:
    return thumbprint[:8] if thumbprint else "nothing"


def entry_key(binding: Binding) -> tuple[str, str]:
    """(kind, key) of the HTTP.sys entry an https binding uses (docs/iis.md, "Which HTTP.sys entry a binding uses"; derived, never stored).

    CCS bit → ``ccs``/``<port>`` (also with SNI: a CCS binding has no hash, its certificate is a file);
    SNI bit → ``hostnameport``/``<host>:<port>``; otherwise ``ipport``/``<ip or 0.0.0.0>:<port>``.
    """
    if binding.ccs:
        return "ccs", str(binding.port)
    if binding.sni:
        return "hostnameport", f"{binding.host.lower()}:{binding.port}"
    ip = "0.0.0.0" if binding.ip in ("*", "") else binding.ip
    return "ipport", normalize_key("ipport", f"{ip}:{binding.port}")


def normalize_key(kind: str, key: str) -> str:
    """A comparable form of an HTTP.sys entry key: host names lower-cased, IPv6 addresses compressed."""
    key = key.strip().lower()
    if kind == "ipport" and key.startswith("["):
        addr, _, port = key[1:].partition("]:")
        try:
            return f"[{ipaddress.IPv6Address(addr).compressed}]:{port}"
        except ValueError:
            return key
    return key


def _entries(host: HostState) -> dict[tuple[str, str], HttpSysEntry]:
    return {(e.kind, normalize_key(e.kind, e.key)): e for e in host.httpsys}


def referenced_thumbprints(observed: ObservedState) -> set[str]:
    """Every thumbprint a binding's HTTP.sys entry, an FTP site or the CCS share on any host uses."""
    out: set[str] = set()
    for host in observed.hosts.values():
        out.update(e.certhash.upper() for e in host.httpsys if e.certhash)
        out.update(s.ftp_cert_hash.upper() for s in host.sites if s.ftp_cert_hash)
        out.update(tp.upper() for _name, tp in host.ccs_files if tp)
    return out


# --- claims ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Claim:
    """One Certificate's ``iis`` entry on one host, with what it can bind."""

    certificate: str
    index: int
    mode: IisMode
    site: str | None
    ftp: bool
    domains: tuple[str, ...]
    thumbprint: str | None  # None: issued in this plan
    issuance: str | None
    previous: frozenset[str]
    store: str | None  # certctl Store name
    windows_store: str  # My | WebHosting
    install: str | None  # id of the planned install into that store
    problem: str | None  # why it cannot bind anything (reported)

    def in_scope(self, site: Site) -> bool:
        return self.mode is IisMode.auto or (self.site or "").lower() == site.name.lower()

    def precision(self, site: Site, host: str) -> tuple[int, int]:
        """(match, site-specific): 2 exact, 1 one-label wildcard or a blank host in site mode, 0 none."""
        if not self.in_scope(site):
            return 0, 0
        specific = int(self.mode is IisMode.site)
        if not host:
            return (1, specific) if self.mode is IisMode.site else (0, 0)
        return domains.match_precision(self.domains, host.lower()), specific

    @property
    def depends(self) -> tuple[str, ...]:
        return tuple(sorted(d for d in (self.issuance, self.install) if d))

    def covers_thumbprint(self, thumbprint: str | None) -> bool:
        return thumbprint is not None and (thumbprint == self.thumbprint or thumbprint in self.previous)


def _claims(
    desired: DesiredState,
    observed: ObservedState,
    host: str,
    targets: Mapping[str, Target],
    planned_ids: frozenset[str],
) -> list[_Claim]:
    claims: list[_Claim] = []
    for name in sorted(desired.certificates):
        spec = desired.certificates[name].spec
        target = targets.get(name)
        for index, iis in enumerate(spec.iis):
            if iis.host != host or iis.mode is IisMode.none or target is None:
                continue
            store = iis.store or next(
                (
                    n
                    for n in spec.stores
                    if (s := desired.stores.get(n)) is not None
                    and s.spec.windows is not None
                    and s.spec.windows.host == host
                ),
                None,
            )
            store_spec = desired.stores.get(store) if store else None
            windows = store_spec.spec.windows if store_spec is not None else None
            windows_store = windows.name.value if windows is not None else "WebHosting"
            install_id = f"install/{name}/store/{store}" if store else None
            install = install_id if install_id in planned_ids else None
            problem: str | None = None
            if target.thumbprint is None and target.issuance is None:
                problem = "it has no certificate yet (its first issuance is deferred)"
            elif store is None or windows is None or windows.host != host:
                problem = f"no windows Store on IIS host {host} is among its stores"
            elif install is None:
                state = observed.stores.get(store)
                present = (
                    target.thumbprint is not None
                    and state is not None
                    and any(c.info.thumbprint == target.thumbprint and c.current for c in state.certs)
                )
                if not present:
                    problem = (
                        f"its certificate is not in store {store} ({windows_store}) and no install into it is "
                        f"planned (add {store} to its stores)"
                    )
            claims.append(
                _Claim(
                    certificate=name,
                    index=index,
                    mode=iis.mode,
                    site=iis.site,
                    ftp=iis.ftp,
                    domains=tuple(spec.domains),
                    thumbprint=target.thumbprint,
                    issuance=target.issuance,
                    previous=target.previous,
                    store=store,
                    windows_store=windows_store,
                    install=install,
                    problem=problem,
                )
            )
    return claims


def _owner(
    claims: Sequence[_Claim], site: Site, host: str, served: str | None = None
) -> tuple[_Claim | None, list[_Claim]]:
    """The claim that matches best, or None; the second value lists a tie between certificates.

    A tie is settled by what the binding serves: when exactly one of the tied certificates is (or was) the
    one it serves, that one keeps it (two certificates in ``mode: site`` for one site both match its
    blank-host bindings equally; each keeps the bindings that serve it)."""
    best: tuple[int, int] = (0, 0)
    found: list[_Claim] = []
    for claim in claims:
        p = claim.precision(site, host)
        if p[0] == 0:
            continue
        if p > best:
            best, found = p, [claim]
        elif p == best:
            found.append(claim)
    if not found:
        return None, []
    if len({c.certificate for c in found}) > 1:
        serving = {c.certificate for c in found if c.covers_thumbprint(served)}
        if len(serving) != 1:
            return None, found
        found = [c for c in found if c.certificate in serving]
    return found[0], []


# --- the plan for one host ------------------------------------------------------------------------


@dataclass
class _HostPlan:
    host: HostState
    claims: list[_Claim]
    contents: dict[str, set[str]]  # windows store name (lower) -> thumbprints, for stores certctl observes
    orphans: dict[str, str]  # thumbprint -> deleted Certificate name (from the store marker)
    prune: bool
    made: frozenset[tuple[str, str]]  # (site, bindingInformation) of the https bindings certctl added here
    actions: list[Action]
    notes: list[Note]
    removed_entries: set[tuple[str, str]]

    def note(
        self, certificate: str | None, site: str, what: str, message: str, code: str = "LeftAlone"
    ) -> None:
        self.notes.append(Note(certificate, f"iis/{self.host.name}/{site}/{what}", message, code))

    def started(self, site: str) -> bool:
        return any(s.name == site and s.state is SiteState.started for s in self.host.sites)

    def in_store(self, thumbprint: str, store: str | None) -> bool | None:
        """Is the certificate in that Windows store? None when certctl does not observe the store."""
        held = self.contents.get((store or "My").lower())
        return None if held is None else thumbprint in held

    def serves_ok(self, claim: _Claim, served: str | None, store: str | None) -> bool:
        if claim.thumbprint is None or served != claim.thumbprint:
            return False
        return self.in_store(served, store) is not False

    def act(
        self,
        kind: ActionKind,
        claim_name: str,
        site: str,
        protocol: str,
        information: str,
        reason: Reason,
        message: str,
        depends: Sequence[str],
        *,
        op: str,
        ssl_flags: int,
        thumbprint: str | None,
        store: str,
        old_thumbprint: str | None,
        keeps_settings: str | None = None,
    ) -> None:
        what = f"{protocol} {information}" if protocol != "ftp" else "ftp ssl"
        self.actions.append(
            Action(
                id=f"{kind.value}/{claim_name}/{self.host.name}/{site}/{what}",
                kind=kind,
                certificate=claim_name,
                target=f"iis/{self.host.name}/{site}/{what}",
                reason=reason,
                message=message,
                depends_on=tuple(sorted(set(depends))),
                detail=BindingDetail(
                    self.host.name,
                    site,
                    protocol,
                    information,
                    op,
                    ssl_flags,
                    store,
                    thumbprint,
                    old_thumbprint,
                    keeps_settings,
                ),
            )
        )

    def change_reason(
        self, claim: _Claim, served: str | None, store: str | None, what: str
    ) -> tuple[Reason, str]:
        new = (
            "the certificate issued in this plan"
            if claim.thumbprint is None
            else f"the current certificate {_short(claim.thumbprint)}"
        )
        if served is None:
            return Reason.BindingDrift, f"{what} has no certificate; it gets {new}"
        if served in claim.previous:
            return Reason.Renewed, f"{what} serves the previous certificate {_short(served)}; it gets {new}"
        if served == claim.thumbprint:
            return Reason.BindingDrift, (
                f"{what} points to {_short(served)} in store {store or 'My'}, which does "
                f"not hold it; it gets {new} from {claim.windows_store}"
            )
        if self.in_store(served, store) is False:
            return Reason.BindingDrift, (
                f"{what} serves {_short(served)}, a certificate in no store on "
                f"{self.host.name}; it gets {new}"
            )
        return Reason.BindingDrift, f"{what} serves {_short(served)}, not {claim.certificate}; it gets {new}"


def _plan_host(plan: _HostPlan) -> None:
    host = plan.host
    entries = _entries(host)
    https = [
        b for s in host.sites for b in s.bindings if b.protocol.lower() == "https" and b.parse_error is None
    ]
    site_of = {s.name: s for s in host.sites}
    owners: dict[int, _Claim] = {}
    for binding in https:
        entry = entries.get(entry_key(binding))
        served = entry.certhash.upper() if entry is not None and entry.certhash else None
        owner, tie = _owner(plan.claims, site_of[binding.site], binding.host, served)
        if owner is not None:
            owners[id(binding)] = owner
        elif tie:
            names = " and ".join(sorted({c.certificate for c in tie}))
            plan.note(
                None,
                binding.site,
                binding.label.split(" (")[0],
                f"certificates {names} match host {binding.host or '(blank)'} equally well; left alone",
            )
    sharing: dict[tuple[str, str], list[Binding]] = {}
    for binding in https:
        if not binding.ccs:
            sharing.setdefault(entry_key(binding), []).append(binding)

    for site in host.sites:
        for binding in site.bindings:
            _unparsable_or_foreign(plan, site, binding)
        for binding in site.bindings:
            if binding.protocol.lower() == "https" and binding.parse_error is None:
                _https(plan, site, binding, owners.get(id(binding)), entries, sharing, owners)
        _adds(plan, site, owners)
        _ftp(plan, site)


def _unparsable_or_foreign(plan: _HostPlan, site: Site, binding: Binding) -> None:
    if not plan.claims:
        return
    if binding.protocol.lower() not in ADDRESS_PROTOCOLS:
        plan.note(
            None,
            site.name,
            f"{binding.protocol} {binding.information}",
            f"{binding.protocol} binding: not an http, https or ftp binding; certctl never touches it",
        )
    elif binding.parse_error is not None:
        plan.note(
            None,
            site.name,
            f"{binding.protocol} {binding.information}",
            f"cannot be read ({binding.parse_error}); left alone",
            code="Unparsable",
        )


def _https(
    plan: _HostPlan,
    site: Site,
    binding: Binding,
    owner: _Claim | None,
    entries: Mapping[tuple[str, str], HttpSysEntry],
    sharing: Mapping[tuple[str, str], list[Binding]],
    owners: Mapping[int, _Claim],
) -> None:
    what = f"https {binding.information}"
    kind, key = entry_key(binding)
    entry = entries.get((kind, key))
    served = entry.certhash.upper() if entry is not None and entry.certhash else None
    store = entry.certstorename if entry is not None else None
    if owner is None:
        _unowned(plan, site, binding, served, entry)
        return
    name = owner.certificate
    others = [b for b in sharing.get((kind, key), []) if b is not binding]
    if site.state is SiteState.stopped:
        follows = [b for b in others if plan.started(b.site) and owners.get(id(b)) is owner]
        if not plan.serves_ok(owner, served, store) and not follows:
            plan.note(
                name,
                site.name,
                what,
                f"site {site.name} is stopped; its binding for {binding.host} is left "
                "alone (start the site to let certctl manage it)",
            )
        return
    if binding.ccs:
        file = ("_" + binding.host[1:] if binding.host.startswith("*.") else binding.host) + ".pfx"
        plan.note(
            name,
            site.name,
            what,
            f"uses the Centralized Certificate Store: its certificate is the file {file} "
            "on the CCS share, which a ccs task writes; the binding itself is left alone",
        )
        return
    if entry is not None and entry.appid.lower() != IIS_APPID.lower():
        plan.note(
            name,
            site.name,
            what,
            f"its HTTP.sys entry {kind}={entry.key} belongs to another application "
            f"(AppID {entry.appid}); certctl never changes it",
        )
        return
    strangers = [b for b in others if owners.get(id(b)) is None or owners[id(b)].certificate != name]
    if strangers:
        listed = ", ".join(f"{b.site}: {b.information or '(blank)'}" for b in strangers)
        plan.note(
            name,
            site.name,
            what,
            f"shares the HTTP.sys entry {kind}={key} with {listed}, which {name} does not cover; changing it "
            "would change their certificate too, so it is left alone (give it its own IP or SNI)",
            code="SharedEndpoint",
        )
        return
    if plan.serves_ok(owner, served, store):
        return
    if owner.problem is not None:
        plan.note(name, site.name, what, f"should serve {name}, but {owner.problem}", code="NotBound")
        return
    reason, message = plan.change_reason(owner, served, store, what)
    if others:
        message += (
            f" (the HTTP.sys entry {kind}={key} is shared with "
            f"{', '.join(f'{b.site}: {b.information}' for b in others)}, which {name} covers too)"
        )
    kept: str | None = None
    if entry is not None and entry.settings:
        kept = ", ".join(f"{label}: {value}" for label, value in entry.settings)
        message += (
            f"; its HTTP.sys entry {kind}={entry.key} has its own settings ({kept}), which IIS resets when "
            "it replaces the binding: certctl re-applies them"
        )
    plan.act(
        ActionKind.rebind,
        name,
        site.name,
        "https",
        binding.information,
        reason,
        message,
        owner.depends,
        op="update",
        ssl_flags=binding.ssl_flags,
        thumbprint=owner.thumbprint,
        store=owner.windows_store,
        old_thumbprint=served,
        keeps_settings=kept,
    )


def _unowned(
    plan: _HostPlan, site: Site, binding: Binding, served: str | None, entry: HttpSysEntry | None
) -> None:
    what = f"https {binding.information}"
    related = sorted({c.certificate for c in plan.claims if c.covers_thumbprint(served)})
    if not binding.host and plan.claims:
        names: list[str | None] = [*related] or [None]
        for name in names:
            plan.note(
                name,
                site.name,
                what,
                f"blank host name (catch-all, serves {_short(served)}): left alone in auto mode; name the "
                f"site with mode: site to let certctl manage it",
                code="BlankHost",
            )
        return
    orphan = plan.orphans.get(served or "")
    if orphan is None or binding.ccs:
        return
    made_here = (site.name, binding.information) in plan.made
    if not plan.prune:
        plan.note(
            orphan,
            site.name,
            what,
            f"serves {_short(served)} of certificate {orphan}, whose spec was "
            "deleted; kept (set prune: true in Settings to remove the bindings certctl made)",
            code="Orphaned",
        )
    elif site.state is SiteState.stopped:
        plan.note(
            orphan,
            site.name,
            what,
            f"serves {_short(served)} of certificate {orphan}, whose spec was "
            f"deleted, but site {site.name} is stopped; kept (start the site to let certctl prune it)",
            code="Orphaned",
        )
    elif plan.host.blocking:
        plan.note(
            orphan,
            site.name,
            what,
            f"serves {_short(served)} of certificate {orphan}, whose spec was "
            f"deleted; not pruned while IIS host {plan.host.name} has unreadable data "
            f"({'; '.join(plan.host.blocking)})",
            code="Blocked",
        )
    elif not made_here or entry is None or entry.appid.lower() != IIS_APPID.lower():
        plan.note(
            orphan,
            site.name,
            what,
            f"serves {_short(served)} of certificate {orphan}, whose spec was "
            "deleted, but certctl did not create this binding (it only set its certificate); kept, and so "
            "is the certificate it serves",
            code="Orphaned",
        )
    else:
        plan.act(
            ActionKind.unbind,
            orphan,
            site.name,
            "https",
            binding.information,
            Reason.Pruned,
            f"{what} serves {_short(served)} of certificate {orphan}, whose spec was deleted (prune: true)",
            (),
            op="remove",
            ssl_flags=binding.ssl_flags,
            thumbprint=None,
            store=entry.certstorename or "My",
            old_thumbprint=served,
        )
        key = entry_key(binding)
        if not any(
            b is not binding
            and b.protocol.lower() == "https"
            and b.parse_error is None
            and entry_key(b) == key
            for s in plan.host.sites
            for b in s.bindings
        ):
            plan.removed_entries.add(key)


def _adds(plan: _HostPlan, site: Site, owners: Mapping[int, _Claim]) -> None:
    done: set[str] = set()
    for http in site.bindings:
        if (
            http.protocol.lower() != "http"
            or http.parse_error is not None
            or not http.host
            or http.host in done
        ):
            continue
        host_name = http.host
        owner, _tie = _owner(plan.claims, site, host_name)
        if owner is None:
            continue
        done.add(host_name)
        if any(
            b.protocol.lower() == "https"
            and (b.host == host_name or (domains.is_wildcard(b.host) and domains.covers(b.host, host_name)))
            for b in site.bindings
        ):
            continue  # an https binding of the site answers for this host; it is decided on its own
        name = owner.certificate
        ip = http.ip if http.ip not in ("", "*") else "*"
        information = f"{ip}:{HTTPS_PORT}:{host_name}"
        what = f"https {information}"
        elsewhere = next(
            (
                b
                for s in plan.host.sites
                for b in s.bindings
                if s.name != site.name
                and b.protocol.lower() == "https"
                and b.host == host_name
                and b.port == HTTPS_PORT
            ),
            None,
        )
        added = next(
            (
                a.detail
                for a in plan.actions
                if a.kind is ActionKind.bind
                and isinstance(a.detail, BindingDetail)
                and a.detail.protocol == "https"
                and a.detail.binding.endswith(f":{HTTPS_PORT}:{host_name}")
            ),
            None,
        )
        if elsewhere is not None or added is not None:
            other = elsewhere.site if elsewhere is not None else added.site if added else ""
            plan.note(
                name,
                site.name,
                what,
                f"site {site.name} has http {http.information} but {host_name}:443 is "
                f"already bound on site {other}; certctl never creates a duplicate binding",
                code="Duplicate",
            )
            continue
        if site.state is SiteState.stopped:
            plan.note(
                name,
                site.name,
                what,
                f"site {site.name} is stopped; no https binding is added for "
                f"{host_name} (start the site to let certctl manage it)",
            )
            continue
        if _major(plan.host.iis_version) < 8:
            plan.note(
                name,
                site.name,
                what,
                f"IIS {plan.host.iis_version} has no SNI; certctl adds https bindings "
                "only with SNI, so none is added",
            )
            continue
        if owner.problem is not None:
            plan.note(
                name,
                site.name,
                what,
                f"should get an https binding for {host_name}, but {owner.problem}",
                code="NotBound",
            )
            continue
        plan.act(
            ActionKind.bind,
            name,
            site.name,
            "https",
            information,
            Reason.BindingMissing,
            f"site {site.name} answers http {http.information} but has no https binding for {host_name}: "
            f"add {information} with SNI",
            owner.depends,
            op="add",
            ssl_flags=SNI,
            thumbprint=owner.thumbprint,
            store=owner.windows_store,
            old_thumbprint=None,
        )


def _major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 10


def _ftp(plan: _HostPlan, site: Site) -> None:
    ftp = [b for b in site.bindings if b.protocol.lower() == "ftp" and b.parse_error is None]
    if not ftp:
        return
    claims = plan.claims
    owners = {b.information: _owner(claims, site, b.host)[0] for b in ftp}
    if any(o is not None and not o.ftp for o in owners.values()):
        return  # its certificate opted out of FTP (ftp: false)
    named = [b for b in ftp if b.host]
    relevant = [o for o in owners.values() if o is not None]
    if not relevant:
        if any(not b.host for b in ftp) and any(c.in_scope(site) for c in claims) and not named:
            served = site.ftp_cert_hash
            names: list[str | None] = [
                *sorted({c.certificate for c in claims if c.covers_thumbprint(served)})
            ] or [None]
            for name in names:
                plan.note(
                    name,
                    site.name,
                    "ftp ssl",
                    f"FTP site {site.name} has only blank-host bindings: left alone "
                    "in auto mode; name the site with mode: site to let certctl manage it",
                    code="BlankHost",
                )
        return
    candidates = {o.certificate for o in relevant}
    uncovered = [b.host for b in named if owners[b.information] is None]
    owner = relevant[0]
    if len(candidates) > 1 or uncovered:
        who = ", ".join(sorted(candidates))
        plan.note(
            owner.certificate,
            site.name,
            "ftp ssl",
            f"FTP site {site.name} has one certificate for all its bindings, but its hosts belong to "
            f"{who}{' and to no certificate (' + ', '.join(uncovered) + ')' if uncovered else ''}; left alone",
            code="SharedEndpoint",
        )
        return
    name = owner.certificate
    served, store = site.ftp_cert_hash, site.ftp_cert_store
    if plan.serves_ok(owner, served, store):
        return
    if site.state is SiteState.stopped:
        plan.note(
            name, site.name, "ftp ssl", f"FTP site {site.name} is stopped; its certificate is left alone"
        )
        return
    if owner.problem is not None:
        plan.note(
            name,
            site.name,
            "ftp ssl",
            f"FTP site {site.name} should use {name}, but {owner.problem}",
            code="NotBound",
        )
        return
    reason, message = plan.change_reason(owner, served, store, f"FTP site {site.name}")
    if served is not None and reason is Reason.BindingDrift:
        reason = Reason.FtpDrift
    kind = ActionKind.bind if served is None else ActionKind.rebind
    if served is None:
        reason = Reason.BindingMissing
    plan.act(
        kind,
        name,
        site.name,
        "ftp",
        ftp[0].information,
        reason,
        message,
        owner.depends,
        op="ftp",
        ssl_flags=0,
        thumbprint=owner.thumbprint,
        store=owner.windows_store,
        old_thumbprint=served,
    )


# --- entry point --------------------------------------------------------------------------------------


def plan_hosts(
    desired: DesiredState,
    observed: ObservedState,
    targets: Mapping[str, Target],
    at: datetime,
    planned: Sequence[Action] = (),
) -> tuple[list[Action], list[Note], set[str]]:
    """Binding actions and notes for every IIS host, and the thumbprints still referenced after them."""
    del at  # the rules do not depend on the time; the clock is in the targets already
    planned_ids = frozenset(a.id for a in planned)
    actions: list[Action] = []
    notes: list[Note] = []
    removed: dict[str, set[tuple[str, str]]] = {}
    orphans: dict[str, str] = {}
    for state in observed.stores.values():
        for cert in state.certs:
            if cert.managed_by and cert.managed_by not in desired.certificates:
                orphans[cert.info.thumbprint] = cert.managed_by
    for host_name in sorted(set(desired.iis_hosts) | set(observed.hosts)):
        claims = _claims(desired, observed, host_name, targets, planned_ids)
        host = observed.hosts.get(host_name)
        if host is None or not host.reachable:
            why = "; ".join(host.problems) if host is not None and host.problems else "it was not observed"
            for claim in claims:
                notes.append(
                    Note(
                        claim.certificate,
                        f"iis/{host_name}",
                        f"IIS host {host_name} cannot be read ({why}); no binding is planned",
                        code="HostProblem",
                    )
                )
            continue
        for problem in host.problems:
            notes.append(Note(None, f"iis/{host_name}", problem, code="HostProblem"))
        sites = {s.name.lower() for s in host.sites}
        usable: list[_Claim] = []
        for claim in claims:
            if claim.mode is IisMode.site and (claim.site or "").lower() not in sites:
                notes.append(
                    Note(
                        claim.certificate,
                        f"iis/{host_name}/{claim.site}",
                        f"mode: site names site {claim.site!r}, which IIS host {host_name} does not have "
                        f"(sites: {', '.join(s.name for s in host.sites) or 'none'}); nothing is planned",
                        code="NoSuchSite",
                    )
                )
                continue
            usable.append(claim)
        host_plan = _HostPlan(
            host=host,
            claims=usable,
            contents=_store_contents(desired, observed, host_name),
            orphans=orphans,
            prune=desired.settings.prune,
            made=frozenset((s, i) for h, s, i in observed.made_bindings if h == host_name),
            actions=[],
            notes=[],
            removed_entries=set(),
        )
        _plan_host(host_plan)
        actions.extend(host_plan.actions)
        notes.extend(host_plan.notes)
        removed[host_name] = host_plan.removed_entries
    referenced: set[str] = set()
    for host_name, host in observed.hosts.items():
        gone = removed.get(host_name, set())
        referenced.update(
            e.certhash.upper()
            for e in host.httpsys
            if e.certhash and (e.kind, normalize_key(e.kind, e.key)) not in gone
        )
        referenced.update(s.ftp_cert_hash.upper() for s in host.sites if s.ftp_cert_hash)
        referenced.update(tp.upper() for _name, tp in host.ccs_files if tp)
    return actions, _dedupe(notes), referenced


def _store_contents(desired: DesiredState, observed: ObservedState, host: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for name, store in desired.stores.items():
        windows = store.spec.windows
        state = observed.stores.get(name)
        if windows is None or windows.host != host or state is None or not state.reachable:
            continue
        out.setdefault(windows.name.value.lower(), set()).update(
            c.info.thumbprint for c in state.certs if c.current
        )
    return out


def _dedupe(notes: list[Note]) -> list[Note]:
    seen: set[tuple[str | None, str, str, str]] = set()
    out: list[Note] = []
    for n in notes:
        key = (n.certificate, n.target, n.message, n.code)
        if key not in seen:
            seen.add(key)
            out.append(n)
    return out
