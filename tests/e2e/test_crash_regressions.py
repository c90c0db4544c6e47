"""Regressions of the crash-consistency issue: each test damages what a kill, a full disk or an edit can
damage, then checks that plan sees it and apply repairs it with nothing lost."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.state.statedir import StateDir
from reconciler.support import pki
from tests.conftest import Workspace, consumer_thumbprint


def plan_json(ws: Workspace, run_cli) -> dict:  # type: ignore[type-arg]
    code, out, err = run_cli("plan", "-d", str(ws.desired), "--json")
    assert code == 0, err
    return json.loads(out)


def applied(ws: Workspace, run_cli) -> str:
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 0, out + err
    return out + err


def converged(ws: Workspace, run_cli) -> None:
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")
    assert code == 0, out


def repaired(ws: Workspace, run_cli, folder: Path) -> str:
    """One apply repairs it: the plan is empty after, and ``folder`` serves the current certificate."""
    applied(ws, run_cli)
    converged(ws, run_cli)
    thumbprint = consumer_thumbprint(folder)
    assert thumbprint == StateDir(ws.state).issued_for("www")[-1].info.thumbprint
    return thumbprint


def one(ws: Workspace) -> None:
    ws.base()
    ws.certificate("www", ["www.example.com"], extra="  tasks:\n    - files: {path: ../out/www}\n")


# --- 1. the PEM store is observed by everything a consumer reads -----------------------------------------------


def test_a_deleted_store_file_is_seen_and_repaired_with_one_install(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    (ws.pem / "www" / "privkey.pem").unlink()
    code, _, _ = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")
    assert code == 2
    actions = plan_json(ws, run_cli)["actions"]
    assert [(a["id"], a["reason"]) for a in actions] == [
        (
            "install/www/store/pem",
            "store pem serves "
            + StateDir(ws.state).issued_for("www")[-1].info.thumbprint[:8]
            + ", but privkey.pem is missing",
        )
    ]
    repaired(ws, run_cli, ws.pem / "www")


def test_a_damaged_live_version_is_written_afresh(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    live = (ws.pem / "www" / "current").resolve()
    (live / "chain.pem").unlink()
    assert "the live version lacks chain.pem" in plan_json(ws, run_cli)["actions"][0]["reason"]
    repaired(ws, run_cli, ws.pem / "www")
    other = pki.key_to_pem(pki.generate_key("ecdsa-p256"))
    (live / "privkey.pem").write_bytes(other)  # a key that is not the certificate's
    assert "privkey.pem does not match its cert.pem" in plan_json(ws, run_cli)["actions"][0]["reason"]
    repaired(ws, run_cli, ws.pem / "www")
    live = (ws.pem / "www" / "current").resolve()
    full = (live / "fullchain.pem").read_bytes()
    with open(live / "fullchain.pem", "r+b") as fh:  # edited in place: what a web server reads, cut short
        fh.truncate(len(full) // 2)
    assert (
        "fullchain.pem is not its cert.pem followed by its chain.pem"
        in (plan_json(ws, run_cli)["actions"][0]["reason"])
    )
    repaired(ws, run_cli, ws.pem / "www")
    assert (ws.pem / "www" / "fullchain.pem").read_bytes() == full


def test_a_first_install_killed_before_current_or_the_links_is_completed(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    (ws.pem / "www" / "current").unlink()  # killed after the links, before the switch
    assert [a["kind"] for a in plan_json(ws, run_cli)["actions"]] == ["install"]
    applied(ws, run_cli)
    for name in ("cert.pem", "fullchain.pem"):  # killed after current, before these links (an older certctl)
        (ws.pem / "www" / name).unlink()
    assert [a["kind"] for a in plan_json(ws, run_cli)["actions"]] == ["install"]
    repaired(ws, run_cli, ws.pem / "www")


def test_files_task_switches_what_a_consumer_reads_in_one_link(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    out = ws.root / "out" / "www"
    first = consumer_thumbprint(out)
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"):
        assert os.readlink(out / name) == f".certctl-current/{name}"
    assert os.readlink(out / ".certctl-current") == f".certctl-versions/{first}"
    assert (out / ".certctl-versions" / first / "privkey.pem").stat().st_mode & 0o777 == 0o600
    applied(ws, run_cli)
    run_cli("renew", "www", "-d", str(ws.desired))
    second = consumer_thumbprint(out)
    assert second != first and os.readlink(out / ".certctl-current") == f".certctl-versions/{second}"
    run_cli("renew", "www", "-d", str(ws.desired))
    third = consumer_thumbprint(out)
    assert sorted(os.listdir(out / ".certctl-versions")) == sorted([second, third]), (
        "the previous one is kept"
    )
    converged(ws, run_cli)


def test_a_files_task_whose_fullchain_was_cut_short_is_written_again(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    out = ws.root / "out" / "www"
    full = (out / "fullchain.pem").read_bytes()
    with open(out / "fullchain.pem", "r+b") as fh:  # through the link, in place: the chain cut off
        fh.truncate(len((out / "cert.pem").read_bytes()) + 40)
    actions = plan_json(ws, run_cli)["actions"]
    assert [a["kind"] for a in actions] == ["deploy"], actions
    assert "is not cert.pem followed by chain.pem" in actions[0]["reason"], actions[0]["reason"]
    applied(ws, run_cli)
    converged(ws, run_cli)
    assert (out / "fullchain.pem").read_bytes() == full


@pytest.mark.parametrize("reuse", [False, True], ids=["new key", "key reused"])
def test_a_damaged_kept_chain_is_never_installed_and_a_renewal_replaces_it(
    ws: Workspace, run_cli, reuse: bool
) -> None:
    """A vault copy whose chain.pem holds a key: installing it would write a version the store reports as
    drift on every plan. The install fails, naming the file and the way out, and nothing is written; the
    way out works, also for a certificate that reuses its key (read from that same copy)."""
    one(ws)
    if reuse:
        spec = ws.desired / "www.yaml"
        spec.write_text(
            spec.read_text().replace(
                "key: {algorithm: ecdsa-p256}", "key: {algorithm: ecdsa-p256, reuse: true}"
            )
        )
    applied(ws, run_cli)
    thumbprint = StateDir(ws.state).issued_for("www")[-1].info.thumbprint
    kept = ws.state / "vault" / "www" / thumbprint / "chain.pem"
    kept.write_bytes(kept.read_bytes() + pki.key_to_pem(pki.generate_key("ecdsa-p256")))
    (ws.pem / "www" / "privkey.pem").unlink()  # drift: the version is to be installed from the vault
    before = sorted(os.listdir(ws.pem / "www" / "versions"))
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 1, out + err
    assert f"({kept}) holds something other than certificates" in out + err
    assert "certctl renew www" in out + err
    assert sorted(os.listdir(ws.pem / "www" / "versions")) == before
    code, out, err = run_cli("renew", "www", "-d", str(ws.desired))
    assert code == 0, out + err
    converged(ws, run_cli)
    assert (
        consumer_thumbprint(ws.pem / "www")
        == StateDir(ws.state).issued_for("www")[-1].info.thumbprint
        != (thumbprint)
    )


def test_files_task_replaces_plain_files_of_an_earlier_layout(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    out = ws.root / "out" / "www"
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"):
        data = (out / name).read_bytes()
        (out / name).unlink()
        (out / name).write_bytes(data)
    os.unlink(out / ".certctl-current")
    run_cli("renew", "www", "-d", str(ws.desired))
    assert consumer_thumbprint(out) == StateDir(ws.state).issued_for("www")[-1].info.thumbprint
    assert all((out / n).is_symlink() for n in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"))


# --- 2. a deleted vault key -------------------------------------------------------------------------------------


def test_a_deleted_vault_key_makes_the_plan_issue_a_new_certificate(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    old = StateDir(ws.state).issued_for("www")[-1].info.thumbprint
    (ws.state / "vault" / "www" / old / "key.pem").unlink()
    (ws.root / "out" / "www" / "privkey.pem").unlink()  # and the task needs a redeploy
    actions = plan_json(ws, run_cli)["actions"]
    issue = next(a for a in actions if a["kind"] == "issue")
    assert issue["reason"].startswith(f"the state dir's copy of {old[:8]} lacks key.pem")
    applied(ws, run_cli)
    new = StateDir(ws.state).issued_for("www")[-1].info.thumbprint
    assert new != old
    converged(ws, run_cli)
    assert consumer_thumbprint(ws.root / "out" / "www") == consumer_thumbprint(ws.pem / "www") == new


# --- 3. a full disk under the state dir --------------------------------------------------------------------------


def test_a_journal_that_cannot_be_written_fails_each_action_cleanly(ws: Workspace, run_cli) -> None:
    one(ws)
    ws.certificate("api", ["api.example.com"])
    ws.state.mkdir()
    # a link to /dev/full: never written through (a full disk itself: test_a_failed_append_is_cut_back_off)
    (ws.state / "journal.jsonl").symlink_to("/dev/full")
    code, out, err = run_cli("apply", "-d", str(ws.desired))
    assert code == 1
    assert "Traceback" not in err
    assert "failed: issue/api: not started: the journal could not record it" in out
    assert "failed: issue/www: not started: the journal could not record it" in out
    assert "it is a symbolic link" in out and str(ws.state / "journal.jsonl") in out
    (ws.state / "journal.jsonl").unlink()
    applied(ws, run_cli)
    converged(ws, run_cli)


# --- 4. torn lines ----------------------------------------------------------------------------------------------


def test_a_torn_line_never_swallows_the_next_append(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    state = StateDir(ws.state)
    with open(ws.state / "attempts.jsonl", "ab") as fh:
        fh.write(b'{"k":"ghost","v":{"consecutive_')  # a kill mid-append
    state.update_attempts("later", consecutive_failures=3)  # what the daemon or an apply appends next
    assert StateDir(ws.state).attempts()["later"].consecutive_failures == 3
    assert "www" in StateDir(ws.state).attempts()
    with open(ws.state / "journal.jsonl", "ab") as fh:
        fh.write(b'{"event":"intent","run":"x","act')
    state.journal("intent", run="r", action="issue/zzz")
    assert [e["action"] for e in StateDir(ws.state).unfinished()] == ["issue/zzz"]


def test_an_index_line_lost_or_torn_never_forgets_an_issued_version(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    run_cli("renew", "www", "-d", str(ws.desired))
    versions = StateDir(ws.state).issued_for("www")
    assert len(versions) == 2
    index = ws.state / "vault" / "index.jsonl"
    lines = index.read_bytes().splitlines(keepends=True)
    index.write_bytes(b"".join(lines[:-1]) + lines[-1][:25])  # the renewal's index line, torn
    out = applied(ws, run_cli)
    assert "recovery.reindexed" in out
    after = StateDir(ws.state).issued_for("www")
    assert [v.info.thumbprint for v in after] == [v.info.thumbprint for v in versions], "nothing rolled back"
    index.write_bytes(b"")  # every line lost
    applied(ws, run_cli)
    assert [v.info.thumbprint for v in StateDir(ws.state).issued_for("www")] == [
        v.info.thumbprint for v in versions
    ]
    assert len(os.listdir(ws.state / "vault" / "www")) == 2, "nothing issued again"
    converged(ws, run_cli)


# --- 5. damaged lines -------------------------------------------------------------------------------------------


def test_damaged_lines_of_every_kind_are_skipped_with_file_and_line(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    damage = [
        b"[]",
        b"\xff\xfe not utf-8 \x80",
        b"garbage",
        b'{"k": 1, "v": 2}',
        b'{"k": "www", "v": []}',
        b'"a string"',
        b'{"k": "www"}',
    ]
    for name in (
        "journal.jsonl",
        "attempts.jsonl",
        "deployments.jsonl",
        "bindings.jsonl",
        "vault/index.jsonl",
    ):
        with open(ws.state / name, "ab") as fh:
            fh.write(b"\n".join(damage) + b"\n")
    code, out, err = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")
    assert code == 0, out + err
    assert f"file={ws.state / 'vault' / 'index.jsonl'}" in err and "line=" in err
    out = applied(ws, run_cli)
    for name in ("journal.jsonl", "attempts.jsonl", "deployments.jsonl", "bindings.jsonl"):
        assert f"file={ws.state / name}" in out
    assert StateDir(ws.state).issued_for("www"), "the damaged lines did not erase the good ones"
    run_cli("renew", "www", "-d", str(ws.desired))
    converged(ws, run_cli)


def test_a_damaged_applied_record_does_not_block_status(ws: Workspace, run_cli) -> None:
    one(ws)
    applied(ws, run_cli)
    (ws.state / "applied.json").write_bytes(b"\xff{")
    code, _, err = run_cli("status", "-d", str(ws.desired))
    assert code == 0 and str(ws.state / "applied.json") in err
    applied(ws, run_cli)


# --- 7. paths in messages -----------------------------------------------------------------------------------------


def test_messages_name_the_state_dir_as_an_absolute_path(ws: Workspace, run_cli, monkeypatch) -> None:
    one(ws)
    ws.state.write_text("not a folder")
    monkeypatch.chdir(ws.root)
    code, _, err = run_cli("apply", "-d", "desired")
    assert code == 1 and "Traceback" not in err
    assert str(ws.state) in err and "/../" not in err and "desired/.." not in err
