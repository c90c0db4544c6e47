"""The issuance lease fences the version it stores: a node cut off from the database for longer than
``leaseTimeout`` loses the lease to another node, and what its order returns is then never stored as a
second version of the certificate (real PostgreSQL; both nodes in this process, each its own state)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from reconciler.app.loader import load
from reconciler.app.observe import observe
from reconciler.app.reconcile import apply_plan
from reconciler.app.world import World
from reconciler.core.fleet import focused, node_view
from reconciler.core.planner import plan
from reconciler.ports import IssueRequest, LeaseLost, Material
from reconciler.support.clock import SYSTEM
from reconciler.wiring import build, open_state, state_dir_for
from tests.integration.fleet import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def fleet(tmp_path: Path, fleet_dsn: str, monkeypatch: pytest.MonkeyPatch) -> Fleet:
    fleet = Fleet(tmp_path, fleet_dsn, lease="5s")
    fleet.local_ca({"shop": "shop.example.test"})
    migrated = fleet.certctl("web01", "backend", "migrate")
    assert migrated.returncode == 0, migrated.stderr
    for key in ("CERTCTL_DATABASE_URL", "CERTCTL_ENCRYPTION_KEY"):
        monkeypatch.setenv(key, fleet.env[key])
    return fleet


def world_of(fleet: Fleet, node: str) -> World:
    desired = focused(node_view(load(fleet.dir), node), frozenset({"shop"}))
    return build(desired, open_state(desired, state_dir_for(fleet.dir, desired, None), node))


def cut_off(fleet: Fleet) -> None:
    """What the other nodes see of a node cut off from the database: its lease stopped being renewed."""
    fleet.query("UPDATE certctl_leases SET heartbeat_at = now() - interval '1 hour'")


def test_a_store_after_the_lease_was_taken_over_is_refused(fleet: Fleet) -> None:
    web01, web02 = world_of(fleet, "web01"), world_of(fleet, "web02")
    request = IssueRequest("shop", ("shop.example.test",), "ecdsa-p256")
    with web01.state.issuance("shop", None) as grant:
        assert grant.adopt is None and grant.taken_from is None
        late = web01.issuers["local"].issue(request)  # web01's order completes, but it was cut off
        cut_off(fleet)

        stored, release = threading.Event(), threading.Event()

        def take_over() -> None:  # web02, in its own thread (its own lease context)
            with web02.state.issuance("shop", None) as theirs:
                assert theirs.taken_from == "web01"
                material = web02.issuers["local"].issue(request)
                web02.state.store_issued("shop", material, "local", request.domains, SYSTEM.now(), None)
                stored.set()
                release.wait(60)

        other = threading.Thread(target=take_over)
        other.start()
        assert stored.wait(60)
        theirs = fleet.versions()["shop"]
        with capture_logs() as logs, pytest.raises(LeaseLost, match="web02 took over its lease"):
            web01.state.store_issued("shop", late, "local", request.domains, SYSTEM.now(), None)
        release.set()
        other.join()
        with pytest.raises(LeaseLost, match="its lease is no longer held"):  # web02 has released it since
            web01.state.store_issued("shop", late, "local", request.domains, SYSTEM.now(), None)
    assert fleet.versions()["shop"] == theirs and len(theirs) == 1 and late.info.thumbprint not in theirs
    assert [(e["event"], e["holder"]) for e in logs if e["event"] == "fleet.lease.lost"] == [
        ("fleet.lease.lost", "web02")
    ]
    assert not (web01.state.vault / "shop" / late.info.thumbprint).exists()  # nothing of it kept


class CutOffDuringOrder:
    """web01's issuer: its order completes while web01 is cut off, and meanwhile web02 takes the lease
    over and issues the certificate itself."""

    def __init__(self, inner: Any, fleet: Fleet, other: World) -> None:
        self.inner, self.fleet, self.other = inner, fleet, other
        self.orders: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def issue(self, request: IssueRequest) -> Material:
        material: Material = self.inner.issue(request)
        self.orders.append(material.info.thumbprint)
        if len(self.orders) == 1:
            cut_off(self.fleet)
            other = self.other
            done = threading.Thread(
                target=lambda: apply_plan(
                    other, plan(other.desired, observe(other), SYSTEM.now()), clock=SYSTEM
                )
            )
            done.start()
            done.join()
        return material


def test_a_node_that_lost_its_lease_mid_order_installs_the_other_nodes_version(fleet: Fleet) -> None:
    web01, web02 = world_of(fleet, "web01"), world_of(fleet, "web02")
    issuer = CutOffDuringOrder(web01.issuers["local"], fleet, web02)
    web01.issuers["local"] = issuer
    with capture_logs() as logs:
        result = apply_plan(web01, plan(web01.desired, observe(web01), SYSTEM.now()), clock=SYSTEM)
    assert result.ok, [(o.action.id, o.status, o.error) for o in result.outcomes]
    versions = fleet.versions()["shop"]
    assert len(versions) == 1 and versions[0] != issuer.orders[0]  # web02's version, not web01's late one
    assert issuer.orders == [issuer.orders[0]]  # web01 did not order again: it adopted web02's version
    issued = next(o for o in result.outcomes if o.action.kind.value == "issue")
    assert issued.result == {"thumbprint": versions[0], "adopted": "true"}
    assert any(e["event"] == "fleet.lease.lost" for e in logs)
    assert fleet.bound("web01") == fleet.bound("web02") == {"shop.example.test": versions[0]}
