"""Durations as written in specs: ``90s``, ``15m``, ``12h``, ``30d``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_DURATION = re.compile(r"^([0-9]+)(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
DURATION_PATTERN = r"^[0-9]+(s|m|h|d)$"
MAX_DURATION = timedelta(days=36500)  # a hundred years: longer is a typo, and would overflow date arithmetic
LATEST = datetime(9000, 1, 1, tzinfo=UTC)  # --at beyond this leaves no room for renewal arithmetic


def parse_duration(text: str) -> timedelta:
    """Parse ``<number><s|m|h|d>``; raise ValueError with a sentence a user can act on."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write a whole number and a unit, like 90s, 15m, 12h or 30d"
        )
    digits = match.group(1).lstrip("0") or "0"
    seconds = int(digits) * _UNITS[match.group(2)] if len(digits) <= 15 else None
    if seconds is None or seconds > MAX_DURATION.total_seconds():
        raise ValueError(
            f"{text.strip()[:40]!r} is longer than {MAX_DURATION.days}d, the longest duration allowed"
        )
    return timedelta(seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest exact spelling of a duration (``timedelta(days=30)`` -> ``30d``)."""
    seconds = int(value.total_seconds())
    for unit in ("d", "h", "m"):
        if seconds and seconds % _UNITS[unit] == 0:
            return f"{seconds // _UNITS[unit]}{unit}"
    return f"{seconds}s"


def humanize(value: timedelta) -> str:
    """A rough, readable span for messages (``3 days``, ``5 hours``, ``42 seconds``)."""
    seconds = abs(int(value.total_seconds()))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{seconds} second{'s' if seconds != 1 else ''}"


def parse_time(text: str, now: datetime) -> datetime:
    """``--at`` values: an ISO date or date-time (UTC if no zone), or ``+30d`` / ``-5d`` relative to now."""
    text = text.strip()
    if text.startswith("+"):
        value = now + parse_duration(text[1:])
    elif text.startswith("-"):
        value = now - parse_duration(text[1:])
    else:
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            value = value.astimezone(UTC)
        except (ValueError, OverflowError):
            raise ValueError(
                f"{text!r} is not a time; write a date (2027-01-15), a date-time, +30d or -5d"
            ) from None
    if value >= LATEST:
        raise ValueError(f"{text!r} is too far in the future; plan at a time before {LATEST.year}")
    return value


def iso(value: datetime | None) -> str | None:
    """UTC timestamps as ``2026-11-26T21:00:00Z``."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
