"""`certctl daemon` as a user runs it: a real subprocess on a temporary desired-state directory
(the local CA, a PEM store), watched through its log, its HTTP endpoint and the files it writes.

Every wait polls against a deadline; nothing sleeps for a fixed long time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from prometheus_client.parser import text_string_to_metric_families

from reconciler.core.model import CertInfo
from reconciler.support import pki

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")
HANG = 60.0  # seconds after which a stop or a start that should end on its own is taken to hang


# --- helpers (also used by test_daemon_notify.py) ------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env(extra: dict[str, str] | None = None) -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = str(ROOT) + os.pathsep + out.get("PYTHONPATH", "")
    out.pop("CERTCTL_DIR", None)
    out.update(extra or {})
    return out


def wait_for(
    what: str,
    probe: Callable[[], T | None],
    timeout: float,
    interval: float = 0.05,
    context: Callable[[], str] | None = None,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except (OSError, ValueError, KeyError):
            value = None
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:g}s waiting for {what}"
                + (f"\n--- daemon log (tail) ---\n{context()}" if context else "")
            )
        time.sleep(interval)


class Site:
    """tmp/desired (specs), tmp/state, tmp/pem; writes specs the way an editor saves them."""

    def __init__(self, root: Path, validity: str = "1h", settings: str = "") -> None:
        self.root = root
        self.desired = root / "desired"
        self.state = root / "state"
        self.pem = root / "pem"
        self.desired.mkdir(parents=True)
        self.validity = validity
        self.write(
            "base.yaml",
            f"""\
            apiVersion: certctl/v1
            kind: Issuer
            metadata: {{name: local}}
            spec:
              localCA: {{validity: {validity}}}
            ---
            apiVersion: certctl/v1
            kind: Store
            metadata: {{name: pem}}
            spec:
              pemDirectory: {{path: ../pem}}
            """,
        )
        if settings:
            self.write(
                "settings.yaml",
                "apiVersion: certctl/v1\nkind: Settings\nmetadata: {name: settings}\nspec:\n"
                + textwrap.indent(textwrap.dedent(settings), "  "),
            )

    def write(self, name: str, text: str) -> Path:
        path = self.desired / name
        tmp = path.with_name(f".{path.name}.swp")
        tmp.write_text(textwrap.dedent(text))
        os.replace(tmp, path)  # like an editor's save: the file is never seen half-written
        return path

    def certificate(self, name: str, domains: list[str], extra: str = "", issuer: str = "local") -> Path:
        """A Certificate spec; ``extra`` holds more ``spec`` fields (any indentation)."""
        return self.write(
            f"{name}.yaml",
            textwrap.dedent(f"""\
            apiVersion: certctl/v1
            kind: Certificate
            metadata: {{name: {name}}}
            spec:
              issuer: {issuer}
              domains: [{", ".join(domains)}]
              stores: [pem]
            """)
            + textwrap.indent(textwrap.dedent(extra), "  "),
        )

    def live(self, name: str) -> CertInfo | None:
        path = self.pem / name / "cert.pem"
        return pki.info_from_pem(path.read_bytes()) if path.exists() else None

    def versions(self, name: str) -> list[Any]:
        folder = self.pem / name / "versions"
        if not folder.is_dir():
            return []
        infos = [
            pki.info_from_pem((v / "cert.pem").read_bytes())
            for v in folder.iterdir()
            if not v.name.startswith(".")
        ]
        return sorted(infos, key=lambda i: i.not_before)

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                *args,
                "-d",
                str(self.desired),
                "--state-dir",
                str(self.state),
            ],
            capture_output=True,
            text=True,
            env=env(),
            timeout=timeout,
            cwd=self.root,
            check=False,
        )

    def leftovers(self) -> list[str]:
        """Temporary files or folders of interrupted writes, anywhere below the site."""
        found = []
        for folder, dirs, files in os.walk(self.root):
            for name in dirs + files:
                if name.endswith((".tmp", ".removing")):
                    found.append(os.path.join(folder, name))
        return found


class Daemon:
    def __init__(
        self,
        site: Site,
        *,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
    ) -> None:
        self.site = site
        self.port = port or free_port()
        self.log_path = site.root / f"daemon-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "daemon",
                "-d",
                str(site.desired),
                "--state-dir",
                str(site.state),
                "--metrics-address",
                f"127.0.0.1:{self.port}",
                "--log-format",
                "json",
                *args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env(extra_env),
            cwd=site.root,
        )

    # logs
    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    # HTTP
    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def json(self, path: str) -> tuple[int, dict[str, Any]]:
        code, body = self.get(path)
        return code, json.loads(body)

    def status(self) -> dict[str, Any]:
        return self.json("/status")[1]

    def cert(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.status()["certificates"] if c["name"] == name), None)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        _, text = self.get("/metrics")
        out = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def passes(self) -> int:
        return int(self.status()["daemon"]["passes"])

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float = 15) -> T:
        def checked() -> T | None:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the daemon exited ({self.proc.returncode}) while waiting for {what}:\n{self.tail()}"
                )
            return probe()

        return wait_for(what, checked, timeout, context=self.tail)

    def wait_healthy(self, timeout: float = 15) -> dict[str, Any]:
        return self.wait(
            "/healthz 200",
            lambda: self.json("/healthz")[1] if self.get("/healthz")[0] == 200 else None,
            timeout,
        )

    def wait_pass(self, after: int, timeout: float = 10) -> None:
        self.wait(
            f"a reconcile pass after #{after}",
            lambda: self.passes() > after and self.status()["daemon"]["last_reconcile"].get("at"),
            timeout,
        )

    def hup(self) -> None:
        before = self.passes()
        self.proc.send_signal(signal.SIGHUP)
        self.wait_pass(before)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
        return code

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self._log.close()


def stopped_by_itself(daemon: Daemon) -> None:
    """The daemon ended its loop and exited, not the stop timeout (CERTCTL_STOP_TIMEOUT, 30 s) that forces it."""
    assert daemon.logged("daemon.stopped"), daemon.tail()
    assert not daemon.logged("daemon.stop.forced"), daemon.tail()


def _ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- tests ------------------------------------------------------------------------------------------------------


def test_edits_are_applied_and_a_broken_edit_changes_nothing(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.certificate("alpha", ["alpha.example.test"])
    daemon = Daemon(site)
    try:
        health = daemon.wait_healthy()
        assert health["status"] == "ok" and health["desired_state"]["valid"] is True
        first = daemon.wait("alpha in its store", lambda: site.live("alpha"))

        # a new spec is applied
        site.certificate("beta", ["beta.example.test"])
        beta = daemon.wait("beta applied", lambda: site.live("beta"))
        assert beta.sans == ("beta.example.test",)

        # a changed spec is applied (domains added: reissue)
        site.certificate("alpha", ["alpha.example.test", "www.alpha.example.test"])
        alpha = daemon.wait(
            "alpha reissued with two names", lambda: (i := site.live("alpha")) and len(i.sans) == 2 and i
        )
        assert alpha.thumbprint != first.thumbprint  # type: ignore[attr-defined]

        # /status says what `certctl status --json` says
        daemon.wait(
            "status ready", lambda: all(c["state"] == "ready" for c in daemon.status()["certificates"])
        )
        cli = site.cli("status", "--json")
        assert cli.returncode == 0, cli.stderr
        from_cli = {
            c["name"]: (c["state"], c["thumbprint"], c["not_after"], c["renew_at"])
            for c in json.loads(cli.stdout)["certificates"]
        }
        status = daemon.status()
        assert {
            c["name"]: (c["state"], c["thumbprint"], c["not_after"], c["renew_at"])
            for c in status["certificates"]
        } == from_cli
        assert set(json.loads(cli.stdout)) <= set(status)
        assert status["applied"]["revision"] is None and status["applied"]["ok"] is True

        # a broken edit: reported (log, /healthz, /status, metric); nothing removed or changed
        passes = daemon.passes()
        site.write(
            "beta.yaml", "apiVersion: certctl/v1\nkind: Certificate\nmetadata: {name: beta\nspec: {}\n"
        )
        site.certificate("alpha", ["alpha.example.test"], extra="  colour: blue\n")  # an unknown field
        code, health = daemon.wait(  # type: ignore[misc]
            "/healthz 503",
            lambda: (
                (r := daemon.json("/healthz"))[0] == 503
                and len(r[1]["desired_state"].get("errors", [])) == 2
                and r
            ),
        )
        errors = "\n".join(health["desired_state"]["errors"])
        assert re.search(r"beta\.yaml:\d+:\d+: YAML syntax error", errors), errors
        assert "alpha.yaml:" in errors and "colour" in errors, errors
        assert daemon.logged("desired_state.invalid")
        assert daemon.metrics()[("certctl_desired_state_valid", ())] == 0
        daemon.wait_pass(passes)
        daemon.hup()  # a full pass on the last valid state
        assert site.live("beta") is not None and site.live("beta").thumbprint == beta.thumbprint  # type: ignore[union-attr]
        assert site.live("alpha").thumbprint == alpha.thumbprint and len(site.live("alpha").sans) == 2  # type: ignore[attr-defined, union-attr]
        names = {c["name"] for c in daemon.status()["certificates"]}
        assert names == {"alpha", "beta"}

        # fixed: valid again, healthy again
        site.certificate("beta", ["beta.example.test"])
        site.certificate("alpha", ["alpha.example.test", "www.alpha.example.test"])
        daemon.wait_healthy()
        assert daemon.metrics()[("certctl_desired_state_valid", ())] == 1
        assert site.live("alpha").thumbprint == alpha.thumbprint, (  # type: ignore[attr-defined, union-attr]
            "re-validating the same spec reissues nothing"
        )
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    assert site.cli("plan", "--detailed-exitcode").returncode == 0


def test_short_lived_certificates_renew_on_time_and_metrics_say_so(tmp_path: Path) -> None:
    site = Site(tmp_path, validity="20s")
    site.certificate("quick", ["quick.example.test"])  # renews at 75%: every 15 s
    site.certificate("half", ["half.example.test"], extra="  renewal: {lifetimePercent: 50}\n")  # every 10 s
    daemon = Daemon(site)
    try:
        daemon.wait_healthy()
        daemon.wait(
            "three versions of quick (two renewals)", lambda: len(site.versions("quick")) >= 3, timeout=45
        )
        for name, period in (("quick", 15), ("half", 10)):
            versions = site.versions(name)
            assert len(versions) >= 3, (name, versions)
            for older, newer in itertools.pairwise(versions):
                gap = (newer.not_before - older.not_before).total_seconds()
                assert period - 1 <= gap <= period + 2, (
                    f"{name}: renewed {gap:.0f}s after the previous, expected {period}s"
                )
                assert newer.not_before < older.not_after, (
                    f"{name}: the previous certificate expired before renewal"
                )

        # no polling: a pass per due time (and the start), not one a second
        passes = daemon.passes()
        assert passes <= 12, f"{passes} passes in ~35 s for two certificates renewing every 10-15 s"

        # /metrics, parsed
        def settled() -> dict[Any, float] | None:
            metrics = daemon.metrics()
            live = site.live("quick")
            expiry = metrics.get(("certctl_certificate_expiration_timestamp_seconds", (("name", "quick"),)))
            return metrics if live and expiry == live.not_after.timestamp() else None

        metrics = daemon.wait("metrics of the live quick certificate", settled)
        live = site.live("quick")
        assert (
            metrics[("certctl_certificate_renewal_timestamp_seconds", (("name", "quick"),))]
            == live.not_before.timestamp() + 15  # type: ignore[union-attr]
        )
        assert metrics[("certctl_certificate_ready_status", (("condition", "True"), ("name", "quick")))] == 1
        assert metrics[("certctl_certificate_ready_status", (("condition", "False"), ("name", "quick")))] == 0
        assert metrics[("certctl_actions_total", (("kind", "renew"), ("result", "done")))] >= 4
        assert metrics[("certctl_actions_total", (("kind", "issue"), ("result", "done")))] == 2
        assert metrics[("certctl_reconcile_total", ())] >= 4
        assert (
            metrics[("certctl_reconcile_duration_seconds_count", ())]
            == metrics[("certctl_reconcile_total", ())]
        )
        assert metrics[("certctl_reconcile_errors_total", ())] == 0
        status = daemon.status()
        quick = next(c for c in status["certificates"] if c["name"] == "quick")
        assert _ts(quick["renew_at"]) == live.not_before.timestamp() + 15  # type: ignore[union-attr]
    finally:
        assert daemon.stop() == 0, daemon.tail()


def test_one_daemon_per_state_dir_and_sigterm_exits_cleanly(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.certificate("alpha", ["alpha.example.test"])
    first = Daemon(site)
    try:
        first.wait_healthy()
        # the first daemon holds the lock until the end: a second one that waited for it would hang here
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "reconciler",
                "daemon",
                "-d",
                str(site.desired),
                "--state-dir",
                str(site.state),
                "--metrics-address",
                f"127.0.0.1:{free_port()}",
            ],
            capture_output=True,
            text=True,
            env=env(),
            timeout=HANG,
            cwd=site.root,
            check=False,
        )
        assert second.returncode == 1
        assert "another certctl daemon is already running" in second.stderr
        assert f"pid {first.proc.pid}" in second.stderr, second.stderr
        first.wait_healthy()  # the first one is unaffected
    finally:
        # the next pass is minutes away (reconcileInterval 5m, renewal at 45m): SIGTERM must not wait for it
        code = first.stop(signal.SIGTERM, timeout=HANG)
    assert code == 0, first.tail()
    stopped_by_itself(first)


def test_sigterm_during_an_apply_finishes_the_running_action(tmp_path: Path) -> None:
    site = Site(tmp_path, settings="concurrency: 1\n")
    marks = tmp_path / "marks"
    marks.mkdir()
    slow = f"""\
      tasks:
        - script:
            command: 'touch {marks}/$CERTCTL_CERTIFICATE.started; sleep 2; touch {marks}/$CERTCTL_CERTIFICATE.done'
    """
    site.certificate("one", ["one.example.test"], extra=slow)
    site.certificate("two", ["two.example.test"], extra=slow)
    daemon = Daemon(site)
    try:
        daemon.wait("a script task running", lambda: list(marks.glob("*.started")), timeout=20)
        daemon.proc.send_signal(signal.SIGINT)
        daemon.proc.wait(HANG)
    finally:
        code = daemon.stop()
    assert code == 0, daemon.tail()
    stopped_by_itself(daemon)
    running = next(marks.glob("*.started")).name.split(".")[0]
    assert (marks / f"{running}.done").exists(), "the running action was allowed to finish"
    assert len(list(marks.glob("*.started"))) == 1, "nothing new was started after the signal"
    assert any(e.get("action") == f"deploy/{running}/task/0-script" for e in daemon.logged("action.applied"))
    assert daemon.logged("action.skipped") or len(list((site.pem).glob("*/current"))) < 2


def test_kill_9_in_the_middle_of_applies_then_restart_converges(tmp_path: Path) -> None:
    site = Site(tmp_path, settings="concurrency: 2\n")
    out = tmp_path / "out"
    marks = tmp_path / "marks"
    marks.mkdir()
    names = [f"site{i}" for i in range(6)]

    def specs(algorithm: str) -> None:
        for name in names:
            site.certificate(
                name,
                [f"{name}.example.test"],
                extra=f"""\
              key: {{algorithm: {algorithm}}}
              tasks:
                - files: {{path: {out}/{name}}}
                - script:
                    command: 'touch {marks}/$CERTCTL_CERTIFICATE.started; sleep 1'
            """,
            )

    # 1. killed while a slow deployment runs
    specs("ecdsa-p256")
    daemon = Daemon(site)
    daemon.wait("a script task running", lambda: list(marks.glob("*.started")), timeout=20)
    daemon.kill9()
    journal = [json.loads(line) for line in (site.state / "journal.jsonl").read_text().splitlines()]
    assert any(e["event"] == "intent" for e in journal)

    # 2. killed at arbitrary moments of applies that reissue everything (rsa keys: slow)
    for round_, (algorithm, delay) in enumerate((("rsa-3072", 0.9), ("ecdsa-p384", 0.4), ("rsa-2048", 1.3))):
        specs(algorithm)
        daemon = Daemon(site)
        time.sleep(delay + 0.3 * round_)
        daemon.kill9()

    # 3. a restart converges, and leaves nothing behind
    daemon = Daemon(site)
    try:
        daemon.wait(
            "every certificate ready",
            lambda: (
                (s := daemon.status()["certificates"])
                and len(s) == len(names)
                and all(c["state"] == "ready" and not c["pending_actions"] for c in s)
            ),
            timeout=60,
        )
        assert daemon.logged("journal.recovered") or daemon.logged("recovery.done")
    finally:
        assert daemon.stop() == 0, daemon.tail()
    plan = site.cli("plan", "--json")
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["changes"] is False, plan.stdout
    assert site.leftovers() == []
    for name in names:
        live = site.live(name)
        assert live is not None and live.key_algorithm == "rsa-2048"
        assert pki.key_matches(
            (site.pem / name / "cert.pem").read_bytes(), (site.pem / name / "privkey.pem").read_bytes()
        )
        assert pki.key_matches(
            (out / name / "cert.pem").read_bytes(), (out / name / "privkey.pem").read_bytes()
        )
        assert pki.info_from_pem((out / name / "fullchain.pem").read_bytes()).thumbprint == live.thumbprint
    vault = site.state / "vault"
    index = {
        json.loads(line)["k"] for line in (vault / "index.jsonl").read_text().splitlines() if line.strip()
    }
    for cert_dir in vault.iterdir():
        if cert_dir.is_dir():
            assert cert_dir.name in index


def test_a_hanging_action_cannot_hold_up_a_stop_and_the_restart_recovers(tmp_path: Path) -> None:
    site = Site(tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    site.certificate(
        "stuck",
        ["stuck.example.test"],
        extra=f"""\
        tasks:
          - script:
              command: 'echo $$ > {marks}/started; exec sleep 600'
              timeout: 15m
        """,
    )
    daemon = Daemon(site, extra_env={"CERTCTL_STOP_TIMEOUT": "1"})
    daemon.wait("the hanging script", lambda: (marks / "started").read_text().strip(), timeout=20)
    script = int((marks / "started").read_text())
    try:
        # a stop that waited for the script would hang past HANG; the 1 s stop timeout ends it
        assert daemon.stop(signal.SIGTERM, timeout=HANG) == 0, daemon.tail()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(script, signal.SIGKILL)  # left running by the forced exit
    assert [e["seconds"] for e in daemon.logged("daemon.stop.forced")] == [1.0], daemon.tail()
    assert not daemon.logged("daemon.stopped")
    # the deployment never completed: the next start redoes it
    site.certificate("stuck", ["stuck.example.test"], extra="tasks: [{script: {command: 'true'}}]\n")
    again = Daemon(site)
    try:
        again.wait(
            "converged",
            lambda: (c := again.cert("stuck")) and c["state"] == "ready" and not c["pending_actions"],
        )
        assert any(e.get("action") == "deploy/stuck/task/0-script" for e in again.logged("journal.recovered"))
    finally:
        assert again.stop() == 0, again.tail()


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args],
        capture_output=True,
        text=True,
        check=True,
        env=env(
            {
                "GIT_AUTHOR_NAME": "t",
                "GIT_AUTHOR_EMAIL": "t@example.test",
                "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@example.test",
            }
        ),
    ).stdout.strip()


def test_git_pull_applies_new_commits_and_records_the_revision(tmp_path: Path) -> None:
    origin = Site(tmp_path / "origin", settings="reconcileInterval: 1s\n")
    origin.certificate("alpha", ["alpha.example.test"])
    _git(origin.desired, "init", "-q", "-b", "main")
    _git(origin.desired, "add", ".")
    _git(origin.desired, "commit", "-qm", "alpha")
    site = Site.__new__(Site)
    site.root, site.desired, site.state, site.pem = (
        tmp_path,
        tmp_path / "desired",
        tmp_path / "state",
        tmp_path / "pem",
    )
    subprocess.run(["git", "clone", "-q", str(origin.desired), str(site.desired)], check=True)
    daemon = Daemon(site, args=("--git-pull",))
    try:
        daemon.wait_healthy()
        first = _git(origin.desired, "rev-parse", "HEAD")
        assert daemon.status()["source"]["revision"] == first

        origin.certificate("beta", ["beta.example.test"])
        _git(origin.desired, "add", ".")
        _git(origin.desired, "commit", "-qm", "beta")
        second = _git(origin.desired, "rev-parse", "HEAD")
        daemon.wait("beta pulled and applied", lambda: site.live("beta"), timeout=15)
        daemon.wait("the applied revision recorded", lambda: daemon.status()["applied"]["revision"] == second)
        assert daemon.status()["source"]["revision"] == second
        status = json.loads(site.cli("status", "--json").stdout)
        assert status["applied"]["revision"] == second and status["source"]["revision"] == second
        plan = json.loads(site.cli("plan", "--json").stdout)
        assert plan["source"]["revision"] == second and plan["changes"] is False

        # a local commit makes the branches diverge: reported, never merged, the checkout stays in force
        site.certificate("local", ["local.example.test"])
        _git(site.desired, "add", ".")
        _git(site.desired, "commit", "-qm", "local change")
        local = _git(site.desired, "rev-parse", "HEAD")
        origin.certificate("gamma", ["gamma.example.test"])
        _git(origin.desired, "add", ".")
        _git(origin.desired, "commit", "-qm", "gamma")
        git = daemon.wait(
            "the pull error reported",
            lambda: (
                (g := daemon.status()["daemon"]["git"]) and not g["ok"] and "diverged" in g["message"] and g
            ),
        )
        assert "certctl only fast-forwards" in git["message"]
        assert daemon.metrics()[("certctl_git_pull_errors_total", ())] >= 1
        assert _git(site.desired, "rev-parse", "HEAD") == local
        assert site.live("gamma") is None
        daemon.wait("the local commit applied", lambda: site.live("local"))
    finally:
        assert daemon.stop() == 0, daemon.tail()
