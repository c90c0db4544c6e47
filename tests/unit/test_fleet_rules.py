"""The pure fleet rules: what one node acts on, {node} in paths, another node's issuance in a plan, the
fleet status; and sealing keys at rest."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from reconciler.app.loader import load
from reconciler.core.fleet import (
    ISSUING_ELSEWHERE,
    PATH_FIELDS,
    _models_in,
    _toward_paths,
    fleet_document,
    focused,
    issuing_elsewhere,
    merged_report,
    node_view,
    only_for,
)
from reconciler.core.model import Issuing, ObservedState
from reconciler.core.planner import plan
from reconciler.entry.daemon.loop import fleet_event, focus_of
from reconciler.support.sealing import KeyProblem, Sealer, parse_key

AT = datetime(2026, 11, 1, tzinfo=UTC)

DESIRED = """apiVersion: certctl/v1
kind: Settings
metadata: {name: s}
spec:
  stateDir: ../state/{node}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec: {localCA: {}}
---
apiVersion: certctl/v1
kind: IisHost
metadata: {name: web01}
spec:
  backend: emulated
  root: ../machines/web01
  node: web01
---
apiVersion: certctl/v1
kind: IisHost
metadata: {name: web02}
spec:
  backend: emulated
  root: ../machines/web02
  node: web02
---
apiVersion: certctl/v1
kind: Store
metadata: {name: hosting01}
spec: {windows: {host: web01}}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: hosting02}
spec: {windows: {host: web02}}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory:
    path: ../pem/{node}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: farm}
spec:
  issuer: local
  domains: [www.example.test]
  stores: [hosting01, hosting02]
  iis: [{host: web01}, {host: web02}]
  tasks:
    - script: {command: [/bin/true]}
    - script: {command: [/bin/true]}
      node: web02
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: only02}
spec:
  issuer: local
  domains: [api.example.test]
  stores: [hosting02]
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: everywhere}
spec:
  issuer: local
  domains: [files.example.test]
  stores: [pem]
