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
