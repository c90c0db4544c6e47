"""Watching the desired-state directory: a debounced event for every change to a ``*.yaml``/``*.yml``
file (or a deletion) below it, never for the state dir or hidden files and folders."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reconciler.support.logging import get_logger

log = get_logger()

DEBOUNCE_MS, STEP_MS = 400, 50  # group changes for at most 400 ms; a change is final after 50 ms of quiet


def relevant_change(root: Path, state_path: Path | None, deleted: bool, path: str) -> bool:
    """Does a change of ``path`` concern the desired state?"""
    p = Path(path)
    if state_path is not None and (p == state_path or state_path in p.parents):
        return False
    try:
        rel = p.relative_to(root)
    except ValueError:
        rel = p
    if any(part.startswith(".") for part in rel.parts):
        return False
    return p.suffix in (".yaml", ".yml") or deleted


def watch(
    directory: Path, state_path: Path | None, on_change: Callable[[], None], stop: threading.Event
) -> None:
    """Call ``on_change`` for every debounced batch of relevant changes until ``stop`` is set (run in a thread)."""
    import watchfiles

    root = directory.resolve() if directory.exists() else directory
    state = state_path.resolve() if state_path is not None else None

    def relevant(change: Any, path: str) -> bool:
        return relevant_change(root, state, change == watchfiles.Change.deleted, path)

    while not stop.is_set():
        try:
            for changes in watchfiles.watch(
                directory,
                watch_filter=relevant,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                stop_event=stop,
                raise_interrupt=False,
            ):
                log.debug("watch.changed", files=sorted(p for _, p in changes)[:20])
                on_change()
        except Exception as exc:  # noqa: BLE001 - e.g. the directory does not exist (yet)
            log.warning("watch.failed", dir=str(directory), error=str(exc), note="retrying in 5 s")
            stop.wait(5)
