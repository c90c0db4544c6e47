"""Benchmark of `certctl daemon` (run by `make bench`; not a test): prints a table.

1. Latency from saving a spec file to the change applied (local CA, PEM store): the spec's domains
   are changed and saved (write + rename, as editors do) N times; each time the clock runs until the
   store's live cert.pem carries the new name. Goal: median and worst under 1 s.
2. CPU used by an idle daemon watching 1,000 certificates: after the daemon has converged them,
   utime+stime of its process (/proc/<pid>/stat) over 60 s. Goal: under 1% of one core.
   Also shown: the duration of one full pass over them (SIGHUP), as the daemon reports it.

  python bench/daemon_latency.py [--edits 20] [--certs 1000] [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.support import pki  # noqa: E402

BASE = """\
apiVersion: certctl/v1
kind: Issuer
metadata: {name: local}
spec:
  localCA: {validity: 90d}
---
apiVersion: certctl/v1
kind: Store
metadata: {name: pem}
spec:
  pemDirectory: {path: ../pem}
"""


def cert_doc(name: str, domain: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: certctl/v1
        kind: Certificate
        metadata: {{name: {name}}}
        spec:
          issuer: local
          domains: [{domain}]
          stores: [pem]
        """)


def save(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.swp")
    tmp.write_text(text)
    os.replace(tmp, path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Daemon:
    def __init__(self, root: Path) -> None:
        self.port = free_port()
        self.log = open(root / "daemon.log", "wb")  # noqa: SIM115
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "reconciler",
                "daemon",
                "-d",
                str(root / "desired"),
                "--state-dir",
                str(root / "state"),
                "--metrics-address",
                f"127.0.0.1:{self.port}",
                "--log-format",
                "json",
                "--log-level",
                "warning",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=root,
        )

    def status(self) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/status", timeout=10) as r:
            return json.loads(r.read())

    def healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"the daemon exited ({self.proc.returncode})")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=10) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"the daemon was not healthy within {timeout:g} s")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime = int(fields[11]), int(fields[12])
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        finally:
            self.log.close()


def latency(edits: int) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="certctl-bench-") as tmp:
        root = Path(tmp)
        (root / "desired").mkdir()
        (root / "desired" / "base.yaml").write_text(BASE)
        spec = root / "desired" / "web.yaml"
        save(spec, cert_doc("web", "edit0.example.test"))
        daemon = Daemon(root)
        try:
            daemon.healthy(30)
            live = root / "pem" / "web" / "cert.pem"
            out = []
            for i in range(1, edits + 1):
                domain = f"edit{i}.example.test"
                started = time.monotonic()
                save(spec, cert_doc("web", domain))
                deadline = started + 30
                while True:
                    try:
                        if pki.info_from_pem(live.read_bytes()).sans == (domain,):
                            break
                    except (OSError, ValueError):
                        pass
                    if time.monotonic() > deadline:
                        raise SystemExit(f"edit {i} was not applied within 30 s")
                    time.sleep(0.002)
                out.append(time.monotonic() - started)
                time.sleep(0.2)
            return out
        finally:
            daemon.stop()


def idle_cpu(certs: int, idle: float) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory(prefix="certctl-bench-") as tmp:
        root = Path(tmp)
        (root / "desired").mkdir()
        (root / "desired" / "base.yaml").write_text(BASE)
        (root / "desired" / "certificates.yaml").write_text(
            "---\n".join(cert_doc(f"c{i:04d}", f"c{i:04d}.example.test") for i in range(certs))
        )
        started = time.monotonic()
        daemon = Daemon(root)
        try:
            daemon.healthy(1800)
            converge = time.monotonic() - started
            time.sleep(2)  # let the first pass's after-work settle
            before, t0 = daemon.cpu_seconds(), time.monotonic()
            time.sleep(idle)
            used, wall = daemon.cpu_seconds() - before, time.monotonic() - t0
            passes = daemon.status()["daemon"]["passes"]
            daemon.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 120
            while daemon.status()["daemon"]["passes"] == passes and time.monotonic() < deadline:
                time.sleep(0.1)
            full_pass = float(daemon.status()["daemon"]["last_reconcile"]["seconds"])
            return converge, used, wall, full_pass
        finally:
            daemon.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--edits", type=int, default=20)
    parser.add_argument("--certs", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=60.0)
    args = parser.parse_args()
    times = latency(args.edits)
    converge, used, wall, full_pass = idle_cpu(args.certs, args.idle)
    share = used / wall * 100
    median, worst = statistics.median(times), max(times)
    rows = [
        ("measure", "value", "goal", ""),
        (
            f"save -> applied, median of {args.edits} edits",
            f"{median * 1000:.0f} ms",
            "< 1 s",
            "ok" if median < 1 else "MISSED",
        ),
        (
            f"save -> applied, worst of {args.edits} edits",
            f"{worst * 1000:.0f} ms",
            "< 1 s",
            "ok" if worst < 1 else "MISSED",
        ),
        (
            f"idle daemon, {args.certs} certificates, CPU over {wall:.0f} s",
            f"{share:.2f}% of one core ({used:.2f} s)",
            "< 1%",
            "ok" if share < 1 else "MISSED",
        ),
        (f"first start: issue and install {args.certs} certificates", f"{converge:.1f} s", "", ""),
        (f"one full pass over {args.certs} converged certificates (SIGHUP)", f"{full_pass:.2f} s", "", ""),
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    print("certctl daemon benchmark")
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
