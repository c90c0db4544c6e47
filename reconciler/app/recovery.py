"""Crash recovery: undo what a crash, ``kill -9`` or a full disk left half-done. Run holding the apply lock,
by ``certctl apply``/``renew`` before they observe, and by the daemon at start and every maintenance pass.

* journal: every action with an intent but no outcome is reported and closed as ``recovered``;
  what it did is observed afresh, and the plan redoes whatever is missing;
* a torn last line of an append-only log gets its newline (appends also start on a fresh line);
* vault: a version folder that never reached the index (a crash between writing it and the index
  line, or a lost index line) is put back into the index when it is complete (certificate, chain,
  matching key, metadata), so an issued certificate is never forgotten or issued twice; an
  incomplete one is removed (its issuance is redone);
* the temporary files and folders of interrupted atomic writes are removed: state dir, PEM stores,
  task outputs, and every folder of an emulated IIS machine (its root and certificate stores);
* ACME challenge files and DNS records an interrupted order left answerable are removed;
* a journal over 8 MiB is rotated (all its entries are closed by then).

Debris is only left by a holder of the apply lock that did not finish cleanly; one that did leaves a mark
(``StateBackend.recovery_needed``). After a clean finish the walks through the vault, the stores, the task
folders and the IIS hosts' folders are skipped (at 10,000 certificates they read some 60,000 folders);
the logs, the journal, the state dir's own top level and its cache folder are still looked at.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from reconciler.app.executor import recover_challenges
from reconciler.ports import StateBackend
from reconciler.support.fs import WRITE_TEMP, remove_temporaries
from reconciler.support.logging import get_logger

log = get_logger()

OWN_TEMP = re.compile(r"^\..+\.(tmp|removing)$")  # certctl's own folders: any of its temporary names
LOGS = ("vault/index.jsonl", "attempts.jsonl", "deployments.jsonl", "bindings.jsonl", "journal.jsonl")


def recover(world: Any) -> dict[str, int]:
    state: StateBackend = world.state
    counts = {"unfinished": 0, "temp": 0, "vault": 0, "reindexed": 0, "torn": 0, "challenges": 0}
    for name in LOGS:
        counts["torn"] += _mend(state.path / name)
    counts["unfinished"] = len(state.close_unfinished(by="recovery"))
    if state.recovery_needed() or counts["unfinished"]:
        failed: list[str] = []
        counts["temp"] += _sweep_everywhere(world, state, failed)
        counts["reindexed"], counts["vault"] = state.recover_vault()
        if failed:
            state.mark_unclean()  # what could not be removed is looked for again next time
        else:
            state.recovered()
    else:  # the lock's previous holder finished cleanly: only a write made without the lock (a cache)
        for folder in (state.path, state.path / "cache"):  # can have left a temporary, and only here
            counts["temp"] += remove_temporaries(folder, OWN_TEMP, recursive=False)
    counts["challenges"] = recover_challenges(world)
    if any(counts.values()):
        log.warning("recovery.done", **counts)
    return counts


def _sweep_everywhere(world: Any, state: StateBackend, failed: list[str]) -> int:
    """Remove the temporaries of interrupted writes: the state dir, the stores, the IIS hosts, the task folders
    (what cannot be read or removed is added to ``failed``)."""
    removed = 0
    own = [state.path]
    foreign: list[Path] = []
    for store in world.stores.values():
        if hasattr(store, "path"):
            own.append(Path(store.path))
    for host in world.hosts.values():
        sweep = getattr(host, "sweep_temporaries", None)
        if sweep is not None:
            removed += int(sweep())
    for named in world.desired.certificates.values():
        for task in named.spec.tasks:
            if task.files is not None:
                foreign.append(Path(task.files.path))
            elif task.pfx is not None:
                foreign.append(Path(task.pfx.path).parent)
            elif task.ccs is not None:
                foreign.append(Path(task.ccs.path))
    for root in own:
        removed += remove_temporaries(root, OWN_TEMP, recursive=True, failed=failed)
    for root in foreign:
        removed += remove_temporaries(root, WRITE_TEMP, recursive=root in own, failed=failed)
    return removed


def _mend(path: Path) -> int:
    try:
        with open(path, "rb+") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return 0
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) == b"\n":
                return 0
            fh.write(b"\n")
            fh.flush()
            os.fsync(fh.fileno())
    except FileNotFoundError:
        return 0
    except OSError as exc:  # a full disk: appends still start on a fresh line
        log.warning("recovery.mend.failed", path=str(path), error=str(exc))
        return 0
    log.warning("recovery.mended", path=str(path), note="a torn last line (crash mid-append) was closed")
    return 1
