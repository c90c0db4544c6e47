"""Golden scenarios: one folder per scenario, as Terraform's show-json test data.

  tests/scenarios/<name>/desired/*.yaml   the desired state
  tests/scenarios/<name>/input.json       {"at": ISO time, "forced": [names], "observed": ObservedState as JSON}
  tests/scenarios/<name>/expected.json    the plan JSON (without fingerprints; source.dir is "desired")

`UPDATE_GOLDEN=1 pytest tests/scenarios` rewrites expected.json from the current planner (review the diff!).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reconciler.app.loader import load
from reconciler.core.codec import observed_from_json
from reconciler.core.durations import parse_time
from reconciler.core.plan import Plan
from reconciler.core.planner import plan

ROOT = Path(__file__).parent


def scenario_dirs() -> list[Path]:
    return sorted(p.parent for p in ROOT.glob("*/input.json"))


def run_scenario(folder: Path) -> Plan:
    desired = load(folder / "desired", revision=False)
    data = json.loads((folder / "input.json").read_text())
    at = parse_time(data["at"], datetime(2000, 1, 1, tzinfo=UTC))
    return plan(desired, observed_from_json(data["observed"]), at, frozenset(data.get("forced", [])))


def comparable(p: Plan) -> dict[str, Any]:
    data = p.to_json()
    data.pop("fingerprints")
    data["source"]["dir"] = "desired"
    return data
