"""`certctl import --iis-host NAME`: write Certificate specs for what an IIS host serves today.

For every distinct certificate the host's https bindings (and FTP sites) use, one Certificate:
domains from the certificate (the subject CN first, then the other DNS names), its key algorithm,
``iis`` entries that make every binding found follow the certificate on renewal, the windows Store on
that host that holds it (a Store document is written too when none exists), and
the chosen issuer. Certificates an existing spec already covers are skipped.

The certificate itself is adopted: its key is read back from the store and kept in the state dir as
the spec's current certificate, so the next plan renews it at its renewal point instead of issuing a
new one now, and shows only what really differs (an http-only site to bind, a certificate that is
expired or whose key algorithm certctl cannot issue).

``iis`` is ``[{host: NAME, mode: auto}]`` when every binding that uses the certificate has a host name the
certificate covers (auto mode finds those, and adds https for http-only hosts later). Otherwise (a
blank or ``*`` host, as on IP-specific https bindings shared by several sites, or a host the certificate
does not cover) auto mode would leave some of them alone, so it is one ``mode: site`` entry per site that
uses it: site mode manages every binding of its site, blank hosts included.

Sites that have only http bindings (Certify's quick start: "pick a site, get a certificate") get a new
Certificate each, for the host names of their http bindings, in ``mode: auto``, so the plan adds
``*:443:<host>`` with SNI once it is issued. Wildcard hosts are left out (they need a dns01 solver: add them
by hand), and blank-host (catch-all) bindings are reported, since they name no host. ``--site`` limits
the import to one site. With more than one Issuer, ``--issuer`` must say which one the specs use.

The file is written atomically and never replaces a file with other content.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from reconciler.app.errors import UsageError
from reconciler.app.world import World
from reconciler.core import domains as domain_rules
from reconciler.core import validate
from reconciler.core.iis_rules import entry_key, normalize_key
from reconciler.core.model import DesiredState, HostState, IssuedVersion, Named, Source, StoredCert
from reconciler.core.planner import current_version
from reconciler.core.policies import issuer_id
from reconciler.core.spec import NAME_PATTERN, CertificateSpec, KeyAlgorithm, StoreSpec
from reconciler.ports import BindingHost, StateBackend
from reconciler.support.clock import SYSTEM
from reconciler.support.fs import atomic_write

_NAME = re.compile(NAME_PATTERN)
_SEARCH_STORES = ("WebHosting", "My")


@dataclass
class Found:
    """One certificate the host uses, and where."""

    thumbprint: str
    store_hint: str | None
    uses: list[tuple[str, str]] = field(default_factory=list)  # (site, binding label)
    hosts: list[tuple[str, str]] = field(default_factory=list)  # (site, host name; '' = blank)


@dataclass
class Planned:
    name: str
    domains: list[str]
    algorithm: str | None
    store: str
    iis: list[dict[str, str]]
    stored: StoredCert | None  # None: a new certificate for a site that has only http bindings
    windows_store: str
    found: Found | None
    remarks: list[str] = field(default_factory=list)
    comment: str = ""


def _used(host: HostState, site_name: str | None = None) -> list[Found]:
    entries = {(e.kind, normalize_key(e.kind, e.key)): e for e in host.httpsys}
    out: dict[str, Found] = {}
    for site in host.sites:
        if site_name is not None and site.name != site_name:
            continue
        for b in site.bindings:
            if b.protocol.lower() != "https" or b.parse_error or b.ccs:
                continue
            entry = entries.get(entry_key(b))
            if entry is None or not entry.certhash:
                continue
            found = out.setdefault(entry.certhash.upper(), Found(entry.certhash.upper(), entry.certstorename))
            found.uses.append((site.name, b.label))
            found.hosts.append((site.name, b.host))
        if site.ftp_cert_hash and any(b.protocol.lower() == "ftp" for b in site.bindings):
            found = out.setdefault(
                site.ftp_cert_hash.upper(), Found(site.ftp_cert_hash.upper(), site.ftp_cert_store)
            )
            found.uses.append((site.name, "ftp ssl"))
            found.hosts.extend((site.name, b.host) for b in site.bindings if b.protocol.lower() == "ftp")
    return list(out.values())


def _locate(world_host: BindingHost, host: HostState, found: Found) -> tuple[str, StoredCert] | None:
    names = [n for n in (found.store_hint, *_SEARCH_STORES, *host.stores) if n and n.upper() != "CA"]
    seen: set[str] = set()
    for name in names:
        if name.lower() in seen:
            continue
        seen.add(name.lower())
        state = world_host.store(name).observe()
        for cert in state.certs:
            if cert.info.thumbprint == found.thumbprint:
                canonical = next((s for s in _SEARCH_STORES if s.lower() == name.lower()), name)
                return canonical, cert
    return None


def _spec_name(first: str, taken: set[str], host: str) -> str:
    base = ("wildcard-" + first[2:] if first.startswith("*.") else first).replace(".", "-")
    base = re.sub(r"[^a-z0-9-]", "-", base.lower()).strip("-")[:63].rstrip("-") or "imported"
    for candidate in (base, f"{base}-{host}"[:63], *(f"{base}-{i}"[:63] for i in range(2, 100))):
        if candidate not in taken and _NAME.match(candidate):
            return candidate
    raise UsageError(f"no free Certificate name for {first}")


def _iis_entries(host: str, names: list[str], found: Found) -> list[dict[str, str]]:
    """Auto mode when it manages every use (each has a host name the certificate covers), else one site-mode
    entry per site that uses the certificate (site mode also manages blank-host and IP-specific bindings)."""
    if all(h and domain_rules.match_precision(tuple(names), h) for _s, h in found.hosts):
        return [{"host": host, "mode": "auto"}]
    sites = sorted({s for s, _h in found.hosts}, key=str.lower)
    return [{"host": host, "mode": "site", "site": site} for site in sites]


def _flow(items: list[str]) -> CommentedSeq:
    seq = CommentedSeq(items)
    seq.fa.set_flow_style()
    return seq


def _render(host: str, issuer: str, certs: list[Planned], stores: dict[str, str], schema: str) -> str:
    """The imported documents as YAML (dumped by ruamel, so every value is quoted as YAML needs)."""
    docs: list[CommentedMap] = []
    for name, windows in sorted(stores.items()):
        docs.append(
            CommentedMap(
                [
                    ("apiVersion", "certctl/v1"),
                    ("kind", "Store"),
                    ("metadata", CommentedMap([("name", name)])),
                    (
                        "spec",
                        CommentedMap(
                            [
                                (
                                    "windows",
                                    CommentedMap(
                                        [("host", host), ("location", "LocalMachine"), ("name", windows)]
                                    ),
                                )
                            ]
                        ),
                    ),
                ]
            )
        )
    for p in certs:
        spec = CommentedMap([("issuer", issuer), ("domains", _flow(list(p.domains)))])
        if p.algorithm:
            spec["key"] = CommentedMap([("algorithm", p.algorithm)])
        spec["stores"] = _flow([p.store])
        spec["iis"] = CommentedSeq([CommentedMap(entry.items()) for entry in p.iis])
        doc = CommentedMap(
            [
                ("apiVersion", "certctl/v1"),
                ("kind", "Certificate"),
                ("metadata", CommentedMap([("name", p.name)])),
                ("spec", spec),
            ]
        )
        doc.yaml_set_start_comment("\n".join([p.comment] + [f"note: {r}" for r in p.remarks]))
        docs.append(doc)
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096
    yaml.explicit_start = False
    stream = io.StringIO()
    yaml.dump_all(docs, stream)
    header = (
        f"# yaml-language-server: $schema={schema}\n"
        f"# Written by `certctl import --iis-host {host}`: the certificates IIS host {host} serves today.\n"
    )
    return header + stream.getvalue()


def _schema_ref(directory: Path, out: Path) -> str:
    schema = directory.resolve().parent / "schemas" / "certctl.json"
    try:
        return os.path.relpath(schema, out.resolve().parent).replace("\\", "/")
    except ValueError:
        return "../schemas/certctl.json"


def _iis_major(version: str) -> int:
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 10


def _covered_by(
    desired: DesiredState,
    host: str,
    domains: list[str],
    thumbprint: str,
    issued: dict[str, tuple[IssuedVersion, ...]],
) -> str | None:
    for name, cert in sorted(desired.certificates.items()):
        if any(v.info.thumbprint == thumbprint for v in issued.get(name, ())):
            return name
        on_host = any(t.host == host and t.mode.value != "none" for t in cert.spec.iis)
        if on_host and all(
            any(domain_rules.covers(d, want) or d == want for d in cert.spec.domains) for want in domains
        ):
            return name
    return None


@dataclass(frozen=True)
class ImportOptions:
    """What `certctl import` was asked for."""

    directory: Path
    iis_host: str
    issuer: str | None = None
    out: Path | None = None
    site: str | None = None


def _issuer(desired: DesiredState, wanted: str | None) -> str:
    known = ", ".join(sorted(desired.issuers)) or "none"
    if wanted:
        if wanted not in desired.issuers:
            raise UsageError(f"Issuer {wanted!r} does not exist (known: {known})")
        return wanted
    if len(desired.issuers) == 1:
        return next(iter(desired.issuers))
    if not desired.issuers:
        raise UsageError("there is no Issuer in the desired state; add one (or give --issuer)")
    raise UsageError(
        f"there are {len(desired.issuers)} Issuers ({known}); say which one the imported "
        "certificates use with --issuer NAME"
    )


def _http_only(
    observed: HostState, site_name: str | None, acme: bool
) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Sites with http bindings and no https one: (site, its host names) and what was left out, and why."""
    proposals: list[tuple[str, list[str]]] = []
    skipped: list[str] = []
    for site in observed.sites:
        if site_name is not None and site.name != site_name:
            continue
        protocols = {b.protocol.lower() for b in site.bindings}
        if "http" not in protocols or "https" in protocols:
            continue
        names: list[str] = []
        for b in site.bindings:
            if b.protocol.lower() != "http" or b.parse_error:
                continue
            if not b.host or b.host == "*":
                skipped.append(
                    f"site {site.name}: http binding {b.information} has no host name (a catch-all); "
                    "add the names it answers to to a Certificate by hand"
                )
                continue
            if b.host.startswith("*."):
                skipped.append(
                    f"site {site.name}: wildcard host {b.host} left out (a wildcard needs a dns01 solver; "
                    "add it to a Certificate by hand)"
                )
                continue
            try:
                name = domain_rules.normalize(b.host)
            except ValueError as exc:
                skipped.append(f"site {site.name}: host {b.host!r} left out ({exc})")
                continue
            why = domain_rules.public_name_problem(name) if acme else None
            if why:
                skipped.append(f"site {site.name}: host {name} left out ({why})")
            elif name not in names:
                names.append(name)
        if names:
            proposals.append((site.name, names))
        else:
            skipped.append(
                f"site {site.name} has only http bindings, but none with a host name certctl can use; "
                "not imported"
            )
    return proposals, skipped


