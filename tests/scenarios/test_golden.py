from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from reconciler.core.plan import action_from_json
from tests.scenarios.harness import comparable, run_scenario, scenario_dirs


@pytest.mark.parametrize("folder", scenario_dirs(), ids=lambda p: p.name)
def test_golden_plan(folder: Path) -> None:
    actual = comparable(run_scenario(folder))
    expected_path = folder / "expected.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        expected_path.write_text(json.dumps(actual, indent=2, sort_keys=True) + "\n")
    assert expected_path.exists(), (
        f"{expected_path} is missing; run UPDATE_GOLDEN=1 pytest {folder} and review it"
    )
    assert actual == json.loads(expected_path.read_text())


@pytest.mark.parametrize("folder", scenario_dirs(), ids=lambda p: p.name)
def test_planning_twice_gives_the_same_plan(folder: Path) -> None:
    first, second = run_scenario(folder), run_scenario(folder)
    assert first.to_json() == second.to_json()


def test_there_are_scenarios() -> None:
    assert len(scenario_dirs()) >= 10


@pytest.mark.parametrize("folder", scenario_dirs(), ids=lambda p: p.name)
def test_a_saved_plan_reads_back_as_the_same_typed_actions(folder: Path) -> None:
    """`certctl plan --out` then `certctl apply FILE`: every action, typed detail included, survives the JSON."""
    plan = run_scenario(folder)
    saved = json.loads(json.dumps(plan.to_json()))
    assert tuple(action_from_json(a) for a in saved["actions"]) == plan.actions
