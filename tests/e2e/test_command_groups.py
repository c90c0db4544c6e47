"""Reload and script commands end with everything they started: a timed-out command is killed with its
whole process group, and the reload timeout comes from the spec (reloadTimeout)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from reconciler.support.procs import run_command
from tests.conftest import Workspace


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"  # a zombie has ended; only its parent has not collected it yet


def _ends(pid: int, within: float = 30.0) -> bool:
    """Poll until the process has ended (SIGKILL is delivered asynchronously); False if it still runs."""
    deadline = time.monotonic() + within
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


CHILD = "sleep 300 & echo $! > {pidfile}; wait"


def test_a_timed_out_command_is_killed_with_its_children(tmp_path: Path) -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to see whether the grandchild still runs")
    pidfile = tmp_path / "child.pid"
    with pytest.raises(subprocess.TimeoutExpired):
        run_command(["/bin/sh", "-c", CHILD.format(pidfile=pidfile)], dict(os.environ), 1.0)
    child = int(pidfile.read_text())
    assert _ends(child), f"the command's child {child} still runs after the timeout"


def test_a_command_that_finishes_takes_its_leftovers_with_it(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    result = run_command(
        ["/bin/sh", "-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; echo done"],
        dict(os.environ),
        30.0,
    )
    assert result.returncode == 0 and result.stdout == "done\n"
    assert _ends(int(pidfile.read_text()))


@pytest.mark.parametrize(
    ("task", "message"),
    [
        (
            "    - files:\n        path: ../out\n        reload: '{command}'\n        reloadTimeout: 1s\n",
            "reload command timed out after 1s and was killed with its child processes",
        ),
        ("    - script: {{command: '{command}', timeout: 1s}}\n", "script command timed out after 1s"),
    ],
)
def test_a_timed_out_reload_or_script_leaves_no_process_behind(
    ws: Workspace, run_cli, tmp_path: Path, task: str, message: str
) -> None:
    """reloadTimeout comes from the spec; the child is detached from the pipes, so only a group kill ends it."""
    pidfile = tmp_path / "child.pid"
    ws.base()
    command = f"sleep 300 >/dev/null 2>&1 & echo $! > {pidfile}; wait"
    ws.certificate("web", ["www.example.com"], extra="  tasks:\n" + task.format(command=command))
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 1 and message in out + err
    assert _ends(int(pidfile.read_text())), "the command's child outlived the timeout"
