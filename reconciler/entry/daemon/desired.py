"""The desired state in force: the last valid one. An edit that makes the directory invalid is reported
(log ``desired_state.invalid``, /status, /healthz 503, ``certctl_desired_state_valid 0``) and changes
nothing: the last valid desired state stays in force until the directory is valid again."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.app.loader import InvalidDesiredState, load
from reconciler.core.durations import iso
from reconciler.core.model import DesiredState
from reconciler.core.planner import desired_fingerprint
from reconciler.entry.daemon.metrics import Metrics
from reconciler.ports import Clock
from reconciler.support.logging import get_logger

log = get_logger()


class DesiredInForce:
    def __init__(
        self,
        directory: Path,
        clock: Clock,
        metrics: Metrics,
        view: Callable[[DesiredState], DesiredState] = lambda d: d,
    ) -> None:
        self.directory = directory
        self.view = view  # fleet: the part of the desired state that is this node's
        self.clock = clock
        self.metrics = metrics
        self.current: DesiredState | None = None  # the last valid desired state: the one in force
        self.error: dict[str, Any] | None = None  # while the directory is invalid: its problems, since when
        self.state_dir_problem: Callable[[DesiredState], str | None] = lambda _d: None
        self._fingerprinted: tuple[DesiredState | None, str] = (None, "")

    @property
    def valid(self) -> bool:
        return self.error is None

    def fingerprint(self, desired: DesiredState) -> str:
        if self._fingerprinted[0] is not desired:
            self._fingerprinted = (desired, desired_fingerprint(desired))
        return self._fingerprinted[1]

    def reload(self) -> None:
        """Load the directory; a valid result is put in force, an invalid one is reported."""
        try:
            desired = self.view(load(self.directory))
        except InvalidDesiredState as exc:
            self.invalid([str(d) for d in exc.diagnostics])
            return
        except Exception as exc:  # noqa: BLE001 - e.g. an unreadable directory
            self.invalid([f"{self.directory}: cannot load the desired state: {exc}"])
            return
        problem = self.state_dir_problem(desired)
        if problem is not None:
            self.invalid([problem])
            return
        previous = self.current
        self.current = desired
        if self.error is not None:
            log.info("desired_state.valid_again", revision=desired.revision)
        self.error = None
        self.metrics.desired_valid.set(1)
        self.metrics.desired_errors.set(0)
        if (
            previous is None
            or previous.revision != desired.revision
            or self.fingerprint(previous) != self.fingerprint(desired)
        ):
            log.info(
                "desired_state.loaded", certificates=len(desired.certificates), revision=desired.revision
            )

    def invalid(self, errors: list[str]) -> None:
        if self.error is None or self.error["errors"] != errors:
            log.error(
                "desired_state.invalid",
                problems=len(errors),
                errors=errors,
                in_force=self.current.revision if self.current else None,
                note="the last valid desired state stays in force; nothing changes because of this edit"
                if self.current
                else "nothing is reconciled until the desired state is valid",
            )
            self.error = {"errors": errors, "since": iso(self.clock.now())}
        self.metrics.desired_valid.set(0)
        self.metrics.desired_errors.set(len(errors))

    def doc(self) -> dict[str, Any]:
        """What /status and /healthz say about it."""
        return {
            "valid": self.error is None,
            "in_force": self.current.revision if self.current else None,
            **(self.error or {}),
        }
