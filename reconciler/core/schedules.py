"""When things happen: issuance backoff, the daemon's next pass, the next renewal-information fetch.

Pure decisions over times that are always parameters (the clock lives in the shell).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from reconciler.core.model import ObservedState
from reconciler.core.plan import Plan

BACKOFF_START = timedelta(hours=1)
BACKOFF_CAP = timedelta(hours=24)

RENEWAL_INFO_DEFAULT = timedelta(hours=6)  # without a Retry-After, and after a failure
RENEWAL_INFO_MIN = timedelta(minutes=1)
RENEWAL_INFO_MAX = timedelta(hours=24)


def backoff(failures: int) -> timedelta:
    """How long a certificate waits after ``failures`` consecutive failed issuances: 1 h, doubling, at most 24 h."""
    delay: timedelta = BACKOFF_START * (2 ** max(0, failures - 1))
    return min(BACKOFF_CAP, delay)


def next_due(
    plan: Plan, observed: ObservedState, now: datetime, expiry_warning: timedelta | None
) -> datetime | None:
    """The earliest moment after ``now`` at which some certificate needs a pass of its own."""
    times: list[datetime] = []
    names = {s.name for s in plan.certificates}
    for summary in plan.certificates:
        candidates = [summary.renew_at, summary.deferred_until, summary.not_after]
        if expiry_warning is not None and summary.not_after is not None:
            candidates.append(summary.not_after - expiry_warning)
        times.extend(t for t in candidates if t is not None and t > now)
    for attempts in observed.attempts.values():
        if attempts.certificate in names and attempts.next_retry and attempts.next_retry > now:
            times.append(attempts.next_retry)
    return min(times) if times else None


def next_renewal_info_fetch(retry_after: datetime | None, now: datetime) -> datetime:
    """When to ask a CA for renewal information again: its Retry-After within [1 min, 24 h], else 6 h from now."""
    if retry_after is None:
        return now + RENEWAL_INFO_DEFAULT
    return min(max(retry_after, now + RENEWAL_INFO_MIN), now + RENEWAL_INFO_MAX)
