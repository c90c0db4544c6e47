"""The emulated IIS machine: one folder per host, in the exact formats of a real server (docs/iis.md, "The emulated machine").

```
<root>/applicationHost.config        IIS configuration (edited losslessly, see appconfig)
<root>/httpsys.json                  the HTTP.sys SSL table
<root>/server.json                   the running server: {"iis_version": "10.0", "stopped_sites": [...],
                                     "started_sites": [...]} (a site neither lists is in the state the server
                                     started it in: started unless its serverAutoStart is false)
<root>/<name>.config                 the <sites> section, when applicationHost.config moves it there with
                                     <sites configSource="name.config"> (a file in this folder only)
<root>/certstore/<Store>/<TP>.pfx    Cert:\\LocalMachine\\<Store>: certificate (+ key), unencrypted PKCS#12,
<root>/certstore/<Store>/<TP>.json   mode 0600 (standing in for DPAPI); the JSON: friendly name and metadata
<root>/ccs/<host>.pfx                the Centralized Certificate Store share
<root>/drives/<letter>/<path>        the machine's disks: a site's physicalPath D:\\Sites\\shop is
                                     <root>/drives/D/Sites/shop (%SystemDrive% is C:, %SystemRoot% C:\\Windows);
                                     a UNC path \\\\server\\share\\x is <root>/unc/server/share/x
```

A commit (:meth:`EmulatedHost.apply`) works like Microsoft.Web.Administration's CommitChanges: the XML
and the HTTP.sys table change together, and the shared-endpoint overwrite happens as on a real server.
It is all-or-nothing: both files are staged beside the originals, the originals are hard-linked to
backups, an intent file names them, and only then are the staged files renamed into place. A failure
between the renames restores the backups; a crash leaves the intent file, and the next apply rolls
back from it (observe reads the rolled-back view meanwhile, so a plan never sees half a commit).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from collections.abc import Callable, Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from reconciler.adapters.iis.appconfig import FILE_NAME as CONFIG_FILE
from reconciler.adapters.iis.appconfig import AppHostConfig, ConfigError, expand_variables
from reconciler.adapters.iis.certstore import StoreError, friendly_name, managed_by
from reconciler.adapters.iis.changes import resolve, thumbprint_users
from reconciler.adapters.iis.httpsys import FILE_NAME as HTTPSYS_FILE
from reconciler.adapters.iis.httpsys import HttpSysError, SslRecord, dump_json, load_json, normalize_hash
from reconciler.core.model import HostState, StoredCert, StoreState
from reconciler.ports import BindingChange, Material
from reconciler.support.fs import (
    WRITE_TEMP,
    UnsafePath,
    atomic_write,
    clean_up,
    contained,
    fsync_dir,
    remove_temporaries,
)
from reconciler.support.logging import get_logger
from reconciler.support.pki import cert_info, from_pfx, info_from_pem, key_matches, split_pem_chain, to_pfx

log = get_logger()

SERVER_FILE = "server.json"
CERTSTORE_DIR = "certstore"
_ROOT_TEMP = re.compile(
    r"^\.(.+\.certctl-(new|bak)|.+\.[a-z0-9_]{8}\.tmp)$"
)  # staged, backup, atomic_write temporaries
CCS_DIR = "ccs"
INTENT_FILE = ".certctl-commit.json"


class IisHostError(RuntimeError):
    """The host cannot be read or changed; nothing was changed."""


def _load_pfx(data: bytes) -> tuple[x509.Certificate, bytes | None, str]:
    """(certificate, key PEM or None, friendly name) of an unencrypted PFX; a key-less PFX (the CA store) keeps
    its certificate among the "additional" certificates."""
    pfx = pkcs12.load_pkcs12(data, None)
    holder = pfx.cert or (pfx.additional_certs[0] if pfx.additional_certs else None)
    if holder is None:
        raise ValueError("the PFX holds no certificate")
    key = None
    if pfx.key is not None:
        key = pfx.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    return holder.certificate, key, holder.friendly_name.decode() if holder.friendly_name else ""


def _norm_tp(ref: str) -> str:
    return normalize_hash(ref) or ""


_CONFIG_SOURCE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.config", re.IGNORECASE)


def _running(server: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(stopped, started) site names as server.json says the running server has them."""
    return [str(s) for s in server.get("stopped_sites", [])], [
        str(s) for s in server.get("started_sites", [])
    ]


