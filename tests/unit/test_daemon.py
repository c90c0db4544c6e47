"""Daemon pieces that need no process: due times (core.schedules), maintenance-only cleanup, the recovery sweep,
metrics gauges; and reconciler.support.git against a real git repository."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from reconciler.app.recovery import recover
from reconciler.core.model import Attempts, ObservedState
from reconciler.core.plan import Action, ActionKind, CertState, CertSummary, Plan, Reason, without_cleanup
from reconciler.core.schedules import next_due
from reconciler.core.status import StatusRow, ready_condition
from reconciler.entry.daemon import DaemonBusy, hold_daemon_lock
from reconciler.entry.daemon import metrics as metrics_module
from reconciler.entry.daemon.metrics import HttpEndpoint, Metrics, parse_address
from reconciler.state.statedir import StateDir
from reconciler.support.git import pull
from reconciler.support.logging import configure
from tests.conftest import Workspace, refuse_unlink

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _logs_to_this_tests_stderr() -> None:
    """Another test may have bound structlog to a stream pytest has closed since (cli.main configures it)."""
    configure("console", "warning")


def summary(
    name: str,
    renew_in: float | None = None,
    expires_in: float | None = None,
    deferred_in: float | None = None,
) -> CertSummary:
    at = lambda s: NOW + timedelta(seconds=s) if s is not None else None  # noqa: E731
    return CertSummary(
        name, CertState.ready, not_after=at(expires_in), renew_at=at(renew_in), deferred_until=at(deferred_in)
    )


def plan_of(*summaries: CertSummary, actions: tuple[Action, ...] = ()) -> Plan:
    return Plan(at=NOW, directory="d", revision=None, actions=actions, certificates=summaries)


def test_next_due_is_the_earliest_future_renewal_retry_or_expiry() -> None:
    plan = plan_of(
        summary("a", renew_in=30, expires_in=40), summary("b", renew_in=-5, expires_in=9, deferred_in=20)
    )
    assert next_due(plan, ObservedState(), NOW, None) == NOW + timedelta(seconds=9)
    plan = plan_of(summary("a", renew_in=30, expires_in=4000))
    attempts = {
        "a": Attempts("a", next_retry=NOW + timedelta(seconds=12)),
        "gone": Attempts("gone", next_retry=NOW + timedelta(seconds=1)),
    }
    assert next_due(plan, ObservedState(attempts=attempts), NOW, None) == NOW + timedelta(seconds=12)
    assert next_due(
        plan_of(summary("a", expires_in=86400 * 10, renew_in=86400 * 5)),
        ObservedState(),
        NOW,
        timedelta(days=7),
    ) == NOW + timedelta(days=3)
    assert next_due(plan_of(), ObservedState(), NOW, None) is None


def test_cleanup_waits_for_a_maintenance_pass() -> None:
    def act(kind: ActionKind, target: str) -> Action:
        return Action(f"{kind.value}/a/{target}", kind, "a", target, Reason.Superseded, "m")

    plan = plan_of(
        actions=(
            act(ActionKind.install, "store/pem"),
            act(ActionKind.cleanup, "store/pem/a/v1"),
            act(ActionKind.unbind, "host/x"),
        )
    )
    assert [a.kind for a in without_cleanup(plan).actions] == [ActionKind.install, ActionKind.unbind]


def test_recover_sweeps_interrupted_writes_orphaned_vault_folders_and_torn_log_lines(tmp_path: Path) -> None:
    state = StateDir(tmp_path / "state")
    state.journal("intent", run="r1", action="issue/a")
    (state.path / "vault" / "a" / "DEADBEEF").mkdir(parents=True)  # never reached the index
    (state.path / "vault" / "a" / "DEADBEEF" / "cert.pem").write_text("x")
    (state.path / ".attempts.jsonl.abcd1234.tmp").write_text("half")
    (state.path / "attempts.jsonl").write_text('{"k":"a","v":{}}\n{"k":"b","v":')  # torn last line
    store = tmp_path / "pem"
    (store / "a" / "versions" / ".20261127T120000Z-ABCDEF12.tmp").mkdir(parents=True)
    (store / "a" / "versions" / ".v0.removing").mkdir()
    (store / "a" / ".current.123.tmp").symlink_to("versions/nowhere")
    out = tmp_path / "www"
    out.mkdir()
    (out / ".privkey.pem.x1y2z3w4.tmp").write_text("half a key")
    (out / ".keep-me.tmp").write_text("not certctl's")  # another tool's file in a task folder
    task = SimpleNamespace(files=SimpleNamespace(path=str(out)), pfx=None, ccs=None)
    world = SimpleNamespace(
        state=state,
        stores={"pem": SimpleNamespace(path=store)},
        hosts={},
        issuers={},
        desired=SimpleNamespace(certificates={"a": SimpleNamespace(spec=SimpleNamespace(tasks=[task]))}),
    )
    counts = recover(world)
    assert counts == {"unfinished": 1, "temp": 5, "vault": 1, "reindexed": 0, "torn": 1, "challenges": 0}
    assert state.unfinished() == []
    assert not (state.path / "vault" / "a").exists()
    assert sorted(os.listdir(out)) == [".keep-me.tmp"]
    assert os.listdir(store / "a" / "versions") == []
    assert (state.path / "attempts.jsonl").read_text().endswith("\n")
    state.update_attempts("c", consecutive_failures=2)
    assert state.attempts()["c"].consecutive_failures == 2, "the append after a torn line is not lost"
    assert recover(world) == {
        "unfinished": 0,
        "temp": 0,
        "vault": 0,
        "reindexed": 0,
        "torn": 0,
        "challenges": 0,
    }


def test_metrics_gauges_follow_status_rows() -> None:
    metrics = Metrics()
    rows = [
        StatusRow(
            "a",
            CertState.ready,
            thumbprint="AA",
            not_after=datetime(2026, 12, 1, tzinfo=UTC),
            renew_at=datetime(2026, 11, 28, tzinfo=UTC),
        ),
        StatusRow("b", CertState.missing, consecutive_failures=2),
    ]
    metrics.certificates(rows, NOW)
    samples = _samples(metrics)
    assert (
        samples[("certctl_certificate_expiration_timestamp_seconds", (("name", "a"),))]
        == datetime(2026, 12, 1, tzinfo=UTC).timestamp()
    )
    assert samples[("certctl_certificate_ready_status", (("condition", "True"), ("name", "a")))] == 1
    assert samples[("certctl_certificate_ready_status", (("condition", "False"), ("name", "b")))] == 1
    assert ("certctl_certificate_expiration_timestamp_seconds", (("name", "b"),)) not in samples
    metrics.certificates(rows[:1], NOW)  # b's spec was deleted
    assert not any(dict(labels).get("name") == "b" for _, labels in _samples(metrics))


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(metrics.render().decode())
        for s in f.samples
    }


def test_ready_condition() -> None:
    dec1 = datetime(2026, 12, 1, tzinfo=UTC)
    assert ready_condition(StatusRow("a", CertState.pending, thumbprint="AA", not_after=dec1), NOW) == "True"
    assert (
        ready_condition(StatusRow("a", CertState.outdated, thumbprint="AA", not_after=dec1), NOW) == "False"
    )
    assert (
        ready_condition(
            StatusRow("a", CertState.deferred, thumbprint="AA", not_after=datetime(2026, 11, 1, tzinfo=UTC)),
            NOW,
        )
        == "False"
    )
    assert ready_condition(StatusRow("a", CertState.ready, thumbprint=None, not_after=dec1), NOW) == "False"


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:9464", ("127.0.0.1", 9464)), (":80", ("0.0.0.0", 80)), ("[::1]:9464", ("::1", 9464))],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


def test_parse_address_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="host:port"):
        parse_address("localhost")


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@example.test",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@example.test",
        },
    ).stdout.strip()


def test_git_pull_fast_forwards_and_refuses_to_merge(tmp_path: Path) -> None:
    origin, clone = tmp_path / "origin", tmp_path / "clone"
    origin.mkdir()
    _git(origin, "init", "-q", "-b", "main")
    (origin / "a.yaml").write_text("a: 1\n")
    _git(origin, "add", "a.yaml")
    _git(origin, "commit", "-qm", "one")
    subprocess.run(["git", "clone", "-q", str(origin), str(clone)], check=True)
    assert pull(clone).ok and not pull(clone).changed
    (origin / "a.yaml").write_text("a: 2\n")
    _git(origin, "commit", "-qam", "two")
    result = pull(clone)
    assert result.ok and result.changed and result.after == _git(origin, "rev-parse", "HEAD")
    # diverged: a local commit and a new upstream commit
    (clone / "b.yaml").write_text("b: 1\n")
    _git(clone, "add", "b.yaml")
    _git(clone, "commit", "-qm", "local")
    (origin / "a.yaml").write_text("a: 3\n")
    _git(origin, "commit", "-qam", "three")
    before = _git(clone, "rev-parse", "HEAD")
    result = pull(clone)
    assert not result.ok and "fast-forward" in result.message
    assert _git(clone, "rev-parse", "HEAD") == before, "nothing was merged"
    assert not pull(tmp_path / "origin" / ".." / "clone" / "missing").ok


def test_a_second_daemon_gives_up_at_once_when_the_lock_is_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = hold_daemon_lock(tmp_path, Path("desired"))

    def wait(seconds: float) -> None:
        raise AssertionError(f"the second daemon waited {seconds}s for the lock instead of giving up")

    monkeypatch.setattr(time, "sleep", wait)  # how the lock is waited for (reconciler.support.fs.acquire)
    try:
        with pytest.raises(
            DaemonBusy, match=rf"already running on the state dir .*\(pid {os.getpid()}, daemon since"
        ):
            hold_daemon_lock(tmp_path, Path("desired"))
    finally:
        os.close(held)


def test_the_schedule_takes_interval_maintenance_due_and_retry_reasons() -> None:
    from reconciler.entry.daemon.schedule import WAKE_SLACK, Schedule

    s = Schedule(interval=60, maintenance_interval=3600)
    s.start(1000.0)
    reasons: set[str] = set()
    assert s.take(reasons, 1010.0, NOW) is False and reasons == set()
    assert s.timeout(1010.0, NOW) == 50.0  # the next interval pass
    s.due = NOW + timedelta(seconds=5)
    assert s.timeout(1010.0, NOW) == pytest.approx(5.0 + WAKE_SLACK)
    s.retry_at = 1012.0
    assert s.timeout(1010.0, NOW) == 2.0
    assert s.take(reasons, 1012.0, NOW + timedelta(seconds=5)) is False
    assert reasons == {"due", "retry"}
    reasons.clear()
    assert s.take(reasons, 1060.0, NOW) is False and reasons == {"interval", "retry"}
    assert s.interval_mark == 1060.0
    reasons.clear()
    s.retry_at = None
    assert s.take(reasons, 4600.0, NOW) is True, "an hour on: a maintenance pass"
    assert s.take({"start"}, 4601.0, NOW) is True, "the first pass is always a maintenance pass"
    s.due = None  # (a pass computes the next one)
    s.interval = 10  # an edited reconcileInterval counts at once
    assert s.timeout(4601.0, NOW) == 9.0


def test_only_spec_files_outside_the_state_dir_and_hidden_folders_wake_the_daemon(tmp_path: Path) -> None:
    from reconciler.entry.daemon.watch import relevant_change

    root, state = tmp_path / "ds", tmp_path / "ds" / "state"
    assert relevant_change(root, state, False, str(root / "certs.yaml"))
    assert relevant_change(root, state, False, str(root / "team" / "api.yml"))
    assert not relevant_change(root, state, False, str(root / "README.md"))
    assert relevant_change(root, state, True, str(root / "old-folder")), (
        "a deleted folder may have held specs"
    )
    assert not relevant_change(root, state, False, str(state / "x.yaml"))
    assert not relevant_change(root, state, False, str(root / ".git" / "config.yaml"))
    assert not relevant_change(root, state, False, str(root / ".swap.yaml"))


def test_a_silent_client_of_the_http_endpoint_is_closed_and_others_are_answered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each connection has its own thread: one that never sends a request held it for ever (a few
    thousand such connections, and the daemon could start no thread). It is closed after READ_TIMEOUT."""
    assert 0 < metrics_module.READ_TIMEOUT <= 60
    monkeypatch.setattr(metrics_module, "READ_TIMEOUT", 0.2)  # shorter here
    endpoint = HttpEndpoint("127.0.0.1:0", Metrics(), lambda: (True, {"ok": True}), lambda: {})
    endpoint.start()
    try:
        host, port = endpoint.address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as silent:
            with urllib.request.urlopen(f"http://{endpoint.address}/healthz", timeout=5) as answer:
                assert answer.status == 200  # answered while the silent one waits
            assert silent.recv(1) == b""  # then the silent one is closed
    finally:
        endpoint.stop()


