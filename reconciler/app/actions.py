"""What each kind of planned action does, given its typed detail: issue (with backoff on failure),
install into a store, deploy a task, clean up a store, change an IIS binding."""

from __future__ import annotations

import contextlib
import errno
import functools
import threading
from datetime import datetime

from reconciler.adapters import tasks as task_adapter
from reconciler.app.world import World
from reconciler.core.plan import (
    ISSUANCE,
    Action,
    ActionKind,
    BindingDetail,
    CleanupDetail,
    DeployDetail,
    InstallDetail,
    IssueDetail,
)
from reconciler.core.planner import current_version
from reconciler.core.policies import issuer_id, spec_digest
from reconciler.core.schedules import backoff
from reconciler.ports import BindingChange, Clock, IssueError, IssueRequest, LeaseLost, Material
from reconciler.support.logging import get_logger
from reconciler.support.parallel import locked
from reconciler.support.secrets import env_names

log = get_logger()

LOCAL_DISK_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})  # no backoff: nothing the CA did
LEASE_LOST_RETRIES = (
    3  # a fenced-off order waits for the new holder and installs its version; at most this often
)


def _failure_text(outages: list[tuple[str, IssueError]], last: str, error: str) -> str:
    """The error of a failed issuance, with what each earlier Issuer of the list answered."""
    if not outages:
        return error
    return "; ".join([*(f"{n} could not serve: {e}" for n, e in outages), f"{last}: {error}"])


def _latest_retry(last: IssueError, outages: list[tuple[str, IssueError]]) -> datetime | None:
    """When to try again after every Issuer failed: the earliest time any of them allows."""
    times = [e.retry_after for e in (last, *(e for _, e in outages))]
    if any(t is None for t in times):
        return None
    return min(t for t in times if t is not None)


