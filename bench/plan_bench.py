"""Plan speed and memory at scale: N certificates (specs + matching certificates in the store, nothing due).

Prints a table: wall time and peak RSS of `certctl plan`, first run (cold page cache, empty certctl caches)
and second run (caches filled), and where a cold run's time goes (imports, reading YAML, validation,
observing, planning; measured in one process without caches). Run by `make bench`; not a test.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.adapters.stores import pemdir  # noqa: E402
from reconciler.state.cache import file_key  # noqa: E402
from reconciler.state.records import info_to_json  # noqa: E402
from reconciler.state.statedir import KeyedLog  # noqa: E402
from reconciler.support import pki  # noqa: E402

PER_FILE = 10


def generate(root: Path, n: int) -> None:
    desired, pem, state = root / "desired", root / "pem", root / "state"
    desired.mkdir(parents=True)
    (desired / "base.yaml").write_text(
        "apiVersion: certctl/v1\nkind: Settings\nmetadata: {name: s}\nspec: {stateDir: ../state}\n---\n"
        "apiVersion: certctl/v1\nkind: Issuer\nmetadata: {name: local}\nspec:\n  localCA: {validity: 90d}\n---\n"
        "apiVersion: certctl/v1\nkind: Store\nmetadata: {name: pem}\nspec:\n  pemDirectory: {path: ../pem}\n"
    )
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    key_pem = pki.key_to_pem(leaf_key)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "certctl local CA local")])
    now = datetime.now(UTC).replace(microsecond=0)
    index = KeyedLog(state / "vault" / "index.jsonl")
    lines = []
    indexed = []  # the store's index, as install writes it (one line per version)
    docs: list[str] = []
    for i in range(n):
        name = f"cert-{i:05d}"
        domains = [f"www.site{i}.example.com", f"site{i}.example.com"]
        docs.append(
            f"apiVersion: certctl/v1\nkind: Certificate\nmetadata:\n  name: {name}\nspec:\n  issuer: local\n"
            f"  domains:\n    - {domains[0]}\n    - {domains[1]}\n  key:\n    algorithm: ecdsa-p256\n  stores: [pem]\n"
        )
        if len(docs) == PER_FILE or i == n - 1:
            (desired / f"certs-{i // PER_FILE:05d}.yaml").write_text("---\n".join(docs))
            docs = []
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domains[0])]))
            .issuer_name(ca_name)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=89))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in domains]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        info = pki.cert_info(cert)
        version = f"{now.strftime('%Y%m%dT%H%M%SZ')}-{info.thumbprint[:8]}"
        folder = pem / name / "versions" / version
        folder.mkdir(parents=True)
        for fname, data in (
            ("cert.pem", cert_pem),
            ("chain.pem", b""),
            ("fullchain.pem", cert_pem),
            ("privkey.pem", key_pem),
        ):
            (folder / fname).write_bytes(data)
        (folder / "meta.json").write_text(
            json.dumps(
                {
                    "managed_by": f"certctl:{name}",
                    "installed_at": now.isoformat(),
                    "thumbprint": info.thumbprint,
                }
            )
        )
        read = pemdir._read_versions([str(folder)])[0]
        assert not isinstance(read, str), read
        key = f"{name}/versions/{version}"
        entry = {**pemdir._encode(read), "f": list(file_key(os.lstat(folder)))}
        indexed.append(json.dumps({"k": key, "v": entry}, separators=(",", ":")))
        vault = state / "vault" / name / info.thumbprint  # what certctl keeps of each issued version
        vault.mkdir(parents=True)
        for fname, data in (
            ("cert.pem", cert_pem),
            ("chain.pem", b""),
            ("fullchain.pem", cert_pem),
            ("key.pem", key_pem),
        ):
            (vault / fname).write_bytes(data)
        os.symlink(f"versions/{version}", pem / name / "current")
        for fname in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem"):
            os.symlink(f"current/{fname}", pem / name / fname)
        recorded = {  # what install records of the certificate's folder once its links are switched
            "d": list(file_key(os.lstat(pem / name))),
            "v": list(file_key(os.lstat(pem / name / "versions"))),
            "cur": version,
            "names": [version],
        }
        indexed.append(json.dumps({"k": name, "v": recorded}, separators=(",", ":")))
        meta = {
            "dir": list(file_key(os.lstat(vault))),  # as the vault records it once the version is kept
            "info": info_to_json(info),
            "issuer_id": "localca:local",
            "issued_at": now.isoformat(),
            "domains": domains,
            "replaced": None,
        }
        lines.append(json.dumps({"k": name, "v": {info.thumbprint: meta}}, separators=(",", ":")))
    (pem / pemdir.INDEX).write_text("\n".join(indexed) + "\n")
    os.chmod(pem / pemdir.INDEX, 0o600)
    index.path.parent.mkdir(parents=True, exist_ok=True)
    index.path.write_text("\n".join(lines) + "\n")


PHASES = """
import gc, json, sys, time
gc.disable()  # as the CLI runs a one-shot command
t0 = time.perf_counter()
from reconciler import wiring
from reconciler.app import loader
from reconciler.app import observe as obs
from reconciler.core import planner
from reconciler.state.statedir import StateDir
import reconciler.app.loader as L
from reconciler.core.spec import document_model
t_import = time.perf_counter()
from reconciler.support import yamlfast
files = L.find_files(L.Path(sys.argv[1]))
docs = [d for f in files for d in yamlfast.load_all(f.read_text())]
t_yaml = time.perf_counter()
desired = loader.load(sys.argv[1], revision=False)
t_load = time.perf_counter()
world = wiring.build(desired, StateDir(sys.argv[2] + "-nocache"))
world.state = StateDir(sys.argv[2])
for store in world.stores.values():
    store._cache.path = None
