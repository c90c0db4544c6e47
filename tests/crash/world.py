"""The crash suite's world: the local CA, a PEM store, an emulated IIS machine with its WebHosting store,
files and pfx tasks; and the invariants every recovery must restore."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from reconciler.adapters.iis.emulated import INTENT_FILE, EmulatedHost
from reconciler.state.statedir import StateDir
from reconciler.support import pki
from tests.conftest import consumer_thumbprint

REPO = Path(__file__).resolve().parents[2]
KILLER = Path(__file__).with_name("killer.py")
PFX_PASSWORD = "crash-suite"
# every temporary name certctl uses: atomic_write, version folders, trash, staged IIS files and backups
TEMPORARY = re.compile(r"^\..+\.(tmp|removing|certctl-new|certctl-bak)$")

SPECS = """\
apiVersion: certctl/v1
kind: Settings
metadata: {name: settings}
spec: {stateDir: ../%(state)s}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec: {localCA: {validity: 90d}}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec: {pemDirectory: {path: ../%(pem)s}}
---
apiVersion: certctl/v1
kind: IisHost
metadata: {name: web01}
spec: {backend: emulated, root: ../iis}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: web01-webhosting}
spec: {windows: {host: web01, location: LocalMachine, name: WebHosting}}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: www}
spec:
  issuer: local
  domains: [www.example.com, example.com]
  stores: [pem, web01-webhosting]
  iis: [{host: web01, mode: auto}]
  tasks:
    - files: {path: ../out/www}
    - pfx: {path: ../out/www.pfx, password: {fromEnv: CRASH_PFX_PASSWORD}}
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: api}
spec:
  issuer: local
  domains: [api.example.org]
  stores: [web01-webhosting]
  iis: [{host: web01, mode: auto}]
---
apiVersion: certctl/v1
kind: Certificate
metadata: {name: shop}
spec:
  issuer: local
  domains: [shop.example.net]
  key: {algorithm: rsa-2048}
  stores: [pem]
  tasks:
    - files: {path: ../out/shop}
"""


def make(root: Path, state: str = "state", pem: str = "pem") -> Path:
    """Write the world under ``root`` (state dir and PEM store at ``root/state``, ``root/pem`` unless
    told otherwise); returns its desired-state folder."""
    desired = root / "desired"
    desired.mkdir(parents=True)
    (desired / "world.yaml").write_text(textwrap.dedent(SPECS % {"state": state, "pem": pem}))
    shutil.copytree(REPO / "examples" / "iis-web01", root / "iis")
    return desired


def certctl_killed(
    root: Path, at: int, *args: str, count_file: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run certctl in a child process that kills itself (SIGKILL) at its ``at``-th file-system step."""
    env = {**os.environ, "CRASH_AT": str(at), "CRASH_PFX_PASSWORD": PFX_PASSWORD, "PYTHONPATH": str(REPO)}
    if count_file is not None:
        env["CRASH_COUNT_FILE"] = str(count_file)
    return subprocess.run(
        [sys.executable, str(KILLER), *args, "-d", str(root / "desired")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def versions(root: Path, state: str = "state") -> dict[str, list[str]]:
    return {
        name: [v.info.thumbprint for v in StateDir(root / state).issued_for(name)]
        for name in ("www", "api", "shop")
    }


def check_invariants(root: Path, run_cli, state_dir: str = "state", pem: str = "pem") -> None:
    """After a recovery apply: converged, every file a consumer reads consistent and current, every
    HTTP.sys entry's certificate in its store, every vault version indexed, no temporaries left."""
    code, out, err = run_cli("plan", "-d", str(root / "desired"), "--detailed-exitcode")
    assert code == 0, f"not converged after recovery:\n{out}{err}"
    state = StateDir(root / state_dir)
    current = {}
    for name in ("www", "api", "shop"):
        newest = state.issued_for(name)[-1]
        assert newest.lost is None, (name, newest.lost)
        current[name] = newest.info.thumbprint
    for name in ("www", "shop"):
        assert consumer_thumbprint(root / pem / name) == current[name]
        assert consumer_thumbprint(root / "out" / name) == current[name]
    cert_pem, _, key_pem, _ = pki.from_pfx((root / "out" / "www.pfx").read_bytes(), PFX_PASSWORD.encode())
    assert key_pem is not None and pki.key_matches(cert_pem, key_pem)
    assert pki.info_from_pem(cert_pem).thumbprint == current["www"]
    host = EmulatedHost("web01", root / "iis")
    for entry in host.observe().httpsys:
        if entry.certhash:
            assert host.has_cert(entry.certstorename or "My", entry.certhash), (
                f"HTTP.sys {entry.key}: certificate gone"
            )
    served = {e.certhash for e in host.observe().httpsys}
    assert current["www"] in served and current["api"] in served
    assert not (root / "iis" / INTENT_FILE).exists()
    indexed = {name: set(v) for name, v in versions(root, state_dir).items()}
    for cert_dir in (root / state_dir / "vault").iterdir():
        if cert_dir.is_dir():
            on_disk = {v.name for v in cert_dir.iterdir() if v.is_dir()}
            assert on_disk == indexed.get(cert_dir.name, set()), f"vault and index differ for {cert_dir.name}"
    leftovers = [str(p) for p in root.rglob("*") if TEMPORARY.match(p.name)]
    assert not leftovers, f"temporaries left: {leftovers}"
