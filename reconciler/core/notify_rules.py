"""When an alert or a recovery goes out (``Settings.notify``). Pure: state in, sends and new state out.

An ``alert`` goes out once when
  * a certificate has failed ``afterFailures`` (default 3) consecutive issuance attempts, or
  * ``afterFailures`` consecutive applies failed one of its other actions (install, bind, deploy) or
    its verification, or
  * it is within ``expiryWarning`` (default 7d) of expiry and its renewal point has passed without a
    successful renewal (a certificate that lives less than ``expiryWarning`` is not "expiring" while
    it is simply waiting for its renewal point);
when the condition clears, one ``recovered`` follows. Each channel has its own record (the state),
so a channel that could not be reached is retried on the next pass. An alert goes out at most once
per certificate per day (a flapping certificate cannot flood anyone); the ``recovered`` that answers
a sent alert is never held back.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from reconciler.core.durations import humanize, iso
from reconciler.core.spec import Notify
from reconciler.core.status import StatusRow

ALERT, RECOVERED = "alert", "recovered"
RATE_LIMIT = timedelta(days=1)


def _parse(value: Any) -> datetime | None:
    """A time this module itself recorded with ``iso`` (None when absent or not a time)."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Notice:
    certificate: str
    event: str  # alert | recovered
    condition: str  # failing | expiring (for recovered: the condition that cleared)
    message: str
    row: StatusRow


def condition(row: StatusRow, settings: Notify, now: datetime) -> tuple[str, str] | None:
    """The trouble a certificate is in, as (condition, sentence), or None."""
    failures = row.consecutive_failures
    if failures >= settings.afterFailures:
        return "failing", (
            f"{failures} consecutive failed attempt(s) to issue or renew; "
            f"last error: {row.last_error or 'unknown'}"
        )
    if row.action_failures >= settings.afterFailures:
        return "failing", (
            f"{row.action_failures} consecutive apply(s) failed to install, bind, deploy or verify it; "
            f"last error: {row.action_error or 'unknown'}"
        )
    not_after, renew_at = row.not_after, row.renew_at
    if (
        not_after is not None
        and not_after - now <= settings.expiryWarning
        and (renew_at is None or now >= renew_at)
    ):
        if not_after <= now:
            return "expiring", f"expired {iso(not_after)} and has not been renewed"
        return (
            "expiring",
            f"expires {iso(not_after)} (in {humanize(not_after - now)}) and has not been renewed",
        )
    return None


def decide(
    state: dict[str, Any], rows: Iterable[StatusRow], settings: Notify, channels: Iterable[str], now: datetime
) -> tuple[list[tuple[str, Notice]], dict[str, Any]]:
    """What to send on which channel, and the notify state without the certificates no longer in the spec."""
    channels = tuple(channels)
    sends: list[tuple[str, Notice]] = []
    new_state: dict[str, Any] = {}
    for row in rows:
        name = row.name
        entry = copy.deepcopy(state.get(name, {}))
        entry.setdefault("channels", {})
        found = condition(row, settings, now)
        for channel in channels:
            record = entry["channels"].get(channel, {})
            alerting = record.get("event") == ALERT
            if found is not None and not alerting:
                last_alert = _parse(record.get("alert_at"))
                if last_alert is None or now - last_alert >= RATE_LIMIT:
                    sends.append((channel, Notice(name, ALERT, found[0], found[1], row)))
            elif found is None and alerting:
                cleared = str(record.get("condition") or "failing")
                sends.append(
                    (channel, Notice(name, RECOVERED, cleared, _recovered_sentence(cleared, row), row))
                )
        entry["condition"] = found[0] if found else None
        new_state[name] = entry
    return sends, new_state


def _recovered_sentence(cleared: str, row: StatusRow) -> str:
    what = "its actions succeed again" if cleared == "failing" else "it has been renewed"
    return f"recovered: {what}; the current certificate expires {iso(row.not_after) or 'unknown'}"


def record_sent(state: dict[str, Any], channel: str, notice: Notice, now: datetime) -> None:
    entry = state.setdefault(notice.certificate, {"channels": {}})
    record = dict(entry.setdefault("channels", {}).get(channel, {}))
    record["event"] = notice.event
    record["condition"] = notice.condition
    record["at"] = iso(now)
    if notice.event == ALERT:
        record["alert_at"] = iso(now)
    entry["channels"][channel] = record