def test_a_pass_that_fails_on_the_state_dir_logs_one_line_and_is_retried(
    tmp_path: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An OSError (here: a clean mark that cannot be removed) is the environment, not a bug: the daemon logs
    its message (which names the file and what to do) without a traceback, and retries the pass."""
    from structlog.testing import capture_logs

    from reconciler.entry.daemon.loop import ERROR_RETRY, Daemon
    from reconciler.entry.daemon.options import DaemonOptions
    from reconciler.state.statedir import CLEAN_MARK

    ws.base()
    ws.certificate("web", ["web.example.test"])
    daemon = Daemon(DaemonOptions(directory=ws.desired))
    daemon.desired.reload()
    daemon.state = state = StateDir(tmp_path / "state")
    with state.lock():
        state.recovered([])  # a clean finish: the mark is there
    refuse_unlink(monkeypatch, CLEAN_MARK)
    before = time.monotonic()
    with capture_logs() as logs:
        daemon.reconcile({"interval"}, maintenance=False)
    failed = [e for e in logs if e["event"] == "reconcile.failed"]
    assert len(failed) == 1, logs
    assert "cannot remove" in failed[0]["error"] and CLEAN_MARK in failed[0]["error"]
    assert "exc_info" not in failed[0] and failed[0]["log_level"] == "error"
    assert not daemon.last["ok"] and "cannot remove" in daemon.last["error"]
    assert daemon.schedule.retry_at is not None
    assert daemon.schedule.retry_at - before <= min(ERROR_RETRY, daemon.schedule.interval) + 1
    assert not (tmp_path / "pem" / "web").exists(), "nothing was installed while the mark could vouch for it"

    monkeypatch.undo()  # the cause is fixed: the next pass converges
    daemon.reconcile({"retry"}, maintenance=False)
    assert daemon.last["ok"], daemon.last
    assert (tmp_path / "pem" / "web" / "cert.pem").exists()
