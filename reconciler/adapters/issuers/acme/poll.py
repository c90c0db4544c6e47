"""How long to wait before asking the CA again about an authorization or an order it is still working on.

The CA's ``Retry-After`` wins whenever it sends one (RFC 8555 §7.5.1 and §7.4): certctl then asks again
no sooner than it says, however long that is. Without it, the first pause is short (``FIRST``, 50 ms:
a CA that validates at once answers the next poll) and each following pause is ``FACTOR`` times longer,
up to ``CEILING`` (3 s), so a slow validation costs a real CA a handful of requests, not hundreds.
A CA that answers requests much faster than that (on this machine or the next one: a test CA, a
company's own) gets its first poll after ``RTT_FACTOR`` times its typical answer time instead, never
sooner than ``FLOOR``: any CA across the internet, answering in 17 ms or more, is polled as above.
A pause that would end after the order's deadline fails the order as a transient error instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from reconciler.adapters.issuers.acme import retry
from reconciler.ports import IssueError

FIRST = 0.05  # seconds before the first poll
FACTOR = 1.6  # each pause this much longer than the one before
CEILING = 3.0  # seconds: the longest pause of certctl's own choosing
RTT_FACTOR = 3.0  # a CA that answers in t seconds is first polled after (at most) this many times t
FLOOR = 0.005  # seconds: the shortest first pause, however fast the CA answers


def first_pause(answer_time: float | None) -> float:
    """The first pause before polling a CA whose requests typically take ``answer_time`` seconds (None:
    not known yet): ``FIRST``, or less for a CA that answers much faster than that."""
    if answer_time is None:
        return FIRST
    return min(FIRST, max(FLOOR, RTT_FACTOR * answer_time))


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a ``Retry-After`` header asks to wait (delta-seconds or an HTTP date; never negative), or None."""
    if value is None or not value.strip():
        return None
    if value.strip().isdigit():
        return float(int(value.strip()))
    when = retry.parse_retry_after(value, now)
    if when is None:
        return None
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass
class Backoff:
    """The pauses between polls of one thing (an order, or the authorizations of one order)."""

    deadline: float  # time.monotonic() by which the thing must be done
    what: str  # for the error: "the order https://…", "the validation of a.example, b.example"
    timeout: float  # the order's timeout in seconds, for the error
    sleep: Callable[[float], None] = time.sleep
    interval: float = field(default=FIRST)  # the first pause (``first_pause``), then the current one

    def pause(self, retry_after: str | None) -> float:
        """The next pause in seconds: what the CA asked for, else the current step of the backoff (which grows)."""
        asked = retry_after_seconds(retry_after)
        ours = self.interval
        self.interval = min(self.interval * FACTOR, CEILING)
        return asked if asked is not None else ours

    def wait(self, retry_after: str | None, status: str) -> None:
        """Sleep before the next poll; IssueError (transient) when the pause would end past the deadline."""
        asked = retry_after_seconds(retry_after)
        seconds = self.pause(retry_after)
        if time.monotonic() + seconds > self.deadline:
            raise IssueError(
                f"{self.what} is still {status} after {self.timeout:g}s"
                + (f" (the CA asks to ask again in {seconds:g}s)" if asked is not None else ""),
                transient=True,
                retry_after=datetime.now(UTC) + timedelta(seconds=seconds) if asked is not None else None,
            )
        if seconds > 0:
            self.sleep(seconds)
