"""World -> ObservedState: stores, hosts, task outputs, endpoints and the state dir, in one immutable value."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

from reconciler.adapters import tasks as task_adapter
from reconciler.app.world import World
from reconciler.core.model import EndpointState, HostState, ObservedState, StoreState
from reconciler.support.logging import get_logger

log = get_logger()


def observe(world: World, *, probe: bool = True, only: frozenset[str] | None = None) -> ObservedState:
    """Everything one pass plans from; with ``only`` (a pass woken for a few certificates, whose world is
    already narrowed to them): their versions and attempts, and only their folders of a store that can
    observe per certificate (``observe_for``)."""
    desired = world.desired
    stores: dict[str, StoreState] = {}
    for name, store in sorted(world.stores.items()):
        narrow = getattr(store, "observe_for", None) if only is not None else None
        try:
            stores[name] = narrow(only) if narrow is not None else store.observe()
        except Exception as exc:  # noqa: BLE001 - an unreadable store is reported, never fatal to the plan
            log.warning("observe.store.failed", store=name, error=str(exc))
            stores[name] = StoreState(
                name, problems=(f"cannot observe store {name}: {exc}",), reachable=False
            )
    hosts: dict[str, HostState] = {}
    for name, host in sorted(world.hosts.items()):
        try:
            hosts[name] = host.observe()
        except Exception as exc:  # noqa: BLE001
            log.warning("observe.host.failed", host=name, error=str(exc))
            hosts[name] = HostState(
                name, problems=(f"cannot observe IIS host {name}: {exc}",), reachable=False
            )
    deployments = world.state.deployments()
    task_states = {}
    for name, cert in desired.certificates.items():
        for index, task in enumerate(cert.spec.tasks):
            task_states[(name, index)] = task_adapter.observe(name, index, task, cert.spec, deployments)
    endpoints: list[EndpointState] = []
    if probe and world.prober is not None:
        endpoints = _probe_all(world)
    return ObservedState(
        issued=world.state.issued() if only is None else world.state.issued_of(only),
        stores=stores,
        hosts=hosts,
        tasks=task_states,
        endpoints=tuple(endpoints),
        attempts=world.state.attempts() if only is None else world.state.attempts_of(only),
        issuer_ids={n: i.identity() for n, i in world.issuers.items()},
        made_bindings=world.state.made_bindings(),
        issuer_profiles=_profiles(world),
        issuing=world.state.issuing(),
    )


def _profiles(world: World) -> dict[str, tuple[str, ...]]:
    """For each ACME Issuer that asks for a profile: what its CA's directory listed when last fetched."""
    out: dict[str, tuple[str, ...]] = {}
    for name, issuer in sorted(world.desired.issuers.items()):
        if issuer.spec.acme is None or issuer.spec.acme.profile is None:
            continue
        read = getattr(world.issuers.get(name), "offered_profiles", None)
        offered = read() if read is not None else None
        if offered is not None:
            out[name] = offered
    return out


def refresh_directories(world: World) -> None:
    """Fetch the directory of each ACME Issuer that asks for a profile and has never been fetched, so the plan
    can tell at once whether the CA offers that profile (a CA that does not answer is left for apply)."""
    for name, issuer in sorted(world.desired.issuers.items()):
        if issuer.spec.acme is None or issuer.spec.acme.profile is None:
            continue
        backend = world.issuers.get(name)
        read = getattr(backend, "offered_profiles", None)
        fetch = getattr(backend, "refresh_directory", None)
        if read is not None and fetch is not None and read() is None:
            fetch()


def observe_current(
    world: World, now: datetime, *, locked: bool = False, probe: bool = True
) -> ObservedState:
    """Observe after bringing the ACME renewal windows (ARI) up to date: what plan, apply, status and
    the daemon do before planning."""
    from reconciler.app.renewalinfo import refresh_renewal_info

    refresh_renewal_info(world, now, locked=locked)
    refresh_directories(world)
    return observe(world, probe=probe)


def _probe_all(world: World) -> list[EndpointState]:
    jobs = [
        (name, v.endpoint, v.sni or cert.spec.domains[0].removeprefix("*."), v.timeout.total_seconds())
        for name, cert in sorted(world.desired.certificates.items())
        for v in cert.spec.verify
    ]
    if not jobs:
        return []
    prober = world.prober
    assert prober is not None

    def one(job: tuple[str, str, str, float]) -> EndpointState:
        name, endpoint, sni, timeout = job
        try:
            info = prober.probe(endpoint, sni, timeout)
        except Exception as exc:  # noqa: BLE001
            return EndpointState(name, endpoint, sni, None, str(exc))
        return EndpointState(name, endpoint, sni, info.thumbprint)

    with ThreadPoolExecutor(max_workers=min(16, len(jobs))) as pool:
        return list(pool.map(one, jobs))
