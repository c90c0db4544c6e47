"""Damaged lines of every kind in every log of the state dir: plan and apply keep working, each damaged
line is reported with its file and line, no good entry is lost, and the next appends are kept."""

from __future__ import annotations

import pytest

from reconciler.state.statedir import StateDir
from tests.crash.conftest import copy_world
from tests.crash.world import check_invariants, versions

LOGS = ("journal.jsonl", "attempts.jsonl", "deployments.jsonl", "bindings.jsonl", "vault/index.jsonl")
DAMAGE = {
    "torn": b'{"k":"www","v":{"consecutive_fail',  # a kill mid-append, no newline
    "garbage": b"certctl was here\n",
    "not-utf8": b"\xff\xfe\x80 \xc3\x28\n",
    "zeros": b"\0" * 4096,  # what some file systems show after a crash
    "array": b"[]\n",
    "number": b"42\n",
    "no-key": b'{"v": {"a": 1}}\n',
    "wrong-shape": b'{"k": "www", "v": ["not", "a", "mapping"]}\n',
    "wrong-types": b'{"k": "www", "v": {"consecutive_failures": "many", "info": 7}}\n',
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
@pytest.mark.parametrize("log", LOGS)
def test_damaged_line(log: str, kind: str, converged_template, tmp_path, run_cli) -> None:
    root = copy_world(converged_template, tmp_path / "world")
    before = versions(root)
    path = root / "state" / log
    with open(path, "ab") as fh:
        fh.write(DAMAGE[kind])
    code, out, err = run_cli("plan", "-d", str(root / "desired"), "--detailed-exitcode")
    assert code == 0, out + err
    code, out, err = run_cli("apply", "-d", str(root / "desired"))
    assert code == 0, out + err
    assert f"file={path}" in out + err and "line=" in out + err, (
        "the damaged line is reported with file and line"
    )
    assert versions(root) == before, "a damaged line lost an issued version"
    code, out, err = run_cli("renew", "www", "-d", str(root / "desired"))
    assert code == 0, out + err
    after = versions(root)
    assert after["www"][:-1] == before["www"] and len(after["www"]) == len(before["www"]) + 1
    assert StateDir(root / "state").attempts()["www"].last_success is not None
    check_invariants(root, run_cli)
