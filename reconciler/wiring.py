"""The one place that picks concrete classes for the Protocols."""

from __future__ import annotations

import functools
import os
import re
import socket
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from reconciler.app.errors import UsageError
from reconciler.app.world import World
from reconciler.core.model import DesiredState
from reconciler.core.spec import NODE_PATTERN
from reconciler.ports import BackendUnavailable, BindingHost, SiteFolders, StateBackend
from reconciler.state.statedir import StateDir


def state_dir_for(desired_dir: Path, desired: DesiredState | None, override: str | None) -> Path:
    """--state-dir, else Settings.stateDir, else .certctl-state/ beside the desired-state directory."""
    if override:
        return Path(override)
    if desired is not None and desired.settings.stateDir:
        return Path(
            os.path.abspath(desired.settings.stateDir)
        )  # messages name it absolute, never ds/../state
    resolved = Path(desired_dir).resolve()
    return resolved.parent / ".certctl-state"


NODE = re.compile(NODE_PATTERN)


def node_name(option: str | None) -> str:
    """--node, else $CERTCTL_NODE (the CLI's default), else the host name (its first label, lower case)."""
    name = option or socket.gethostname().split(".")[0].lower() or "localhost"
    if len(name) > 63 or not NODE.match(name):
        raise UsageError(
            f"the node name {name!r} is not valid: letters, digits, '-', '_' and '.', "
            "at most 63 characters (set --node or CERTCTL_NODE)"
        )
    return name


def open_state(desired: DesiredState | None, path: Path, node: str) -> StateBackend:
    """The state backend the desired state asks for: the state dir at ``path``, or (``Settings.backend.
    postgres``) PostgreSQL for issuance beside that node-local state dir. Nothing is connected yet."""
    postgres = desired.settings.backend.postgres if desired is not None else None
    if postgres is None:
        return StateDir(path)
    from reconciler.state.postgres import Database, FleetState
    from reconciler.support.sealing import KeyProblem, Sealer, parse_key
    from reconciler.support.secrets import SecretError, resolve

    try:
        dsn = resolve(postgres.dsn).decode()
    except (SecretError, UnicodeDecodeError) as exc:
        raise BackendUnavailable(f"Settings: backend.postgres.dsn: {exc}") from None
    try:
        key = parse_key(resolve(postgres.encryptionKey))
    except (SecretError, KeyProblem) as exc:
        raise BackendUnavailable(f"Settings: backend.postgres.encryptionKey: {exc}") from None
    return FleetState(
        path,
        node=node,
        db=Database(dsn, postgres.connectTimeout.total_seconds()),
        sealer=Sealer(key),
        lease_timeout=postgres.leaseTimeout.total_seconds(),
    )


def build(desired: DesiredState, state: StateBackend) -> World:
    world = World(desired, state)
    for name, host in desired.iis_hosts.items():
        world.hosts[name] = _host(name, host.spec)
    for name, issuer in desired.issuers.items():
        world.issuers[name] = _LazyIssuer(name, issuer.spec, state, hosts=world.hosts)
    for name, store in desired.stores.items():
        spec = store.spec
        if spec.pemDirectory is not None:
            from reconciler.adapters.stores.pemdir import PemDirectoryStore

            world.stores[name] = PemDirectoryStore(name, spec.pemDirectory.path, state.path / "cache")
        elif spec.windows is not None:
            world.stores[name] = world.hosts[spec.windows.host].store(spec.windows.name.value, name=name)
    if any(c.spec.verify for c in desired.certificates.values()):
        from reconciler.adapters.prober import TlsProber

        world.prober = TlsProber()
    return world


def _host(name: str, spec: Any) -> BindingHost:
    if spec.backend.value == "emulated":
        from reconciler.adapters.iis.emulated import EmulatedHost

        return EmulatedHost(name, Path(spec.root))
    from reconciler.adapters.iis.windows import WindowsHost

    return WindowsHost(name, computer_name=spec.computerName)


