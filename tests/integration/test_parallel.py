"""Large batches are parsed in worker processes; the result must equal the in-process one, errors included."""

from __future__ import annotations

from collections.abc import Sequence
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


def _last_waits_for_marker(chunk: Sequence[tuple[int, str]]) -> list[tuple[int, bool]]:
    """Each item back with whether the marker file was there; the chunk holding item 0 waits for it."""
    import os
    import time

    out = []
    for item, marker in chunk:
        if item == 0:
            deadline = time.monotonic() + 30
            while not os.path.exists(marker) and time.monotonic() < deadline:
                time.sleep(0.01)
        out.append((item, os.path.exists(marker)))
    return out


def test_iter_batch_gives_the_first_results_while_workers_work_on_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.support.parallel import iter_batch, workers

    if workers() < 2:
        pytest.fail("this test needs two processors to run a pool")
    monkeypatch.setenv("CERTCTL_PARALLEL_MIN", "1")
    marker = str(tmp_path / "first-result-taken")
    # item 0 comes last, so its chunk is the last one: it finishes only once the marker is there
    items = [(i, marker) for i in range(40, -1, -1)]
    results = iter_batch(_last_waits_for_marker, items)
    first = next(results)
    Path(marker).touch()  # only a caller holding a result before every chunk is done gets here in time
    rest = list(results)
    assert [first, *rest][-1] == (0, True)
    assert [i for i, _ in [first, *rest]] == list(range(40, -1, -1))
