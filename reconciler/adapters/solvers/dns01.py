"""dns-01 through RFC 2136 dynamic updates signed with TSIG (BIND, PowerDNS, Knot, Windows DNS).

``prepare`` adds one TXT record ``_acme-challenge.<name>`` per challenge, then waits — bounded by
``propagationTimeout`` — until every value is visible on each authoritative server of the zone,
asked directly (the configured ``nameservers``, or the zone's NS records). ``cleanup`` deletes
exactly the values it added, so concurrent orders for the same name do not disturb each other.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsig
import dns.tsigkeyring
import dns.update
import structlog

from reconciler.core.spec import DNS01, Rfc2136
from reconciler.ports import ChallengeTask, SolverError
from reconciler.support.secrets import SecretError, resolve

log = structlog.get_logger()

_ALGORITHMS = {
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-md5": dns.tsig.HMAC_MD5,
}
QUERY_TIMEOUT = 3.0


@dataclass(frozen=True)
class Server:
    """A DNS server to talk to: the name it was given as, an IP address and a port."""

    label: str
    ip: str
    port: int = 53

    def __str__(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        return f"{self.label} ({host}:{self.port})" if self.label != self.ip else f"{host}:{self.port}"


def split_host_port(value: str, default_port: int = 53) -> tuple[str, int]:
    """'host', 'host:port', '[v6]:port' or a bare IPv6 address → (host, port)."""
    value = value.strip()
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if value.count(":") == 1:
        host, port = value.split(":")
        return host, int(port)
    return value, default_port


def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SolverError(f"dns01: cannot resolve the server name {host}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def challenge_name(domain: str) -> dns.name.Name:
    base = domain[2:] if domain.startswith("*.") else domain
    return dns.name.from_text(f"_acme-challenge.{base}")


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
        return Server(self._server_host, _addresses(self._server_host, self._server_port)[0], self._server_port)

    def _update(self) -> dns.update.UpdateMessage:
        if self.spec.tsigKeyName is None or self.spec.tsigSecret is None:
            return dns.update.UpdateMessage(self.zone)
        try:
            secret = resolve(self.spec.tsigSecret, dict(self.environ) if self.environ is not None else None).decode().strip()
        except SecretError as exc:
            raise SolverError(f"dns01: the TSIG secret of key {self.spec.tsigKeyName}: {exc}") from None
        try:
            keyring = dns.tsigkeyring.from_text({self.spec.tsigKeyName: secret})
        except (ValueError, TypeError, dns.exception.DNSException):
            raise SolverError(f"dns01: the TSIG secret of key {self.spec.tsigKeyName} is not valid base64") from None
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
            name = challenge_name(task.domain)
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
            out: list[Server] = []
            for entry in self.spec.nameservers:
                host, port = split_host_port(entry)
                out.extend(Server(host, ip, port) for ip in _addresses(host, port))
            return out
        primary = self._primary()
        try:
            answer = _query(primary, self.zone, dns.rdatatype.NS)
            ns_names = [rr.target for rrset in answer.answer for rr in rrset if rrset.rdtype == dns.rdatatype.NS]
        except (dns.exception.DNSException, OSError) as exc:
            log.warning("dns01.ns.lookup_failed", zone=self.spec.zone, server=str(primary), error=str(exc))
            return [primary]
        servers: list[Server] = []
        for ns in ns_names:
            label = ns.to_text(omit_final_dot=True)
            ips = _glue(primary, ns)
            if not ips:
                try:
                    ips = _addresses(label, 53)
                except SolverError:
                    log.warning("dns01.ns.unresolvable", zone=self.spec.zone, nameserver=label)
                    continue
            servers.extend(Server(label, ip, 53) for ip in ips)
        return servers or [primary]

    def _wait_visible(self, wanted: dict[dns.name.Name, set[str]]) -> None:
        servers = self.authoritative_servers()
        timeout = self.spec.propagationTimeout.total_seconds()
        deadline = time.monotonic() + timeout
        interval = 0.1
        pending = {(server, name) for server in servers for name in wanted}
        last_seen: dict[tuple[Server, dns.name.Name], str] = {}
        started = time.monotonic()
        while True:
            for server, name in sorted(pending, key=lambda p: (str(p[0]), p[1].to_text())):
                try:
                    seen = _txt_values(server, name)
                except (dns.exception.DNSException, OSError) as exc:
                    last_seen[(server, name)] = f"no answer ({type(exc).__name__})"
                    continue
                if wanted[name] <= seen:
                    pending.discard((server, name))
                else:
                    last_seen[(server, name)] = f"{len(wanted[name] & seen)} of {len(wanted[name])} values"
            if not pending:
                log.info(
                    "dns01.propagation.done",
                    zone=self.spec.zone,
                    servers=[str(s) for s in servers],
                    seconds=round(time.monotonic() - started, 2),
                )
                return
            if time.monotonic() + interval > deadline:
                detail = "; ".join(
                    f"{name.to_text(omit_final_dot=True)} on {server}: {last_seen.get((server, name), 'not seen')}"
                    for server, name in sorted(pending, key=lambda p: (str(p[0]), p[1].to_text()))
                )
                raise SolverError(
                    f"dns01: the TXT records did not appear on the zone's authoritative servers within "
                    f"{timeout:g}s (propagationTimeout): {detail}"
                )
            log.debug("dns01.propagation.waiting", pending=len(pending))
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)


def _query(server: Server, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype)
    query.flags &= ~dns.flags.RD  # ask the authoritative server itself, no recursion
    response = dns.query.udp(query, server.ip, port=server.port, timeout=QUERY_TIMEOUT)
    if response.flags & dns.flags.TC:
        response = dns.query.tcp(query, server.ip, port=server.port, timeout=QUERY_TIMEOUT)
    return response


def _glue(server: Server, ns: dns.name.Name) -> list[str]:
    ips: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            response = _query(server, ns, rdtype)
        except (dns.exception.DNSException, OSError):
            continue
        for rrset in [*response.answer, *response.additional]:
            if rrset.name == ns and rrset.rdtype == rdtype:
                ips.extend(rr.address for rr in rrset)
    return list(dict.fromkeys(ips))


def _txt_values(server: Server, name: dns.name.Name) -> set[str]:
    response = _query(server, name, dns.rdatatype.TXT)
    values: set[str] = set()
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.TXT:
            for rr in rrset:
                values.add(b"".join(rr.strings).decode("ascii", "replace"))
    return values
