"""Large batches are parsed in worker processes; the result must equal the in-process one, errors included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from reconciler.adapters.issuers.localca import LocalCAIssuer
from reconciler.adapters.stores.pemdir import PemDirectoryStore
from reconciler.app.loader import InvalidDesiredState, load
from reconciler.core.spec import LocalCA
from reconciler.ports import IssueRequest
from tests.conftest import Workspace


def _world(ws: Workspace) -> None:
    ws.base()
    for i in range(12):
        ws.certificate(f"c{i}", [f"c{i}.example.com"])
    issuer = LocalCAIssuer("local", LocalCA(), ws.state)
    store = PemDirectoryStore("pem", ws.pem)
    for i in range(6):
        store.install(
            f"c{i}",
            issuer.issue(IssueRequest(f"c{i}", (f"c{i}.example.com",), "ecdsa-p256")),
            datetime.now(UTC),
        )
    (ws.pem / "c0" / "versions" / "broken").mkdir()
    (ws.pem / "c0" / "versions" / "broken" / "cert.pem").write_text("garbage")


def test_pool_and_in_process_agree(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    _world(ws)
    monkeypatch.setenv("CERTCTL_NO_PARALLEL", "1")
    serial_desired, serial_store = (
        load(ws.desired, revision=False),
        PemDirectoryStore("pem", ws.pem).observe(),
    )
    monkeypatch.delenv("CERTCTL_NO_PARALLEL")
    monkeypatch.setenv("CERTCTL_PARALLEL_MIN", "1")
    pooled_desired, pooled_store = (
        load(ws.desired, revision=False),
        PemDirectoryStore("pem", ws.pem).observe(),
    )
    assert pooled_desired == serial_desired
    assert pooled_store == serial_store
    assert len(pooled_store.certs) == 6 and any(
        "broken/cert.pem is not a valid PEM" in p for p in pooled_store.problems
    )


def test_pool_reports_yaml_errors_with_positions(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    _world(ws)
    (ws.desired / "c3.yaml").write_text("apiVersion: certctl/v1\nkind: [unclosed\n")
    monkeypatch.setenv("CERTCTL_PARALLEL_MIN", "1")
    with pytest.raises(InvalidDesiredState) as info:
        load(ws.desired, revision=False)
    [diag] = info.value.diagnostics
    assert Path(diag.file).name == "c3.yaml" and diag.line == 3 and "YAML syntax error" in diag.message
