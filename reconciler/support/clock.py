"""The one clock of the shell (``reconciler.ports.Clock``); the core takes the time as a parameter."""

from __future__ import annotations

from datetime import UTC, datetime


class SystemClock:
    """Timezone-aware UTC from the operating system."""

    def now(self) -> datetime:
        return datetime.now(UTC)


class FixedClock:
    """A clock that always says ``at`` (planning ``--at``, tests, replays)."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


SYSTEM = SystemClock()
