"""Fast-forwarding the desired-state repository (`certctl daemon --git-pull` or Settings.gitPull).

Only ``git pull --ff-only``: a local commit or a diverged branch is reported and left alone, never merged.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from reconciler.support.logging import get_logger
from reconciler.support.procs import run_command

log = get_logger()


@dataclass(frozen=True, slots=True)
class PullResult:
    ok: bool
    before: str | None
    after: str | None
    message: str

    @property
    def changed(self) -> bool:
        return self.ok and self.before != self.after


def _git(directory: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", LC_ALL="C")
    return run_command(["git", "-C", str(directory), *args], env, timeout)  # ssh and helpers end with it


def head(directory: Path) -> str | None:
    try:
        result = _git(directory, "rev-parse", "HEAD", timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def dirty(directory: Path) -> bool:
    """Does the working tree under ``directory`` differ from HEAD (changed, staged or untracked files)?"""
    try:
        result = _git(directory, "status", "--porcelain", "--untracked-files=normal", "--", ".", timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return result.returncode == 0 and bool(result.stdout.strip())


def revision(directory: Path) -> str | None:
    """The commit the desired state is at, marked ``-dirty`` (as `git describe --dirty` does) when files under
    ``directory`` have uncommitted changes; None outside a git repository."""
    commit = head(directory)
    if commit is None:
        return None
    return f"{commit}-dirty" if dirty(directory) else commit


def pull(directory: Path, *, timeout: float = 120.0) -> PullResult:
    """``git pull --ff-only`` in the repository that holds ``directory``."""
    before = head(directory)
    if before is None:
        return PullResult(False, None, None, f"{directory} is not inside a git repository with a commit")
    try:
        result = _git(directory, "pull", "--ff-only", "--quiet", timeout=timeout)
    except subprocess.TimeoutExpired:
        return PullResult(False, before, before, f"git pull --ff-only timed out after {timeout:g}s")
    except OSError as exc:
        return PullResult(False, before, before, f"git could not run: {exc.strerror}")
    after = head(directory)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        detail = " / ".join(output.splitlines()[-3:])
        if "Not possible to fast-forward" in output or "diverg" in output:
            detail = f"the local branch has diverged from its upstream; certctl only fast-forwards ({detail})"
        elif "Cannot fast-forward your working tree" in output or "would be overwritten" in output:
            detail = f"the checkout has uncommitted changes in the way; commit or discard them ({detail})"
        return PullResult(
            False, before, after, f"git pull --ff-only failed: {detail or f'exit {result.returncode}'}"
        )
    return PullResult(
        True,
        before,
        after,
        "up to date" if before == after else f"fast-forwarded {before[:12]}..{(after or '')[:12]}",
    )
