"""`make bench`: every benchmark, one after another, each printing its own table (nothing here is a test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHES = [
    ("plan: 1,000 and 10,000 certificates", ["plan_bench.py", "1000", "10000"]),
    (
        "local CA: first apply of 1,000 and 10,000 certificates, beside the floor (the same files, nothing else)",
        ["localca_bench.py", "1000", "10000", "--fresh-fs"],
    ),
    (
        "ACME issuance: certctl beside certbot, lego and a minimal client (the limit) on local Pebble",
        ["acme_bench.py"],
    ),
    ("daemon: edit-to-applied latency, idle CPU", ["daemon_latency.py"]),
    (
        "dns-01 through a DNS provider's API: 20 wildcard+apex certificates via PowerDNS",
        ["dns_provider_bench.py"],
    ),
    ("fleet: 3 nodes x 1,000 certificates sharing PostgreSQL", ["fleet_bench.py", "1000"]),
]


def main() -> int:
    failed = []
    for title, argv in BENCHES:
        print(f"\n=== {title} ===", flush=True)
        result = subprocess.run([sys.executable, str(HERE / argv[0]), *argv[1:]], check=False)
        if result.returncode != 0:
            failed.append(title)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
