"""The outside systems one pass talks to, as the Protocols of ``reconciler.ports``.

``reconciler.wiring`` builds a World from the desired state; the use cases in this package take it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
