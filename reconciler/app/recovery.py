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

Debris is only left in the vault, the stores, the task folders and the IIS machines by a holder of the
apply lock that did not finish cleanly; one that did leaves a mark (``StateBackend.recovery_needed``)
naming the folders its last full recovery swept. After a clean finish recovery walks only folders the mark
does not name (a Store or task added since) and the state dir without its vault (``plan`` and ``status``
write caches and a CA's directory there without the lock); at 10,000 certificates that spares reading
some 60,000 folders. What a recovery removed is on disk before the mark can vouch for it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from reconciler.adapters import tasks as task_adapter
from reconciler.app.executor import recover_challenges
from reconciler.ports import StateBackend
from reconciler.support import durable
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
    failed: list[str] = []
    removed_from: set[str] = set()
    places = _places(world)
    full = state.recovery_needed() or bool(counts["unfinished"])
    # the state dir itself, whole after a run that did not finish, else without its vault
    counts["temp"] += remove_temporaries(
        state.path,
        OWN_TEMP,
        recursive=True,
        failed=failed,
        skip=frozenset() if full else frozenset({"vault"}),
        removed_from=removed_from,
    )
    swept = state.swept()
    present = {key: _identity(key, folder) for key, (folder, _) in places.items()}
    for key, (_, sweep) in places.items():
        if full or present[key] is None or present[key] not in swept:  # else vouched for by the mark
            counts["temp"] += sweep(failed=failed, removed_from=removed_from)
    if full:
        counts["reindexed"], counts["vault"] = state.recover_vault()
        if counts["vault"]:
            removed_from.add(str(state.vault))
    if removed_from:  # on disk before a clean mark vouches for them
        try:
            durable.settle(*sorted(removed_from))
        except OSError as exc:
            log.warning("recovery.sync.failed", error=str(exc))
            failed.append(str(exc))
    if failed:
        state.mark_unclean()  # what could not be read or removed is looked for again next time
    else:  # a place that is not there (an unmounted share) is vouched for only once it has been swept
        state.recovered([identity for identity in present.values() if identity is not None])
    counts["challenges"] = recover_challenges(world)
    if any(counts.values()):
        log.warning("recovery.done", **counts)
    return counts


PRUNED = re.compile(r"^\.[0-9A-F]+\.removing$")  # a files task's old version being deleted


def _sweep_pruned(versions: Path, **report: Any) -> int:
    """A files task's versions folder: only the versions a prune was deleting, never through a link."""
    if versions.is_symlink():
        return 0
    return remove_temporaries(versions, PRUNED, recursive=False, **report)


def _identity(key: str, folder: Path) -> str | None:
    """A place's name with the identity of the folder it is now (through links: a share mounted since, a
    link pointed elsewhere is another place); None when it is not there."""
    try:
        st = os.stat(folder)
    except OSError:
        return None
    return f"{key}@{st.st_dev}:{st.st_ino}"


def _places(world: Any) -> dict[str, tuple[Path, Callable[..., int]]]:
    """Where interrupted writes can leave temporaries besides the state dir, by a stable name: each folder,
    with what removes them there (``failed=``: a list that gets what could not be read or removed;
    ``removed_from=``: a set that gets the folders it removed from). The stores, the IIS machines, the task
    folders."""
    places: dict[str, tuple[Path, Callable[..., int]]] = {}
    stores = {os.path.abspath(store.path) for store in world.stores.values() if hasattr(store, "path")}
    for folder in sorted(stores):
        places[f"store:{folder}"] = (
            Path(folder),
            partial(remove_temporaries, Path(folder), OWN_TEMP, recursive=True),
        )
    for name, host in sorted(world.hosts.items()):
        sweep = getattr(host, "sweep_temporaries", None)
        if sweep is not None:
            root = Path(os.path.abspath(getattr(host, "root", name)))
            places[f"host:{name}:{root}"] = (root, sweep)
    for named in world.desired.certificates.values():
        for task in named.spec.tasks:
            if task.files is not None:
                folder = Path(task.files.path)
                versions = folder / task_adapter.VERSIONS  # certctl's own: a prune interrupted midway
                places.setdefault(  # leaves a .<version>.removing folder there, key included
                    f"task:{os.path.abspath(versions)}", (versions, partial(_sweep_pruned, versions))
                )
            elif task.pfx is not None:
                folder = Path(task.pfx.path).parent
            elif task.ccs is not None:
                folder = Path(task.ccs.path)
            else:
                continue
            key = os.path.abspath(folder)
            recursive = key in stores
            places.setdefault(
                f"task:{key}", (folder, partial(remove_temporaries, folder, WRITE_TEMP, recursive=recursive))
            )
    return places


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