class EmulatedHost:
    """A BindingHost over a folder that stands for one Windows/IIS machine.

    ``fault`` is a test seam: it is called with the name of each commit step
    (``staged``, ``before-rename:<file>``, ``after-rename:<file>``) and may raise to simulate a crash.
    ``ccs_password`` opens password-protected PFX files on the CCS share (to read their thumbprints).
    """

    def __init__(
        self,
        name: str,
        root: Path | str,
        *,
        ccs_password: bytes | None = None,
        fault: Callable[[str], None] | None = None,
    ) -> None:
        self.name = name
        self.root = Path(root)
        self.ccs_password = ccs_password
        self._fault = fault or (lambda step: None)

    def __repr__(self) -> str:
        return f"EmulatedHost({self.name!r}, {str(self.root)!r})"

    # -- reading -------------------------------------------------------------------------------

    def _intent(self) -> list[dict[str, Any]] | None:
        path = self.root / INTENT_FILE
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise IisHostError(f"IIS host {self.name!r}: unreadable commit intent {path}: {err}") from None
        if not isinstance(data, list):
            return []
        for (
            item
        ) in data:  # a planted intent must never steer a restore or a delete outside the machine folder
            if not isinstance(item, dict) or not isinstance(item.get("file"), str):
                raise IisHostError(
                    f"IIS host {self.name!r}: commit intent {path} holds an entry without a file name"
                )
            file, backup = item["file"], item.get("backup")
            try:
                contained(self.root, file, "file")
            except UnsafePath as err:
                raise IisHostError(f"IIS host {self.name!r}: commit intent {path}: {err}") from None
            if "/" in file or "\\" in file or backup not in (None, f".{file}.certctl-bak"):
                raise IisHostError(
                    f"IIS host {self.name!r}: commit intent {path} names {file!r} with backup "
                    f"{backup!r}; only files directly in {self.root} and their own backups are "
                    "restored; refused (move the file away if it was not written by certctl)"
                )
        return data

    def _read(self, file: str, intent: list[dict[str, Any]] | None) -> bytes | None:
        """A file's content as of the last complete commit (None when it does not exist)."""
        for item in intent or ():
            if item.get("file") == file:
                backup = item.get("backup")
                if not backup:
                    return None  # the file did not exist before that commit
                path: Path = self.root / str(backup)
                if path.exists():
                    return path.read_bytes()
                break  # the backup is gone (its commit was being discarded): the file itself is current
        path = self.root / file
        return path.read_bytes() if path.exists() else None

    def _sites_file(self, cfg: AppHostConfig, intent: list[dict[str, Any]] | None) -> AppHostConfig:
        """The file that holds the <sites> section and its parsed content: applicationHost.config itself, or the
        file its ``<sites configSource="…">`` names, which must be a file in the machine folder."""
        source = cfg.config_source()
        if source is None:
            return cfg
        name, line = source

        def fail(message: str) -> ConfigError:
            return ConfigError(
                f"<sites configSource={name!r}>: {message}",
                host=self.name,
                file=str(self.root / CONFIG_FILE),
                line=line,
            )

        reserved = {n.lower() for n in (CONFIG_FILE, HTTPSYS_FILE, SERVER_FILE, INTENT_FILE)}
        if (
            not _CONFIG_SOURCE_RE.fullmatch(name)
            or name.lower() in reserved
            or (self.root / name).resolve().parent != self.root.resolve()
        ):
            raise fail(
                "certctl follows configSource only to a .config file in the configuration folder itself; "
                "the sites cannot be read"
            )
        data = self._read(name, intent)
        if data is None:
            raise fail(f"{self.root / name} does not exist; the sites cannot be read")
        sites_cfg = AppHostConfig.parse(data, host=self.name, file=str(self.root / name))
        if not sites_cfg.is_sites_file():
            raise fail(f"{name} does not hold a <sites> element")
        return sites_cfg

    def _load(self) -> tuple[AppHostConfig, tuple[SslRecord, ...], dict[str, Any], bool]:
        """(the configuration that holds the sites, the HTTP.sys table, server.json, interrupted commit?)"""
        if not self.root.is_dir():
            raise IisHostError(
                f"IIS host {self.name!r}: the folder {self.root} that stands for the machine does not exist"
            )
        intent = self._intent()
        config = self._read(CONFIG_FILE, intent)
        if config is None:
            raise IisHostError(f"IIS host {self.name!r}: {self.root / CONFIG_FILE} does not exist")
        main = AppHostConfig.parse(config, host=self.name, file=str(self.root / CONFIG_FILE))
        cfg = self._sites_file(main, intent)
        table_bytes = self._read(HTTPSYS_FILE, intent)
        table = load_json(table_bytes, host=self.name) if table_bytes is not None else ()
        server: dict[str, Any] = {}
        server_path = self.root / SERVER_FILE
        if server_path.exists():
            try:
                server = json.loads(server_path.read_text())
            except ValueError as err:
                raise IisHostError(f"IIS host {self.name!r}: {server_path}: not valid JSON: {err}") from None
            if not isinstance(server, dict) or not all(
                isinstance(server.get(k, []), list) for k in ("stopped_sites", "started_sites")
            ):
                raise IisHostError(
                    f"IIS host {self.name!r}: {server_path}: expected "
                    '{"iis_version": "10.0", "stopped_sites": [...], "started_sites": [...]}'
                )
        return cfg, table, server, intent is not None

    def observe(self) -> HostState:
        try:
            cfg, table, server, interrupted = self._load()
        except (IisHostError, ConfigError, HttpSysError, OSError) as err:
            log.warning("iis.observe_failed", host=self.name, error=str(err))
            return HostState(name=self.name, reachable=False, problems=(str(err),))
        problems = list(cfg.problems())
        if interrupted:
            problems.append(
                f"an interrupted commit was found in {self.root}; it is rolled back on the next apply"
            )
        stopped, started = _running(server)
        sites = cfg.sites(stopped, started)
        known = {s.name.lower() for s in sites}
        problems += [
            f"{SERVER_FILE}: stopped site {s!r} is not configured" for s in stopped if s.lower() not in known
        ]
        problems += [
            f"{SERVER_FILE}: started site {s!r} is not configured" for s in started if s.lower() not in known
        ]
        ccs_files, ccs_problems = self._ccs_files()
        return HostState(
            name=self.name,
            iis_version=str(server.get("iis_version", "10.0")),
            sites=sites,
            httpsys=tuple(r.to_entry() for r in table),
            stores=tuple(
                sorted(
                    p.name for p in self._certstore().iterdir() if p.is_dir() and not p.name.startswith(".")
                )
            )
            if self._certstore().is_dir()
            else (),
            ccs_files=ccs_files,
            problems=tuple(problems + ccs_problems),
        )

    def _ccs_files(self) -> tuple[tuple[tuple[str, str], ...], list[str]]:
        folder = self.root / CCS_DIR
        if not folder.is_dir():
            return (), []
        out: list[tuple[str, str]] = []
        problems: list[str] = []
        for path in sorted(folder.iterdir()):
            if not path.is_file() or path.suffix.lower() != ".pfx":
                continue
            data = path.read_bytes()
            thumbprint = ""
            for password in (None, b"", self.ccs_password):
                with contextlib.suppress(ValueError, TypeError):
                    pfx = pkcs12.load_pkcs12(data, password)
                    if pfx.cert is not None:
                        thumbprint = cert_info(pfx.cert.certificate).thumbprint
                        break
            if not thumbprint:
                problems.append(
                    f"{CCS_DIR}/{path.name}: cannot be read (corrupt, or the CCS password is not known)"
                )
            out.append((path.name, thumbprint))
        return tuple(out), problems

    def _certstore(self) -> Path:
        return self.root / CERTSTORE_DIR

    def store_dir(self, store_name: str) -> Path:
        """The folder of a Windows store (store names are case-insensitive: ``MY`` is ``My``)."""
        base = self._certstore()
        if base.is_dir():
            for p in base.iterdir():
                if p.is_dir() and p.name.lower() == store_name.lower():
                    return p
        return base / store_name

    def has_cert(self, store_name: str, thumbprint: str) -> bool:
        folder = self.store_dir(store_name)
        return folder.is_dir() and any(
            p.name.upper() == f"{_norm_tp(thumbprint)}.PFX" for p in folder.iterdir()
        )

    def references(self, thumbprint: str) -> list[str]:
        """Where this host still uses a certificate: HTTP.sys entries and FTP settings (readable text)."""
        cfg, table, _server, _ = self._load()
        return thumbprint_users(_norm_tp(thumbprint), table, cfg.sites(), cfg.site_defaults_ftp().cert_hash)

    # -- writing -------------------------------------------------------------------------------

    def apply(self, changes: Sequence[BindingChange]) -> None:
        if not self.root.is_dir():
            raise IisHostError(
                f"IIS host {self.name!r}: the folder {self.root} that stands for the machine does not exist"
            )
        self.recover()
        try:
            cfg, table, server, _ = self._load()
        except (ConfigError, HttpSysError, OSError) as err:
            raise IisHostError(str(err)) from err
        resolution = resolve(self.name, cfg.sites(*_running(server)), table, changes, has_cert=self.has_cert)
        for step in resolution.steps:
            if step.op == "add":
                cfg.add_binding(step.site, step.protocol, step.information, step.ssl_flags)
            elif step.op == "remove":
                cfg.remove_binding(step.site, step.protocol, step.information)
            elif step.op == "ftp":
                cfg.set_ftp_ssl(step.site, step.thumbprint, step.store)
            # replace: the XML keeps the binding as it is; only its HTTP.sys entry changes
        files: list[tuple[str, bytes]] = []
        if cfg.changed:
            files.append((Path(cfg.file).name, cfg.to_bytes()))  # applicationHost.config or its configSource
        if resolution.table != tuple(table):
            files.append((HTTPSYS_FILE, dump_json(resolution.table)))
        self._commit(files)
        log.info("iis.committed", host=self.name, changes=len(changes), files=[f for f, _ in files])

    def _commit(self, files: list[tuple[str, bytes]]) -> None:
        if not files:
            return
        staged: list[tuple[Path, Path]] = []
        intent: list[dict[str, Any]] = []
        intent_path = self.root / INTENT_FILE
        try:
            for file, data in files:
                target = self.root / file
                tmp = self.root / f".{file}.certctl-new"
                atomic_write(tmp, data, mode=(target.stat().st_mode & 0o777) if target.exists() else 0o644)
                staged.append((tmp, target))
            for _tmp, target in staged:
                backup: str | None = None
                if target.exists():
                    backup = f".{target.name}.certctl-bak"
                    with contextlib.suppress(FileNotFoundError):
                        (self.root / backup).unlink()
                    try:
                        os.link(target, self.root / backup)
                    except OSError:
                        shutil.copy2(target, self.root / backup)
                intent.append({"file": target.name, "backup": backup})
            atomic_write(intent_path, json.dumps(intent, indent=2) + "\n")
            self._fault("staged")
        except BaseException as err:
            self._discard(staged, intent, intent_path)
            raise IisHostError(
                f"IIS host {self.name!r}: cannot write {self.root}: {str(err) or type(err).__name__}; "
                "nothing was changed"
            ) from err
        try:
            for tmp, target in staged:
                self._fault(f"before-rename:{target.name}")
                os.replace(tmp, target)
                self._fault(f"after-rename:{target.name}")
            fsync_dir(self.root)
        except BaseException as err:
            err_text = str(err) or type(err).__name__
            try:
                self._rollback(intent)
            except OSError as rollback_err:
                raise IisHostError(
                    f"IIS host {self.name!r}: the commit failed ({err_text}) and could not be rolled back yet "
                    f"({rollback_err}); the next apply rolls it back from {intent_path}"
                ) from err
            self._discard(staged, intent, intent_path)
            raise IisHostError(
                f"IIS host {self.name!r}: the commit failed and was rolled back: {err_text}"
            ) from err
        self._discard(staged, intent, intent_path)

    def _rollback(self, intent: list[dict[str, Any]]) -> None:
        for item in intent:
            target = self.root / item["file"]
            backup = item.get("backup")
            if backup:
                backup_path = self.root / backup
                if not backup_path.exists():
                    continue
                if target.exists() and os.path.samefile(backup_path, target):
                    backup_path.unlink()  # never replaced (rename() of two links to one file does nothing)
                else:
                    os.replace(backup_path, target)
            else:
                with contextlib.suppress(FileNotFoundError):
                    target.unlink()
        fsync_dir(self.root)

    def _discard(
        self, staged: list[tuple[Path, Path]], intent: list[dict[str, Any]], intent_path: Path
    ) -> None:
        # what stays behind (a removal refused) is counted: the apply then leaves no clean mark, so the next
        # recovery walks this machine's folder and finishes it (rolling back an intent still there)
        for tmp, _target in staged:
            clean_up(tmp)
        clean_up(intent_path)  # first: an intent must never name backups that are already gone
        fsync_dir(self.root)
        if os.path.lexists(intent_path):  # it stays: so do its backups, for the rollback recovery makes of it
            return
        for item in intent:
            if item.get("backup"):
                clean_up(self.root / item["backup"])

    def recover(self) -> bool:
        """Roll back a commit a crash interrupted (True when there was one)."""
        intent = self._intent()
        if intent is None:
            return False
        log.warning("iis.commit_rolled_back", host=self.name, files=[i.get("file") for i in intent])
        self._rollback(intent)
        staged = [
            (self.root / f".{i['file']}.certctl-new", self.root / i["file"]) for i in intent if "file" in i
        ]
        self._discard(staged, [], self.root / INTENT_FILE)
        return True

    def local_path(self, physical_path: str) -> str:
        """Where a site's ``physicalPath`` lies inside this machine's folder (see the layout above)."""
        return str(emulated_path(self.root, physical_path))

    def sweep_temporaries(self, failed: list[str] | None = None, removed_from: set[str] | None = None) -> int:
        """Roll back a commit a crash interrupted, then remove what interrupted writes left anywhere in
        this machine's folder: staged and backup copies of its configuration files, and the temporary
        files of atomic writes in the root and in every certificate store (a ``.pfx`` one holds a key).
        Call it holding the apply lock. Returns how many entries were removed; what could not be removed
        (or a rollback that could not finish) is added to ``failed``, the folders it removed from to
        ``removed_from``."""
        if not self.root.is_dir():
            return 0
        self.recover()
        if (self.root / INTENT_FILE).exists():  # a rollback that could not finish yet still needs its copies
            if failed is not None:
                failed.append(str(self.root / INTENT_FILE))
            return 0
        removed = remove_temporaries(
            self.root, _ROOT_TEMP, recursive=False, failed=failed, removed_from=removed_from
        )
        return removed + remove_temporaries(
            self._certstore(), WRITE_TEMP, recursive=True, failed=failed, removed_from=removed_from
        )

    def store(self, store_name: str, *, name: str | None = None) -> EmulatedStore:
        """The host's ``Cert:\\LocalMachine\\<store_name>``; ``name`` is the Store's name in certctl (default: the
        Windows store name)."""
        return EmulatedStore(self, store_name, name=name)


