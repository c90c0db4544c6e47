"""dns-01 through RFC 2136 dynamic updates signed with HMAC TSIG (BIND, PowerDNS, Knot; Windows DNS takes only GSS-TSIG).

``prepare`` adds one TXT record ``_acme-challenge.<name>`` per challenge, then waits — bounded by
``propagationTimeout`` — until every value is visible on each authoritative server of the zone,
asked directly (the configured ``nameservers``, or the zone's NS records). ``cleanup`` deletes
exactly the values it added, so concurrent orders for the same name do not disturb each other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dns.exception
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update

from reconciler.adapters.solvers.dnscheck import (
    QUERY_TIMEOUT,
    Server,
    addresses,
    glue,
    query,
    record_name,
    servers_of,
    split_host_port,
    wait_visible,
)
from reconciler.core.spec import DNS01, Rfc2136
from reconciler.ports import ChallengeTask, SolverError
from reconciler.support.logging import get_logger
from reconciler.support.secrets import SecretError, resolve

log = get_logger()

_ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-md5": dns.tsig.HMAC_MD5,
}


class Rfc2136Solver:
    def __init__(self, spec: Rfc2136, environ: Mapping[str, str] | None = None) -> None:
        self.spec = spec
        self.environ = environ
        self.zone = dns.name.from_text(spec.zone)
        host, port = split_host_port(spec.server)
        self._server_host, self._server_port = host, port

    def __repr__(self) -> str:
        return f"Rfc2136Solver(zone={self.spec.zone}, server={self.spec.server})"

    # --- the update -------------------------------------------------------------------------

    def _primary(self) -> Server:
        return Server(
            self._server_host, addresses(self._server_host, self._server_port)[0], self._server_port
        )

    def _update(self) -> dns.update.UpdateMessage:
        if self.spec.tsigKeyName is None or self.spec.tsigSecret is None:
            return dns.update.UpdateMessage(self.zone)
        try:
            secret = (
                resolve(self.spec.tsigSecret, dict(self.environ) if self.environ is not None else None)
                .decode()
                .strip()
            )
        except SecretError as exc:
            raise SolverError(f"dns01: the TSIG secret of key {self.spec.tsigKeyName}: {exc}") from None
        try:
            keyring = dns.tsigkeyring.from_text({self.spec.tsigKeyName: secret})
        except (ValueError, TypeError, dns.exception.DNSException):
            raise SolverError(
                f"dns01: the TSIG secret of key {self.spec.tsigKeyName} is not valid base64"
            ) from None
        return dns.update.UpdateMessage(
            self.zone,
            keyring=keyring,
            keyname=dns.name.from_text(self.spec.tsigKeyName),
            keyalgorithm=_ALGORITHMS[str(self.spec.tsigAlgorithm)],
        )

    def _send(self, update: dns.update.UpdateMessage, what: str) -> None:
        server = self._primary()
        try:
            response = dns.query.tcp(update, server.ip, port=server.port, timeout=QUERY_TIMEOUT * 2)
        except dns.tsig.PeerError as exc:
            raise SolverError(
                f"dns01: {server} rejected the TSIG signature of key {self.spec.tsigKeyName} ({type(exc).__name__}):"
                " check tsigKeyName, tsigAlgorithm and tsigSecret"
            ) from None
        except (dns.exception.DNSException, OSError) as exc:
            raise SolverError(f"dns01: {what}: cannot reach {server}: {exc}") from None
        rcode = response.rcode()
        if rcode == dns.rcode.NOERROR:
            return
        hints = {
            dns.rcode.REFUSED: "the server refused the update: does the zone allow updates (update-policy / allow-update) by this key?",
            dns.rcode.NOTAUTH: "the server is not authoritative for the zone, or does not know the TSIG key",
            dns.rcode.NOTZONE: "the record is not inside the zone",
            dns.rcode.SERVFAIL: "the server failed to apply the update",
        }
        raise SolverError(
            f"dns01: {what}: {server} answered {dns.rcode.to_text(rcode)} for zone {self.spec.zone}: "
            + hints.get(rcode, "the update was not applied")
        )

    def _names(self, tasks: Sequence[ChallengeTask]) -> dict[dns.name.Name, set[str]]:
        wanted: dict[dns.name.Name, set[str]] = {}
        for task in tasks:
            if task.kind != DNS01:
                raise SolverError(f"a dns01 solver cannot answer a {task.kind} challenge for {task.domain}")
            name = record_name(task)
            if not name.is_subdomain(self.zone):
                raise SolverError(f"dns01: {task.domain} is outside the zone {self.spec.zone} of this solver")
            wanted.setdefault(name, set()).add(task.txt_value)
        return wanted

    def prepare(self, tasks: Sequence[ChallengeTask]) -> None:
        wanted = self._names(tasks)
        if not wanted:
            return
        update = self._update()
        for name, values in wanted.items():
            for value in sorted(values):
                update.add(name, self.spec.ttl, dns.rdatatype.TXT, f'"{value}"')
        self._send(update, "adding the TXT records")
        for name in wanted:
            log.info("dns01.record.added", name=name.to_text(omit_final_dot=True), zone=self.spec.zone)
        self._wait_visible(wanted)

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        wanted = self._names([t for t in tasks if t.kind == DNS01])
        if not wanted:
            return
        update = self._update()
        for name, values in wanted.items():
            for value in sorted(values):
                update.delete(name, dns.rdatatype.TXT, f'"{value}"')
        self._send(update, "deleting the TXT records")
        for name in wanted:
            log.info("dns01.record.deleted", name=name.to_text(omit_final_dot=True), zone=self.spec.zone)

    # --- propagation ------------------------------------------------------------------------

    def authoritative_servers(self) -> list[Server]:
        """The configured ``nameservers``, or the zone's NS records as the primary server reports them."""
        if self.spec.nameservers:
            return servers_of(self.spec.nameservers)
        primary = self._primary()
        try:
            answer = query(primary, self.zone, dns.rdatatype.NS)
            ns_names = [
                rr.target for rrset in answer.answer for rr in rrset if rrset.rdtype == dns.rdatatype.NS
            ]
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("dns01.ns.lookup_failed", zone=self.spec.zone, server=str(primary), error=str(exc))
            return [primary]
        servers: list[Server] = []
        for ns in ns_names:
            label = ns.to_text(omit_final_dot=True)
            ips = glue(primary, ns)
            if not ips:
                try:
                    ips = addresses(label, 53)
                except SolverError:
                    log.warning("dns01.ns.unresolvable", zone=self.spec.zone, nameserver=label)
                    continue
            servers.extend(Server(label, ip, 53) for ip in ips)
        return servers or [primary]

    def _wait_visible(self, wanted: dict[dns.name.Name, set[str]]) -> None:
        wait_visible(
            self.authoritative_servers(), wanted, self.spec.propagationTimeout.total_seconds(), self.spec.zone
        )
