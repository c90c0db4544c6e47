"""refresh_renewal_info: which certificates are asked about, when again, what is kept, and that it never fails."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from reconciler.adapters.issuers.localca import LocalCAIssuer
from reconciler.app import renewalinfo
from reconciler.app.loader import load
from reconciler.app.observe import observe
from reconciler.app.renewalinfo import next_fetch, refresh_renewal_info
from reconciler.app.world import World
from reconciler.core.planner import plan as make_plan
from reconciler.core.policies import issuer_id
from reconciler.ports import IssueRequest, RenewalWindow
from reconciler.state.statedir import StateDir
from reconciler.wiring import build

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

SPECS = """\
apiVersion: certctl/v1
kind: Issuer
metadata: {name: ca}
spec:
  acme:
    directoryUrl: https://acme.example.com/dir
    agreeToS: true
    solvers: [{http01: {standalone: {port: 80}}}]
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec:
  localCA: {validity: 90d}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: acme-cert}
spec: {issuer: ca, domains: [www.example.com]}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: local-cert}
spec: {issuer: local, domains: [local.example.com]}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: moved}
spec: {issuer: ca, domains: [moved.example.com]}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: never-issued}
spec: {issuer: ca, domains: [new.example.com]}
"""


class FakeAri:
    """An ACME issuer's renewalInfo: answers from ``reply`` (a window, None, or an exception to raise)."""

    runs_locally = False

    def __init__(self) -> None:
        self.reply: RenewalWindow | Exception | None = RenewalWindow(
            NOW + timedelta(days=10), NOW + timedelta(days=11), retry_after=NOW + timedelta(hours=3)
        )
        self.asked: list[bytes] = []
        self.lock = threading.Lock()

    def identity(self) -> str:
        return "acme:https://acme.example.com/dir"

    def issue(self, request: Any) -> Any:
        raise AssertionError("refresh_renewal_info must never issue")

    def renewal_window(self, cert_pem: bytes) -> RenewalWindow | None:
        with self.lock:
            self.asked.append(cert_pem)
        if isinstance(self.reply, Exception):
            raise self.reply
        return self.reply


@pytest.fixture
def world(tmp_path: Path) -> tuple[World, FakeAri]:
    (tmp_path / "desired").mkdir()
    (tmp_path / "desired" / "all.yaml").write_text(SPECS)
    desired = load(tmp_path / "desired")
    state = StateDir(tmp_path / "state")
    local = LocalCAIssuer("local", desired.issuers["local"].spec.localCA, state.path)  # type: ignore[arg-type]
    acme_id = issuer_id("ca", desired.issuers["ca"].spec)
    for name, domain, ident in (
        ("acme-cert", "www.example.com", acme_id),
        ("local-cert", "local.example.com", "localca:local"),
        ("moved", "moved.example.com", "localca:local"),
    ):  # moved from the local CA
        material = local.issue(IssueRequest(name, (domain,), "ecdsa-p256", at=NOW - timedelta(days=1)))
        state.store_issued(name, material, ident, (domain,), NOW - timedelta(days=1), None)
    w = build(desired, state)
    fake = FakeAri()
    w.issuers["ca"] = fake
    return w, fake


def _acme_cert(w: World) -> tuple[str, bytes]:
    version = w.state.issued_for("acme-cert")[-1]
    return version.info.thumbprint, w.state.material("acme-cert", version.info.thumbprint).cert_pem


def test_asks_only_about_current_acme_certificates_and_keeps_the_answer(world: tuple[World, FakeAri]) -> None:
    w, fake = world
    thumbprint, cert_pem = _acme_cert(w)
    results = refresh_renewal_info(w, NOW)
    assert fake.asked == [cert_pem]  # not the local CA's, not one issued by another CA, not a missing one
    assert [r.certificate for r in results] == ["acme-cert"]
    a = w.state.attempts()["acme-cert"]
    assert a.ari_for == thumbprint
    assert (a.ari_window_start, a.ari_window_end) == (NOW + timedelta(days=10), NOW + timedelta(days=11))
    assert (a.ari_fetched_at, a.ari_next_fetch) == (NOW, NOW + timedelta(hours=3))
    assert set(w.state.attempts()) == {"acme-cert"}


