"""Real servers for the integration tests: Pebble, pebble-challtestsrv, BIND 9 and nginx.

Each one runs as a child process on free loopback ports, from a temporary folder holding its
configuration and its log, and is stopped afterwards. A missing binary is an error that says how to
install it (``scripts/install-system-deps``) — never a silent skip.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dns.message
import dns.query
import dns.rdatatype
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOOPBACK = "127.0.0.1"
INSTALL_HINT = "run scripts/install-system-deps (Debian packages: pebble bind9 bind9-utils nginx)"
HANG = 120.0  # seconds after which a call that should give up on its own is taken to hang
T = TypeVar("T")


class ServerError(RuntimeError):
    """A test server could not be started (missing binary, bad config, not ready in time)."""


def require(binary: str) -> str:
    """The path of a server binary, or ServerError naming the package to install."""
    found = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()), None
    )
    if not found:
        raise ServerError(f"{binary} is not installed: {INSTALL_HINT}")
    return found


def free_port(udp: bool = False) -> int:
    """A loopback port that is free for TCP (and for UDP too when ``udp``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = tcp.getsockname()[1]
            if not udp:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise ServerError("no free loopback port found")


def wait_until(check: Callable[[], bool], timeout: float, what: str, process: Process | None = None) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while True:
        if process is not None and not process.alive():
            raise ServerError(f"{what}: the process exited with {process.returncode()}\n{process.log_tail()}")
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            tail = f"\n{process.log_tail()}" if process is not None else ""
            raise ServerError(f"{what}: not ready within {timeout:g}s{tail}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)


def without_hanging(call: Callable[[], T], what: str, limit: float = HANG) -> T:
    """``call()``'s result (or its exception), run in a thread; AssertionError if it has not returned after
    ``limit`` seconds. For bounded waits: a hang fails the test, slowness under load does not."""
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except Exception as exc:  # noqa: BLE001 - raised again in the test's thread below
            outcome.append((False, exc))

    thread = threading.Thread(target=run, name=f"test-{what}", daemon=True)
    thread.start()
    thread.join(limit)
    if not outcome:
        raise AssertionError(f"{what} did not return within {limit:g}s: it hangs")
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def tcp_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.create_connection((host, port), timeout=0.5):
        return True


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the test process dies (Linux), so that a killed
    pytest leaves no server behind."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Process:
    """A child process whose output goes to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - kept open for the life of the process
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def returncode(self) -> int | None:
        return self.proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0) -> None:
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._log.close()


# --- TLS material --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    ca: Path  # PEM of the CA that signed the server certificate (a client's trust bundle)
    cert: Path
    key: Path


def self_signed_ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def leaf_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    names: list[str],
    lifetime: dt.timedelta = dt.timedelta(days=2),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(obj: Any) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def loopback_tls(
    folder: Path, names: list[str] | None = None, ca_name: str = "certctl test servers CA"
) -> TlsFiles:
    """A CA and a server certificate for 127.0.0.1 and localhost (and ``names``), as PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = self_signed_ca(ca_name)
    key, cert = leaf_cert(ca_key, ca_cert, ["localhost", LOOPBACK, *(names or [])])
    files = TlsFiles(folder / "ca.pem", folder / "server.pem", folder / "server.key")
    files.ca.write_bytes(pem(ca_cert))
    files.cert.write_bytes(pem(cert))
    files.key.write_bytes(pem(key))
    files.key.chmod(0o600)
    return files


# --- pebble-challtestsrv -----------------------------------------------------------------------------------


class ChallTestSrv:
    """pebble-challtestsrv as a DNS server answering every A query with 127.0.0.1 (and no AAAA, so that
    Pebble's VA connects over IPv4); its own http-01/tls-alpn-01 responders are switched off."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.dns_port = free_port(udp=True)
        self.management_port = free_port()
        self.process: Process | None = None

    @property
    def dns_address(self) -> str:
        return f"{LOOPBACK}:{self.dns_port}"

    def start(self) -> ChallTestSrv:
        binary = require("pebble-challtestsrv")
        self.process = Process(
            "pebble-challtestsrv",
            [
                binary,
                "-dns01",
                self.dns_address,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"{LOOPBACK}:{self.management_port}",
                "-defaultIPv4",
                LOOPBACK,
                "-defaultIPv6",
                "",
            ],
            self.folder / "challtestsrv.log",
        )

        def answers() -> bool:
            q = dns.message.make_query("ready.example.com", dns.rdatatype.A)
            return bool(dns.query.udp(q, LOOPBACK, port=self.dns_port, timeout=0.5).answer)

        wait_until(answers, 15, "pebble-challtestsrv", self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --- BIND 9 --------------------------------------------------------------------------------------------------


class Bind:
    """BIND 9 (``named -g``) authoritative for one zone, accepting TSIG-signed updates of TXT records.

    Every name in the zone resolves to 127.0.0.1 (a wildcard A record), so Pebble can use it as its
    only DNS server for http-01 and dns-01 alike.
    """

    def __init__(
        self,
        folder: Path,
        zone: str = "certctl.test",
        key_name: str = "certctl-test-key",
        algorithm: str = "hmac-sha256",
    ) -> None:
        self.folder = folder
        self.zone = zone
        self.key_name = key_name
        self.algorithm = algorithm
        self.secret = base64.b64encode(secrets.token_bytes(32)).decode()
        self.port = free_port(udp=True)
        self.process: Process | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def config(self) -> str:
        d = self.folder
        return f"""
options {{
    directory "{d}";
    pid-file "{d}/named.pid";
    session-keyfile "{d}/session.key";
    managed-keys-directory "{d}";
    listen-on port {self.port} {{ {LOOPBACK}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    allow-query {{ any; }};
    dnssec-validation no;
    notify no;
    minimal-responses yes;
}};
controls {{ }};
key "{self.key_name}" {{ algorithm {self.algorithm}; secret "{self.secret}"; }};
zone "{self.zone}" {{
    type primary;
    file "{d}/{self.zone}.zone";
    update-policy {{ grant {self.key_name} zonesub TXT; }};
}};
"""

    def zone_file(self) -> str:
        z = self.zone
        return (
            f"$TTL 60\n"
            f"@ IN SOA ns.{z}. hostmaster.{z}. 1 60 60 3600 60\n"
            f"@ IN NS ns.{z}.\n"
            f"ns IN A {LOOPBACK}\n"
            f"@ IN A {LOOPBACK}\n"
            f"* IN A {LOOPBACK}\n"
        )

    def start(self) -> Bind:
        binary = require("named")
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / "named.conf"
        conf.write_text(self.config())
        (self.folder / f"{self.zone}.zone").write_text(self.zone_file())
        checkconf = shutil.which("named-checkconf") or "/usr/bin/named-checkconf"
        if Path(checkconf).exists():
            result = subprocess.run([checkconf, str(conf)], capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise ServerError(
                    f"named-checkconf rejected the test config:\n{result.stdout}{result.stderr}"
                )
        argv = [binary, "-g", "-c", str(conf), "-n", "1"]
        self.process = Process("named", argv, self.folder / "named.log", cwd=self.folder)

        def answers() -> bool:
            q = dns.message.make_query(self.zone, dns.rdatatype.SOA)
            r = dns.query.udp(q, LOOPBACK, port=self.port, timeout=0.5)
            return bool(r.answer)

        wait_until(answers, 20, "named", self.process)
        return self

    def txt(self, name: str) -> set[str]:
        """The TXT values BIND serves now for ``name`` (asked directly)."""
        q = dns.message.make_query(name, dns.rdatatype.TXT)
        r = dns.query.udp(q, LOOPBACK, port=self.port, timeout=2)
        return {
            b"".join(rr.strings).decode()
            for rrset in r.answer
            if rrset.rdtype == dns.rdatatype.TXT
            for rr in rrset
        }

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --- Pebble ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PebbleOptions:
    """What varies between Pebble instances (each distinct set of options is one server)."""

    dns: str = "challtestsrv"  # challtestsrv | bind
    validity_seconds: int = 0  # certificateValidityPeriod; 0: Pebble's default (5 years)
    nonce_reject: int = 0  # PEBBLE_WFE_NONCEREJECT, percent of good nonces refused
    eab_keys: tuple[tuple[str, str], ...] = ()  # (keyId, base64url HMAC key)
    eab_required: bool = False
    blocklist: tuple[str, ...] = ()
    alternate_roots: int = 0  # PEBBLE_ALTERNATE_ROOTS
    chain_length: int = 0  # PEBBLE_CHAIN_LENGTH (0: Pebble's default)
    authz_reuse: int = 0  # PEBBLE_AUTHZREUSE percent
    name: str = ""  # a label: two Pebbles with different names are two CAs (fallback tests)


class Pebble:
    """Pebble (RFC 8555 test CA) on loopback, with its VA sending http-01 requests to ``http_port``."""

    def __init__(self, folder: Path, options: PebbleOptions, dns_server: str, http_port: int) -> None:
        self.folder = folder
        self.options = options
        self.dns_server = dns_server
        self.http_port = http_port
        self.tls_port = free_port()  # tls-alpn-01 is not used by certctl; nothing listens there
        self.port = free_port()
        self.management_port = free_port()
        self.tls: TlsFiles | None = None
        self.process: Process | None = None

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/dir"

    @property
    def management_url(self) -> str:
        return f"https://{LOOPBACK}:{self.management_port}"

    @property
    def ca_bundle(self) -> str:
        assert self.tls is not None
        return str(self.tls.ca)

    def config(self) -> dict[str, Any]:
        assert self.tls is not None
        o = self.options
        return {
            "pebble": {
                "listenAddress": f"{LOOPBACK}:{self.port}",
                "managementListenAddress": f"{LOOPBACK}:{self.management_port}",
                "certificate": str(self.tls.cert),
                "privateKey": str(self.tls.key),
                "httpPort": self.http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": o.eab_required,
                "externalAccountMACKeys": dict(o.eab_keys),
                "domainBlocklist": list(o.blocklist),
                "certificateValidityPeriod": o.validity_seconds,
            }
        }

    def start(self) -> Pebble:
        binary = require("pebble")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.tls = loopback_tls(self.folder / "tls")
        config = self.folder / "pebble-config.json"
        config.write_text(json.dumps(self.config(), indent=2))
        o = self.options
        env = {
            "PEBBLE_VA_NOSLEEP": "1",
            "PEBBLE_WFE_NONCEREJECT": str(o.nonce_reject),
            "PEBBLE_AUTHZREUSE": str(o.authz_reuse),
            "PEBBLE_ALTERNATE_ROOTS": str(o.alternate_roots),
        }
        if o.chain_length:
            env["PEBBLE_CHAIN_LENGTH"] = str(o.chain_length)
        self.process = Process(
            "pebble",
            [binary, "-config", str(config), "-dnsserver", self.dns_server],
            self.folder / "pebble.log",
            env=env,
            cwd=self.folder,
        )

        def ready() -> bool:
            r = requests.get(self.directory_url, verify=self.ca_bundle, timeout=1)
            return r.status_code == 200 and "newOrder" in r.json()

        wait_until(ready, 20, "pebble", self.process)
        return self

    def directory(self) -> dict[str, Any]:
        return requests.get(self.directory_url, verify=self.ca_bundle, timeout=5).json()

    def root_pem(self, index: int = 0) -> bytes:
        """Root ``index`` (0 the default, 1… the alternates) from the management interface."""
        r = requests.get(f"{self.management_url}/roots/{index}", verify=self.ca_bundle, timeout=5)
        r.raise_for_status()
        return r.content

    def root_name(self, index: int = 0) -> str:
        cert = x509.load_pem_x509_certificate(self.root_pem(index))
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --- nginx -----------------------------------------------------------------------------------------------------


@dataclass
class Nginx:
    """nginx in the foreground from a prefix folder: a TLS server on ``tls_port`` serving the
    certificate in ``tls/fullchain.pem`` + ``tls/privkey.pem``, and optionally plain HTTP on
    ``http_port`` serving ``webroot``. ``reload()`` runs ``nginx -s reload`` on the same prefix/config."""

    folder: Path
    http_port: int | None = None
    webroot: Path | None = None
    tls_port: int = field(default_factory=free_port)
    process: Process | None = None

    @property
    def conf(self) -> Path:
        return self.folder / "nginx.conf"

    @property
    def cert_path(self) -> Path:
        return self.folder / "tls" / "fullchain.pem"

    @property
    def key_path(self) -> Path:
        return self.folder / "tls" / "privkey.pem"

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.tls_port}"

    def config(self) -> str:
        d = self.folder
        user = "user root root;\n" if os.geteuid() == 0 else ""
        temp = "\n".join(
            f"    {k}_temp_path {d}/tmp/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        http_server = ""
        if self.http_port is not None:
            http_server = f"""
    server {{
        listen {LOOPBACK}:{self.http_port};
        root {self.webroot};
        location / {{ default_type text/plain; }}
    }}"""
        return f"""{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log off;
{temp}
    server {{
        listen {LOOPBACK}:{self.tls_port} ssl;
        server_name _;
        ssl_certificate {self.cert_path};
        ssl_certificate_key {self.key_path};
        root {d}/www;
    }}{http_server}
}}
"""

    def _argv(self, *extra: str) -> list[str]:
        return [
            require("nginx"),
            "-p",
            str(self.folder),
            "-c",
            str(self.conf),
            "-e",
            str(self.folder / "error.log"),
            *extra,
        ]

    def start(self) -> Nginx:
        require("nginx")
        for sub in ("tls", "www", "tmp"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        if not self.cert_path.exists():
            ca_key, ca_cert = self_signed_ca("nginx placeholder CA")
            key, cert = leaf_cert(ca_key, ca_cert, ["placeholder.invalid"])
            self.install(pem(cert) + pem(ca_cert), pem(key))
        self.conf.write_text(self.config())
        check = subprocess.run(self._argv("-t"), capture_output=True, text=True, check=False)
        if check.returncode != 0:
            raise ServerError(f"nginx -t rejected the test config:\n{check.stderr}")
        self.process = Process("nginx", self._argv(), self.folder / "nginx.out", cwd=self.folder)
        wait_until(lambda: tcp_open(self.tls_port), 15, "nginx", self.process)
        if self.http_port is not None:
            wait_until(lambda: tcp_open(self.http_port or 0), 15, "nginx (http)", self.process)
        return self

    def install(self, fullchain_pem: bytes, key_pem: bytes) -> None:
        """Put a certificate where the TLS server block reads it (takes effect on reload)."""
        self.cert_path.parent.mkdir(parents=True, exist_ok=True)
        self.cert_path.write_bytes(fullchain_pem)
        self.key_path.write_bytes(key_pem)
        self.key_path.chmod(0o600)

    def served_sha256(self, sni: str | None = None) -> str:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with (
            socket.create_connection((LOOPBACK, self.tls_port), timeout=2) as raw,
            context.wrap_socket(raw, server_hostname=sni) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der).fingerprint(hashes.SHA256()).hex()

    def reload(self, expect_sha256: str | None = None, timeout: float = 10.0) -> None:
        """``nginx -s reload``; with ``expect_sha256``, wait until that certificate is served."""
        result = subprocess.run(self._argv("-s", "reload"), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServerError(f"nginx -s reload failed:\n{result.stderr}")
        if expect_sha256 is not None:
            # the new workers serve the new certificate; wait until the old ones are gone too
            wait_until(
                lambda: self.served_sha256() == expect_sha256 and len(self._workers()) == 1,
                timeout,
                "nginx reload",
                self.process,
            )

    def _workers(self) -> list[int]:
        """Worker processes of the master (old ones linger briefly after a reload)."""
        assert self.process is not None
        master = self.process.proc.pid
        workers = []
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if int(fields[1]) == master:
                workers.append(int(stat_file.parent.name))
        return workers

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --- a pool of servers for one test session -------------------------------------------------------------


class ServerPool:
    """Starts each server on first use and stops them all at the end. Every Pebble sends its http-01
    validations to the same ``http_port`` (where a standalone solver or a webroot server listens
    during a test); each distinct ``PebbleOptions`` is one Pebble process."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.http_port = free_port()
        self._challtestsrv: ChallTestSrv | None = None
        self._bind: Bind | None = None
        self._pebbles: dict[PebbleOptions, Pebble] = {}
        self._started: list[Any] = []

    def _start(self, server: Any) -> Any:
        self._started.append(server)
        return server.start()

    def challtestsrv(self) -> ChallTestSrv:
        if self._challtestsrv is None:
            self._challtestsrv = self._start(ChallTestSrv(self.folder / "challtestsrv"))
        return self._challtestsrv

    def bind(self) -> Bind:
        if self._bind is None:
            self._bind = self._start(Bind(self.folder / "bind"))
        return self._bind

    def pebble(self, options: PebbleOptions | None = None, **kwargs: Any) -> Pebble:
        options = options or PebbleOptions(**kwargs)
        if options not in self._pebbles:
            dns_server = self.bind().address if options.dns == "bind" else self.challtestsrv().dns_address
            folder = self.folder / f"pebble-{len(self._pebbles)}"
            self._pebbles[options] = self._start(Pebble(folder, options, dns_server, self.http_port))
        return self._pebbles[options]

    def stop_all(self) -> None:
        for server in reversed(self._started):
            with contextlib.suppress(Exception):
                server.stop()
        self._started.clear()


# --- specs for issuers that talk to these servers ---------------------------------------------------------------


def acme_spec(pebble: Pebble, solvers: list[dict[str, Any]], **fields: Any) -> Any:
    """An ``Issuer.spec.acme`` model for this Pebble (trusting its TLS certificate, terms agreed)."""
    from reconciler.core.spec import Acme

    data: dict[str, Any] = {
        "directoryUrl": pebble.directory_url,
        "email": "ops@example.com",
        "agreeToS": True,
        "caBundle": pebble.ca_bundle,
        "solvers": solvers,
        "timeout": "10s",
    }
    data.update(fields)
    return Acme.model_validate(data)


def standalone(port: int, domains: list[str] | None = None) -> dict[str, Any]:
    solver: dict[str, Any] = {"http01": {"standalone": {"address": LOOPBACK, "port": port}}}
    if domains is not None:
        solver["domains"] = domains
    return solver


def rfc2136(bind: Bind, secret_env: str, **fields: Any) -> dict[str, Any]:
    """A dns01 solver for BIND's zone; the TSIG secret comes from the environment variable ``secret_env``."""
    spec: dict[str, Any] = {
        "server": bind.address,
        "zone": bind.zone,
        "tsigKeyName": bind.key_name,
        "tsigAlgorithm": bind.algorithm,
        "tsigSecret": {"fromEnv": secret_env},
        "nameservers": [bind.address],
        "propagationTimeout": "10s",
    }
    spec.update(fields)
    return {"dns01": {"rfc2136": spec}}


# --- a recording proxy that adds ACME Renewal Information to Pebble ------------------------------------------------


class AriProxy:
    """An HTTPS proxy in front of Pebble that records every newOrder payload and, when ``offer_ari``,
    adds ``renewalInfo`` to the directory and answers renewalInfo requests itself.

    Pebble 2.4.0 offers no renewalInfo (RFC 9773) and no profiles; this proxy is how the tests see that
    certctl sends ``replaces`` and reads the suggested window, orders a profile (``profiles`` adds
    meta.profiles), and meets a CA that refuses every order (``fail_orders``: a 5xx or a rate limit). Everything else is Pebble's own answer: the proxy
    keeps the Host header, so Pebble builds every URL (and checks every JWS ``url``) for the proxy.
    """

    def __init__(
        self,
        pebble: Pebble,
        offer_ari: bool = True,
        profiles: dict[str, str] | None = None,
        fail_orders: tuple[int, str] | None = None,
    ) -> None:
        self.pebble = pebble
        self.offer_ari = offer_ari
        self.profiles = profiles  # added to the directory's meta.profiles (Pebble 2.4 offers none)
        self.fail_orders = fail_orders  # (HTTP status, ACME problem type): every newOrder gets this answer
        self.port = free_port()
        self.orders: list[dict[str, Any]] = []  # newOrder payloads, in order
        self.renewal_info_requests: list[str] = []  # certificate identifiers asked about
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.window = (now + dt.timedelta(days=1), now + dt.timedelta(days=2))
        self._server: Any = None

    @property
    def directory_url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}/dir"

    def start(self) -> AriProxy:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        proxy = self
        assert self.pebble.tls is not None
        upstream_ctx = ssl.create_default_context(cafile=self.pebble.ca_bundle)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _forward(self, body: bytes | None) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPSConnection(
                    LOOPBACK, proxy.pebble.port, context=upstream_ctx, timeout=10
                )
                try:
                    headers = {
                        k: v
                        for k, v in self.headers.items()
                        if k.lower() not in ("connection", "accept-encoding")
                    }
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    return resp.status, resp.getheaders(), resp.read()
                finally:
                    conn.close()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if self.path.startswith("/renewal-info/") and self.command == "GET":
                    ident = self.path[len("/renewal-info/") :]
                    proxy.renewal_info_requests.append(ident)
                    start, end = proxy.window
                    doc = {
                        "suggestedWindow": {
                            "start": start.isoformat().replace("+00:00", "Z"),
                            "end": end.isoformat().replace("+00:00", "Z"),
                        }
                    }
                    self._reply(
                        200,
                        [("Content-Type", "application/json"), ("Retry-After", "21600")],
                        json.dumps(doc).encode(),
                    )
                    return
                if self.path == "/order-plz" and body:
                    jws = json.loads(body)
                    payload = jws.get("payload", "")
                    padded = payload + "=" * (-len(payload) % 4)
                    proxy.orders.append(json.loads(base64.urlsafe_b64decode(padded)))
                    if proxy.fail_orders is not None:
                        code, kind = proxy.fail_orders
                        problem = {
                            "type": f"urn:ietf:params:acme:error:{kind}",
                            "detail": f"test proxy: {kind}",
                        }
                        self._reply(
                            code,
                            [("Content-Type", "application/problem+json"), ("Retry-After", "1")],
                            json.dumps(problem).encode(),
                        )
                        return
                status, headers, data = self._forward(body)
                if self.path == "/dir" and status == 200 and (proxy.offer_ari or proxy.profiles is not None):
                    doc = json.loads(data)
                    if proxy.offer_ari:
                        doc["renewalInfo"] = f"https://{LOOPBACK}:{proxy.port}/renewal-info"
                    if proxy.profiles is not None:
                        doc.setdefault("meta", {})["profiles"] = proxy.profiles
                    data = json.dumps(doc).encode()
                self._reply(status, headers, data)

            do_GET = do_POST = do_HEAD = _handle

        server = ThreadingHTTPServer((LOOPBACK, self.port), Handler)
        server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.pebble.tls.cert), str(self.pebble.tls.key))
        server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


