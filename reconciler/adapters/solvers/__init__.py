"""Solvers for ACME challenges, one module per kind, and the factory that builds one from its spec.

A solver (``reconciler.ports.Solver``) makes a set of challenges answerable in ``prepare`` and takes
every trace of them away in ``cleanup``. The issuer calls ``cleanup`` for every solver it called
``prepare`` on, whether the order succeeded or not, so ``cleanup`` must also undo a ``prepare`` that
failed half-way.

- ``http01``: the built-in listener and the webroot solver
- ``dns01``: RFC 2136 dynamic updates with TSIG
"""

from __future__ import annotations

from collections.abc import Mapping

from reconciler.adapters.solvers.dns01 import Rfc2136Solver
from reconciler.adapters.solvers.http01 import StandaloneHttp01, WebrootHttp01
from reconciler.core import spec as specs
from reconciler.ports import Solver


def build_solver(solver: specs.Solver, environ: Mapping[str, str] | None = None) -> Solver:
    """The solver object for one entry of ``Issuer.spec.acme.solvers``."""
    if solver.http01 is not None:
        if solver.http01.standalone is not None:
            return StandaloneHttp01(solver.http01.standalone.address, solver.http01.standalone.port)
        assert solver.http01.webroot is not None
        return WebrootHttp01(solver.http01.webroot.path)
    assert solver.dns01 is not None
    return Rfc2136Solver(solver.dns01.rfc2136, environ=environ)
