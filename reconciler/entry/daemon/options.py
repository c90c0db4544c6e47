"""What `certctl daemon` was asked for, as typed options (the CLI builds them from its arguments)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class DaemonOptions:
    directory: Path  # the desired-state directory
    state_dir: str | None = None  # --state-dir (overrides Settings.stateDir)
    git_pull: bool = False  # --git-pull (or Settings.gitPull)
    metrics_address: str | None = None  # --metrics-address (overrides Settings.metrics.address)
    no_metrics: bool = False  # --no-metrics
    stop_grace: float = 30.0  # seconds the running actions may take after SIGTERM (CERTCTL_STOP_TIMEOUT)
    node: str | None = None  # --node (or $CERTCTL_NODE; default: the host name)

    @staticmethod
    def stop_grace_from_env() -> float:
        return float(os.environ.get("CERTCTL_STOP_TIMEOUT", "30"))