"""


@pytest.fixture
def desired_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "ds"
    folder.mkdir()
    (folder / "all.yaml").write_text(DESIRED)
    return folder


def test_a_node_acts_on_its_hosts_stores_and_the_certificates_that_go_there(desired_dir: Path) -> None:
    desired = load(desired_dir)
    web01 = node_view(desired, "web01")
    assert sorted(web01.iis_hosts) == ["web01"]
    assert sorted(web01.stores) == ["hosting01", "pem"]
    assert sorted(web01.certificates) == ["everywhere", "farm"]
    farm = web01.certificates["farm"].spec
    assert farm.stores == ["hosting01"] and [t.host for t in farm.iis] == ["web01"]
    assert len(farm.tasks) == 1 and farm.tasks[0].node is None  # the task for web02 stays there

    web02 = node_view(desired, "web02")
    assert sorted(web02.certificates) == ["everywhere", "farm", "only02"]
    assert len(web02.certificates["farm"].spec.tasks) == 2

    web03 = node_view(desired, "web03")
    assert sorted(web03.certificates) == ["everywhere"] and sorted(web03.stores) == ["pem"]
    assert web03.iis_hosts == {}


def test_node_placeholder_is_replaced_in_paths_only(desired_dir: Path) -> None:
    desired = load(desired_dir)
    view = node_view(desired, "web02")
    assert view.settings.stateDir == str(desired_dir.parent / "state" / "web02")
    assert view.stores["pem"].spec.pemDirectory is not None
    assert view.stores["pem"].spec.pemDirectory.path == str(desired_dir.parent / "pem" / "web02")
    assert desired.stores["pem"].spec.pemDirectory is not None
    assert desired.stores["pem"].spec.pemDirectory.path.endswith("{node}")  # the loaded state is unchanged
    assert node_view(desired, "web02") == view  # the same every time


def test_every_path_field_is_reached_from_the_kinds_and_nothing_else_is_walked() -> None:
    from pydantic import BaseModel

    from reconciler.core import spec as specs

    reached: set[tuple[type[BaseModel], str]] = set()
    todo: list[type[BaseModel]] = [
        specs.SettingsSpec,
        specs.IssuerSpec,
        specs.StoreSpec,
        specs.IisHostSpec,
        specs.CertificateSpec,
    ]
    done: set[type[BaseModel]] = set()
    while todo:
        model = todo.pop()
        if model in done:
            continue
        done.add(model)
        for name in _toward_paths(model):
            reached.add((model, name))
            annotation = model.model_fields[name].annotation
            todo.extend(_models_in(annotation))
    assert reached >= PATH_FIELDS
    assert "domains" not in _toward_paths(specs.CertificateSpec)
    assert "key" not in _toward_paths(specs.CertificateSpec)


def test_an_issuance_another_node_holds_is_a_note_and_what_depends_on_it_waits(desired_dir: Path) -> None:
    desired = node_view(load(desired_dir), "web03")
    observed = ObservedState(issuing={"everywhere": Issuing("web02", AT - timedelta(seconds=20))})
    made = plan(desired, observed, AT)
    assert [a.certificate for a in made.actions] == []  # no issue, no install on this node for now
    notes = [n for n in made.notes if n.code == ISSUING_ELSEWHERE]
    assert [(n.certificate, n.message) for n in notes] == [
        (
            "everywhere",
            "issuing on web02 since 2026-10-31T23:59:40Z; this node installs the new version when it lands",
        )
    ]
    alone = plan(desired, ObservedState(), AT)
    assert {a.kind.value for a in alone.actions} == {"issue", "install"}
    assert issuing_elsewhere(alone, {}) is alone


def test_fleet_status_flags_a_node_silent_for_three_intervals() -> None:
    now = AT
    report = {
        "reconcile_interval_seconds": 60.0,
        "converged": True,
        "revision": "abc",
        "certificates": {"farm": {"thumbprint": "AA"}},
    }
    doc = fleet_document(
        now,
        [
            ("web01", now - timedelta(hours=1), now - timedelta(seconds=179), report),
            ("web02", now - timedelta(hours=1), now - timedelta(seconds=181), report),
            (
                "web03",
                now - timedelta(hours=1),
                now,
                {**report, "certificates": {"farm": {"thumbprint": "BB"}}},
            ),
        ],
        {"farm": "BB"},
    )
    assert [(n["node"], n["stale"], n["converged"]) for n in doc["nodes"]] == [
        ("web01", False, True),
        ("web02", True, False),
        ("web03", False, True),
    ]
    assert doc["certificates"] == [
        {
            "name": "farm",
            "newest": "BB",
            "serving": [
                {"thumbprint": "AA", "current": False, "nodes": ["web01", "web02"]},
                {"thumbprint": "BB", "current": True, "nodes": ["web03"]},
            ],
        }
    ]


def test_sealed_keys_open_only_with_their_key_and_their_context() -> None:
    key = parse_key(base64.b64encode(b"k" * 32))
    sealer = Sealer(key)
    sealed = sealer.seal(b"-----BEGIN PRIVATE KEY-----", "version:a:AA")
    assert b"PRIVATE" not in sealed
    assert sealer.open(sealed, "version:a:AA") == b"-----BEGIN PRIVATE KEY-----"
    with pytest.raises(KeyProblem, match="cannot be decrypted"):
        sealer.open(sealed, "version:b:AA")  # moved to another row
    with pytest.raises(KeyProblem, match="cannot be decrypted"):
        Sealer(b"x" * 32).open(sealed, "version:a:AA")
    for bad in (b"", b"c2hvcnQ=", b"not base64!!"):
        with pytest.raises(KeyProblem, match="32 bytes, base64"):
            parse_key(bad)


def test_a_pass_focused_on_a_certificate_keeps_only_it_and_where_it_goes(desired_dir: Path) -> None:
    desired = node_view(load(desired_dir), "web02")
    only = focused(desired, frozenset({"only02"}))
    assert sorted(only.certificates) == ["only02"]
    assert sorted(only.stores) == ["hosting02"] and sorted(only.iis_hosts) == ["web02"]  # the store's host
    assert only.issuers == desired.issuers and only.settings == desired.settings
    farm = focused(desired, frozenset({"farm", "gone"}))
    assert sorted(farm.certificates) == ["farm"] and sorted(farm.stores) == ["hosting02"]

    made = plan(desired, ObservedState(), AT)
    assert {a.certificate for a in made.actions} == {"everywhere", "farm", "only02"}
    mine = only_for(made, frozenset({"farm"}))
    assert mine.actions and {a.certificate for a in mine.actions} == {"farm"}
    assert [c.name for c in mine.certificates] == ["farm"]


def test_a_focused_report_replaces_its_certificates_and_recounts_the_node() -> None:
    previous = {
        "revision": "r1",
        "converged": False,
        "pending_actions": 3,
        "waiting_for": ["blog"],
        "certificates": {
            "shop": {"thumbprint": "AA", "converged": False, "pending": 2},
            "blog": {"thumbprint": None, "converged": False, "pending": 0},
            "api": {"thumbprint": "CC", "converged": False},  # a report written before "pending" was kept
        },
    }
    focused_report = {
        "revision": "r1",
        "converged": True,
        "pending_actions": 0,
        "waiting_for": [],
        "certificates": {"shop": {"thumbprint": "BB", "converged": True, "pending": 0}},
    }
    merged = merged_report(previous, focused_report, frozenset({"shop"}))
    assert merged["certificates"]["shop"]["thumbprint"] == "BB"
    assert merged["certificates"]["api"]["thumbprint"] == "CC"
    assert (merged["pending_actions"], merged["waiting_for"], merged["converged"]) == (1, ["blog"], False)
    done = {**previous, "certificates": {"shop": previous["certificates"]["shop"]}, "waiting_for": []}  # type: ignore[index]
    assert merged_report(done, focused_report, frozenset({"shop"}))["converged"] is True


@pytest.mark.parametrize(
    ("payloads", "focus"),
    [
        (["version:shop"], frozenset({"shop"})),
        (["version:shop", "version:api", "version:shop"], frozenset({"shop", "api"})),
        (["version:shop", "reconnected"], None),  # notices may have been missed: a full pass
        (["version:"], None),
    ],
)
def test_notices_of_new_versions_focus_the_pass_on_their_certificates(
    payloads: list[str], focus: frozenset[str] | None
) -> None:
    assert focus_of({fleet_event(p) for p in payloads}) == focus
    assert focus_of({fleet_event("version:shop"), "interval"}) is None
    assert focus_of({fleet_event("version:shop"), "files"}) is None
