"""dns-01 throughput through a DNS provider's API (run by `make bench`; not a test).

Starts PowerDNS (authoritative, SQLite backend, HTTP API) and a Pebble that resolves through it, then
issues N certificates, each a wildcard and its apex (two TXT values at one name), with one
`certctl apply` through the dns-lexicon ``powerdns`` provider (records created in parallel, propagation
checked on PowerDNS itself). Prints wall time and certificates per second.

  python bench/dns_provider_bench.py [--certs 20] [--concurrency 8] [--keep]
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

from tests.integration.servers import Pebble, PebbleOptions, PowerDns, free_port  # noqa: E402

OUT = ROOT / "bench" / "out"
ZONE = "certctl-bench.net"


def write_desired(root: Path, pebble: Pebble, pdns: PowerDns, n: int, concurrency: int) -> Path:
    desired = root / "desired"
    desired.mkdir(parents=True)
    docs = [
        f"""\
apiVersion: certctl/v1
kind: Settings
metadata: {{name: settings}}
spec:
  stateDir: ../state
  concurrency: {concurrency}
""",
        f"""\
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
      - dns01:
          provider:
            name: powerdns
            options: {{pdns_server: "{pdns.api_url}", pdns_server_id: localhost}}
            secrets: {{auth_token: {{fromEnv: BENCH_PDNS_KEY}}}}
            zone: {ZONE}
            propagationTimeout: 60s
            nameservers: ["{pdns.address}"]
            resolvers: ["{pdns.address}"]
""",
        """\
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory: {path: ../pem}
""",
    ]
    for i in range(n):
        docs.append(
            f"apiVersion: certctl/v1\nkind: Certificate\nmetadata: {{name: w{i:02d}}}\nspec:\n  issuer: pebble\n"
            f"  domains: ['*.w{i:02d}.{ZONE}', 'w{i:02d}.{ZONE}']\n  stores: [pem]\n"
        )
    (desired / "bench.yaml").write_text("---\n".join(docs))
    return desired


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--certs", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep the work folder (bench/out/dns-*)")
    args = parser.parse_args()

    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dns-", dir=OUT))
    pdns = PowerDns(work / "pdns")
    pebble: Pebble | None = None
    try:
        pdns.start()
        pdns.add_zone(ZONE)
        pebble = Pebble(work / "pebble", PebbleOptions(dns="bind"), pdns.address, free_port()).start()
        desired = write_desired(work, pebble, pdns, args.certs, args.concurrency)
        env = {**os.environ, "CERTCTL_CACHE_DIR": str(work / "cache"), "BENCH_PDNS_KEY": pdns.api_key}
        log = work / "certctl.log"
        started = time.perf_counter()
        with log.open("w") as err:
            result = subprocess.run(
                [sys.executable, "-m", "reconciler", "apply", "-d", str(desired), "--log-format", "json"],
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=env,
                check=False,
            )
        seconds = time.perf_counter() - started
        issued = sum(1 for _ in (work / "pem").glob("w*/cert.pem"))
        if result.returncode != 0 or issued != args.certs:
            sys.exit(
                f"certctl apply failed (exit {result.returncode}, {issued}/{args.certs} issued):\n"
                f"{result.stdout}\nsee {log}"
            )
        records = sum(1 for line in log.read_text().splitlines() if '"dns01.record.added"' in line)
    finally:
        if pebble is not None:
            pebble.stop()
        pdns.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(
        f"dns-01 through the PowerDNS API (dns-lexicon), {args.certs} certificates x (wildcard + apex), "
        f"concurrency {args.concurrency}; {records} TXT values written"
    )
    print(f"{'wall s':>8} {'certs/s':>8}")
    print(f"{seconds:>8.2f} {args.certs / seconds:>8.2f}")
    print(
        json.dumps(
            {
                "certificates": args.certs,
                "seconds": round(seconds, 2),
                "certs_per_second": round(args.certs / seconds, 2),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
