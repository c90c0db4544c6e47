"""IIS binding rules (IIS.md §5): bind, rebind, unbind, FTP, and what is left alone.

``plan_hosts`` returns the host actions, the notes for bindings deliberately left alone, and every
thumbprint something on a host still references (so cleanup never removes a certificate in use).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from reconciler.core.model import DesiredState, ObservedState
from reconciler.core.plan import Action, Note

if TYPE_CHECKING:
    from reconciler.core.planner import Target


def referenced_thumbprints(observed: ObservedState) -> set[str]:
    """Every thumbprint a binding's HTTP.sys entry or an FTP site on any host uses."""
    out: set[str] = set()
    for host in observed.hosts.values():
        out.update(e.certhash.upper() for e in host.httpsys if e.certhash)
        out.update(s.ftp_cert_hash.upper() for s in host.sites if s.ftp_cert_hash)
    return out


def plan_hosts(
    desired: DesiredState,
    observed: ObservedState,
    targets: Mapping[str, Target],
    at: datetime,
    planned: Sequence[Action] = (),
) -> tuple[list[Action], list[Note], set[str]]:
    return [], [], referenced_thumbprints(observed)
