"""Running outside commands (deployment tasks, dns-01 scripts, git) so that they end with everything they started."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence


class CommandError(Exception):
    """The command could not start, timed out, or exited non-zero; the message says which, with its output's tail."""


def run(
    argv: Sequence[str], env: Mapping[str, str], timeout: float, what: str, shown: str | None = None
) -> str:
    """Run ``argv`` (``run_command``); its standard output, or CommandError naming it as ``shown``."""
    shown = shown if shown is not None else shlex.join(argv)
    try:
        result = run_command(list(argv), dict(env), timeout)
    except subprocess.TimeoutExpired:
        raise CommandError(
            f"{what} command timed out after {timeout:g}s and was killed with its child processes: {shown}"
        ) from None
    except OSError as exc:
        raise CommandError(f"{what} command could not start: {shown}: {exc.strerror}") from None
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise CommandError(
            f"{what} command exited {result.returncode}: {shown}" + (f": {' / '.join(tail)}" if tail else "")
        )
    return result.stdout


def run_command(argv: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a command in its own process group (its own session on POSIX); on timeout kill the whole group.

    Killing only the shell a command runs in would leave what it started (a server it spawned, a
    ``sleep``) running, holding the output pipes open. Raises subprocess.TimeoutExpired after the kill.
    """
    posix = os.name == "posix"
    flags = 0 if posix else getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0)
    with subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=posix,
        creationflags=flags,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise
        except BaseException:
            _kill_group(proc)
            raise
        if posix:  # the command is done: whatever it left behind in its group goes too (a detached server
            with contextlib.suppress(ProcessLookupError, PermissionError):  # leaves the group with setsid)
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.kill()