EMULATED_ENVIRONMENT = {"systemdrive": "C:", "systemroot": "C:\\Windows"}


def emulated_path(root: Path, physical_path: str) -> Path:
    """``C:\\inetpub\\wwwroot`` → ``<root>/drives/C/inetpub/wwwroot``; never a path outside ``root``."""
    try:
        text = expand_variables(physical_path, EMULATED_ENVIRONMENT).replace("/", "\\")
    except ValueError as exc:
        raise IisHostError(f"{exc} on the emulated machine") from None
    drive = re.match(r"^([A-Za-z]):(?:\\|$)", text)
    if drive:
        base, rest = root / "drives" / drive.group(1).upper(), text[2:]
    elif text.startswith("\\\\"):
        base, rest = root / "unc", text[2:]
    else:
        raise IisHostError(f"physical path {physical_path!r} is not an absolute Windows path")
    parts = [p for p in rest.split("\\") if p and p != "."]
    if any(p == ".." or ":" in p for p in parts):
        raise IisHostError(f"physical path {physical_path!r} steps outside its drive")
    return base.joinpath(*parts)


class EmulatedStore:
    """A Windows certificate store of an emulated host (Store Protocol). ``ref`` is the thumbprint."""

    runs_locally = False  # it stands for a Windows machine's store, reached over the network

    def __init__(self, host: EmulatedHost, store_name: str, *, name: str | None = None) -> None:
        self.host = host
        self.store_name = store_name
        self.name = name or store_name

    def __repr__(self) -> str:
        return f"EmulatedStore({self.host.name!r}, {self.store_name!r})"

    def _paths(self, ref: str) -> tuple[Path, Path]:
        folder = self.host.store_dir(self.store_name)
        tp = _norm_tp(ref)
        if folder.is_dir():
            for p in folder.iterdir():
                if p.suffix.lower() == ".pfx" and p.stem.upper() == tp:
                    return p, p.with_suffix(".json")
        return folder / f"{tp}.pfx", folder / f"{tp}.json"

    def observe(self) -> StoreState:
        return self._observe(None)

    def observe_for(self, certificates: Collection[str]) -> StoreState:
        """Only the certificates whose friendly name marks them as one of ``certificates`` (as filtering
        ``Cert:\\LocalMachine\\<store>`` on FriendlyName does): the others' PFX files are not opened."""
        return self._observe(frozenset(certificates))

    def _observe(self, only: frozenset[str] | None) -> StoreState:
        if not self.host.root.is_dir():
            return StoreState(
                name=self.name,
                reachable=False,
                problems=(f"IIS host {self.host.name!r}: the folder {self.host.root} does not exist",),
            )
        folder = self.host.store_dir(self.store_name)
        if not folder.is_dir():
            return StoreState(name=self.name)
        certs: list[StoredCert] = []
        problems: list[str] = []
        for pfx_path in sorted(folder.iterdir()):
            if pfx_path.suffix.lower() != ".pfx":
                continue
            if only is not None:
                named = self._meta(pfx_path.with_suffix(".json"), []).get("friendly_name")
                if isinstance(named, str) and managed_by(named) not in only:
                    continue
            try:
                cert, key_pem, pfx_name = _load_pfx(pfx_path.read_bytes())
                info = cert_info(cert)
            except (OSError, ValueError, TypeError) as err:
                problems.append(f"{pfx_path}: cannot be read: {err}")
                continue
            if info.thumbprint != pfx_path.stem.upper():
                problems.append(f"{pfx_path}: holds certificate {info.thumbprint}, not the one its name says")
            meta = self._meta(pfx_path.with_suffix(".json"), problems)
            friendly = str(meta.get("friendly_name") or pfx_name or "")
            if only is not None and managed_by(friendly) not in only:
                continue
            installed = meta.get("installed_at")
            certs.append(
                StoredCert(
                    store=self.name,
                    info=info,
                    ref=info.thumbprint,
                    managed_by=managed_by(friendly),
                    installed_at=datetime.fromisoformat(installed).astimezone(UTC)
                    if isinstance(installed, str)
                    else None,
                    has_key=key_pem is not None,
                    friendly_name=friendly,
                )
            )
        return StoreState(name=self.name, certs=tuple(certs), problems=tuple(problems))

    @staticmethod
    def _meta(path: Path, problems: list[str]) -> dict[str, Any]:
        if not path.exists():
            return {}
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            problems.append(f"{path}: cannot be read: {err}")
            return {}
        return meta if isinstance(meta, dict) else {}

    def install(self, certificate: str, material: Material, at: datetime) -> StoredCert:
        """Import like ``X509Certificate2(pfx, pwd, MachineKeySet|PersistKeySet)`` + friendly name, then
        reopen the store and check the private key is there. Intermediates go to the ``CA`` store."""
        info = info_from_pem(material.cert_pem)
        tp = info.thumbprint
        friendly = friendly_name(certificate, info)
        pfx_path, json_path = self._paths(tp)
        meta = {
            "thumbprint": tp,
            "friendly_name": friendly,
            "subject": info.subject,
            "not_after": info.not_after.isoformat(),
            "installed_at": at.astimezone(UTC).isoformat(),
            "key_storage": "MachineKeySet,PersistKeySet",
            "exportable": False,
        }
        try:
            atomic_write(json_path, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
            atomic_write(
                pfx_path, to_pfx(material.cert_pem, b"", material.key_pem, None, friendly), mode=0o600
            )
            for ca_pem in split_pem_chain(material.chain_pem):
                self._install_ca(ca_pem)
        except (OSError, ValueError) as err:
            raise StoreError(
                f"IIS host {self.host.name!r}: cannot install {tp} into {self.store_name}: {err}"
            ) from err
        # reopen and check the private key is there
        try:
            cert_pem, _, key_pem, _ = from_pfx(pfx_path.read_bytes(), None)
            ok = (
                key_pem is not None
                and key_matches(cert_pem, key_pem)
                and info_from_pem(cert_pem).thumbprint == tp
            )
        except (OSError, ValueError) as err:
            ok, key_pem = False, None
            log.warning("iis.store.reopen_failed", host=self.host.name, store=self.store_name, error=str(err))
        if not ok:
            for p in (pfx_path, json_path):
                with contextlib.suppress(OSError):
                    p.unlink()
            raise StoreError(
                f"IIS host {self.host.name!r}: {tp} was imported into {self.store_name} "
                "but its private key is not there; the import was undone"
            )
        log.info(
            "iis.store.installed",
            host=self.host.name,
            store=self.store_name,
            thumbprint=tp,
            certificate=certificate,
        )
        return StoredCert(
            store=self.name,
            info=info,
            ref=tp,
            managed_by=certificate,
            installed_at=at,
            has_key=True,
            friendly_name=friendly,
        )

    def _install_ca(self, ca_pem: bytes) -> None:
        cert = x509.load_pem_x509_certificate(ca_pem)
        info = cert_info(cert)
        folder = self.host.store_dir("CA")
        if self.host.has_cert("CA", info.thumbprint):
            return
        atomic_write(
            folder / f"{info.thumbprint}.json",
            json.dumps(
                {"thumbprint": info.thumbprint, "friendly_name": "", "subject": info.subject}, indent=2
            )
            + "\n",
        )
        atomic_write(
            folder / f"{info.thumbprint}.pfx",
            pkcs12.serialize_key_and_certificates(None, None, cert, None, serialization.NoEncryption()),
        )

    def remove(self, ref: str) -> None:
        """Delete a certificate certctl installed, and only when this host no longer uses it."""
        tp = _norm_tp(ref)
        pfx_path, json_path = self._paths(tp)
        if not pfx_path.exists():
            log.info("iis.store.remove_absent", host=self.host.name, store=self.store_name, thumbprint=tp)
            return
        problems: list[str] = []
        meta = self._meta(json_path, problems)
        if managed_by(str(meta.get("friendly_name", ""))) is None:
            raise StoreError(
                f"IIS host {self.host.name!r}: {tp} in {self.store_name} was not installed by certctl; "
                "it is never removed"
            )
        used = self.host.references(tp)
        if used:
            raise StoreError(
                f"IIS host {self.host.name!r}: {tp} in {self.store_name} is still used by "
                f"{', '.join(used)}; it was not removed"
            )
        try:
            pfx_path.unlink()
            with contextlib.suppress(FileNotFoundError):
                json_path.unlink()
        except OSError as err:
            raise StoreError(
                f"IIS host {self.host.name!r}: cannot remove {tp} from {self.store_name}: {err}"
            ) from err
        log.info("iis.store.removed", host=self.host.name, store=self.store_name, thumbprint=tp)

    def read(self, ref: str) -> Material | None:
        pfx_path, _ = self._paths(ref)
        if not pfx_path.exists():
            return None
        cert_pem, _, key_pem, _ = from_pfx(pfx_path.read_bytes(), None)
        if key_pem is None:
            return None
        leaf = x509.load_pem_x509_certificate(cert_pem)
        return Material(cert_pem=cert_pem, chain_pem=self._chain(leaf), key_pem=key_pem, info=cert_info(leaf))

    def _chain(self, leaf: x509.Certificate) -> bytes:
        """Intermediates from the CA store, issuer by issuer (roots left out)."""
        folder = self.host.store_dir("CA")
        cas: list[x509.Certificate] = []
        if folder.is_dir():
            for p in folder.iterdir():
                if p.suffix.lower() == ".pfx":
                    with contextlib.suppress(ValueError, OSError):
                        cas.append(_load_pfx(p.read_bytes())[0])
        out = b""
        current = leaf
        for _ in range(8):
            parent = next((c for c in cas if c.subject == current.issuer and c.subject != c.issuer), None)
            if parent is None:
                break
            out += parent.public_bytes(serialization.Encoding.PEM)
            current = parent
        return out
