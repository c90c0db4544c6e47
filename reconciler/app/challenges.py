"""What a plan says about the challenges its issuances will answer (``core.challenge_rules.solver_notes``).

The core decides the notes; this module gathers the one thing it needs from outside: for each dns-01
name of a certificate the plan issues, where its ``_acme-challenge`` CNAME chain ends (challenge
delegation), looked up by the name's own solver, in parallel, each look-up bounded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from reconciler.adapters.solvers import build_solver
from reconciler.core.challenge_rules import Delegation, delegation_solver, issued_challenges, solver_notes
from reconciler.core.model import DesiredState, ObservedState
from reconciler.core.plan import Plan
from reconciler.core.spec import Acme
from reconciler.ports import DelegatingSolver, SolverError

UNSOLVABLE = "ChallengeUnsolvable"


def annotate(desired: DesiredState, observed: ObservedState, plan: Plan) -> Plan:
    """The plan with a note for each challenge worth knowing about before apply."""
    jobs: dict[str, tuple[Acme, int]] = {}
    for _, _, acme, domain, index in issued_challenges(desired, plan):
        dns01 = acme.solvers[index].dns01
        if dns01 is not None and dns01.rfc2136 is None:
            jobs[domain] = (acme, index)
    delegations: dict[str, Delegation] = {}
    if jobs:
        with ThreadPoolExecutor(max_workers=min(8, len(jobs)), thread_name_prefix="plan-dns") as pool:
            for found in pool.map(lambda item: _delegation(item[0], *item[1]), sorted(jobs.items())):
                delegations[found.domain] = found
    notes = solver_notes(desired, observed, plan, delegations)
    return replace(plan, notes=(*plan.notes, *notes)) if notes else plan


def _delegation(domain: str, acme: Acme, index: int) -> Delegation:
    base = domain.removeprefix("*.")
    solver = build_solver(acme.solvers[index])
    if not isinstance(solver, DelegatingSolver):
        return Delegation(domain, (f"_acme-challenge.{base}",), index)
    try:
        chain = tuple(solver.delegation_chain(base))
    except SolverError as exc:
        return Delegation(domain, (f"_acme-challenge.{base}",), None, error=str(exc).removeprefix("dns01: "))
    if len(chain) == 1:
        return Delegation(domain, chain, index)
    target = delegation_solver(acme, chain[-1])
    if isinstance(target, str):
        return Delegation(domain, chain, None, error=f"delegated by CNAME to {chain[-1]}, but {target}")
    return Delegation(domain, chain, target)
