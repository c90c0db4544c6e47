"""The real Windows backend: IIS through PowerShell and Microsoft.Web.Administration.

Every call runs one of the package's ``*.ps1`` scripts through an injected ``runner``
(``runner(script, env) -> stdout``). The default runner starts
``powershell.exe -NoProfile -NonInteractive -Command -`` and writes the script to its stdin (as one
line that decodes the UTF-8 script from base64, so multi-line statements and any character survive).

Values reach a script only as one JSON document in a PowerShell single-quoted string literal
(:func:`ps_quote` doubles every quote character PowerShell knows), so a site name with quotes,
``$(…)`` or back-ticks stays data. Secrets (PFX and CCS passwords) go through the environment,
never the command line nor the script text. Scripts print their result as JSON between
``<<<CERTCTL-JSON`` and ``CERTCTL-JSON>>>`` lines; anything else they print is ignored.

Reads are one call (sites, bindings with sslFlags and hashes, FTP ssl, the HTTP.sys table, IIS version,
site state, store certificates with friendly names, CCS files). The HTTP.sys table is read from a
``reg export`` of the HTTP service's ``SslBindingInfo``/``SslSniBindingInfo``/``SslCcsBindingInfo`` keys,
which reads the same on every display language; ``netsh http show sslcert`` (English labels only) is the
fallback when the export is not available. Whatever neither can read is a blocking problem of the host:
certctl then removes nothing there (no cleanup, no prune, no store removal). Writes resolve the
changes against a fresh read first (the same rules as the emulated host, see ``changes``), then
carry them out in one ServerManager commit retried with back-off.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from cryptography import x509

from reconciler.adapters.iis.appconfig import expand_variables, make_binding
from reconciler.adapters.iis.certstore import StoreError, friendly_name, managed_by
from reconciler.adapters.iis.changes import Step, resolve, thumbprint_users
from reconciler.adapters.iis.httpsys import (
    SslRecord,
    netsh_settings_args,
    normalize_hash,
    read_netsh,
    read_registry_export,
)
from reconciler.core.model import CertInfo, HostState, Site, SiteState, StoredCert, StoreState
from reconciler.ports import BindingChange, Material
from reconciler.support.logging import get_logger
from reconciler.support.pki import cert_info, info_from_pem, to_pfx

log = get_logger()

Runner = Callable[[str, Mapping[str, str]], str]
BEGIN, END = "<<<CERTCTL-JSON", "CERTCTL-JSON>>>"
PLACEHOLDER = "__CERTCTL_INPUT__"
_PS_QUOTES = "'\u2018\u2019\u201a\u201b"  # every character PowerShell accepts as a single quote


class WindowsHostError(RuntimeError):
    """A PowerShell call failed or printed something certctl cannot read."""


# --- script text ---------------------------------------------------------------------------------


def ps_quote(value: str) -> str:
    """A PowerShell single-quoted string literal of ``value`` (no expansion of ``$``, back-tick or ``$()``)."""
    return "'" + "".join(c + c if c in _PS_QUOTES else c for c in value) + "'"


def load_script(name: str) -> str:
    return resources.files("reconciler.adapters.iis").joinpath(name).read_text(encoding="utf-8")


def render_script(name: str, data: Mapping[str, Any]) -> str:
    """The script ``name`` with ``data`` (JSON) substituted as one single-quoted literal."""
    template = load_script(name)
    if template.count(PLACEHOLDER) != 1:
        raise ValueError(f"{name} must hold {PLACEHOLDER} exactly once")
    return template.replace(
        PLACEHOLDER, ps_quote(json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    )


def stdin_payload(script: str) -> str:
    """What the default runner writes to ``powershell.exe -Command -``: one line running the whole script."""
    encoded = base64.b64encode(script.encode("utf-8")).decode("ascii")
    return (
        "& ([scriptblock]::Create([System.Text.Encoding]::UTF8.GetString("
        f"[System.Convert]::FromBase64String('{encoded}'))))\n"
    )


@dataclass
class PowerShellRunner:
    """The default runner: a local Windows PowerShell, script on stdin, extra environment merged in."""

    executable: str = "powershell.exe"
    timeout: float = 300.0

    def argv(self) -> list[str]:
        return [self.executable, "-NoProfile", "-NonInteractive", "-Command", "-"]

    def __call__(self, script: str, env: Mapping[str, str]) -> str:
        try:
            proc = subprocess.run(
                self.argv(),
                input=stdin_payload(script),
                capture_output=True,
                text=True,
                encoding="utf-8",
                errors="replace",
                env={**os.environ, **env},
                timeout=self.timeout,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise WindowsHostError(f"cannot run {self.executable}: {err}") from err
        if proc.returncode != 0 and BEGIN not in proc.stdout:
            raise WindowsHostError(
                f"PowerShell failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc.stdout


def extract_json(stdout: str) -> Any:
    """The JSON a script printed between the markers (the last such block)."""
    text = stdout.replace("\r\n", "\n").lstrip("\ufeff")
    start = text.rfind(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        raise WindowsHostError(f"PowerShell printed no result: {text.strip()[:500]!r}")
    body = text[start + len(BEGIN) : end].strip()
    try:
        return json.loads(body)
    except ValueError as err:
        raise WindowsHostError(
            f"PowerShell printed a result that is not JSON ({err}): {body[:200]!r}"
        ) from None


def _as_list(value: Any) -> list[Any]:
    """Windows PowerShell may print a one-element array as the element, and an empty one as null."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