# --- PowerDNS ------------------------------------------------------------------------------------------------------


class PowerDns:
    """The PowerDNS authoritative server (``pdns_server``, SQLite backend) with its HTTP API on loopback.

    ``add_zone`` creates a zone whose every name resolves to 127.0.0.1 (a wildcard A record) with one
    name server, ``ns.<zone>``, at this server; ``txt`` asks the server directly what it serves.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port(udp=True)
        self.api_port = free_port()
        self.api_key = secrets.token_hex(16)
        self.process: Process | None = None

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def start(self) -> PowerDns:
        import sqlite3

        binary = require("pdns_server")
        schema = next(
            (
                p
                for p in (
                    Path("/usr/share/pdns-backend-sqlite3/schema/schema.sqlite3.sql"),
                    Path("/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql"),
                )
                if p.exists()
            ),
            None,
        )
        if schema is None:
            raise ServerError(f"the PowerDNS SQLite schema is missing: {INSTALL_HINT} (pdns-backend-sqlite3)")
        self.folder.mkdir(parents=True, exist_ok=True)
        database = self.folder / "pdns.sqlite3"
        with contextlib.closing(sqlite3.connect(database)) as db:
            db.executescript(schema.read_text())
        (self.folder / "pdns.conf").write_text(
            "\n".join(
                [
                    "launch=gsqlite3",
                    f"gsqlite3-database={database}",
                    f"local-address={LOOPBACK}",
                    f"local-port={self.port}",
                    "api=yes",
                    f"api-key={self.api_key}",
                    "webserver=yes",
                    f"webserver-address={LOOPBACK}",
                    f"webserver-port={self.api_port}",
                    "webserver-allow-from=127.0.0.0/8",
                    f"socket-dir={self.folder}",
                    "guardian=no",
                    "daemon=no",
                    "disable-syslog=yes",
                    "zone-cache-refresh-interval=0",
                    "cache-ttl=0",
                    "negquery-cache-ttl=0",
                    "query-cache-ttl=0",
                    "consistent-backends=yes",
                    "security-poll-suffix=",
                    "",
                ]
            )
        )
        self.process = Process(
            "pdns_server", [binary, f"--config-dir={self.folder}"], self.folder / "pdns.log", cwd=self.folder
        )
        wait_until(
            lambda: self._api("GET", "/servers/localhost").status_code == 200, 20, "pdns_server", self.process
        )
        return self

    def _api(self, method: str, path: str, body: Any = None) -> requests.Response:
        return requests.request(
            method, f"{self.api_url}/api/v1{path}", json=body, headers={"X-API-Key": self.api_key}, timeout=5
        )

    def add_zone(self, zone: str, records: list[tuple[str, str, str]] = ()) -> None:  # type: ignore[assignment]
        """A zone with NS ns.<zone> (here), ``* A 127.0.0.1``, the apex A, and ``records`` (name, type, content)."""
        rrsets = [
            {
                "name": f"ns.{zone}.",
                "type": "A",
                "ttl": 60,
                "records": [{"content": LOOPBACK, "disabled": False}],
            },
            {
                "name": f"{zone}.",
                "type": "A",
                "ttl": 60,
                "records": [{"content": LOOPBACK, "disabled": False}],
            },
            {
                "name": f"*.{zone}.",
                "type": "A",
                "ttl": 60,
                "records": [{"content": LOOPBACK, "disabled": False}],
            },
        ]
        for name, rtype, content in records:
            rrsets.append(
                {
                    "name": name if name.endswith(".") else f"{name}.",
                    "type": rtype,
                    "ttl": 60,
                    "records": [{"content": content, "disabled": False}],
                }
            )
        response = self._api(
            "POST",
            "/servers/localhost/zones",
            {
                "name": f"{zone}.",
                "kind": "Native",
                "nameservers": [f"ns.{zone}."],
                "rrsets": rrsets,
            },
        )
        if response.status_code not in (201, 204):
            raise ServerError(f"PowerDNS refused zone {zone}: {response.status_code} {response.text}")

    def txt(self, name: str) -> set[str]:
        q = dns.message.make_query(name, dns.rdatatype.TXT)
        r = dns.query.udp(q, LOOPBACK, port=self.port, timeout=2)
        return {
            b"".join(rr.strings).decode()
            for rrset in r.answer
            if rrset.rdtype == dns.rdatatype.TXT and rrset.name.to_text(omit_final_dot=True) == name
            for rr in rrset
        }

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


# --- PostgreSQL ----------------------------------------------------------------------------------------------


def _pg_binary(name: str) -> str:
    """initdb and pg_ctl live in /usr/lib/postgresql/<version>/bin on Debian (not on PATH)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/" + name), key=lambda p: int(p.parts[-3]))
    if not versions:
        raise ServerError(
            f"{name} is not installed: run scripts/install-system-deps (Debian package: postgresql)"
        )
    return str(versions[-1])


