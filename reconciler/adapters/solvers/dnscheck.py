"""DNS look-ups shared by the dns-01 solvers: the zone of a name (SOA), ``_acme-challenge`` CNAME chains,
the zone's authoritative servers, and the bounded wait until each of them serves the TXT values.

Nothing here downloads anything: the zone is found by asking DNS for the SOA record (never from a
public-suffix list). Recursive questions go to the configured ``resolvers`` (default: the system's);
propagation is checked by asking each authoritative server directly, without recursion.
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
import dns.nameserver
import dns.query
import dns.rdatatype
import dns.resolver

from reconciler.ports import ChallengeTask, SolverError
from reconciler.support.logging import get_logger

log = get_logger()

QUERY_TIMEOUT = 3.0
LOOKUP_LIFETIME = 8.0  # seconds for one recursive question, all resolvers and retries included
MAX_CNAME_HOPS = 8


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


def addresses(host: str, port: int) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise SolverError(f"dns01: cannot resolve the server name {host}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def servers_of(entries: Sequence[str]) -> list[Server]:
    """``host[:port]`` entries (``nameservers``, ``resolvers``) as servers."""
    out: list[Server] = []
    for entry in entries:
        host, port = split_host_port(entry)
        out.extend(Server(host, ip, port) for ip in addresses(host, port))
    return out


def challenge_name(domain: str) -> dns.name.Name:
    base = domain[2:] if domain.startswith("*.") else domain
    return dns.name.from_text(f"_acme-challenge.{base}")


def record_name(task: ChallengeTask) -> dns.name.Name:
    """Where the TXT record of a dns-01 task goes: the delegated name when there is one."""
    return dns.name.from_text(task.record) if task.record else challenge_name(task.domain)


def query(server: Server, name: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> dns.message.Message:
    """Ask one server directly, without recursion (its own authoritative data)."""
    message = dns.message.make_query(name, rdtype)
    message.flags &= ~dns.flags.RD
    response = dns.query.udp(message, server.ip, port=server.port, timeout=QUERY_TIMEOUT)
    if response.flags & dns.flags.TC:
        response = dns.query.tcp(message, server.ip, port=server.port, timeout=QUERY_TIMEOUT)
    return response


def glue(server: Server, ns: dns.name.Name) -> list[str]:
    ips: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        try:
            response = query(server, ns, rdtype)
        except (dns.exception.DNSException, OSError):
            continue
        for rrset in [*response.answer, *response.additional]:
            if rrset.name == ns and rrset.rdtype == rdtype:
                ips.extend(rr.address for rr in rrset)
    return list(dict.fromkeys(ips))


def txt_values(server: Server, name: dns.name.Name) -> set[str]:
    response = query(server, name, dns.rdatatype.TXT)
    values: set[str] = set()
    for rrset in response.answer:
        if rrset.rdtype == dns.rdatatype.TXT and rrset.name == name:
            for rr in rrset:
                values.add(b"".join(rr.strings).decode("ascii", "replace"))
    return values


class Lookup:
    """Recursive questions (zone, CNAME chain, name servers) to ``resolvers`` or the system's resolvers."""

    def __init__(self, resolvers: Sequence[str] = ()) -> None:
        self.resolvers = list(resolvers)
        self._resolver: dns.resolver.Resolver | None = None

    def _get(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            if self.resolvers:
                resolver = dns.resolver.Resolver(configure=False)
                resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(s.ip, s.port) for s in servers_of(self.resolvers)
                ]
            else:
                try:
                    resolver = dns.resolver.Resolver()
                except (dns.exception.DNSException, OSError) as exc:
                    raise SolverError(
                        f"dns01: no DNS resolver configured on this machine ({exc}); set resolvers"
                    ) from None
            resolver.lifetime = LOOKUP_LIFETIME
            resolver.timeout = QUERY_TIMEOUT
            resolver.cache = None
            self._resolver = resolver
        return self._resolver

    def where(self) -> str:
        return ", ".join(self.resolvers) if self.resolvers else "the system's resolvers"

    def zone_for(self, name: str | dns.name.Name) -> str:
        """The zone that holds ``name``: the owner of the SOA record that answers for it."""
        target = dns.name.from_text(name) if isinstance(name, str) else name
        try:
            zone = dns.resolver.zone_for_name(target, resolver=self._get(), lifetime=LOOKUP_LIFETIME)
        except (dns.exception.DNSException, OSError) as exc:
            raise SolverError(
                f"dns01: cannot find the zone of {target.to_text(omit_final_dot=True)} by SOA lookup at "
                f"{self.where()} ({type(exc).__name__}: {exc}); set zone: on the solver"
            ) from None
        if zone == dns.name.root:
            raise SolverError(
                f"dns01: no zone below the root holds {target.to_text(omit_final_dot=True)} "
                f"(SOA lookup at {self.where()}); set zone: on the solver"
            )
        return zone.to_text(omit_final_dot=True)

    def cname(self, name: dns.name.Name) -> dns.name.Name | None:
        """The target of ``name``'s CNAME record, or None when it has none."""
        try:
            answer = self._get().resolve(name, dns.rdatatype.CNAME, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return None
        except (dns.exception.DNSException, OSError) as exc:
            raise SolverError(
                f"dns01: cannot look up the CNAME of {name.to_text(omit_final_dot=True)} at "
                f"{self.where()} ({type(exc).__name__}: {exc})"
            ) from None
        for rrset in answer.response.answer:
            if rrset.rdtype == dns.rdatatype.CNAME and rrset.name == name:
                return next(iter(rrset)).target  # type: ignore[no-any-return]
        return None

    def follow(self, name: dns.name.Name) -> list[dns.name.Name]:
        """The CNAME chain from ``name``: [name] when it is no alias, else [name, …, where it ends].
        A loop, or a chain longer than 8, is an error."""
        chain = [name]
        while True:
            target = self.cname(chain[-1])
            if target is None:
                return chain
            if target in chain:
                shown = " -> ".join(n.to_text(omit_final_dot=True) for n in [*chain, target])
                raise SolverError(f"dns01: CNAME loop: {shown}")
            chain.append(target)
            if len(chain) > MAX_CNAME_HOPS:
                shown = " -> ".join(n.to_text(omit_final_dot=True) for n in chain)
                raise SolverError(f"dns01: CNAME chain longer than {MAX_CNAME_HOPS}: {shown}")

    def authoritative(self, zone: str) -> list[Server]:
        """The zone's name servers (NS records), with their addresses."""
        resolver = self._get()
        try:
            answer = resolver.resolve(zone, dns.rdatatype.NS, raise_on_no_answer=False)
        except (dns.exception.DNSException, OSError) as exc:
            raise SolverError(
                f"dns01: cannot look up the name servers of {zone} at {self.where()} ({exc}); "
                "set nameservers on the solver"
            ) from None
        names = [
            rr.target for rrset in answer.response.answer if rrset.rdtype == dns.rdatatype.NS for rr in rrset
        ]
        servers: list[Server] = []
        for ns in names:
            label = ns.to_text(omit_final_dot=True)
            ips: list[str] = []
            for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
                try:
                    got = resolver.resolve(ns, rdtype, raise_on_no_answer=False)
                except (dns.exception.DNSException, OSError):
                    continue
                ips.extend(
                    rr.address for rrset in got.response.answer if rrset.rdtype == rdtype for rr in rrset
                )
            if not ips:
                log.warning("dns01.ns.unresolvable", zone=zone, nameserver=label)
            servers.extend(Server(label, ip, 53) for ip in dict.fromkeys(ips))
        if not servers:
            raise SolverError(
                f"dns01: no name server of {zone} could be found at {self.where()}; set nameservers"
            )
        return servers


def wait_visible(
    servers: Sequence[Server], wanted: Mapping[dns.name.Name, set[str]], timeout: float, zone: str
) -> None:
    """Wait, at most ``timeout`` seconds, until every server serves every wanted TXT value."""
    deadline = time.monotonic() + timeout
    interval = 0.1
    pending = {(server, name) for server in servers for name in wanted}
    last_seen: dict[tuple[Server, dns.name.Name], str] = {}
    started = time.monotonic()

    def order(p: tuple[Server, dns.name.Name]) -> tuple[str, str]:
        return str(p[0]), p[1].to_text()

    while True:
        for server, name in sorted(pending, key=order):
            try:
                seen = txt_values(server, name)
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
                zone=zone,
                servers=[str(s) for s in servers],
                seconds=round(time.monotonic() - started, 2),
            )
            return
        if time.monotonic() + interval > deadline:
            detail = "; ".join(
                f"{name.to_text(omit_final_dot=True)} on {server}: {last_seen.get((server, name), 'not seen')}"
                for server, name in sorted(pending, key=order)
            )
            raise SolverError(
                f"dns01: the TXT records did not appear on the zone's authoritative servers within "
                f"{timeout:g}s (propagationTimeout): {detail}"
            )
        log.debug("dns01.propagation.waiting", pending=len(pending))
        time.sleep(interval)
        interval = min(interval * 1.5, 2.0)