def run_import(opts: ImportOptions, world: World) -> int:
    directory = opts.directory
    desired = world.desired
    host_name = opts.iis_host
    if host_name not in desired.iis_hosts:
        known = ", ".join(sorted(desired.iis_hosts)) or "none is defined"
        raise UsageError(f"IisHost {host_name!r} does not exist in {directory} (known: {known})")
    issuer = _issuer(desired, opts.issuer)
    out = opts.out or directory / f"imported-{host_name}.yaml"

    state = world.state
    world_host = world.hosts[host_name]
    observed = world_host.observe()
    if not observed.reachable:
        raise UsageError(
            f"IIS host {host_name} cannot be read: {'; '.join(observed.problems) or 'unknown error'}"
        )
    if opts.site is not None and opts.site not in {s.name for s in observed.sites}:
        raise UsageError(
            f"IIS host {host_name} has no site {opts.site!r} (sites: "
            f"{', '.join(sorted(s.name for s in observed.sites)) or 'none'})"
        )

    issued = state.issued()
    taken = set(desired.certificates)
    windows_stores = {
        s.spec.windows.name.value.lower(): n
        for n, s in sorted(desired.stores.items())
        if s.spec.windows is not None and s.spec.windows.host == host_name
    }
    new_stores: dict[str, str] = {}
    planned: list[Planned] = []
    skipped: list[str] = []
    for found in _used(observed, opts.site):
        located = _locate(world_host, observed, found)
        where = "; ".join(f"{s}: {label}" for s, label in found.uses)
        if located is None:
            skipped.append(
                f"{found.thumbprint[:8]} ({where}): in no certificate store on {host_name}; not imported"
            )
            continue
        windows_store, stored = located
        info = stored.info
        names: list[str] = []
        for raw in ([info.subject] if info.subject else []) + list(info.sans):
            try:
                name = domain_rules.normalize(raw)
            except ValueError:
                continue
            if name not in names:
                names.append(name)
        if not names:
            skipped.append(f"{found.thumbprint[:8]} ({where}): has no DNS name; not imported")
            continue
        owner = _covered_by(desired, host_name, names, info.thumbprint, issued)
        if owner is not None:
            skipped.append(
                f"{found.thumbprint[:8]} ({', '.join(names)}): already covered by Certificate {owner}"
            )
            continue
        store = windows_stores.get(windows_store.lower())
        if store is None:
            store = _spec_name(
                f"{host_name}-{windows_store.lower()}", set(desired.stores) | set(new_stores), host_name
            )
            new_stores[store] = windows_store
            windows_stores[windows_store.lower()] = store
        remarks: list[str] = []
        algorithm = info.key_algorithm if info.key_algorithm in {k.value for k in KeyAlgorithm} else None
        if algorithm is None:
            remarks.append(
                f"its key is {info.key_algorithm}, which certctl does not issue; the next plan reissues "
                f"it as {KeyAlgorithm.ecdsa_p256.value}"
            )
        iis = _iis_entries(host_name, names, found)
        if iis[0]["mode"] == "site":
            remarks.append(
                "some bindings that use it have a blank host or one it does not cover, which auto mode "
                "leaves alone: mode: site for each site that uses it, so they all follow a renewal"
            )
        preferred = stored.managed_by if stored.managed_by and stored.managed_by not in taken else None
        spec_name = preferred or _spec_name(names[0], taken, host_name)
        taken.add(spec_name)
        comment = f"{found.thumbprint} in {windows_store}, used by " + "; ".join(
            f"{s}: {label}" for s, label in found.uses
        )
        planned.append(
            Planned(spec_name, names, algorithm, store, iis, stored, windows_store, found, remarks, comment)
        )

    acme = desired.issuers[issuer].spec.acme is not None
    proposals, left_out = _http_only(observed, opts.site, acme)
    skipped.extend(left_out)
    for site, names in proposals:
        claimed = {d for p in planned for d in p.domains}
        owner = _covered_by(desired, host_name, names, "", issued)
        fresh = [n for n in names if n not in claimed]
        if owner is not None or not fresh:
            skipped.append(
                f"site {site} ({', '.join(names)}): already covered by "
                + (f"Certificate {owner}" if owner else "another imported certificate")
            )
            continue
        windows = "WebHosting" if _iis_major(observed.iis_version) >= 8 else "My"
        store = windows_stores.get(windows.lower()) or next(iter(windows_stores.values()), None)
        if store is None:
            store = _spec_name(
                f"{host_name}-{windows.lower()}", set(desired.stores) | set(new_stores), host_name
            )
            new_stores[store] = windows
            windows_stores[windows.lower()] = store
        spec_name = _spec_name(fresh[0], taken, host_name)
        taken.add(spec_name)
        comment = (
            f"site {site} has only http bindings: a new certificate for its host names; once issued, "
            f"auto mode adds https *:443:<host> with SNI beside each http binding"
        )
        planned.append(
            Planned(
                spec_name,
                fresh,
                None,
                store,
                [{"host": host_name, "mode": "auto"}],
                None,
                new_stores.get(store, windows),
                None,
                [],
                comment,
            )
        )

    for line in skipped:
        print(f"skipped {line}")
    if not planned:
        print(
            f"Nothing to import from IIS host {host_name}: every certificate it uses is covered or unusable, "
            "and no site with only http bindings is left."
        )
        return 0

    _check(desired, planned, new_stores, host_name, issuer, out)
    text = _render(host_name, issuer, planned, new_stores, _schema_ref(directory, out))
    if out.exists():
        if out.read_text() != text:
            raise UsageError(
                f"{out} exists with other content; it is never overwritten (choose another --out)"
            )
        print(f"{out} already holds these specs; unchanged.")
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, text.encode(), 0o644)

    adopted = _adopt(desired, state, world_host, issuer, planned)
    print(
        f"Wrote {len(planned)} Certificate spec(s)"
        + (f" and {len(new_stores)} Store(s)" if new_stores else "")
        + f" for IIS host {host_name} to {out}:"
    )
    for p in planned:
        if p.found is None:
            print(
                f"  {p.name}: {', '.join(p.domains)} (new, for an http-only site; the next plan issues it and binds https)"
            )
            continue
        how = (
            "adopted as its current certificate"
            if p.name in adopted
            else "its key cannot be read back, so the next plan issues a new one"
        )
        print(f"  {p.name}: {', '.join(p.domains)} ({p.found.thumbprint[:8]} in {p.store}; {how})")
        for r in p.remarks:
            print(f"    note: {r}")
    print(f"Run `certctl plan -d {directory}` to see what differs.")
    return 0


