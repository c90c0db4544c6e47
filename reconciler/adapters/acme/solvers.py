"""Solvers for ACME challenges: which one answers a domain, and how each kind is built from the spec.

A solver (``reconciler.ports.Solver``) makes a set of challenges answerable in ``prepare`` and takes
every trace of them away in ``cleanup``. The issuer calls ``cleanup`` for every solver it called
``prepare`` on, whether the order succeeded or not, so ``cleanup`` must also undo a ``prepare`` that
failed half-way.
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.core import spec as specs
from reconciler.ports import Solver


class SolverError(Exception):
    """A challenge could not be made answerable (or cleaned up); the message says what to fix."""


HTTP01 = "http-01"
DNS01 = "dns-01"


def challenge_type(solver: specs.Solver) -> str:
    return DNS01 if solver.dns01 is not None else HTTP01


def build_solver(solver: specs.Solver, environ: Mapping[str, str] | None = None) -> Solver:
    """The solver object for one entry of ``Issuer.spec.acme.solvers``."""
    from reconciler.adapters.acme.dns01 import Rfc2136Solver
    from reconciler.adapters.acme.http01 import StandaloneHttp01, WebrootHttp01

    if solver.http01 is not None:
        if solver.http01.standalone is not None:
            return StandaloneHttp01(solver.http01.standalone.address, solver.http01.standalone.port)
        assert solver.http01.webroot is not None
        return WebrootHttp01(solver.http01.webroot.path)
    assert solver.dns01 is not None
    return Rfc2136Solver(solver.dns01.rfc2136, environ=environ)
