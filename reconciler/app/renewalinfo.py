"""ACME Renewal Information (RFC 9773) for the planner: fetch each certificate's suggested window.

The planner is pure, so the window it honours (``policies.renewal_point``) has to be in the observed
state already: before observing, ``plan``, ``apply``, ``status`` and the daemon call
``refresh_renewal_info``, which asks every ACME Issuer whose CA offers renewalInfo about the current
version of each of its certificates and keeps the answer in the attempts store
(``ari_window_start``/``ari_window_end``/``ari_for``), with the time it asked (``ari_fetched_at``)
and the earliest time it may ask again (``ari_next_fetch``: the CA's Retry-After, clamped to
[1 min, 24 h] as RFC 9773 §4.3 suggests, or 6 h without one). A CA that offers no renewalInfo or does
not answer is asked again after 6 h, and a window already known for that version is kept.

Nothing here is ever fatal: every failure is logged and the plan falls back to the renewal policy.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from reconciler.app.world import World
from reconciler.core.planner import current_version
from reconciler.core.policies import issuer_of
from reconciler.core.schedules import next_renewal_info_fetch
from reconciler.ports import RenewalWindow
from reconciler.state.statedir import LockBusy
from reconciler.support.logging import get_logger

log = get_logger()

WORKERS = 8
LOCK_WAIT = 2.0  # seconds a plan waits for the state dir's lock to store what it fetched


@dataclass(frozen=True)
class _Job:
    certificate: str
    issuer: str
    thumbprint: str
    cert_pem: bytes
    fetch: Callable[[bytes], RenewalWindow | None]


@dataclass(frozen=True)
class Fetched:
    certificate: str
    thumbprint: str
    window: RenewalWindow | None  # None: the CA offers no renewalInfo, or did not answer
    next_fetch: datetime


def due_jobs(world: World, now: datetime) -> list[_Job]:
    """Certificates whose current version came from their (ACME) Issuer and whose window is not fresh."""
    desired, state = world.desired, world.state
    if not any(i.spec.acme is not None for i in desired.issuers.values()):
        return []
    attempts = state.attempts()
    issuer_specs = {n: i.spec for n, i in desired.issuers.items()}
    jobs: list[_Job] = []
    for name, cert in sorted(desired.certificates.items()):
        current = current_version(state.issued_for(name))
        if current is None:
            continue
        issuer_name = issuer_of(current, issuer_specs, cert.spec.issuers)
        issuer = desired.issuers.get(issuer_name) if issuer_name is not None else None
        backend = world.issuers.get(issuer_name) if issuer_name is not None else None
        if issuer_name is None or issuer is None or issuer.spec.acme is None or backend is None:
            continue  # from none of its Issuers (it is reissued anyway), or not from an ACME CA
        fetch = getattr(backend, "renewal_window", None)
        if fetch is None:
            continue
        thumbprint = current.info.thumbprint
        seen = attempts.get(name)
        if (
            seen is not None
            and seen.ari_for == thumbprint
            and seen.ari_next_fetch is not None
            and seen.ari_next_fetch > now
        ):
            continue  # the CA asked us not to ask again before then
        try:
            cert_pem = (Path(state.vault) / name / thumbprint / "cert.pem").read_bytes()
        except OSError as exc:
            log.warning("ari.certificate_unreadable", certificate=name, thumbprint=thumbprint, error=str(exc))
            continue
        jobs.append(_Job(name, issuer_name, thumbprint, cert_pem, fetch))
    return jobs


def next_fetch(window: RenewalWindow | None, now: datetime) -> datetime:
    """When to ask again (``schedules.next_renewal_info_fetch`` of the window's Retry-After)."""
    return next_renewal_info_fetch(window.retry_after if window is not None else None, now)


def fetch_all(jobs: list[_Job], now: datetime, workers: int = WORKERS) -> list[Fetched]:
    if not jobs:
        return []

    def one(job: _Job) -> Fetched:
        try:
            window = job.fetch(job.cert_pem)
        except Exception as exc:  # noqa: BLE001 - renewal information is advice; never fatal
            log.warning(
                "ari.fetch_failed",
                certificate=job.certificate,
                issuer=job.issuer,
                error=str(exc) or repr(exc),
            )
            window = None
        if window is not None:
            log.info(
                "ari.window",
                certificate=job.certificate,
                issuer=job.issuer,
                thumbprint=job.thumbprint,
                start=window.start.isoformat(),
                end=window.end.isoformat(),
            )
        return Fetched(job.certificate, job.thumbprint, window, next_fetch(window, now))

    with ThreadPoolExecutor(
        max_workers=max(1, min(workers, len(jobs))), thread_name_prefix="certctl-ari"
    ) as pool:
        return list(pool.map(one, jobs))


def store(world: World, results: list[Fetched], now: datetime) -> None:
    state = world.state
    known = state.attempts()  # read once: one lookup per result below
    for r in results:
        changes: dict[str, Any] = {
            "ari_for": r.thumbprint,
            "ari_fetched_at": now,
            "ari_next_fetch": r.next_fetch,
        }
        if r.window is not None:
            changes.update(ari_window_start=r.window.start, ari_window_end=r.window.end)
        else:
            seen = known.get(r.certificate)
            if seen is None or seen.ari_for != r.thumbprint:  # keep a window already known for this version
                changes.update(ari_window_start=None, ari_window_end=None)
        state.update_attempts(r.certificate, **changes)


def refresh_renewal_info(
    world: World, now: datetime, *, locked: bool = False, workers: int = WORKERS
) -> list[Fetched]:
    """Fetch and keep the CA's renewal window of every certificate that is due for a look.

    ``locked``: the caller holds the state dir's lock (apply, the daemon); otherwise (plan, status) the
    answers are stored under the lock, and dropped (with a log line) while another certctl applies.
    Never raises.
    """
    try:
        jobs = due_jobs(world, now)
        results = fetch_all(jobs, now, workers)
        if not results:
            return []
        if locked:
            store(world, results, now)
        else:
            with world.state.lock(wait=LOCK_WAIT, purpose="storing renewal information"):
                store(world, results, now)
        return results
    except LockBusy as exc:
        log.info("ari.not_stored", reason=str(exc))
    except Exception as exc:  # noqa: BLE001 - never fatal: the renewal policy alone still decides
        log.warning("ari.refresh_failed", error=str(exc) or repr(exc))
    return []


__all__ = ["Fetched", "next_fetch", "refresh_renewal_info"]