observed = obs.observe(world)
t_observe = time.perf_counter()
p = planner.plan(desired, observed, __import__("datetime").datetime.now(__import__("datetime").UTC))
t_plan = time.perf_counter()
assert not p.actions, p.actions[:3]
print(json.dumps({"import": t_import - t0, "yaml": t_yaml - t_import,
                  "validate": (t_load - t_yaml) - (t_yaml - t_import), "observe": t_observe - t_load,
                  "plan": t_plan - t_observe, "docs": len(docs)}))
"""


def certctl(root: Path, command: str) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``certctl <command>`` on the generated set as a process: (wall seconds, the finished process)."""
    start = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "reconciler",
            command,
            "-d",
            str(root / "desired"),
            "--state-dir",
            str(root / "state"),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        env={**os.environ, "CERTCTL_CACHE_DIR": str(root / "cache")},
    )
    return time.perf_counter() - start, result


def run_plan(root: Path) -> tuple[float, float, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    wall, result = certctl(root, "plan")
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if result.returncode != 0 or "No changes" not in result.stdout:
        raise SystemExit(f"plan failed or not converged:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return wall, max(rss, before) / 1024, result.stdout.strip().splitlines()[-1]


def run_apply(root: Path, cold: bool = False) -> float:
    """A no-op ``apply`` of the converged set (it must change nothing); with ``cold``, the page cache dropped."""
    if cold:
        drop_caches()
    wall, result = certctl(root, "apply")
    if result.returncode != 0 or "No changes" not in result.stdout:
        raise SystemExit(
            f"apply failed or changed something:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )
    return wall


def drop_caches() -> bool:
    try:
        subprocess.run(["sync"], check=True)
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [1000, 10000]
    rows = []
    applies: list[tuple[int, float, float, float]] = []
    for n in sizes:
        with tempfile.TemporaryDirectory(prefix=f"certctl-bench-{n}-") as tmp:
            root = Path(tmp)
            t = time.perf_counter()
            generate(root, n)
            gen = time.perf_counter() - t
            cold = drop_caches()
            first, rss1, _ = run_plan(root)  # cold page cache, no certctl caches
            import shutil

            shutil.rmtree(root / "cache", ignore_errors=True)
            shutil.rmtree(root / "state" / "cache", ignore_errors=True)
            subprocess.run(["sync"], check=False)  # let the generator's writes reach the disk first
            warm, _, _ = run_plan(root)  # warm page cache, no certctl caches
            seconds = sorted(run_plan(root)[:2] for _ in range(3))  # caches filled: the median of three
            second, rss2 = seconds[1]
            phases = json.loads(
                subprocess.run(
                    [sys.executable, "-c", PHASES, str(root / "desired"), str(root / "state")],
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=ROOT,
                    env={**os.environ, "CERTCTL_NO_CACHE": "1"},
                ).stdout
            )
            rows.append((n, gen, first, warm, second, max(rss1, rss2), phases, cold))
            # apply with nothing to do: the first walks the vault and the store (no clean mark yet), the
            # others find the mark the first left and skip that walk
            walking = run_apply(root)
            applies.append(
                (n, walking, sorted(run_apply(root) for _ in range(3))[1], run_apply(root, cold=True))
            )
    print(
        "\nfirst run: no certctl caches (cold: the OS page cache dropped too); second run: caches filled "
        "(median of 3)"
    )
    print("phases: one uncached run in one process, warm page cache\n")
    print(
        f"{'N':>6} | {'first (cold)':>12} | {'first (warm)':>12} | {'second run':>10} | {'peak RSS':>8} | "
        f"{'imports':>7} | {'read YAML':>9} | {'validate':>8} | {'observe':>7} | {'plan':>6}"
    )
    print("-" * 112)
    for n, _gen, first, warm, second, rss, ph, cold in rows:
        print(
            f"{n:>6} | {first:>11.2f}s{'' if cold else '*'} | {warm:>11.2f}s | {second:>9.2f}s | {rss:>6.0f}MB | "
            f"{ph['import']:>6.2f}s | {ph['yaml']:>8.2f}s | {ph['validate']:>7.2f}s | {ph['observe']:>6.2f}s | "
            f"{ph['plan']:>5.2f}s"
        )
    print("\napply with nothing to do (caches filled): the first recovery walks every folder; after a clean")
    print("finish the next ones skip that walk (median of 3; cold: the page cache dropped)\n")
    print(f"{'N':>6} | {'walking':>8} | {'clean mark':>10} | {'clean mark, cold':>16}")
    print("-" * 50)
    for n, walking, marked, cold_marked in applies:
        print(f"{n:>6} | {walking:>7.2f}s | {marked:>9.2f}s | {cold_marked:>15.2f}s")
    if not all(r[-1] for r in rows):
        print("* the page cache could not be dropped (not root): 'cold' is warm")


if __name__ == "__main__":
    main()
