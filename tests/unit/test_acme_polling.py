"""How the ACME order polls the CA: Retry-After wins, else a short first pause that grows to a ceiling;
while the CA validates, the order (one request per round) is polled, not each authorization; the
authorizations are fetched at once; unused nonces are kept for the next request."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from acme import messages

from reconciler.adapters.issuers.acme import poll
from reconciler.adapters.issuers.acme.order import Order, _Pending
from reconciler.adapters.issuers.acme.transport import AnswerTime, NoncePool
from reconciler.core.spec import Acme
from reconciler.ports import IssueError
from reconciler.wiring import build_acme_issuer


def test_retry_after_in_seconds_and_as_a_date() -> None:
    now = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    assert poll.retry_after_seconds("7", now) == 7.0
    assert poll.retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90.0
    assert poll.retry_after_seconds(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0.0
    assert poll.retry_after_seconds(None) is None
    assert poll.retry_after_seconds("soon") is None


def test_backoff_starts_short_grows_to_a_ceiling_and_yields_to_retry_after() -> None:
    backoff = poll.Backoff(deadline=time.monotonic() + 600, what="x", timeout=600)
    ours = [backoff.pause(None) for _ in range(12)]
    assert ours[0] == poll.FIRST == 0.05
    assert all(b > a for a, b in itertools.pairwise(ours[:9]))  # grows ...
    assert max(ours) == poll.CEILING == 3.0  # ... up to the ceiling, and stays there
    assert ours[-1] == 3.0
    assert backoff.pause("20") == 20.0  # the CA's wish wins, even far above the ceiling
    assert backoff.pause("0") == 0.0


def test_a_retry_after_past_the_deadline_fails_the_order_as_transient() -> None:
    slept: list[float] = []
    backoff = poll.Backoff(
        deadline=time.monotonic() + 5, what="the order https://ca/o/1", timeout=5, sleep=slept.append
    )
    with pytest.raises(IssueError, match="asks to ask again in 60s") as caught:
        backoff.wait("60", "processing")
    assert caught.value.transient and caught.value.retry_after is not None
    assert slept == []  # it did not sleep first


def test_nonce_pool_hands_out_the_freshest_and_drops_stale_ones() -> None:
    pool = NoncePool(size=3)
    assert pool.take() is None
    for nonce in ("a", "b", "c", "d"):
        pool.put(nonce)
    assert len(pool) == 3  # the oldest ("a") was dropped
    assert [pool.take(), pool.take(), pool.take(), pool.take()] == ["d", "c", "b", None]
    stale = NoncePool(max_age=0.0)
    stale.put("old")
    assert stale.take() is None


class _Reply:
    def __init__(self, doc: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        self.doc, self.headers = doc, headers or {}

    def json(self) -> dict[str, Any]:
        return self.doc


def _authz(domain: str, status: str) -> dict[str, Any]:
    challenge: dict[str, Any] = {
        "type": "http-01",
        "url": f"https://ca/chall/{domain}",
        "token": "t" * 43,
        "status": status,
    }
    if status == "invalid":
        challenge["error"] = {"type": "urn:ietf:params:acme:error:connection", "detail": f"{domain}: refused"}
    return {"identifier": {"type": "dns", "value": domain}, "status": status, "challenges": [challenge]}


class _ValidatingCA:
    """An order that stays pending for ``rounds`` polls (answered with ``headers``), then becomes ``outcome``;
    its authorizations end ``outcome`` too. Records every URL asked for."""

    def __init__(
        self,
        rounds: int,
        outcome: str = "ready",
        headers: dict[str, str] | None = None,
        barrier: threading.Barrier | None = None,
    ) -> None:
        self.rounds, self.outcome, self.headers, self.barrier = rounds, outcome, headers or {}, barrier
        self.asked: list[str] = []
        self.lock = threading.Lock()

    def get_as_post(self, url: str) -> _Reply:
        with self.lock:
            self.asked.append(url)
            polls = self.asked.count(url)
        if "/authz/" in url:
            if self.barrier is not None:
                self.barrier.wait()  # every authorization must be asked for at the same time, or this breaks
            return _Reply(_authz(url.rsplit("/", 1)[-1], "invalid" if self.outcome == "invalid" else "valid"))
        status = "pending" if polls <= self.rounds else self.outcome
        doc = {"status": status, "identifiers": [], "authorizations": [], "finalize": "https://ca/f/1"}
        return _Reply(doc, self.headers if status == "pending" else {})


def _order(tmp_path: Path, slept: list[float]) -> Order:
    issuer = build_acme_issuer(
        "ca",
        Acme.model_validate(
            {"directoryUrl": "https://ca/dir", "solvers": [{"http01": {"standalone": {"port": 1}}}]}
        ),
        tmp_path,
    )
    return Order(
        None,  # type: ignore[arg-type]
        issuer.spec.solvers,
        [],
        issuer._solver_index,
        issuer.challenges,
        issuer.ari,
        30.0,
        None,
        structlog.get_logger(),
        sleep=slept.append,
        pool=issuer._pool,
    )


def _pending(*domains: str) -> list[_Pending]:
    from reconciler.ports import ChallengeTask

    return [
        _Pending(
            f"https://ca/authz/{d}",
            d,
            None,  # type: ignore[arg-type]
            None,  # type: ignore[arg-type]
            ChallengeTask(domain=d, kind="http-01", token="t", key_authorization="k"),
            0,
        )
        for d in domains
    ]


ORDER = "https://ca/order/1"


def test_validation_polls_the_order_no_sooner_than_retry_after_asks(tmp_path: Path) -> None:
    slept: list[float] = []
    ca = _ValidatingCA(rounds=3, headers={"Retry-After": "2"})
    order = _order(tmp_path, slept)._wait_validation(
        ca,  # type: ignore[arg-type]
        ORDER,
        _pending("a.example", "b.example"),
        time.monotonic() + 30,
    )
    assert order.status == messages.STATUS_READY
    assert slept == [2.0, 2.0, 2.0]
    assert ca.asked == [ORDER] * 4  # one request per round for both names, not one per authorization


def test_without_retry_after_the_first_poll_comes_after_50_ms_and_pauses_grow(tmp_path: Path) -> None:
    slept: list[float] = []
    _order(tmp_path, slept)._wait_validation(
        _ValidatingCA(rounds=3),  # type: ignore[arg-type]
        ORDER,
        _pending("a.example"),
        time.monotonic() + 30,
    )
    assert slept == pytest.approx([0.05, 0.08, 0.128])


def test_a_failed_validation_names_every_failed_name_from_authorizations_fetched_at_once(
    tmp_path: Path,
) -> None:
    # Each authorization request waits for the other: fetched one after the other, the barrier breaks.
    ca = _ValidatingCA(rounds=1, outcome="invalid", barrier=threading.Barrier(2, timeout=10))
    with pytest.raises(
        IssueError,
        match=r"validation failed: a\.example: connection: a\.example: refused; "
        r"b\.example: connection: b\.example: refused",
    ) as caught:
        _order(tmp_path, [])._wait_validation(
            ca,  # type: ignore[arg-type]
            ORDER,
            _pending("a.example", "b.example"),
            time.monotonic() + 30,
        )
    assert not caught.value.transient
    assert [p["identifier"] for p in caught.value.problem["subproblems"]] == [  # type: ignore[attr-defined]
        {"type": "dns", "value": "a.example"},
        {"type": "dns", "value": "b.example"},
    ]


def test_the_order_is_polled_no_sooner_than_retry_after_asks(tmp_path: Path) -> None:
    slept: list[float] = []
    answers = iter([("pending", "3"), ("processing", "1"), ("processing", None), ("valid", None)])

    class CA:
        def get_as_post(self, url: str) -> _Reply:
            status, after = next(answers)
            doc = {
                "status": status,
                "identifiers": [],
                "authorizations": [],
                "finalize": "https://ca/f/1",
                "certificate": "https://ca/cert/1",
            }
            return _Reply(doc, {"Retry-After": after} if after else {})

    order = _order(tmp_path, slept)._wait_order(
        CA(),  # type: ignore[arg-type]
        "https://ca/order/1",
        {"valid"},
        time.monotonic() + 30,
    )
    assert order.status == messages.STATUS_VALID
    assert slept == [3.0, 1.0, pytest.approx(poll.FIRST * poll.FACTOR**2)]


def test_the_shared_session_still_honours_proxy_and_ca_bundle_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from reconciler.adapters.issuers.acme import transport

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "ca.internal")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/corp-ca.pem")
    session = transport.Connection().session
    far = session.merge_environment_settings("https://acme.example/dir", {}, None, True, None)
    assert far["proxies"]["https"] == "http://proxy.corp:3128" and far["verify"] == "/etc/corp-ca.pem"
    near = session.merge_environment_settings(
        "https://ca.internal/acme/order/1", {}, None, "/my/ca.pem", None
    )
    assert "https" not in near["proxies"] and near["verify"] == "/my/ca.pem"  # NO_PROXY, and caBundle wins
    calls: list[str] = []
    monkeypatch.setattr(transport, "get_environ_proxies", lambda url, no_proxy=None: calls.append(url) or {})  # type: ignore[func-returns-value]
    for path in ("new-order", "authz/1", "authz/2"):
        session.merge_environment_settings(f"https://acme.example/{path}", {}, None, True, None)
    assert calls == []  # read once per host, not per request


def test_a_ca_that_answers_fast_is_first_polled_sooner_and_one_across_the_internet_as_before() -> None:
    assert poll.first_pause(None) == 0.05  # not measured yet
    assert poll.first_pause(0.004) == pytest.approx(0.012)  # this machine: three answer times
    assert poll.first_pause(0.0001) == 0.005  # never sooner than 5 ms
    assert (
        poll.first_pause(0.02) == 0.05 and poll.first_pause(0.3) == 0.05
    )  # the internet: 50 ms, as without it
    backoff = poll.Backoff(time.monotonic() + 30, "the order", 30, interval=poll.first_pause(0.004))
    assert [backoff.pause(None) for _ in range(3)] == pytest.approx([0.012, 0.0192, 0.03072])


def test_the_answer_time_is_a_moving_average_of_the_ca_s_requests() -> None:
    measured = AnswerTime()
    measured.observe(0.010)
    assert measured.value == pytest.approx(0.010)
    for _ in range(50):
        measured.observe(0.002)
    assert measured.value == pytest.approx(0.002, abs=1e-4)