# --- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowsCert:
    thumbprint: str
    friendly_name: str
    has_private_key: bool
    info: CertInfo | None  # None when the certificate could not be decoded


@dataclass(frozen=True)
class Snapshot:
    """Everything one read call returned."""

    host: HostState
    table: tuple[SslRecord, ...]
    certs: dict[str, tuple[WindowsCert, ...]] = field(default_factory=dict)  # lower-case store name -> certs
    site_defaults_ftp: str | None = None


def parse_read_output(host: str, stdout: str) -> Snapshot:
    """Turn the read script's output into model values (pure; tested on recorded outputs)."""
    data = extract_json(stdout)
    if not isinstance(data, dict):
        raise WindowsHostError(f"IIS host {host!r}: the read result is not an object")
    problems: list[str] = []
    defaults = data.get("site_defaults_ftp") or {}
    default_hash = normalize_hash(defaults.get("hash")) if isinstance(defaults, dict) else None
    default_store = (defaults.get("store") or "MY") if isinstance(defaults, dict) else None
    sites: list[Site] = []
    for raw in _as_list(data.get("sites")):
        name = str(raw.get("name", ""))
        bindings = tuple(
            make_binding(
                name, str(b.get("protocol", "")), str(b.get("information", "")), int(b.get("ssl_flags") or 0)
            )
            for b in _as_list(raw.get("bindings"))
        )
        for b in bindings:
            if b.parse_error:
                problems.append(f"site {name!r}: {b.protocol} binding left alone: {b.parse_error}")
        state_text = str(raw.get("state") or "Unknown")
        state = SiteState.stopped if state_text.lower() in ("stopped", "stopping") else SiteState.started
        if state_text.lower() not in ("started", "starting", "stopped", "stopping"):
            problems.append(f"site {name!r}: state {state_text!r} could not be read; taken as started")
        ftp = raw.get("ftp") if isinstance(raw.get("ftp"), dict) else None
        ftp_hash = normalize_hash(ftp.get("hash")) if ftp else None
        ftp_store = (ftp.get("store") or "MY") if ftp and ftp_hash else None
        if ftp_hash is None and default_hash and any(b.protocol.lower() == "ftp" for b in bindings):
            ftp_hash, ftp_store = default_hash, default_store
        sites.append(
            Site(
                name=name,
                id=int(raw.get("id") or 0),
                physical_path=str(raw.get("physical_path") or ""),
                state=state,
                bindings=bindings,
                ftp_cert_hash=ftp_hash,
                ftp_cert_store=ftp_store,
            )
        )
    table, blocking = read_httpsys(data)
    problems += blocking
    certs: dict[str, tuple[WindowsCert, ...]] = {}
    for store in _as_list(data.get("stores")):
        items: list[WindowsCert] = []
        for c in _as_list(store.get("certs")):
            info = None
            try:
                info = cert_info(x509.load_der_x509_certificate(base64.b64decode(c.get("raw") or "")))
            except ValueError as err:
                problems.append(
                    f"store {store.get('name')}: certificate {c.get('thumbprint')} cannot be decoded: {err}"
                )
            items.append(
                WindowsCert(
                    thumbprint=str(c.get("thumbprint", "")).upper(),
                    friendly_name=str(c.get("friendly_name") or ""),
                    has_private_key=bool(c.get("has_private_key")),
                    info=info,
                )
            )
        certs[str(store.get("name", "")).lower()] = tuple(items)
    ccs_files: list[tuple[str, str]] = []
    ccs = data.get("ccs")
    if isinstance(ccs, dict):
        for f in _as_list(ccs.get("files")):
            tp = str(f.get("thumbprint") or "").upper()
            if not tp:
                problems.append(
                    f"CCS file {f.get('name')} cannot be read (corrupt, or the CCS password is not known)"
                )
            ccs_files.append((str(f.get("name", "")), tp))
    host_state = HostState(
        name=host,
        iis_version=str(data.get("iis_version") or "unknown"),
        sites=tuple(sites),
        httpsys=tuple(r.to_entry() for r in table),
        stores=tuple(sorted(str(s.get("name")) for s in _as_list(data.get("stores")))),
        ccs_files=tuple(ccs_files),
        problems=tuple(problems),
        blocking=blocking,
    )
    return Snapshot(host=host_state, table=table, certs=certs, site_defaults_ftp=default_hash)


