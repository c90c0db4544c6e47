"""Which ACME failures are worth a quick retry, how they are retried, and how they become IssueError.

Transient: ``badNonce`` (retried at once, RFC 8555 §6.5), ``serverInternal``, any 5xx answer,
connection errors and timeouts (retried with exponential backoff and full jitter, within a bounded
number of attempts and seconds). Everything else is permanent: the CA's problem document travels in
``IssueError.problem`` and its ``detail`` in the message. ``rateLimited`` is not retried here: it
carries the CA's ``Retry-After`` as ``IssueError.retry_after`` so the caller backs off for that long.
Transient failures that remain after the retries, and ``rateLimited``, are an ``outage`` of the CA: a
certificate with a list of Issuers tries the next one.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
import tenacity
from acme import errors as acme_errors
from acme import messages

from reconciler.ports import IssueError
from reconciler.support.logging import get_logger

log = get_logger()

T = TypeVar("T")

ERROR_PREFIX = "urn:ietf:params:acme:error:"
# Problem types that a second try can fix without anyone changing anything.
TRANSIENT_CODES = frozenset({"badNonce", "serverInternal"})


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries of one request to the CA: at most ``attempts`` tries within ``budget`` seconds."""

    attempts: int = 10
    budget: float = 30.0  # seconds from the first try; no sleep goes past it
    initial: float = 0.5  # backoff scale (full jitter: a random sleep in [0, initial * 2**n])
    maximum: float = 8.0  # largest single sleep
    # how the pauses are taken and the budget measured (tests record them instead of waiting)
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)


def http_status(exc: BaseException) -> int | None:
    status = getattr(exc, "http_status", None)
    if isinstance(status, int):
        return status
    if isinstance(exc, acme_errors.ClientError) and exc.args and isinstance(exc.args[0], requests.Response):
        return exc.args[0].status_code
    return None


def problem_code(exc: BaseException) -> str | None:
    if isinstance(exc, messages.Error):
        return str(exc.typ).removeprefix(ERROR_PREFIX) if exc.typ else None
    return None


def is_bad_nonce(exc: BaseException | None) -> bool:
    return isinstance(exc, acme_errors.BadNonce | acme_errors.MissingNonce) or (
        exc is not None and problem_code(exc) == "badNonce"
    )


def is_transient(exc: BaseException | None) -> bool:
    """True for failures a quick retry can fix (see the module docstring)."""
    if exc is None:
        return False
    if isinstance(exc, requests.exceptions.SSLError):
        return False  # a certificate the client does not trust will not become trusted by retrying
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    if isinstance(exc, acme_errors.NonceError):
        return True
    if isinstance(exc, messages.Error) and problem_code(exc) in TRANSIENT_CODES:
        return True
    status = http_status(exc)
    return status is not None and status >= 500 and problem_code(exc) != "rateLimited"


def problem_of(exc: BaseException) -> dict[str, object]:
    """The CA's problem document (RFC 7807) as a plain dict; {} when the failure was not one."""
    if isinstance(exc, messages.Error):
        try:
            data = json.loads(exc.json_dumps())
        except (TypeError, ValueError):
            data = {"type": str(exc.typ), "detail": exc.detail}
        return data if isinstance(data, dict) else {}
    return {}


def parse_retry_after(value: str | None, now: datetime | None = None) -> datetime | None:
    """An HTTP Retry-After (seconds or an HTTP date) as an aware UTC time; None when absent or unreadable."""
    if not value:
        return None
    now = now or datetime.now(UTC)
    value = value.strip()
    if value.isdigit():
        return now + timedelta(seconds=int(value))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC)


def describe(exc: BaseException) -> str:
    """A one-line account of a failure, with the CA's own words when it sent a problem document."""
    if isinstance(exc, messages.Error):
        code = problem_code(exc) or str(exc.typ)
        text = exc.detail or exc.title or exc.description or "no detail given"
        out = f"{code}: {text}"
        for sub in exc.subproblems or ():
            ident = f" ({sub.identifier.value})" if sub.identifier is not None else ""
            out += f"; {problem_code(sub) or sub.typ}{ident}: {sub.detail}"
        return out
    if isinstance(exc, requests.exceptions.SSLError):
        return f"TLS error (is caBundle right for this CA?): {_root_cause(exc)}"
    if isinstance(exc, requests.exceptions.ConnectTimeout | requests.exceptions.ReadTimeout):
        return f"timed out: {_root_cause(exc)}"
    if isinstance(exc, requests.exceptions.ConnectionError):
        return f"cannot connect: {_root_cause(exc)}"
    status = http_status(exc)
    if status is not None:
        return f"HTTP {status} without a problem document"
    return f"{type(exc).__name__}: {exc}"


_CAUSES = (
    ("Connection refused", "connection refused"),
    ("Name or service not known", "the host name does not resolve"),
    ("Temporary failure in name resolution", "the host name does not resolve"),
    ("No route to host", "no route to host"),
    ("Read timed out", "no answer in time"),
    ("timed out", "no answer in time"),
    ("CERTIFICATE_VERIFY_FAILED", "certificate verify failed"),
    ("RemoteDisconnected", "the server closed the connection"),
    ("Connection reset", "the server reset the connection"),
)


def _root_cause(exc: BaseException) -> str:
    text = str(exc)
    for marker, label in _CAUSES:
        if marker in text:
            return label
    return text or type(exc).__name__


def to_issue_error(exc: BaseException, context: str) -> IssueError:
    """Turn a failure into IssueError: transient or permanent, with the problem document and Retry-After."""
    problem = problem_of(exc)
    retry_after = parse_retry_after(getattr(exc, "retry_after_header", None))
    transient = is_transient(exc)
    outage = transient
    if problem_code(exc) == "rateLimited":
        transient, outage = False, True  # not worth a quick retry here, but another CA can serve meanwhile
        retry_after = retry_after or datetime.now(UTC) + timedelta(hours=1)
    message = f"{context}: {describe(exc)}"
    if retry_after is not None and problem_code(exc) == "rateLimited":
        message += f" (the CA asks to retry after {retry_after.isoformat(timespec='seconds')})"
    return IssueError(message, transient=transient, problem=problem, retry_after=retry_after, outage=outage)


def _stop(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], bool]:
    started = policy.clock()

    def stop(state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= policy.attempts:
            return True
        return policy.clock() - started + (state.upcoming_sleep or 0.0) > policy.budget

    return stop


def _wait(policy: RetryPolicy) -> Callable[[tenacity.RetryCallState], float]:
    def wait(state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if is_bad_nonce(exc):
            return 0.0  # a fresh nonce is all it takes
        ceiling = min(policy.maximum, policy.initial * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)

    return wait


def call(policy: RetryPolicy, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried on transient failures under ``policy``; the last failure is re-raised."""

    def before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        log.info(
            "acme.retry",
            request=what,
            attempt=state.attempt_number,
            sleep=round(state.upcoming_sleep, 2),
            error=describe(exc) if exc is not None else None,
        )

    retrying = tenacity.Retrying(
        stop=_stop(policy),
        wait=_wait(policy),
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=before_sleep,
        sleep=policy.sleep,
        reraise=True,
    )
    return retrying(fn, *args, **kwargs)
