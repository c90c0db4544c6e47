"""dns-01 through commands of the user's own: for any DNS without an API certctl speaks.

``create`` and ``delete`` are argv lists (no shell) in which ``{name}``, ``{value}`` and ``{zone}``
are replaced by the record name (``_acme-challenge.<domain>``, or where its CNAME chain ends), the TXT
value and the zone; the same values are in the environment as ``CERTCTL_DNS_NAME``,
``CERTCTL_DNS_VALUE`` and ``CERTCTL_DNS_ZONE``. Each command runs once per value, with ``timeout``;
then certctl waits for propagation as with any provider.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from reconciler.adapters.solvers.records import RecordSolver
from reconciler.core.spec import DnsScript
from reconciler.ports import SolverError
from reconciler.support import procs


class ScriptSolver(RecordSolver):
    kind = "dns01 script"

    def __init__(self, spec: DnsScript, environ: Mapping[str, str] | None = None) -> None:
        super().__init__(spec)
        self.spec = spec
        self.environ = environ

    def __repr__(self) -> str:
        return f"ScriptSolver({self.spec.create[0]})"

    def _run(self, argv: Sequence[str], what: str, zone: str, name: str, value: str) -> None:
        values = {"{name}": name, "{value}": value, "{zone}": zone}
        filled = [_fill(part, values) for part in argv]
        env = dict(self.environ if self.environ is not None else os.environ)
        env.update({"CERTCTL_DNS_NAME": name, "CERTCTL_DNS_VALUE": value, "CERTCTL_DNS_ZONE": zone})
        try:
            procs.run(filled, env, self.spec.timeout.total_seconds(), f"dns01 script ({what})")
        except procs.CommandError as exc:
            raise SolverError(f"{exc} (record {name} in zone {zone})") from None

    def _create(self, zone: str, name: str, value: str) -> None:
        self._run(self.spec.create, "create", zone, name, value)

    def _delete(self, zone: str, name: str, value: str) -> None:
        self._run(self.spec.delete, "delete", zone, name, value)


def _fill(part: str, values: Mapping[str, str]) -> str:
    for placeholder, value in values.items():
        part = part.replace(placeholder, value)
    return part