class ActionRunner:
    """Carries out one action at a time, from any of the executor's threads (two orders for one
    certificate, or two changes of one IIS host, never run at once)."""

    def __init__(self, world: World, clock: Clock) -> None:
        self.world = world
        self.clock = clock
        self._host_locks: dict[str, threading.Lock] = {name: threading.Lock() for name in world.hosts}
        self._cert_locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @functools.cached_property
    def _secret_env(self) -> frozenset[str]:
        """The environment variables any spec names as a secret: never handed to reload or script commands.
        Found when a task first runs (walking 10,000 certificates' specs takes 0.2 s an apply need not pay)."""
        return env_names(self.world.desired)

    def carry_out(self, action: Action) -> dict[str, object]:
        """Do ``action``; what it did (for the journal and the log), or an exception."""
        detail = action.detail
        if action.kind in ISSUANCE:
            return self._issue(action)
        if isinstance(detail, InstallDetail):
            return self._install(action, detail)
        if isinstance(detail, DeployDetail):
            return self._deploy(action, detail)
        if isinstance(detail, CleanupDetail):
            return self._cleanup(detail)
        if isinstance(detail, BindingDetail):
            return self._bind(action, detail)
        raise RuntimeError(
            f"action {action.id} ({action.kind.value}) carries no detail certctl can carry out"
        )

    def runs_locally(self, action: Action) -> bool:
        """Whether ``action`` only computes and writes local files (an issuance by local CAs only, an install
        into a store of files, with the state in files of this machine): such actions gain nothing from
        running at once in threads of one process. Anything that may wait on the network (a CA, a fleet's
        database and its leases) is not local work."""
        if not self.world.state.runs_locally:
            return False
        detail = action.detail
        if action.kind in ISSUANCE:
            return self._issued_locally(action.certificate)
        if isinstance(detail, InstallDetail):
            store = self.world.stores.get(detail.store)
            return store is not None and store.runs_locally
        return False

    def _issued_locally(self, name: str) -> bool:
        """Whether every Issuer of the certificate is a local CA (no network)."""
        spec = self.world.desired.certificates[name].spec
        return all(n in self.world.issuers and self.world.issuers[n].runs_locally for n in spec.issuers)

    # --- actions ------------------------------------------------------------------------------------------

    def _cert_lock(self, name: str) -> threading.Lock:
        with self._guard:
            return self._cert_locks.setdefault(name, threading.Lock())

    def _issue(self, action: Action) -> dict[str, object]:
        """Issue from the certificate's Issuers in order: the next one only when a CA cannot serve (an
        ``outage``: unreachable, 5xx after retries, rate limited); a failure that is the certificate's own
        (a refused name, a failed challenge, CAA) stops at once. One backoff when every CA failed."""
        name = action.certificate
        state = self.world.state
        # never two orders for one certificate (in a fleet: a lease in the database)
        with locked(self._cert_lock(name)):
            if isinstance(action.detail, IssueDetail):
                planned = action.detail.replaces
            else:
                newest = current_version(state.issued_for(name))
                planned = newest.info.thumbprint if newest else None
            for _ in range(LEASE_LOST_RETRIES):
                with state.issuance(name, planned) as grant:
                    if grant.adopt is not None:  # another node issued it meanwhile: install that one
                        return {"thumbprint": grant.adopt, "adopted": "true"}
                    if (
                        grant.taken_from is not None
                    ):  # its holder died mid-order: clean up what it left answerable
                        for issuer_name in self.world.desired.certificates[name].spec.issuers:
                            recover = getattr(self.world.issuers.get(issuer_name), "recover_challenges", None)
                            if recover is not None:
                                recover()
                    try:
                        return self._order(name)
                    except LeaseLost:  # another node took the lease over: wait for it, install its version
                        continue
            raise IssueError(
                f"{name}: the issuance lease was taken over {LEASE_LOST_RETRIES} times while this node ordered; "
                "nothing was stored, retried later",
                transient=True,
            )

    def _order(self, name: str) -> dict[str, object]:
        """Order from the certificate's Issuers in turn (the caller holds the certificate's lock or lease)."""
        desired = self.world.desired
        spec = desired.certificates[name].spec
        state = self.world.state
        current = current_version(state.issued_for(name))
        compromised = (
            current is not None and current.revocation is not None and current.revocation.key_compromised
        )
        key_pem = None
        if (
            spec.key.reuse
            and not compromised
            and current is not None
            and current.lost is None
            and current.info.key_algorithm == spec.key.algorithm.value
        ):
            key_pem = state.material(name, current.info.thumbprint).key_pem
        now = self.clock.now()
        if not self._issued_locally(name):  # an order can take minutes: `status` shows it while it runs
            state.update_attempts(name, wait=False, last_attempt=now)  # durable with the outcome
        outages: list[tuple[str, IssueError]] = []
        names = [n for n in spec.issuers if n in self.world.issuers]
        for position, issuer_name in enumerate(names):
            ident = issuer_id(issuer_name, desired.issuers[issuer_name].spec)
            replaces_pem = None  # the certificate being renewed, for ACME ARI `replaces` (same CA only)
            if current is not None and current.issuer_id == ident:
                with contextlib.suppress(OSError, ValueError):
                    replaces_pem = state.material(name, current.info.thumbprint).cert_pem
            request = IssueRequest(
                certificate=name,
                domains=tuple(spec.domains),
                key_algorithm=spec.key.algorithm.value,
                key_pem=key_pem,
                replaces=current.info if current else None,
                at=now,
                replaces_pem=replaces_pem,
            )
            try:
                material = self.world.issuers[issuer_name].issue(request)
            except IssueError as exc:
                if exc.outage and position + 1 < len(names):
                    log.warning(
                        "issue.fallback",
                        certificate=name,
                        issuer=issuer_name,
                        error=str(exc),
                        next=names[position + 1],
                    )
                    outages.append((issuer_name, exc))
                    continue
                self._record_failure(
                    name, _failure_text(outages, issuer_name, str(exc)), _latest_retry(exc, outages), now
                )
                raise IssueError(
                    _failure_text(outages, issuer_name, str(exc)),
                    transient=exc.transient,
                    problem=exc.problem,
                    retry_after=exc.retry_after,
                    outage=exc.outage,
                ) from None
            except OSError as exc:
                if exc.errno not in LOCAL_DISK_ERRORS:
                    self._record_failure(name, f"{exc.__class__.__name__}: {exc}", None, now)
                raise  # a full or read-only disk is not the CA's fault: retried at once, once there is room
            except Exception as exc:
                self._record_failure(name, f"{exc.__class__.__name__}: {exc}", None, now)
                raise
            note = "; ".join(f"{n} could not serve: {e}" for n, e in outages) or None
            version = state.store_issued(
                name,
                material,
                ident,
                tuple(spec.domains),
                self.clock.now(),
                current.info.thumbprint if current else None,
                issuer=issuer_name,
                issuer_note=note,
            )
            state.update_attempts(
                name,
                wait=False,  # the issuance is committed (the vault index); this follows it to disk
                last_attempt=now,
                consecutive_failures=0,
                last_success=self.clock.now(),
                last_error=None,
                spec_digest=None,
                next_retry=None,
                ari_window_start=None,
                ari_window_end=None,
                ari_for=None,
            )
            return {
                "thumbprint": version.info.thumbprint,
                "not_after": version.info.not_after.isoformat(),
                "issuer": issuer_name,
            }
        raise RuntimeError(f"certificate {name} has no Issuer certctl can use")

    def _record_failure(
        self, name: str, message: str, retry_after: datetime | None, attempted: datetime
    ) -> None:
        state = self.world.state
        spec = self.world.desired.certificates[name].spec
        digest = spec_digest(spec, {n: i.spec for n, i in self.world.desired.issuers.items()})
        failures = state.attempts().get(name)
        # failures of an earlier spec (the Certificate or its Issuer was edited since) do not lengthen this backoff
        earlier = failures.consecutive_failures if failures and failures.spec_digest in (None, digest) else 0
        count = earlier + 1
        next_retry = self.clock.now() + backoff(count)
        if retry_after is not None and retry_after > next_retry:
            next_retry = retry_after
        state.update_attempts(
            name,
            last_attempt=attempted,
            consecutive_failures=count,
            last_error=message,
            next_retry=next_retry,
            spec_digest=digest,
        )

    def _material(self, action: Action, thumbprint: str | None) -> Material:
        """The certificate an action installs, deploys or binds: the one the plan named, or the newest issued
        (after issuance). One whose kept chain holds anything but certificates is refused: written into a
        store, it would be drift there on every plan, and written again by every apply."""
        from reconciler.support import pki  # cryptography: only once something is installed

        state = self.world.state
        if thumbprint is None:
            current = current_version(state.issued_for(action.certificate))
            if current is None:
                raise RuntimeError(f"certificate {action.certificate} has not been issued")
            thumbprint = current.info.thumbprint
        material = state.material(action.certificate, thumbprint)
        if not pki.chain_as_written(material.cert_pem, material.chain_pem, material.fullchain_pem):
            raise RuntimeError(
                f"the chain kept for version {thumbprint[:8]} of {action.certificate} "
                f"({state.chain_kept_at(action.certificate, thumbprint)}) holds something other than "
                f"certificates, so it is not used; issue the certificate again: certctl renew {action.certificate}"
            )
        return material

    def _install(self, action: Action, detail: InstallDetail) -> dict[str, object]:
        material = self._material(action, detail.thumbprint)
        stored = self.world.stores[detail.store].install(action.certificate, material, self.clock.now())
        return {"thumbprint": material.info.thumbprint, "ref": stored.ref}

    def _deploy(self, action: Action, detail: DeployDetail) -> dict[str, object]:
        index = detail.task
        spec = self.world.desired.certificates[action.certificate].spec
        task = spec.tasks[index]
        material = self._material(action, detail.thumbprint)
        folder = self.world.state.vault / action.certificate / material.info.thumbprint
        task_adapter.deploy(action.certificate, index, task, spec, material, folder, self._secret_env)
        self.world.state.record_deployment(action.certificate, index, material.info.thumbprint)
        return {"thumbprint": material.info.thumbprint}

    def _cleanup(self, detail: CleanupDetail) -> dict[str, object]:
        self.world.stores[detail.store].remove(detail.ref)
        return {"thumbprint": detail.thumbprint}

    def _bind(self, action: Action, detail: BindingDetail) -> dict[str, object]:
        host_name = detail.host
        thumbprint = detail.thumbprint
        if thumbprint is None and action.kind is not ActionKind.unbind:
            thumbprint = self._material(action, None).info.thumbprint
        change = BindingChange(
            op=detail.op,
            site=detail.site,
            protocol=detail.protocol,
            information=detail.binding,
            ssl_flags=detail.ssl_flags,
            thumbprint=thumbprint or None,
            store=detail.store,
            old_thumbprint=detail.old_thumbprint or None,
        )
        with self._host_locks.setdefault(host_name, threading.Lock()):
            if change.op == "add":  # recorded first: a crash after the commit must not make it look foreign
                self.world.state.record_binding(
                    host_name, change.site, change.information, action.certificate
                )
            try:
                self.world.hosts[host_name].apply([change])
            except Exception:
                if change.op == "add" and not self._binding_exists(host_name, change):
                    self.world.state.forget_binding(host_name, change.site, change.information)
                raise
            if change.op == "remove":
                self.world.state.forget_binding(host_name, change.site, change.information)
        return {"thumbprint": str(thumbprint) if thumbprint else ""}

    def _binding_exists(self, host_name: str, change: BindingChange) -> bool:
        try:
            host = self.world.hosts[host_name].observe()
        except Exception:  # noqa: BLE001 - cannot tell: keep the record (it only allows a later prune)
            return True
        return any(
            b.information == change.information and b.protocol == change.protocol
            for s in host.sites
            if s.name == change.site
            for b in s.bindings
        )
