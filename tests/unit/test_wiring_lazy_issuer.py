"""The executor's threads ask an Issuer for its backend at the same moment: exactly one is built
(one ACME account key and registration, one set of per-certificate order locks)."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.issuers.acme import issuer as acme_issuer
from reconciler.core.spec import IssuerSpec
from reconciler.state.statedir import StateDir
from reconciler.wiring import _LazyIssuer


def test_one_backend_for_many_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[object] = []
    rendezvous = threading.Barrier(2, timeout=0.5)  # two builders at once meet here; one alone times out

    class SlowToBuild:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            built.append(self)
            with contextlib.suppress(threading.BrokenBarrierError):
                rendezvous.wait()

    monkeypatch.setattr(acme_issuer, "AcmeIssuer", SlowToBuild)
    spec = IssuerSpec.model_validate(
        {
            "acme": {
                "directoryUrl": "https://acme.example.com/dir",
                "agreeToS": True,
                "solvers": [{"http01": {"standalone": {"port": 80}}}],
            }
        }
    )
    lazy = _LazyIssuer("ca", spec, StateDir(tmp_path))
    start = threading.Barrier(8)

    def get(_: int) -> int:
        start.wait()
        return id(lazy.backend)

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(get, range(8)))
    assert len(built) == 1
    assert len(ids) == 1


class _Blobs:
    """Blobs of one scope, as a fleet keeps them in its database (nothing under the state folder)."""

    def __init__(self, items: dict[str, bytes]) -> None:
        self.items = items

    def get(self, name: str) -> bytes | None:
        return self.items.get(name)


class _FleetState(StateDir):
    def __init__(self, path: Path, blobs: dict[str, dict[str, bytes]]) -> None:
        super().__init__(path)
        self.scopes = blobs

    def blobs(self, scope: str) -> Any:
        return _Blobs(self.scopes.get(scope, {}))


ACME = {
    "acme": {
        "directoryUrl": "https://acme.example.com/dir",
        "email": "new@example.com",
        "agreeToS": True,
        "solvers": [{"http01": {"standalone": {"port": 80}}}],
    }
}


def _record(email: str) -> bytes:
    return (
        b'{"directoryUrl": "https://acme.example.com/dir", "uri": "https://acme.example.com/acct/1", '
        b'"email": "' + email.encode() + b'", "created": "2026-01-01T00:00:00+00:00"}'
    )


@pytest.mark.parametrize(("saved", "synced"), [("old@example.com", True), ("new@example.com", False)])
def test_the_contact_is_checked_where_the_account_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, saved: str, synced: bool
) -> None:
    """A fleet keeps the account record in its database: a changed email is seen there (it was looked for
    under the node's state folder, found nowhere, and never updated until the next order)."""
    calls: list[str] = []

    class Backend:
        def sync_account(self) -> bool:
            calls.append("sync")
            return True

    state = _FleetState(tmp_path, {"acme/ca": {"account.json": _record(saved)}})
    lazy = _LazyIssuer("ca", IssuerSpec.model_validate(ACME), state)
    monkeypatch.setattr(_LazyIssuer, "backend", Backend())
    assert lazy.sync_account() is synced
    assert calls == (["sync"] if synced else [])


@pytest.mark.parametrize(
    "raw",
    [
        b"[1, 2]",
        b'"text"',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"directoryUrl": "https://acme.example.com/dir", "uri": 7}',
        b'{"directoryUrl": "https://acme.example.com/dir", "uri": "u", "email": ["a"]}',
        b"\xff\xfe",
    ],
)
def test_an_account_record_that_does_not_read_is_no_account(tmp_path: Path, raw: bytes) -> None:
    """A damaged or planted account.json is logged and treated as none (the next order registers afresh);
    it never crashes an apply, as a JSON list once did (``.get`` of a list)."""
    from reconciler.adapters.issuers.acme.record import load_record

    assert load_record(_Blobs({"account.json": raw}), "https://acme.example.com/dir", "account.json") is None
    state = _FleetState(tmp_path, {"acme/ca": {"account.json": raw}})
    assert _LazyIssuer("ca", IssuerSpec.model_validate(ACME), state).sync_account() is False