class _LazyIssuer:
    """Builds the real backend on first use, so `plan` never opens an ACME account."""

    def __init__(
        self, name: str, spec: Any, state: StateBackend, hosts: Mapping[str, BindingHost] | None = None
    ) -> None:
        self.name = name
        self.spec = spec
        self.state = state
        self.state_path = state.path
        self.hosts = hosts or {}
        self._backend: Any = None
        self._lock = threading.Lock()  # the executor's threads ask at once: build exactly one backend

    @property
    def runs_locally(self) -> bool:
        """The local CA: no network, only the CPU and this machine's disk."""
        return self.spec.localCA is not None

    @property
    def backend(self) -> Any:
        with self._lock:
            return self._build()

    def _build(self) -> Any:
        if self._backend is None:
            if self.spec.localCA is not None:
                from reconciler.adapters.issuers.localca import LocalCAIssuer

                self._backend = LocalCAIssuer(
                    self.name,
                    self.spec.localCA,
                    self.state_path,
                    blobs=self.state.blobs(f"localca/{self.name}"),
                )
            else:
                self._backend = build_acme_issuer(
                    self.name,
                    self.spec.acme,
                    self.state_path,
                    hosts=self.hosts,
                    blobs=self.state.blobs(f"acme/{self.name}"),
                    challenge_log=self.state.record_log(f"acme/{self.name}/challenges"),
                )
        return self._backend

    def identity(self) -> str:
        from reconciler.core.policies import issuer_id

        return issuer_id(self.name, self.spec)

    def issue(self, request: Any) -> Any:
        return self.backend.issue(request)

    def renewal_window(self, cert_pem: bytes) -> Any:
        fn = getattr(self.backend, "renewal_window", None)
        return fn(cert_pem) if fn else None

    def offered_profiles(self) -> tuple[str, ...] | None:
        """ACME: the profiles its CA's directory listed when last fetched (read offline), or None."""
        if self.spec.acme is None:
            return None
        from reconciler.adapters.issuers.acme.issuer import cached_profiles

        return cached_profiles(self.state_path, self.name, self.spec.acme.directoryUrl)

    def refresh_directory(self) -> tuple[str, ...] | None:
        """ACME: fetch the directory now (never raises); the profiles it lists, or None."""
        return self.backend.refresh_directory() if self.spec.acme is not None else None

    def sync_account(self) -> bool:
        """ACME: update the account's contact when the email changed (cheap when it did not: no backend built)."""
        if self.spec.acme is None:
            return False
        from reconciler.adapters.issuers.acme.record import RECORD, load_record

        scope = f"acme/{self.name}"  # where the backend keeps it too (the database, for a fleet)
        where = str(self.state_path / scope / RECORD)
        record = load_record(self.state.blobs(scope), self.spec.acme.directoryUrl, where)
        if record is None or record.email == self.spec.acme.email:
            return False
        return bool(self.backend.sync_account())

    def rollover_key(self) -> str:
        """ACME: replace the account key (RFC 8555 key change)."""
        return str(self.backend.rollover_key())

    def revoke(self, material: Any, reason: str) -> None:
        self.backend.revoke(material, reason)

    def revocation_status(self, material: Any) -> Any:
        return self.backend.revocation_status(material)

    def refresh_crl(self, now: Any) -> bool:
        """Publish the local CA's CRL afresh when it is getting old (ACME issuers publish none)."""
        fn = getattr(self.backend, "refresh_crl", None) if self.spec.localCA is not None else None
        return bool(fn(now)) if fn else False

    def recover_challenges(self) -> int:
        """Clean up challenges an interrupted order left behind (cheap when there are none: no backend built)."""
        if self.spec.acme is None or not self.state.record_log(f"acme/{self.name}/challenges").read():
            return 0
        return int(self.backend.recover_challenges())


def build_acme_issuer(
    name: str, spec: Any, state_path: Path, *, hosts: Mapping[str, BindingHost] | None = None, **options: Any
) -> Any:
    """An ACME issuer with the real challenge solvers (``hosts``: the IIS hosts http01.iis writes to;
    ``options``: environ, retry_policy, order_timeout, blobs, challenge_log)."""
    from reconciler.adapters.issuers.acme.issuer import AcmeIssuer
    from reconciler.adapters.solvers import build_solver

    known = dict(hosts or {})

    def site_folders(name: str) -> Any:
        host = known.get(name)
        return host if isinstance(host, SiteFolders) else None

    return AcmeIssuer(
        name, spec, state_path, solvers=functools.partial(build_solver, hosts=site_folders), **options
    )
