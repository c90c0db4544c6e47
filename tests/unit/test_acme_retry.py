"""Which ACME failures are transient, how they are retried, and what IssueError they become."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import requests
from acme import errors as acme_errors
from acme import messages

from reconciler.adapters.issuers.acme import retry
from reconciler.adapters.issuers.acme.retry import RetryPolicy

P = "urn:ietf:params:acme:error:"


def problem(
    code: str, detail: str = "details", status: int | None = None, retry_after: str | None = None
) -> messages.Error:
    exc = messages.Error(typ=P + code, detail=detail)  # type: ignore[call-arg]
    if status is not None:
        exc.http_status = status
    if retry_after is not None:
        exc.retry_after_header = retry_after
    return exc


def response(status: int) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    return r


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (problem("badNonce", status=400), True),
        (problem("serverInternal", status=500), True),
        (problem("rateLimited", status=429), False),
        (problem("rejectedIdentifier", status=400), False),
        (problem("unauthorized", status=403), False),
        (problem("malformed", status=400), False),
        (problem("caa", status=403), False),
        (problem("badCSR", status=400), False),
        (problem("somethingNew", status=503), True),
        (requests.exceptions.ConnectionError("refused"), True),
        (requests.exceptions.ReadTimeout("slow"), True),
        (requests.exceptions.SSLError("verify failed"), False),
        (acme_errors.ClientError(response(502)), True),
        (acme_errors.ClientError(response(404)), False),
        (acme_errors.MissingNonce(response(200)), True),
        (ValueError("bug"), False),
    ],
)
def test_classification(exc: BaseException, transient: bool) -> None:
    assert retry.is_transient(exc) is transient


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry.parse_retry_after("120", now) == now + timedelta(seconds=120)
    assert retry.parse_retry_after("Wed, 21 Oct 2026 07:28:00 GMT", now) == datetime(
        2026, 10, 21, 7, 28, tzinfo=UTC
    )
    assert retry.parse_retry_after("soon", now) is None
    assert retry.parse_retry_after(None, now) is None


def test_rate_limited_becomes_a_backoff_with_the_cas_time() -> None:
    err = retry.to_issue_error(
        problem("rateLimited", "too many certificates for example.com", 429, "3600"), "order for www"
    )
    assert not err.transient
    assert err.retry_after is not None
    assert timedelta(minutes=59) < err.retry_after - datetime.now(UTC) <= timedelta(hours=1)
    assert err.problem["type"] == P + "rateLimited"
    assert "order for www: rateLimited: too many certificates for example.com" in str(err)


def test_permanent_problem_keeps_the_document() -> None:
    err = retry.to_issue_error(problem("rejectedIdentifier", "policy forbids issuing for name"), "ctx")
    assert not err.transient
    assert err.problem == {"type": P + "rejectedIdentifier", "detail": "policy forbids issuing for name"}
    assert str(err) == "ctx: rejectedIdentifier: policy forbids issuing for name"


def test_connection_errors_read_well() -> None:
    exc = requests.exceptions.ConnectionError(
        "HTTPSConnectionPool(host='127.0.0.1', port=1): Max retries exceeded (Caused by NewConnectionError("
        "'Failed to establish a new connection: [Errno 111] Connection refused'))"
    )
    err = retry.to_issue_error(exc, "the CA at https://127.0.0.1:1/dir")
    assert err.transient
    assert str(err) == "the CA at https://127.0.0.1:1/dir: cannot connect: connection refused"


class Timeline:
    """The retry policy's clock and sleep: time moves only when the code sleeps or a request takes time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[tuple[float, float]] = []  # (when, how long)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append((self.now, seconds))
        self.now += seconds

    def policy(self, **limits: float) -> RetryPolicy:
        return RetryPolicy(**limits, sleep=self.sleep, clock=self.clock)  # type: ignore[arg-type]


def test_transient_failures_are_retried_then_succeed() -> None:
    calls: list[int] = []
    timeline = Timeline()

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise problem("serverInternal", status=500)
        return "ok"

    assert retry.call(timeline.policy(attempts=5, budget=5, initial=0.01), "test", flaky) == "ok"
    assert len(calls) == 3
    assert len(timeline.sleeps) == 2


def test_permanent_failures_are_not_retried() -> None:
    calls: list[int] = []

    def refuse() -> None:
        calls.append(1)
        raise problem("unauthorized", status=403)

    with pytest.raises(messages.Error):
        retry.call(RetryPolicy(), "test", refuse)
    assert calls == [1]


def test_retries_are_bounded_in_attempts() -> None:
    calls: list[int] = []
    timeline = Timeline()

    def down() -> None:
        calls.append(1)
        raise requests.exceptions.ConnectionError("refused")

    with pytest.raises(requests.exceptions.ConnectionError):
        retry.call(timeline.policy(attempts=4, budget=30, initial=0.01, maximum=0.02), "test", down)
    assert len(calls) == 4
    assert [seconds <= 0.02 for _, seconds in timeline.sleeps] == [True] * 3  # none longer than maximum


def test_retries_are_bounded_in_time() -> None:
    calls: list[float] = []  # when each try started
    timeline = Timeline()

    def down() -> None:
        calls.append(timeline.now)
        timeline.now += 0.05  # each refused request takes a moment
        raise requests.exceptions.ConnectionError("refused")

    with pytest.raises(requests.exceptions.ConnectionError):
        retry.call(timeline.policy(attempts=100, budget=0.5, initial=0.2, maximum=0.2), "test", down)
    assert 2 <= len(calls) <= 11  # the budget, not the 100 attempts, ended it (a try costs 0.05 s)
    assert timeline.sleeps, "transient failures were retried"
    assert all(when + seconds <= 0.5 for when, seconds in timeline.sleeps), "no sleep goes past the budget"
    assert all(started <= 0.5 for started in calls), "no try starts after the budget"


def test_bad_nonce_is_retried_without_sleeping() -> None:
    calls: list[int] = []
    timeline = Timeline()

    def nonce() -> str:
        calls.append(1)
        if len(calls) < 6:
            raise problem("badNonce", status=400)
        return "ok"

    assert retry.call(timeline.policy(attempts=10, initial=5, maximum=5), "test", nonce) == "ok"
    assert len(calls) == 6
    assert [seconds for _, seconds in timeline.sleeps] == [0.0] * 5