def test_not_asked_again_before_retry_after_then_asked(world: tuple[World, FakeAri]) -> None:
    w, fake = world
    refresh_renewal_info(w, NOW)
    assert refresh_renewal_info(w, NOW + timedelta(hours=2, minutes=59)) == []
    assert len(fake.asked) == 1
    refresh_renewal_info(w, NOW + timedelta(hours=3))
    assert len(fake.asked) == 2


def test_a_new_version_is_asked_about_at_once(world: tuple[World, FakeAri]) -> None:
    w, fake = world
    refresh_renewal_info(w, NOW)
    w.state.update_attempts("acme-cert", ari_for=None)  # as the executor leaves it after a renewal
    refresh_renewal_info(w, NOW + timedelta(minutes=1))
    assert len(fake.asked) == 2


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        (None, timedelta(hours=6)),
        (timedelta(seconds=5), timedelta(minutes=1)),
        (timedelta(days=30), timedelta(hours=24)),
        (timedelta(hours=12), timedelta(hours=12)),
    ],
)
def test_next_fetch_is_the_retry_after_within_bounds(
    retry_after: timedelta | None, expected: timedelta
) -> None:
    window = RenewalWindow(NOW, NOW, retry_after=NOW + retry_after if retry_after else None)
    assert next_fetch(window, NOW) - NOW == expected
    assert next_fetch(None, NOW) - NOW == timedelta(hours=6)


def test_a_failing_ca_is_logged_never_fatal_and_a_known_window_is_kept(world: tuple[World, FakeAri]) -> None:
    w, fake = world
    refresh_renewal_info(w, NOW)
    w.state.update_attempts("acme-cert", ari_next_fetch=NOW)  # due again
    fake.reply = ConnectionError("the CA is down")
    with capture_logs() as logs:
        refresh_renewal_info(w, NOW + timedelta(minutes=5))
    assert any(e["event"] == "ari.fetch_failed" and "the CA is down" in e["error"] for e in logs)
    a = w.state.attempts()["acme-cert"]
    assert a.ari_window_start == NOW + timedelta(days=10)  # what the CA said before still stands
    assert a.ari_next_fetch == NOW + timedelta(minutes=5) + timedelta(hours=6)


def test_no_renewal_info_leaves_no_window(world: tuple[World, FakeAri]) -> None:
    w, fake = world
    fake.reply = None  # the CA offers no renewalInfo
    refresh_renewal_info(w, NOW)
    a = w.state.attempts()["acme-cert"]
    assert (a.ari_window_start, a.ari_window_end, a.ari_next_fetch) == (None, None, NOW + timedelta(hours=6))


def test_busy_state_dir_drops_the_answers_quietly(
    world: tuple[World, FakeAri], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = world
    monkeypatch.setattr(renewalinfo, "LOCK_WAIT", 0.1)
    other = StateDir(w.state.path)
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with other.lock(wait=1), capture_logs() as logs:  # another certctl applies
            assert refresh_renewal_info(w, NOW) == []
    finally:
        structlog.configure(**saved)
    assert any(e["event"] == "ari.not_stored" for e in logs)
    assert "acme-cert" not in w.state.attempts()
    assert refresh_renewal_info(w, NOW, locked=True)  # a caller that holds the lock stores them


def test_the_plan_renews_in_the_window(world: tuple[World, FakeAri]) -> None:
    w, fake = world
    fake.reply = RenewalWindow(NOW - timedelta(hours=2), NOW + timedelta(hours=1))
    refresh_renewal_info(
        w, NOW + timedelta(minutes=59, seconds=59)
    )  # the point in the window derived from the serial has passed
    plan = make_plan(w.desired, observe(w), NOW + timedelta(minutes=59, seconds=59))
    renew = next(a for a in plan.actions if a.certificate == "acme-cert")
    assert renew.reason.value == "RenewalWindow"
    assert "the CA's renewal window (ARI) opens" in renew.message


def test_a_window_that_has_passed_renews_at_once(world: tuple[World, FakeAri]) -> None:
    w, fake = world
    fake.reply = RenewalWindow(
        NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    )  # the CA wants it replaced now
    refresh_renewal_info(w, NOW)
    plan = make_plan(w.desired, observe(w), NOW)
    renew = next(a for a in plan.actions if a.certificate == "acme-cert")
    assert renew.reason.value == "RenewalWindowPassed"
    assert "wants this certificate replaced now" in renew.message
    assert next(c for c in plan.certificates if c.name == "acme-cert").state.value == "due"
