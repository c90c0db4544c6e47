"""When the daemon runs a pass: the interval, the maintenance interval, the next due time, a retry.

Times of the loop are monotonic seconds (immune to clock changes); due times are UTC (renewal points).
Nothing here sleeps or reads a clock: both times are parameters, so each rule is testable alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

WAKE_SLACK = 0.05  # wake this long after a due time (renewal points are whole seconds)


@dataclass
class Schedule:
    interval: float  # seconds between interval passes (Settings.reconcileInterval, read at every step)
    maintenance_interval: float  # seconds between maintenance passes (Settings.maintenanceInterval)
    interval_mark: float = 0.0  # monotonic time of the last interval pass
    maintenance_mark: float = 0.0  # monotonic time of the last maintenance pass
    due: datetime | None = None  # the earliest renewal point, retry, expiry or expiry warning (UTC)
    retry_at: float | None = None  # monotonic time a failed or busy pass is retried

    def start(self, mono: float) -> None:
        self.interval_mark = self.maintenance_mark = mono

    def take(self, reasons: set[str], mono: float, utc: datetime) -> bool:
        """Add the reasons that have come due to ``reasons``; True when this pass is a maintenance pass."""
        if mono >= self.interval_mark + self.interval:
            reasons.add("interval")
            self.interval_mark = mono
        maintenance = "start" in reasons or mono >= self.maintenance_mark + self.maintenance_interval
        if maintenance:
            self.maintenance_mark = mono
        if self.due is not None and utc >= self.due:
            reasons.add("due")
        if self.retry_at is not None and mono >= self.retry_at:
            reasons.add("retry")
        return maintenance

    def timeout(self, mono: float, utc: datetime) -> float:
        """Seconds until the next pass is due (0 when one is due now)."""
        deadlines = [self.interval_mark + self.interval, self.maintenance_mark + self.maintenance_interval]
        if self.retry_at is not None:
            deadlines.append(self.retry_at)
        if self.due is not None:
            deadlines.append(mono + max(0.0, (self.due - utc).total_seconds()) + WAKE_SLACK)
        return max(0.0, min(deadlines) - mono)
