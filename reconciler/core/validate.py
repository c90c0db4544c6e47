"""Checks across documents that no single model can make (references, wildcards, public names, IIS claims)."""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core import domains
from reconciler.core.diagnostics import Problem
from reconciler.core.model import DesiredState, Source
from reconciler.core.spec import Acme, IisMode


def check(desired: DesiredState, invalid: frozenset[tuple[str, str]] = frozenset()) -> list[Problem]:
    """Every cross-document problem; references to documents in ``invalid`` (kind, name) were reported already."""
    problems = [p for p in _check(desired) if not any(f"{k} {n!r} " in p.message for k, n in invalid)]
    return problems


def _check(desired: DesiredState) -> list[Problem]:
    problems: list[Problem] = []
    for _, store in sorted(desired.stores.items()):
        if store.spec.windows and store.spec.windows.host not in desired.iis_hosts:
            problems.append(
                Problem(
                    store.source,
                    ("spec", "windows", "host"),
                    f"IisHost {store.spec.windows.host!r} does not exist{_known(desired.iis_hosts)}",
                )
            )
    for _, cert in sorted(desired.certificates.items()):
        spec, src = cert.spec, cert.source
        listed = not isinstance(spec.issuer, str)
        for n, issuer_name in enumerate(spec.issuers):
            if issuer_name not in desired.issuers:
                problems.append(
                    Problem(
                        src,
                        ("spec", "issuer", n) if listed else ("spec", "issuer"),
                        f"Issuer {issuer_name!r} does not exist{_known(desired.issuers)}",
                    )
                )
        for i, store_name in enumerate(spec.stores):
            if store_name not in desired.stores:
                problems.append(
                    Problem(
                        src,
                        ("spec", "stores", i),
                        f"Store {store_name!r} does not exist{_known(desired.stores)}",
                    )
                )
        for i, target in enumerate(spec.iis):
            if target.host not in desired.iis_hosts:
                problems.append(
                    Problem(
                        src,
                        ("spec", "iis", i, "host"),
                        f"IisHost {target.host!r} does not exist{_known(desired.iis_hosts)}",
                    )
                )
            if target.store is not None:
                st = desired.stores.get(target.store)
                if st is None:
                    problems.append(
                        Problem(src, ("spec", "iis", i, "store"), f"Store {target.store!r} does not exist")
                    )
                elif st.spec.windows is None or st.spec.windows.host != target.host:
                    problems.append(
                        Problem(
                            src,
                            ("spec", "iis", i, "store"),
                            f"Store {target.store!r} is not a windows store on IisHost {target.host!r}",
                        )
                    )
            elif (
                target.mode is not IisMode.none
                and target.host in desired.iis_hosts
                and not any(
                    (s := desired.stores.get(n)) is not None
                    and s.spec.windows is not None
                    and s.spec.windows.host == target.host
                    for n in spec.stores
                )
            ):
                problems.append(
                    Problem(
                        src,
                        ("spec", "iis", i),
                        f"binding on IisHost {target.host!r} needs one of stores to be a windows store "
                        "on that host (IIS serves certificates from the machine's store)",
                    )
                )
        for a, b in domains.redundant_pairs(list(spec.domains)):
            problems.append(
                Problem(
                    src,
                    ("spec", "domains", spec.domains.index(b)),
                    f"{b} is already covered by {a} in the same certificate; remove one of them",
                )
            )
        for issuer_name in spec.issuers:
            issuer = desired.issuers.get(issuer_name)
            if issuer is not None and issuer.spec.acme is not None:
                problems.extend(
                    _acme_domain_problems(cert.source, spec.domains, issuer_name, issuer.spec.acme)
                )
    problems.extend(_iis_claims(desired))
    problems.extend(_terms_not_agreed(desired))
    return problems


def _terms_not_agreed(desired: DesiredState) -> list[Problem]:
    """An ACME Issuer that a certificate uses must have agreeToS: true: the CA refuses to register an account
    otherwise, so the first issuance could only fail (and back off). An unused Issuer may wait."""
    users: dict[str, list[str]] = {}
    for name, cert in sorted(desired.certificates.items()):
        for issuer_name in cert.spec.issuers:
            users.setdefault(issuer_name, []).append(name)
    problems: list[Problem] = []
    for name, issuer in sorted(desired.issuers.items()):
        acme = issuer.spec.acme
        if acme is None or acme.agreeToS or name not in users:
            continue
        used = users[name]
        problems.append(
            Problem(
                issuer.source,
                ("spec", "acme", "agreeToS"),
                f"certificate{'s' if len(used) > 1 else ''} {', '.join(used)} use{'' if len(used) > 1 else 's'} "
                f"issuer {name}, whose CA requires agreement to its terms of service; read them "
                f"(from {acme.directoryUrl}) and set agreeToS: true",
            )
        )
    return problems


def _acme_domain_problems(src: Source, names: list[str], issuer: str, acme: Acme) -> list[Problem]:
    """The domains an ACME Issuer cannot validate: names no public CA can, no solver, a wildcard over http-01."""
    problems: list[Problem] = []
    for i, domain in enumerate(names):
        why = domains.public_name_problem(domain)
        if why:
            problems.append(
                Problem(
                    src,
                    ("spec", "domains", i),
                    f"{why} (issuer {issuer} is ACME; use a localCA issuer for internal names)",
                )
            )
            continue
        solver = acme.solver_for(domain)
        if solver is None:
            problems.append(
                Problem(src, ("spec", "domains", i), f"no solver of issuer {issuer} matches {domain}")
            )
        elif domains.is_wildcard(domain) and solver.dns01 is None:
            problems.append(
                Problem(
                    src,
                    ("spec", "domains", i),
                    f"Wildcard certificates require DNS validation: {domain} would use an "
                    f"http01 solver of issuer {issuer}; add a dns01 solver for it",
                )
            )
    return problems


def _iis_claims(desired: DesiredState) -> list[Problem]:
    """Two certificates claiming one host name on one IIS host (or site) with the same precision."""
    problems: list[Problem] = []
    claims: dict[
        tuple[str, str], list[tuple[str | None, str]]
    ] = {}  # (host, domain) -> [(site or None, cert)]
    for name, cert in sorted(desired.certificates.items()):
        for target in cert.spec.iis:
            if target.mode is IisMode.none:
                continue
            for d_index, domain in enumerate(cert.spec.domains):
                earlier = claims.setdefault((target.host, domain), [])
                owner = next(
                    (
                        o
                        for site, o in earlier
                        if o != name and (site is None or target.site is None or site == target.site)
                    ),
                    None,
                )
                if owner is not None:
                    problems.append(
                        Problem(
                            cert.source,
                            ("spec", "domains", d_index),
                            f"certificates {owner} and {name} both claim {domain} on IIS host "
                            f"{target.host} with the same precision; only one may bind it",
                        )
                    )
                earlier.append((target.site, name))
    return problems


def _known(items: Mapping[str, object]) -> str:
    return f" (known: {', '.join(sorted(items))})" if items else " (none is defined)"
