"""The common part of the dns-01 solvers that write TXT records through something other than DNS
UPDATE (a provider's API, a script): challenge delegation, zones, parallel writes, propagation.

For each challenge the record is ``_acme-challenge.<name>``, or — when that name is a CNAME (the
acme-dns / "challenge alias" pattern) — the name where the CNAME chain ends (``challenge_record``;
the issuer then hands the task to the solver whose selector matches that name). Records of different
names are written in parallel; the values of one name (a wildcard and its apex) one after another,
under a lock per name, because providers replace a name's whole record set.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import dns.name

from reconciler.adapters.solvers.dnscheck import (
    Lookup,
    Server,
    challenge_name,
    record_name,
    servers_of,
    wait_visible,
)
from reconciler.core.spec import DNS01, DnsRecordCheck
from reconciler.ports import ChallengeTask, SolverError
from reconciler.support.logging import get_logger

log = get_logger()

PARALLEL = 8
_NAME_LOCKS: dict[str, threading.Lock] = {}
_NAME_LOCKS_GUARD = threading.Lock()


def _name_lock(name: str) -> threading.Lock:
    with _NAME_LOCKS_GUARD:
        return _NAME_LOCKS.setdefault(name, threading.Lock())


class RecordSolver:
    """prepare/cleanup over ``_create``/``_delete`` of one TXT value; subclasses talk to the DNS."""

    kind = "dns01"

    def __init__(self, check: DnsRecordCheck) -> None:
        self.zone = check.zone
        self.propagation_timeout = check.propagationTimeout.total_seconds()
        self.nameservers = list(check.nameservers)
        self.lookup = Lookup(check.resolvers)

    # --- subclasses ------------------------------------------------------------------------------

    def _create(self, zone: str, name: str, value: str) -> None:
        raise NotImplementedError

    def _delete(self, zone: str, name: str, value: str) -> None:
        raise NotImplementedError

    # --- delegation ------------------------------------------------------------------------------

    def delegation_chain(self, domain: str) -> list[str]:
        chain = self.lookup.follow(challenge_name(domain))
        shown = [n.to_text(omit_final_dot=True) for n in chain]
        if len(chain) > 1:
            try:
                self.lookup.zone_for(chain[-1])
            except SolverError:
                raise SolverError(
                    f"dangling CNAME: {' -> '.join(shown)} ends at a name that no DNS zone holds "
                    f"(no SOA found at {self.lookup.where()})"
                ) from None
        return shown

    def zone_of(self, name: dns.name.Name) -> str:
        if self.zone is not None:
            if not name.is_subdomain(dns.name.from_text(self.zone)):
                raise SolverError(
                    f"{self.kind}: {name.to_text(omit_final_dot=True)} is outside the zone {self.zone} "
                    "of this solver"
                )
            return self.zone
        return self.lookup.zone_for(name)

    # --- Solver ----------------------------------------------------------------------------------

    def _wanted(self, tasks: Sequence[ChallengeTask]) -> dict[dns.name.Name, set[str]]:
        wanted: dict[dns.name.Name, set[str]] = {}
        for task in tasks:
            if task.kind != DNS01:
                raise SolverError(f"a dns01 solver cannot answer a {task.kind} challenge for {task.domain}")
            wanted.setdefault(record_name(task), set()).add(task.txt_value)
        return wanted

    def _each_name(
        self, wanted: dict[dns.name.Name, set[str]], zones: dict[dns.name.Name, str], create: bool
    ) -> list[str]:
        """Create (or delete) every value, names in parallel; the failures, one message each."""

        def one(name: dns.name.Name) -> list[str]:
            text = name.to_text(omit_final_dot=True)
            failures: list[str] = []
            with _name_lock(text):
                for value in sorted(wanted[name]):
                    try:
                        if create:
                            self._create(zones[name], text, value)
                        else:
                            self._delete(zones[name], text, value)
                    except SolverError as exc:
                        failures.append(str(exc))
                        if create:
                            break
                    else:
                        log.info(
                            "dns01.record.added" if create else "dns01.record.deleted",
                            name=text,
                            zone=zones[name],
                            solver=repr(self),
                        )
            return failures

        names = sorted(wanted, key=lambda n: n.to_text())
        if len(names) == 1:
            return one(names[0])
        with ThreadPoolExecutor(max_workers=min(PARALLEL, len(names)), thread_name_prefix="dns01") as pool:
            return [f for result in pool.map(one, names) for f in result]

    def prepare(self, tasks: Sequence[ChallengeTask]) -> None:
        wanted = self._wanted(tasks)
        if not wanted:
            return
        zones = {name: self.zone_of(name) for name in wanted}
        failures = self._each_name(wanted, zones, create=True)
        if failures:
            raise SolverError("; ".join(failures))
        for zone in sorted(set(zones.values())):
            names = {n: v for n, v in wanted.items() if zones[n] == zone}
            wait_visible(self._servers(zone), names, self.propagation_timeout, zone)

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        wanted = self._wanted([t for t in tasks if t.kind == DNS01])
        if not wanted:
            return
        zones = {name: self.zone_of(name) for name in wanted}
        failures = self._each_name(wanted, zones, create=False)
        if failures:
            raise SolverError("; ".join(failures))

    def _servers(self, zone: str) -> list[Server]:
        if self.nameservers:
            return servers_of(self.nameservers)
        return self.lookup.authoritative(zone)
