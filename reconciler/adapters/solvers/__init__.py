"""Solvers for ACME challenges, one module per kind, and the factory that builds one from its spec.

A solver (``reconciler.ports.Solver``) makes a set of challenges answerable in ``prepare`` and takes
every trace of them away in ``cleanup``. The issuer calls ``cleanup`` for every solver it called
``prepare`` on, whether the order succeeded or not, so ``cleanup`` must also undo a ``prepare`` that
failed half-way.

- ``http01``: the built-in listener and the webroot solver
- ``iis``: http-01 under the physical path of the IIS site that serves the name
- ``dns01``: RFC 2136 dynamic updates with TSIG
- ``provider``: a DNS provider's API through dns-lexicon; ``script``: the user's own commands
  (both on ``records``: challenge delegation by CNAME, parallel writes, propagation)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from reconciler.core import spec as specs
from reconciler.ports import SiteFolders, Solver

HostLookup = Callable[[str], SiteFolders | None]


def build_solver(
    solver: specs.Solver, environ: Mapping[str, str] | None = None, *, hosts: HostLookup | None = None
) -> Solver:
    """The solver object for one entry of ``Issuer.spec.acme.solvers`` (``hosts``: the IIS hosts by name)."""
    if solver.http01 is not None:
        from reconciler.adapters.solvers.http01 import StandaloneHttp01, WebrootHttp01

        if solver.http01.standalone is not None:
            return StandaloneHttp01(solver.http01.standalone.address, solver.http01.standalone.port)
        if solver.http01.iis is not None:
            from reconciler.adapters.solvers.iis import IisHttp01

            return IisHttp01(solver.http01.iis.host, hosts or (lambda _: None))
        assert solver.http01.webroot is not None
        return WebrootHttp01(solver.http01.webroot.path)
    assert solver.dns01 is not None
    if solver.dns01.provider is not None:
        from reconciler.adapters.solvers.provider import LexiconSolver

        return LexiconSolver(solver.dns01.provider, environ=environ)
    if solver.dns01.script is not None:
        from reconciler.adapters.solvers.script import ScriptSolver

        return ScriptSolver(solver.dns01.script, environ=environ)
    from reconciler.adapters.solvers.dns01 import Rfc2136Solver

    assert solver.dns01.rfc2136 is not None
    return Rfc2136Solver(solver.dns01.rfc2136, environ=environ)
