"""The logger loads structlog at its first event and applies the set-up asked for before then."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)


def test_the_first_event_loads_structlog_with_the_set_up_asked_for_before() -> None:
    result = _run(
        "import sys\n"
        "from reconciler.support import logging\n"
        "log = logging.get_logger()\n"
        "logging.configure('json', 'info')\n"
        "print('structlog' in sys.modules)\n"
        "log.debug('dropped', n=0)\n"
        "log.info('first.event', n=1)\n"
        "log.bind(certificate='www').warning('second.event')\n"
        "print('structlog' in sys.modules)\n"
    )
    assert result.stdout.split() == ["False", "True"]
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert [(e["event"], e["level"]) for e in events] == [
        ("first.event", "info"),
        ("second.event", "warning"),
    ]
    assert events[0]["n"] == 1 and events[1]["certificate"] == "www" and "timestamp" in events[0]


def test_a_set_up_is_applied_at_once_when_structlog_is_already_loaded() -> None:
    result = _run(
        "import structlog\n"
        "from reconciler.support import logging\n"
        "logging.configure('json', 'warning')\n"
        "structlog.get_logger().info('below.the.level')\n"
        "structlog.get_logger().error('direct.event', code=7)\n"
    )
    assert [json.loads(line) for line in result.stderr.splitlines()] == [
        {
            "event": "direct.event",
            "code": 7,
            "level": "error",
            "timestamp": json.loads(result.stderr)["timestamp"],
        }
    ]


def test_console_output_is_kept_for_a_later_set_up() -> None:
    result = _run(
        "from reconciler.support import logging\n"
        "log = logging.get_logger()\n"
        "logging.configure('json')\n"
        "logging.configure('console')\n"
        "log.info('shown.as.text', key='value')\n"
    )
    line = result.stderr.strip()
    assert "shown.as.text" in line and "key=value" in line and not line.startswith("{")
