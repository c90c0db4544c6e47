"""The plan never hides pending work: deferred and failing certificates, backoff reset by an edit, every cause."""

from __future__ import annotations

import json

from tests.conftest import Workspace

BROKEN = """\
apiVersion: certctl/v1
kind: Issuer
metadata: {name: broken}
spec:
  localCA: {validity: 30d}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: bad}
spec:
  issuer: broken
  domains: [bad.example.com]
  stores: [pem]
"""


def failing_issuer(ws: Workspace) -> None:
    """An Issuer whose local CA files are damaged: every issuance from it fails and backs off."""
    ws.base()
    ws.certificate("www", ["www.example.com"])
    ws.write("bad.yaml", BROKEN)
    folder = ws.state / "localca" / "broken"
    folder.mkdir(parents=True)
    (folder / "ca.pem").write_text("not a certificate")
    (folder / "ca.key").write_text("not a key")


def test_a_deferred_certificate_is_pending_work(ws: Workspace, run_cli) -> None:
    failing_issuer(ws)
    assert run_cli("apply", "-d", str(ws.desired))[0] == 1
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--detailed-exitcode")
    assert code == 2, out
    assert "Everything is up to date" not in out
    summary = out.strip().splitlines()[-1]
    assert summary.startswith("No changes now, but 1 certificate deferred (bad until 20"), summary
    assert "`certctl renew bad` retries now" in summary
    code, out, _ = run_cli("plan", "-d", str(ws.desired), "--json", "--detailed-exitcode")
    plan = json.loads(out)
    assert code == 2 and plan["changes"] is False
    assert [d["certificate"] for d in plan["deferred"]] == ["bad"]
    assert plan["deferred"][0]["until"] and plan["deferred"][0]["retry"] == "certctl renew bad"
    assert plan["deferred"][0]["consecutive_failures"] == 1 and plan["deferred"][0]["last_error"]


def test_editing_the_issuer_lifts_the_backoff(ws: Workspace, run_cli) -> None:
    failing_issuer(ws)
    assert run_cli("apply", "-d", str(ws.desired))[0] == 1
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    assert "issue/bad" not in {a["id"] for a in json.loads(out)["actions"]}
    ws.write("bad.yaml", BROKEN.replace("validity: 30d", "validity: 31d"))
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    plan = json.loads(out)
    issue = next(a for a in plan["actions"] if a["id"] == "issue/bad")
    assert "no longer applies" in issue["reason"] and plan["deferred"] == []
    # the failure of the edited spec starts a fresh backoff (1 failure, 1 hour), not a doubled one
    assert run_cli("apply", "-d", str(ws.desired))[0] == 1
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    assert json.loads(out)["deferred"][0]["consecutive_failures"] == 1


def test_editing_the_certificate_lifts_the_backoff_and_another_edit_does_not(ws: Workspace, run_cli) -> None:
    failing_issuer(ws)
    assert run_cli("apply", "-d", str(ws.desired))[0] == 1
    ws.certificate("www", ["www.example.com", "example.com"])  # another certificate's edit
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    assert [d["certificate"] for d in json.loads(out)["deferred"]] == ["bad"]
    ws.write("bad.yaml", BROKEN.replace("[bad.example.com]", "[bad.example.com, bad2.example.com]"))
    _, out, _ = run_cli("plan", "-d", str(ws.desired), "--json")
    plan = json.loads(out)
    assert "issue/bad" in {a["id"] for a in plan["actions"]} and plan["deferred"] == []
