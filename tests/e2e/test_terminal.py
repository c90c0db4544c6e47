"""certctl on a real terminal: tmux runs it in a pane, and the test reads what the screen shows.

What a person sees: the plan with coloured symbols, the question before anything changes, progress as
N/M with each action and its time, and no log lines in between. Waiting for the screen to show something
is bounded (a hung certctl fails the test with the screen it left), but nothing here asserts a duration.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Workspace

ROOT = Path(__file__).resolve().parents[2]
ESC = re.compile(r"\x1b\[[0-9;:]*m")
COLOUR = re.compile(
    r"\x1b\[(?:[0-9;]*;)?(?:3[0-7]|9[0-7]|38)[;m]"
)  # a foreground colour (not bold, not "default")


class Pane:
    """One tmux server (private socket) with one shell pane of a fixed size."""

    def __init__(self, folder: Path, env: dict[str, str]) -> None:
        self.socket = str(folder / f"tmux-{uuid.uuid4().hex[:8]}")
        self.env = env
        self._tmux("new-session", "-d", "-x", "200", "-y", "60", "-s", "t", "bash --noprofile --norc")
        self._tmux("set-option", "-t", "t", "history-limit", "5000")
        self._tmux("send-keys", "-t", "t", "PS1='READY$ '", "Enter")

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-S", self.socket, *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=True,
            timeout=30,
        )
        return result.stdout

    def run(self, command: str) -> None:
        self._tmux("send-keys", "-t", "t", "clear", "Enter")
        self.wait_for_prompt()
        self._tmux("send-keys", "-t", "t", command, "Enter")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def screen(self, colours: bool = False) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "t", *(["-e"] if colours else []))

    def wait_for(self, pattern: str, limit: float = 90.0) -> str:
        deadline = time.monotonic() + limit
        while True:
            shown = self.screen()
            if re.search(pattern, shown, re.M):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"the screen never showed {pattern!r}; it shows:\n{shown}")
            time.sleep(0.1)

    def wait_for_prompt(self) -> None:
        self.wait_for(r"^READY\$ ?$")

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-S", self.socket, "kill-server"], capture_output=True, check=False, timeout=30
        )


@pytest.fixture
def pane(tmp_path: Path) -> Iterator[Pane]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed: run scripts/install-system-deps (make test does)")
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "PS1": "READY$ ",
        "TERM": "xterm-256color",
        "HISTFILE": "/dev/null",
    }
    env.pop("NO_COLOR", None)
    env.pop("TMUX", None)
    p = Pane(tmp_path, env)
    try:
        p.wait_for_prompt()
        yield p
    finally:
        p.close()


def two(ws: Workspace) -> None:
    ws.base()
    ws.certificate("www", ["www.example.com"])
    ws.certificate("api", ["api.example.com"])


def test_apply_asks_then_shows_progress_in_colour_without_log_lines(ws: Workspace, pane: Pane) -> None:
    two(ws)
    pane.run(f"cd {ROOT} && certctl apply -d {ws.desired}; echo EXIT=$?")
    shown = pane.wait_for(r"Apply 4 actions\? \[y/N\]")
    assert "+ issue    issuer/local" in shown and "+ install  store/pem" in shown
    assert not ws.pem.exists(), "nothing changes before the answer"
    coloured = pane.screen(colours=True)
    issue_line = next(
        line for line in coloured.splitlines() if "issue" in ESC.sub("", line) and "issuer/local" in line
    )
    assert COLOUR.search(issue_line.split("issue")[0]), f"the plan symbol is not coloured: {issue_line!r}"
    pane.keys("y", "Enter")
    shown = pane.wait_for(r"^EXIT=\d+")
    assert "EXIT=0" in shown, shown
    steps = re.findall(r"^\s+(\d)/4 ok\s+(\S+) \(\d+\.\ds\)$", shown, re.M)
    assert sorted(a for _, a in steps) == [
        "install/api/store/pem",
        "install/www/store/pem",
        "issue/api",
        "issue/www",
    ]
    assert sorted(n for n, _ in steps) == ["1", "2", "3", "4"]
    assert "Apply complete: 4 done, 0 failed, 0 skipped." in shown
    assert "action.started" not in shown and "action.applied" not in shown and "[info" not in shown
    pane.run(f"certctl plan -d {ws.desired} --detailed-exitcode; echo EXIT=$?")
    shown = pane.wait_for(r"^EXIT=\d+")
    assert "No changes. Everything is up to date." in shown and "EXIT=0" in shown


def test_apply_does_nothing_unless_the_answer_is_yes(ws: Workspace, pane: Pane) -> None:
    two(ws)
    pane.run(f"certctl apply -d {ws.desired}; echo EXIT=$?")
    pane.wait_for(r"Apply 4 actions\? \[y/N\]")
    pane.keys("Enter")
    shown = pane.wait_for(r"^EXIT=\d+")
    assert "Apply cancelled; nothing was changed." in shown and "EXIT=1" in shown
    assert not ws.pem.exists() and not (ws.state / "vault").exists()


def test_auto_approve_and_a_saved_plan_do_not_ask(ws: Workspace, pane: Pane, tmp_path: Path) -> None:
    two(ws)
    plan = tmp_path / "plan.json"
    pane.run(
        f"certctl plan -d {ws.desired} --out {plan} >/dev/null && certctl apply -d {ws.desired} {plan}; echo EXIT=$?"
    )
    shown = pane.wait_for(r"^EXIT=\d+")
    assert "EXIT=0" in shown and "[y/N]" not in shown
    ws.certificate("extra", ["extra.example.com"])
    pane.run(f"certctl apply -y -d {ws.desired}; echo EXIT=$?")
    shown = pane.wait_for(r"^EXIT=\d+")
    assert "EXIT=0" in shown and "[y/N]" not in shown and "Apply complete: 2 done" in shown


@pytest.mark.parametrize("how", ["NO_COLOR=1 certctl plan", "certctl plan --no-color"])
def test_no_color(ws: Workspace, pane: Pane, how: str) -> None:
    two(ws)
    pane.run(f"{how} -d {ws.desired}; echo EXIT=$?")
    pane.wait_for(r"^EXIT=\d+")
    coloured = pane.screen(colours=True)
    plan_lines = [
        line for line in coloured.splitlines() if "issuer/local" in line or line.startswith("Plan:")
    ]
    assert plan_lines and not any(COLOUR.search(line) for line in plan_lines), plan_lines