def read_httpsys(data: Mapping[str, Any]) -> tuple[tuple[SslRecord, ...], tuple[str, ...]]:
    """The HTTP.sys table of a read result: from the registry export, else from netsh text; with the problems
    that block destructive actions (anything not empty that could not be read)."""
    registry = str(data.get("httpsys_reg") or "")
    if registry.strip():
        return read_registry_export(registry)
    return read_netsh(str(data.get("sslcert") or ""))


# --- the host ------------------------------------------------------------------------------------


class WindowsHost:
    """A BindingHost for the Windows machine certctl runs on."""

    def __init__(
        self,
        name: str,
        *,
        runner: Runner | None = None,
        stores: Sequence[str] = ("My", "WebHosting"),
        ccs_password: str | None = None,
        commit_attempts: int = 4,
        backoff_ms: int = 500,
        computer_name: str | None = None,
    ) -> None:
        if computer_name:
            raise ValueError(
                f"IIS host {name!r}: managing a remote machine ({computer_name}) is not supported yet; "
                "run certctl on the server itself"
            )
        self.name = name
        self.runner: Runner = runner or PowerShellRunner()
        self.stores = tuple(stores)
        self.ccs_password = ccs_password
        self.commit_attempts = commit_attempts
        self.backoff_ms = backoff_ms

    def local_path(self, physical_path: str) -> str:
        """A site's ``physicalPath`` on this machine, its ``%VARIABLES%`` expanded from the environment."""
        try:
            return expand_variables(physical_path, os.environ)
        except ValueError as exc:
            raise WindowsHostError(str(exc)) from None

    def _run(self, script: str, env: Mapping[str, str] | None = None) -> Any:
        return extract_json(self.runner(script, dict(env or {})))

    def read_script(self) -> str:
        return render_script("read.ps1", {"stores": list(self.stores)})

    def read(self) -> Snapshot:
        env = {"CERTCTL_CCS_PASSWORD": self.ccs_password} if self.ccs_password else {}
        return parse_read_output(self.name, self.runner(self.read_script(), env))

    def observe(self) -> HostState:
        try:
            return self.read().host
        except WindowsHostError as err:
            log.warning("iis.observe_failed", host=self.name, error=str(err))
            return HostState(name=self.name, reachable=False, problems=(f"IIS host {self.name!r}: {err}",))

    def apply_script(self, steps: Sequence[Step]) -> str:
        return render_script(
            "apply.ps1",
            {
                "steps": [
                    {
                        "op": s.op,
                        "site": s.site,
                        "protocol": s.protocol,
                        "information": s.information,
                        "ssl_flags": s.ssl_flags,
                        "thumbprint": s.thumbprint,
                        "store": s.store,
                        "config_only": s.config_only,
                        "entry": s.entry,
                        "netsh": netsh_settings_args(s.settings),
                    }
                    for s in steps
                ],
                "attempts": self.commit_attempts,
                "backoff_ms": self.backoff_ms,
            },
        )

    def apply(self, changes: Sequence[BindingChange]) -> None:
        if not changes:
            return
        snap = self.read()

        def has_cert(store: str, tp: str) -> bool:
            return any(c.thumbprint == tp.upper() for c in snap.certs.get(store.lower(), ()))

        resolution = resolve(self.name, snap.host.sites, snap.table, changes, has_cert=has_cert)
        result = self._run(self.apply_script(resolution.steps))
        if not isinstance(result, dict) or result.get("ok") is not True:
            raise WindowsHostError(f"IIS host {self.name!r}: the commit did not report success: {result!r}")
        failed = [str(f) for f in _as_list(result.get("settings_failed"))]
        if failed:
            raise WindowsHostError(
                f"IIS host {self.name!r}: the bindings were committed, but the HTTP.sys settings "
                f"could not be re-applied to {'; '.join(failed)}; re-apply them with "
                "`netsh http update sslcert` (the plan listed them)"
            )
        log.info("iis.committed", host=self.name, changes=len(changes), attempts=result.get("attempts"))

    def store(self, store_name: str, *, name: str | None = None) -> WindowsStore:
        return WindowsStore(self, store_name, name=name)


