"""Running a user's command (deployment task, dns-01 script) with a timeout that always holds.

The command runs in its own process group; on timeout the whole group is killed, so a grandchild that
keeps the output pipes open cannot stretch the wait.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence


class CommandError(Exception):
    """The command could not start, timed out, or exited non-zero; the message says which, with its output's tail."""


def run(argv: Sequence[str], env: Mapping[str, str], timeout: float, what: str) -> str:
    """Run ``argv``; its standard output, or CommandError."""
    shown = shlex.join(argv)
    try:
        process = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
    except OSError as exc:
        raise CommandError(f"{what} command could not start: {shown}: {exc.strerror}") from None
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise CommandError(f"{what} command timed out after {timeout:g}s: {shown}") from None
    if process.returncode != 0:
        tail = (err or out).strip().splitlines()[-3:]
        raise CommandError(f"{what} command exited {process.returncode}: {shown}" + (f": {' / '.join(tail)}" if tail else ""))
    return out
