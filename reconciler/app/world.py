"""The outside systems one pass talks to, as the Protocols of ``reconciler.ports``.

``reconciler.wiring`` builds a World from the desired state; the use cases in this package take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reconciler.core.model import DesiredState
from reconciler.ports import BindingHost, IssuerBackend, Prober, StateBackend, Store


@dataclass
class World:
    """Every outside system certctl talks to, for one desired state."""

    desired: DesiredState
    state: StateBackend
    issuers: dict[str, IssuerBackend] = field(default_factory=dict)
    stores: dict[str, Store] = field(default_factory=dict)
    hosts: dict[str, BindingHost] = field(default_factory=dict)
    prober: Prober | None = None

    def narrowed(self, desired: DesiredState) -> World:
        """This world for a part of its desired state (``core.fleet.focused``): the same adapters, only
        those of the Stores and IisHosts that part names."""
        return replace(
            self,
            desired=desired,
            stores={n: s for n, s in self.stores.items() if n in desired.stores},
            hosts={n: h for n, h in self.hosts.items() if n in desired.iis_hosts},
        )
