from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from reconciler.core.durations import format_duration, parse_duration, parse_time
from reconciler.core.model import Attempts, CertInfo, IssuedVersion
from reconciler.core.policies import renewal_point
from reconciler.core.schedules import backoff
from reconciler.core.spec import Renewal

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def version(days: float, serial: str = "1f") -> IssuedVersion:
    info = CertInfo(
        "A" * 40, "b" * 64, "x", ("x",), "ecdsa-p256", T0, T0 + timedelta(days=days), "CN=ca", serial
    )
    return IssuedVersion("x", info, "localca:local", T0, ("x",))


@given(st.floats(min_value=0.01, max_value=800), st.integers(min_value=1, max_value=99))
def test_renewal_point_is_inside_the_lifetime(days: float, percent: int) -> None:
    v = version(days)
    point = renewal_point(v, Renewal(lifetimePercent=percent)).at
    assert v.info.not_before <= point <= v.info.not_after


@given(st.integers(min_value=1, max_value=400), st.integers(min_value=1, max_value=500))
def test_before_expiry_longer_than_the_lifetime_never_loops(days: int, before: int) -> None:
    """A days-based rule on a short certificate must not renew on every run (NginxProxyManager #5483)."""
    v = version(days)
    point = renewal_point(v, Renewal(beforeExpiry=timedelta(days=before))).at
    assert point > v.info.not_before


def test_six_day_certificate_renews_after_four_and_a_half_days() -> None:
    assert renewal_point(version(6), Renewal(lifetimePercent=75)).at == T0 + timedelta(days=4, hours=12)


def test_ari_only_moves_renewal_earlier_and_is_deterministic() -> None:
    v = version(90)
    late = Attempts(
        "x",
        ari_window_start=T0 + timedelta(days=80),
        ari_window_end=T0 + timedelta(days=81),
        ari_for="A" * 40,
    )
    assert renewal_point(v, Renewal(lifetimePercent=75), late).at == T0 + timedelta(days=67, hours=12)
    early = Attempts(
        "x",
        ari_window_start=T0 + timedelta(days=30),
        ari_window_end=T0 + timedelta(days=32),
        ari_for="A" * 40,
    )
    first = renewal_point(v, Renewal(lifetimePercent=75), early)
    assert T0 + timedelta(days=30) <= first.at <= T0 + timedelta(days=32)
    assert renewal_point(v, Renewal(lifetimePercent=75), early) == first
    other = Attempts(
        "x",
        ari_window_start=T0 + timedelta(days=30),
        ari_window_end=T0 + timedelta(days=32),
        ari_for="B" * 40,
    )
    assert renewal_point(v, Renewal(lifetimePercent=75), other).at == T0 + timedelta(days=67, hours=12)


def test_backoff_doubles_from_an_hour_to_a_day() -> None:
    assert [backoff(n).total_seconds() / 3600 for n in range(1, 8)] == [1, 2, 4, 8, 16, 24, 24]


@given(st.integers(min_value=0, max_value=36500), st.sampled_from("smhd"))
def test_durations_round_trip(n: int, unit: str) -> None:
    assert parse_duration(format_duration(parse_duration(f"{n}{unit}"))) == parse_duration(f"{n}{unit}")


def test_parse_time() -> None:
    now = datetime(2026, 11, 26, 21, 0, tzinfo=UTC)
    assert parse_time("+30d", now) == now + timedelta(days=30)
    assert parse_time("2027-01-15", now) == datetime(2027, 1, 15, tzinfo=UTC)
    assert parse_time("2027-01-15T08:00:00Z", now) == datetime(2027, 1, 15, 8, tzinfo=UTC)
