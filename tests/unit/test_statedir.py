"""State dir: the append-only keyed logs and the journal's recovery and rotation."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.state import statedir
from reconciler.state.statedir import KeyedLog, StateDir


def test_keyed_log_survives_a_torn_line_and_compacts(tmp_path: Path) -> None:
    log = KeyedLog(tmp_path / "m.jsonl")
    for i in range(200):
        log.set("a", i)
    log.set("b", {"x": 1})
    log.delete("b")
    assert len(log.path.read_text().splitlines()) < 200  # compacted on the way
    with open(log.path, "a") as fh:
        fh.write('{"k": "c", "v": ')  # a crash mid-append
    assert KeyedLog(log.path).read() == {"a": 199}


def test_close_unfinished_closes_open_intents_and_rotates_a_large_journal(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    state = StateDir(tmp_path)
    state.journal("intent", run="r1", action="issue/a")
    state.journal("done", run="r1", action="issue/a")
    state.journal("intent", run="r1", action="install/a/store/pem")
    monkeypatch.setattr(statedir, "JOURNAL_ROTATE_BYTES", 10**9)
    assert [e["action"] for e in state.close_unfinished(by="test")] == ["install/a/store/pem"]
    assert state.unfinished() == [] and (tmp_path / "journal.jsonl").exists()
    monkeypatch.setattr(statedir, "JOURNAL_ROTATE_BYTES", 1)
    assert state.close_unfinished(by="test") == []
    assert not (tmp_path / "journal.jsonl").exists() and (tmp_path / "journal.1.jsonl").exists()
