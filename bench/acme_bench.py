"""ACME issuance throughput against a local Pebble: certctl versus certbot (run by `make bench`; not a test).

Starts Pebble (validation without sleeps, PEBBLE_VA_NOSLEEP=1) with pebble-challtestsrv as its DNS
(every name is 127.0.0.1), then in the same run:

1. certctl: N certificates with two domains each, issued by one `certctl apply` (http-01 through the
   built-in standalone listener on the port Pebble's VA connects to; Settings.concurrency parallel);
2. certbot, installed with pip into bench/out/certbot-venv: the same number of certificates, two
   domains each, `certbot certonly --standalone`, one after another (the way a cron job runs it).

Prints wall time and certificates per second of each, and the ratio (goal: certctl ≥ 10× certbot).

  python bench/acme_bench.py [--certs 50] [--concurrency 8] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.servers import Pebble, ServerPool  # noqa: E402

OUT = ROOT / "bench" / "out"
CERTBOT_VENV = OUT / "certbot-venv"


def certbot_binary() -> Path:
    """certbot in the benchmark's own virtualenv (created and filled with pip on first use)."""
    binary = CERTBOT_VENV / "bin" / "certbot"
    if not binary.exists():
        print(f"installing certbot into {CERTBOT_VENV} (pip) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(CERTBOT_VENV)], check=True)
        subprocess.run([str(CERTBOT_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "certbot"],
                       check=True)
    return binary


def certctl_binary() -> list[str]:
    found = Path(sys.executable).parent / "certctl"
    return [str(found)] if found.exists() else [sys.executable, "-m", "reconciler"]


def write_desired(root: Path, pebble: Pebble, port: int, n: int, concurrency: int) -> Path:
    desired = root / "desired"
    desired.mkdir(parents=True)
    docs = [f"""\
apiVersion: certctl/v1
kind: Settings
metadata: {{name: settings}}
spec:
  stateDir: ../state
  concurrency: {concurrency}
---
apiVersion: certctl/v1
kind: Issuer
metadata: {{name: pebble}}
spec:
  acme:
    directoryUrl: {pebble.directory_url}
    email: bench@example.com
    agreeToS: true
    caBundle: {pebble.ca_bundle}
    solvers:
      - http01: {{standalone: {{address: 127.0.0.1, port: {port}}}}}
---
apiVersion: certctl/v1
kind: Store
metadata: {{name: pem}}
spec:
  pemDirectory: {{path: ../pem}}
"""]
    for i in range(n):
        docs.append(f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: site{i:02d}}}\nspec:\n"
                    f"  issuer: pebble\n  domains: [site{i:02d}.example.com, www.site{i:02d}.example.com]\n"
                    "  stores: [pem]\n")
    (desired / "bench.yaml").write_text("---\n".join(docs))
    return desired


def run_certctl(root: Path, pebble: Pebble, port: int, n: int, concurrency: int) -> float:
    desired = write_desired(root, pebble, port, n, concurrency)
    env = {**os.environ, "CERTCTL_CACHE_DIR": str(root / "cache")}
    log = root / "certctl.log"
    started = time.perf_counter()
    with log.open("w") as err:
        result = subprocess.run([*certctl_binary(), "apply", "-d", str(desired), "--log-format", "json"],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, check=False)
    seconds = time.perf_counter() - started
    issued = sum(1 for _ in (root / "pem").glob("site*/cert.pem"))
    if result.returncode != 0 or issued != n:
        sys.exit(f"certctl apply failed (exit {result.returncode}, {issued}/{n} issued):\n{result.stdout}\n"
                 f"see {log}")
    orders = [json.loads(line) for line in log.read_text().splitlines() if '"acme.order.created"' in line]
    assert len(orders) == n, f"{len(orders)} orders for {n} certificates"
    return seconds


def run_certbot(root: Path, pebble: Pebble, port: int, n: int) -> float:
    certbot = certbot_binary()
    env = {**os.environ, "REQUESTS_CA_BUNDLE": pebble.ca_bundle}
    dirs = ["--config-dir", str(root / "config"), "--work-dir", str(root / "work"), "--logs-dir", str(root / "logs")]
    started = time.perf_counter()
    for i in range(n):
        argv = [str(certbot), "certonly", "--standalone", "--http-01-port", str(port), "--http-01-address", "127.0.0.1",
                "--server", pebble.directory_url, *dirs, "--agree-tos", "-m", "bench@example.com", "--non-interactive",
                "-d", f"cb{i:02d}.example.com", "-d", f"www.cb{i:02d}.example.com"]
        result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            sys.exit(f"certbot failed for certificate {i}:\n{result.stdout}\n{result.stderr}")
    seconds = time.perf_counter() - started
    issued = sum(1 for _ in (root / "config" / "live").glob("cb*/cert.pem"))
    if issued != n:
        sys.exit(f"certbot issued {issued}/{n} certificates")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--certs", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=8, help="certctl's Settings.concurrency (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (bench/out/acme-*)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    certbot_binary()  # installed before anything is timed
    work = Path(tempfile.mkdtemp(prefix="acme-", dir=OUT))
    pool = ServerPool(work / "servers")
    try:
        pebble = pool.pebble()  # PEBBLE_VA_NOSLEEP=1; DNS: pebble-challtestsrv, every name 127.0.0.1
        port = pool.http_port
        print(f"Pebble at {pebble.directory_url}; its VA connects to 127.0.0.1:{port} for http-01", flush=True)
        ours = run_certctl(work / "certctl", pebble, port, args.certs, args.concurrency)
        print(f"certctl: {args.certs} certificates in {ours:.2f} s", flush=True)
        theirs = run_certbot(work / "certbot", pebble, port, args.certs)
        print(f"certbot: {args.certs} certificates in {theirs:.2f} s", flush=True)
    finally:
        pool.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    rows = [
        (f"certctl apply (one run, concurrency {args.concurrency})", ours),
        ("certbot certonly --standalone (one after another)", theirs),
    ]
    print()
    print(f"ACME issuance, {args.certs} certificates x 2 domains, local Pebble, http-01")
    print(f"{'tool':<54} {'wall s':>8} {'certs/s':>8}")
    for label, seconds in rows:
        print(f"{label:<54} {seconds:>8.2f} {args.certs / seconds:>8.2f}")
    ratio = theirs / ours
    print(f"\ncertctl is {ratio:.1f}x certbot's throughput (goal: >= 10x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
