"""The example as a user runs it: the repository's desired-state and the sample IIS machine, through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def certctl(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "CERTCTL_LOG_FORMAT": "json"}
    env.pop("CERTCTL_DIR", None)
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_iis_example_applies_then_plans_no_changes(tmp_path: Path) -> None:
    shutil.copytree(REPO / "desired-state", tmp_path / "desired-state")
    shutil.copytree(REPO / "examples" / "iis-web01", tmp_path / "run" / "iis-web01")
    machine = tmp_path / "run" / "iis-web01"
    config_before = (machine / "applicationHost.config").read_text()

    first = certctl(tmp_path, "plan", "-d", "desired-state", "--json")
    assert first.returncode == 0, first.stderr
    plan = json.loads(first.stdout)
    binds = {
        (a["kind"], a["detail"]["site"], a["detail"]["binding"])
        for a in plan["actions"]
        if a["kind"] in ("bind", "rebind")
    }
    assert ("bind", "example.com", "*:443:example.com") in binds
    assert ("rebind", "example.com", "*:443:www.example.com") in binds
    assert ("rebind", "apps", "*:8443:api.example.org") in binds
    assert ("rebind", "FTP", "*:21:ftp.example.com") in binds
    assert not any(site in ("legacy", "staging", "Default Web Site") for _k, site, _b in binds)
    codes = {(n["target"], n["code"]) for n in plan["notes"]}
    assert ("iis/web01/Default Web Site/https *:443:", "BlankHost") in codes
    assert ("iis/web01/legacy/https *:443:legacy.example.net", "SharedEndpoint") in codes
    assert ("iis/web01/staging/https *:443:staging.example.com", "LeftAlone") in codes
    assert ("iis/web01/apps/net.tcp 808:*", "LeftAlone") in codes

    applied = certctl(tmp_path, "apply", "-d", "desired-state")
    assert applied.returncode == 0, applied.stdout + applied.stderr

    again = certctl(tmp_path, "plan", "-d", "desired-state", "--detailed-exitcode")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "No changes." in again.stdout

    config = (machine / "applicationHost.config").read_text()
    assert '<binding protocol="https" bindingInformation="*:443:example.com" sslFlags="1" />' in config
    assert '<binding protocol="https" bindingInformation="*:8443:api.example.org" sslFlags="5" />' in config
    assert "catch-all https: shares HTTP.sys 0.0.0.0:443 with the legacy site" in config  # comments survive
    assert config.replace(
        '\n                    <binding protocol="https" bindingInformation="*:443:example.com" sslFlags="1" />',
        "",
    ).replace(_ftp_hash(config), "") == config_before.replace(_ftp_hash(config_before), "")
    table = {(e["kind"], e["key"]): e for e in json.loads((machine / "httpsys.json").read_text())}
    wmsvc = table[("ipport", "0.0.0.0:8172")]
    assert wmsvc["certhash"] == "D58DB0AC276FEDCFB1BBCA9AF211C97D35D987CE"  # another application's entry
    assert (
        table[("ipport", "0.0.0.0:443")]["certhash"] == "D58DB0AC276FEDCFB1BBCA9AF211C97D35D987CE"
    )  # shared
    assert (
        table[("ipport", "203.0.113.10:443")]["certhash"]
        == table[("ipport", "[2001:db8::10]:443")]["certhash"]
    )
    assert table[("ipport", "203.0.113.10:443")]["certhash"] != "DD3D35993002A8E1CEBDBCD7094A8A2E8B21C882"


def _ftp_hash(config: str) -> str:
    start = config.index('serverCertHash="') + len('serverCertHash="')
    return config[start : start + 40]
