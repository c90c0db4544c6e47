"""The journal of challenges an order made answerable, so a killed order never leaves one behind.

Every challenge is written to ``<state_dir>/acme/<issuer>/challenges.jsonl`` (fleet mode: a table of the
database, tagged with the order's issuance lease) before its solver makes it answerable and removed once the solver has cleaned it up; ``recover`` cleans up whatever a crash
or ``kill -9`` left in between.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from reconciler.core import spec as specs
from reconciler.ports import ChallengeTask, RecordLog, SolverFactory
from reconciler.state.statedir import KeyedLog
from reconciler.support.logging import get_logger

log = get_logger()


class ChallengeJournal:
    def __init__(
        self,
        path: Path,
        issuer: str,
        solvers: SolverFactory,
        environ: Mapping[str, str] | None,
        records: RecordLog | None = None,
    ) -> None:
        self.log: RecordLog = records if records is not None else KeyedLog(path)
        self.issuer = issuer
        self.solvers = solvers
        self.environ = environ

    def remember(self, solver: specs.Solver, tasks: list[ChallengeTask]) -> None:
        """Before ``solver.prepare(tasks)``: what to clean up should the process die."""
        dumped = solver.model_dump(mode="json", by_alias=True, exclude_none=True)
        self.log.set_all({_key(task): {"solver": dumped, "task": asdict(task)} for task in tasks})

    def forget(self, tasks: list[ChallengeTask]) -> None:
        """After ``solver.cleanup(tasks)`` succeeded. Not waited for: should the line be lost, recovery only
        cleans up again what is already gone (cleanup tolerates that)."""
        for task in tasks:
            self.log.delete(_key(task), wait=False)

    def pending(self) -> dict[str, Any]:
        """The challenges made answerable and not yet cleaned up, by key."""
        return self.log.read()

    def recover(self) -> int:
        """Clean up the challenges a crashed process left answerable; returns how many were removed."""
        removed = 0
        for key, record in sorted(self.pending().items()):
            task = ChallengeTask(**record["task"])
            try:
                solver = self.solvers(specs.Solver.model_validate(record["solver"]), self.environ)
                solver.cleanup([task])
            except Exception as exc:  # noqa: BLE001 - reported and kept: the next pass tries again
                log.warning(
                    "acme.challenge.recovery_failed",
                    issuer=self.issuer,
                    domain=task.domain,
                    kind=task.kind,
                    error=str(exc),
                )
                continue
            self.log.delete(key)
            removed += 1
            log.warning(
                "acme.challenge.recovered",
                issuer=self.issuer,
                domain=task.domain,
                kind=task.kind,
                note="left by an interrupted order; removed",
            )
        return removed


def _key(task: ChallengeTask) -> str:
    return f"{task.kind}|{task.domain}|{task.token}"