class WindowsStore:
    """``Cert:\\LocalMachine\\<store>`` of a WindowsHost (Store Protocol). Keys are imported non-exportable, so
    :meth:`read` gives no material back."""

    runs_locally = False  # a Windows machine's store, through PowerShell

    def __init__(self, host: WindowsHost, store_name: str, *, name: str | None = None) -> None:
        self.host = host
        self.store_name = store_name
        self.name = name or store_name

    def observe(self) -> StoreState:
        try:
            snap = self.host.read()
        except WindowsHostError as err:
            return StoreState(
                name=self.name, reachable=False, problems=(f"IIS host {self.host.name!r}: {err}",)
            )
        found = snap.certs.get(self.store_name.lower(), ())
        certs = tuple(
            StoredCert(
                store=self.name,
                info=c.info,
                ref=c.thumbprint,
                managed_by=managed_by(c.friendly_name),
                has_key=c.has_private_key,
                friendly_name=c.friendly_name,
            )
            for c in found
            if c.info is not None
        )
        problems = tuple(
            f"{self.store_name}: certificate {c.thumbprint} cannot be decoded"
            for c in found
            if c.info is None
        )
        return StoreState(name=self.name, certs=certs, problems=problems)

    def install_script(self, certificate: str, material: Material) -> tuple[str, dict[str, str]]:
        """The script and its environment (the PFX password) for an import."""
        info = info_from_pem(material.cert_pem)
        password = secrets.token_urlsafe(24)
        # 3DES: Import-PfxCertificate before Windows Server 2019 cannot read AES-256 PKCS#12
        pfx = to_pfx(
            material.cert_pem, material.chain_pem, material.key_pem, password.encode(), None, legacy=True
        )
        script = render_script(
            "store_install.ps1",
            {
                "store": self.store_name,
                "thumbprint": info.thumbprint,
                "friendly_name": friendly_name(certificate, info),
                "pfx": base64.b64encode(pfx).decode("ascii"),
            },
        )
        return script, {"CERTCTL_PFX_PASSWORD": password}

    def install(self, certificate: str, material: Material, at: datetime) -> StoredCert:
        script, env = self.install_script(certificate, material)
        result = self.host._run(script, env)
        info = info_from_pem(material.cert_pem)
        if not isinstance(result, dict) or result.get("ok") is not True:
            reason = result.get("reason") if isinstance(result, dict) else result
            raise StoreError(
                f"IIS host {self.host.name!r}: importing {info.thumbprint} into {self.store_name} "
                f"failed: {reason}"
            )
        log.info(
            "iis.store.installed",
            host=self.host.name,
            store=self.store_name,
            thumbprint=info.thumbprint,
            certificate=certificate,
        )
        return StoredCert(
            store=self.name,
            info=info,
            ref=info.thumbprint,
            managed_by=certificate,
            installed_at=at.astimezone(UTC),
            has_key=True,
            friendly_name=friendly_name(certificate, info),
        )

    def remove(self, ref: str) -> None:
        tp = ref.strip().upper()
        if not re.fullmatch(r"[0-9A-F]{40}", tp):
            raise StoreError(f"{ref!r} is not a certificate thumbprint")
        snap = self.host.read()
        if snap.host.blocking:
            raise StoreError(
                f"IIS host {self.host.name!r}: {tp} in {self.store_name} was not removed: certctl cannot "
                f"tell whether it is still bound ({'; '.join(snap.host.blocking)})"
            )
        used = thumbprint_users(tp, snap.table, snap.host.sites, snap.site_defaults_ftp)
        if used:
            raise StoreError(
                f"IIS host {self.host.name!r}: {tp} in {self.store_name} is still used by "
                f"{', '.join(used)}; it was not removed"
            )
        result = self.host._run(
            render_script("store_remove.ps1", {"store": self.store_name, "thumbprint": tp})
        )
        if isinstance(result, dict) and result.get("reason"):
            raise StoreError(
                f"IIS host {self.host.name!r}: {tp} in {self.store_name}: {result['reason']}; not removed"
            )
        log.info("iis.store.removed", host=self.host.name, store=self.store_name, thumbprint=tp)

    def read(self, ref: str) -> Material | None:
        return None  # imported without Exportable: Windows does not give the key back
