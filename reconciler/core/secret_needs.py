"""Which secret references the actions of a plan will read, and where each is written (pure).

`certctl plan` resolves exactly these before anything runs, so a missing environment variable or secret
file is an error at the reference's file:line:col, and `certctl apply` refuses to start instead of
failing halfway.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from reconciler.core.challenge_rules import issued_challenges
from reconciler.core.diagnostics import Path
from reconciler.core.model import DesiredState, Source
from reconciler.core.plan import ISSUANCE, DeployDetail, Plan
from reconciler.core.spec import SecretRef


@dataclass(frozen=True, slots=True)
class SecretNeed:
    source: Source  # the document that holds the reference
    path: Path  # the reference's field path in it, ending at fromEnv or fromFile
    ref: SecretRef
    needed_by: str  # the first action (id) that reads it


def _at(path: Path, ref: SecretRef) -> Path:
    return (*path, "fromEnv" if ref.fromEnv is not None else "fromFile")


def secret_needs(desired: DesiredState, plan: Plan) -> list[SecretNeed]:
    """Every secret reference an action of ``plan`` reads, once each, in plan order."""
    seen: set[tuple[Source, Path]] = set()
    out: list[SecretNeed] = []
    for need in _needs(desired, plan):
        key = (need.source, need.path)
        if key not in seen:
            seen.add(key)
            out.append(need)
    return out


def _needs(desired: DesiredState, plan: Plan) -> Iterator[SecretNeed]:
    issuance = {a.certificate: a.id for a in plan.actions if a.kind in ISSUANCE}
    for name, issuer_name, acme, _domain, index in issued_challenges(desired, plan):
        source = desired.issuers[issuer_name].source
        issued_by = issuance[name]
        if acme.eab is not None:
            yield SecretNeed(
                source, _at(("spec", "acme", "eab", "hmacKey"), acme.eab.hmacKey), acme.eab.hmacKey, issued_by
            )
        dns01 = acme.solvers[index].dns01
        base: Path = ("spec", "acme", "solvers", index, "dns01")
        if dns01 is not None and dns01.rfc2136 is not None and dns01.rfc2136.tsigSecret is not None:
            ref = dns01.rfc2136.tsigSecret
            yield SecretNeed(source, _at((*base, "rfc2136", "tsigSecret"), ref), ref, issued_by)
        if dns01 is not None and dns01.provider is not None:
            for key, secret in sorted(dns01.provider.secrets.items()):
                yield SecretNeed(source, _at((*base, "provider", "secrets", key), secret), secret, issued_by)
    for action in plan.actions:
        cert = desired.certificates.get(action.certificate)
        if (
            not isinstance(action.detail, DeployDetail)
            or cert is None
            or action.detail.task >= len(cert.spec.tasks)
        ):
            continue
        index = action.detail.task
        task = cert.spec.tasks[index]
        for kind, password in (
            ("pfx", task.pfx.password if task.pfx else None),
            ("ccs", task.ccs.password if task.ccs else None),
        ):
            if password is not None:
                yield SecretNeed(
                    cert.source,
                    _at(("spec", "tasks", index, kind, "password"), password),
                    password,
                    action.id,
                )
