"""Rules about ACME challenge solvers that need more than one document or the observed world (pure).

- ``provider_problems``: a ``dns01.provider`` names a dns-lexicon provider that exists, with options it
  accepts, credentials only under ``secrets``, and the credentials it needs. The catalog of providers
  is data the shell reads from lexicon's own provider metadata (``ProviderInfo``).
- ``iis_site_for``: the started IIS site that serves a name over http on port 80 (http01.iis).
- ``solver_notes``: what the plan says about the challenges of each issuance (an IIS site that will
  serve the token, a challenge delegated by CNAME, or why a challenge cannot be answered).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from reconciler.core import domains
from reconciler.core.diagnostics import Problem
from reconciler.core.model import DesiredState, HostState, ObservedState, Site, SiteState
from reconciler.core.plan import ISSUANCE, Note, Plan
from reconciler.core.spec import Acme

HTTP_PORT = 80
CREDENTIAL_PREFIX = (
    "auth_"  # lexicon's credential options: auth_token, auth_username, auth_client_secret, ...
)
NOT_PROVIDERS = {"auto": "it guesses the provider by asking public DNS servers; name the provider instead"}


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """What a dns-lexicon provider accepts, read from its own metadata (its CLI parser)."""

    name: str
    options: tuple[tuple[str, str], ...]  # (option, help text)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o for o, _ in self.options)

    @property
    def credentials(self) -> tuple[str, ...]:
        return tuple(o for o in self.names if o.startswith(CREDENTIAL_PREFIX))


@dataclass(frozen=True, slots=True)
class Delegation:
    """Where the ``_acme-challenge`` record of a dns-01 name really goes (looked up by the shell)."""

    domain: str
    chain: tuple[str, ...]  # _acme-challenge.<domain>, …, the end of the CNAME chain
    solver: int | None  # index of the solver whose selector matches the end of the chain
    error: str | None = None

    @property
    def delegated(self) -> bool:
        return len(self.chain) > 1


def provider_problems(
    desired: DesiredState, catalog: Mapping[str, ProviderInfo], known: Sequence[str]
) -> list[Problem]:
    """Every unknown provider, unknown option, credential outside ``secrets`` and missing credential."""
    problems: list[Problem] = []
    for _, issuer in sorted(desired.issuers.items()):
        acme = issuer.spec.acme
        if acme is None:
            continue
        for i, solver in enumerate(acme.solvers):
            provider = solver.dns01.provider if solver.dns01 is not None else None
            if provider is None:
                continue
            at = ("spec", "acme", "solvers", i, "dns01", "provider")
            info = catalog.get(provider.name)
            if provider.name in NOT_PROVIDERS:
                problems.append(
                    Problem(
                        issuer.source,
                        (*at, "name"),
                        f"provider {provider.name} is not supported: {NOT_PROVIDERS[provider.name]}",
                    )
                )
                continue
            if info is None:
                near = _nearest(provider.name, known)
                hint = f" (did you mean {near}?)" if near else ""
                problems.append(
                    Problem(
                        issuer.source,
                        (*at, "name"),
                        f"unknown DNS provider {provider.name!r}{hint}; dns-lexicon providers: "
                        + ", ".join(p for p in known if p not in NOT_PROVIDERS),
                    )
                )
                continue
            accepted = _accepted(info)
            for section in ("options", "secrets"):
                for key in getattr(provider, section):
                    if key not in info.names:
                        near = _nearest(key, info.names)
                        hint = f" (did you mean {near}?)" if near else ""
                        problems.append(
                            Problem(
                                issuer.source,
                                (*at, section, key),
                                f"provider {info.name} has no option {key!r}{hint}; it accepts: {accepted}",
                            )
                        )
                    elif section == "options" and key.startswith(CREDENTIAL_PREFIX):
                        problems.append(
                            Problem(
                                issuer.source,
                                (*at, section, key),
                                f"{key} is a credential of provider {info.name}: move it to secrets, as "
                                f"{key}: {{fromEnv: NAME}} or {{fromFile: PATH}}",
                            )
                        )
            given = set(provider.options) | set(provider.secrets)
            if info.credentials and not given & set(info.credentials):
                problems.append(
                    Problem(
                        issuer.source,
                        (*at, "secrets"),
                        f"provider {info.name} needs credentials: give "
                        f"{' or '.join(info.credentials)} under secrets; it accepts: {accepted}",
                    )
                )
    return problems


def reference_problems(desired: DesiredState) -> list[Problem]:
    """An ``http01.iis`` solver names an IisHost that exists."""
    problems: list[Problem] = []
    for _, issuer in sorted(desired.issuers.items()):
        for i, solver in enumerate(issuer.spec.acme.solvers if issuer.spec.acme is not None else ()):
            iis = solver.http01.iis if solver.http01 is not None else None
            if iis is not None and iis.host not in desired.iis_hosts:
                known = ", ".join(sorted(desired.iis_hosts)) or "none is defined"
                problems.append(
                    Problem(
                        issuer.source,
                        ("spec", "acme", "solvers", i, "http01", "iis", "host"),
                        f"IisHost {iis.host!r} does not exist (known: {known})",
                    )
                )
    return problems


def _accepted(info: ProviderInfo) -> str:
    if not info.options:
        return "no options"
    return "; ".join(f"{name} ({help})" if help else name for name, help in info.options)


def _nearest(word: str, choices: Sequence[str]) -> str | None:
    close = difflib.get_close_matches(word.lower().replace("-", "_"), list(choices), n=1, cutoff=0.75)
    return close[0] if close else None


def iis_site_for(host: HostState, name: str) -> Site | None:
    """The started site that serves ``name`` over http on port 80: an exact host binding first, then a
    one-label wildcard host binding, then a blank-host binding on all addresses, then on one address."""
    best: tuple[int, str, Site] | None = None
    for site in host.sites:
        if site.state is not SiteState.started:
            continue
        for binding in site.bindings:
            if binding.protocol != "http" or binding.port != HTTP_PORT or binding.parse_error:
                continue
            bound = binding.host.lower()
            if bound == name:
                rank = 0
            elif (
                bound.startswith("*.")
                and domains.is_wildcard(bound)
                and name.count(".") == bound.count(".")
                and name.endswith(bound[1:])
            ):
                rank = 1
            elif not bound:
                rank = 2 if binding.ip == "*" else 3
            else:
                continue
            if best is None or (rank, site.name) < (best[0], best[1]):
                best = (rank, site.name, site)
    return best[2] if best else None


def iis_problem(host_name: str, host: HostState | None, name: str) -> str | None:
    """Why http01.iis cannot answer for ``name`` on ``host_name`` (None when a site serves it)."""
    if host is None:
        return f"http01.iis: IisHost {host_name} does not exist"
    if not host.reachable:
        return f"http01.iis: IIS host {host_name} cannot be read: " + "; ".join(host.problems)
    if name.startswith("*."):
        return f"http01.iis cannot answer for the wildcard {name}: wildcards need a dns01 solver"
    if iis_site_for(host, name) is None:
        return f"no started site on IIS host {host_name} serves {name} over http on port 80 (http01.iis needs one)"
    return None


def issued_challenges(desired: DesiredState, plan: Plan) -> Iterator[tuple[str, str, Acme, str, int]]:
    """(certificate, issuer, its acme spec, domain, index of the domain's solver) for every domain of
    every certificate the plan issues from an ACME issuer."""
    for name in sorted({a.certificate for a in plan.actions if a.kind in ISSUANCE}):
        cert = desired.certificates.get(name)
        issuer = (
            desired.issuers.get(cert.spec.issuers[0]) if cert else None
        )  # the first: fallbacks only on an outage
        if cert is None or issuer is None or issuer.spec.acme is None:
            continue
        acme = issuer.spec.acme
        for domain in cert.spec.domains:
            solver = acme.solver_for(domain)
            if solver is not None:
                yield name, issuer.name, acme, domain, acme.solvers.index(solver)


def solver_notes(
    desired: DesiredState, observed: ObservedState, plan: Plan, delegations: Mapping[str, Delegation]
) -> list[Note]:
    """Notes on the challenges of every certificate the plan issues: ``ChallengeSite`` (the IIS site
    that serves an http-01 token), ``ChallengeDelegated`` (a CNAME moves a dns-01 record elsewhere) and
    ``ChallengeUnsolvable`` (the issuance would fail: no site serves the name, a CNAME loop, ...)."""
    notes: list[Note] = []
    for name, issuer_name, acme, domain, index in issued_challenges(desired, plan):
        solver = acme.solvers[index]
        target = f"solver/{issuer_name}/{index}/{domain}"
        if solver.http01 is not None and solver.http01.iis is not None:
            host_name = solver.http01.iis.host
            problem = iis_problem(host_name, observed.hosts.get(host_name), domain)
            if problem:
                notes.append(Note(name, target, problem, code="ChallengeUnsolvable"))
            else:
                site = iis_site_for(observed.hosts[host_name], domain)
                assert site is not None
                notes.append(
                    Note(
                        name,
                        target,
                        f"http-01 for {domain}: the token goes under the physical path "
                        f"of site {site.name} on IIS host {host_name} ({site.physical_path})",
                        code="ChallengeSite",
                    )
                )
            continue
        found = delegations.get(domain)
        if found is None:
            continue
        if found.error:
            notes.append(
                Note(name, target, f"dns-01 for {domain}: {found.error}", code="ChallengeUnsolvable")
            )
        elif found.delegated:
            by = f"solver {found.solver}" if found.solver is not None else "no solver"
            what = _describe(acme.solvers[found.solver]) if found.solver is not None else ""
            notes.append(
                Note(
                    name,
                    target,
                    f"dns-01 for {domain} is delegated: {' -> '.join(found.chain)} (CNAME); the TXT "
                    f"record is written at {found.chain[-1]} by {by}{what}",
                    code="ChallengeDelegated",
                )
            )
    return notes


def _describe(solver: object) -> str:
    dns01 = getattr(solver, "dns01", None)
    if dns01 is None:
        return ""
    if dns01.provider is not None:
        return f" (provider {dns01.provider.name})"
    if dns01.script is not None:
        return " (script)"
    return f" (rfc2136, zone {dns01.rfc2136.zone})" if dns01.rfc2136 is not None else ""


def delegation_solver(spec: Acme, record: str) -> int | str:
    """The index of the dns01 solver that writes a delegated ``record``, or why there is none."""
    chosen = spec.solver_for(record)
    if chosen is None:
        return "no solver matches that name: add a dns01 solver whose domains cover it"
    index = next(i for i, s in enumerate(spec.solvers) if s is chosen)
    if chosen.dns01 is None:
        return f"the solver that matches that name (solver {index}) is not a dns01 solver"
    return index