def _check(
    desired: DesiredState,
    planned: list[Planned],
    new_stores: dict[str, str],
    host: str,
    issuer: str,
    out: Path,
) -> None:
    """The specs must validate together with the existing ones before anything is written."""
    src = Source(str(out))
    stores = dict(desired.stores)
    for name, windows in new_stores.items():
        stores[name] = Named(
            name, StoreSpec.model_validate({"windows": {"host": host, "name": windows}}), src
        )
    certificates = dict(desired.certificates)
    for p in planned:
        body: dict[str, object] = {"issuer": issuer, "domains": p.domains, "stores": [p.store], "iis": p.iis}
        if p.algorithm:
            body["key"] = {"algorithm": p.algorithm}
        try:
            certificates[p.name] = Named(p.name, CertificateSpec.model_validate(body), src)
        except ValueError as err:
            raise UsageError(f"the spec for {', '.join(p.domains)} would be invalid: {err}") from None
    problems = validate.check(replace(desired, stores=stores, certificates=certificates))
    if problems:
        text = "; ".join(p.message for p in problems)
        raise UsageError(
            f"the imported specs would not validate with the existing ones ({text}); nothing was written"
        )


def _adopt(
    desired: DesiredState, state: StateBackend, world_host: BindingHost, issuer: str, planned: list[Planned]
) -> set[str]:
    """Keep each imported certificate (with its key, read back from the store) as the spec's current one."""
    adopted: set[str] = set()
    ident = issuer_id(issuer, desired.issuers[issuer].spec)
    now = SYSTEM.now().replace(microsecond=0)
    with state.lock(purpose="import"):
        for p in planned:
            if p.stored is None:
                continue
            current = current_version(state.issued().get(p.name, ()))
            if current is not None and current.info.thumbprint == p.stored.info.thumbprint:
                adopted.add(p.name)
                continue
            material = world_host.store(p.windows_store).read(p.stored.ref)
            if material is None:
                continue
            state.store_issued(p.name, material, ident, tuple(p.domains), now, None)
            adopted.add(p.name)
    return adopted