class Postgres:
    """A PostgreSQL cluster in its own temporary folder, on a free loopback port, with password
    authentication (so the DSN holds a secret, as in production). As root, initdb and the server run as
    the ``postgres`` system user (PostgreSQL refuses to run as root)."""

    def __init__(self, folder: Path) -> None:
        import tempfile

        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        # a folder of its own, outside pytest's (root-only) temporary tree, that the postgres user can enter
        self.base = Path(tempfile.mkdtemp(prefix="certctl-pg-"))
        self.base.chmod(0o755)
        self.data = self.base / "data"
        self.log = folder / "postgres.log"
        folder.mkdir(parents=True, exist_ok=True)
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            import pwd

            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise ServerError(
                    "running as root needs the postgres system user (Debian package: postgresql)"
                ) from None
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self.server_log = self.base / "server.log"

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres:{self.password}@{LOOPBACK}:{self.port}/postgres"

    def _run(self, argv: list[str], timeout: float = 60.0) -> None:
        result = subprocess.run(
            [*self.as_user, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=self.base,
        )
        with open(self.log, "a") as fh:
            fh.write(f"$ {' '.join(argv)}\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            raise ServerError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")

    def start(self) -> Postgres:
        if not self.data.exists():
            pwfile = self.base / "pwfile"
            pwfile.write_text(self.password + "\n")
            if self.as_user:
                import pwd

                pw = pwd.getpwnam("postgres")
                os.chown(pwfile, pw.pw_uid, pw.pw_gid)
            pwfile.chmod(0o600)
            self._run(
                [
                    _pg_binary("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--no-sync",
                    "-E",
                    "UTF8",
                ]
            )
            pwfile.unlink()
        self.resume()
        return self

    def resume(self) -> None:
        """Start the server (again) on the same port and data."""
        options = (
            f"-c listen_addresses={LOOPBACK} -p {self.port} -k {self.base} -c fsync=off "
            "-c max_connections=200"
        )
        self._run(
            [
                _pg_binary("pg_ctl"),
                "-D",
                str(self.data),
                "-l",
                str(self.server_log),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        wait_until(lambda: tcp_open(self.port), 30, "postgres")

    def pause(self) -> None:
        """Stop the server (fast shutdown: clients are disconnected); ``resume`` starts it again."""
        self._run([_pg_binary("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])

    def stop(self) -> None:
        with contextlib.suppress(ServerError, subprocess.TimeoutExpired):
            self._run([_pg_binary("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"])
        shutil.rmtree(self.base, ignore_errors=True)

    def dump(self, database: str = "postgres") -> bytes:
        """Everything in a database as pg_dump writes it (data included)."""
        dsn = self.dsn.rsplit("/", 1)[0] + "/" + database
        result = subprocess.run(
            ["pg_dump", "--data-only", "--inserts", dsn], capture_output=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise ServerError(f"pg_dump failed: {result.stderr.decode(errors='replace')[-2000:]}")
        return result.stdout
