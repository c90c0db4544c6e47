"""Store ``pemDirectory``: one folder per certificate, every version kept, the live one switched atomically.

  <path>/<certificate>/versions/<YYYYmmddTHHMMSSZ>-<THUMB8>/cert.pem chain.pem fullchain.pem privkey.pem meta.json
  <path>/<certificate>/current -> versions/<id>          (one symlink: flipping it switches all four files at once)
  <path>/<certificate>/{cert,chain,fullchain,privkey}.pem -> current/<file>

A web server reads ``<path>/<certificate>/fullchain.pem`` and ``privkey.pem`` and never sees a
certificate paired with the wrong key: the four links are made before ``current`` (on a first install
they dangle until then), so flipping ``current`` is the one step that switches what a consumer reads.
Observe checks everything a consumer reads (the four links, ``current``, the live version's files, that
its key matches its certificate, and that ``chain.pem`` holds certificates only and ``fullchain.pem`` is
``cert.pem`` followed by ``chain.pem``) and reports a difference as drift, which ``install`` repairs.
Earlier versions stay until cleanup removes them.
Anything else found in the folder (PEM files of other tools) is observed as unmanaged and never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.core.model import MANAGED_PREFIX, CertInfo, StoredCert, StoreState
from reconciler.ports import Material
from reconciler.state.cache import (
    FileKey,
    JsonCache,
    as_file_key,
    change_clock_ns,
    file_key,
    settled,
    tick_passed,
    unchanged,
    untrusted_file,
)
from reconciler.state.records import info_from_json, info_to_json
from reconciler.state.statedir import KeyedLog
from reconciler.support.fs import (
    contained,
    discard,
    read_regular,
    safe_folder,
    switch_links,
    write_folder,
)
from reconciler.support.lazy import LazyModule
from reconciler.support.logging import get_logger
from reconciler.support.parallel import map_batch, map_io

FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem")
INDEX = ".certctl-index.jsonl"
MAX_FILE_BYTES = 1 << 20  # a certificate, chain, key or meta.json of a store; real ones are a few KiB
log = get_logger()

if TYPE_CHECKING:
    from reconciler.support import pki
else:  # cryptography takes 70 ms to import; a plan of unchanged certificates never reads one
    pki = LazyModule("reconciler.support.pki")


class PemDirectoryStore:
    runs_locally = True  # installing only writes files of this machine

    def __init__(self, name: str, path: Path | str, cache_dir: Path | None = None) -> None:
        self.name = name
        self.path = Path(path)
        self._cache = JsonCache(cache_dir, JsonCache.name_for("pemdir", str(self.path.resolve())))
        self._index = KeyedLog(
            self.path / INDEX, trust=_index_trust
        )  # judged on the file opened, read or written
        self._indexed: dict[str, Cached] = {}
        self._folders: dict[str, Folder] = {}  # certificate -> what install last recorded of its folder
        self._version_dirs: dict[str, FileKey] = {}  # version folder -> its identity when indexed
        # one observation's use of the cache: (entries of folders not looked at, of those looked at) as read,
        # entries taken from it (raw) and versions read from disk
        self._cached: tuple[dict[str, object], dict[str, object]] | None = None
        self._only: frozenset[str] | None = None
        self._reused: dict[str, object] = {}
        self._read: dict[str, Cached] = {}

    # --- observe -----------------------------------------------------------------------------------

    def observe(self) -> StoreState:
        return self._observed(None)

    def observe_for(self, certificates: Collection[str]) -> StoreState:
        """Only the folders of ``certificates`` (a pass woken for them); other tools' files are not read."""
        return self._observed(frozenset(certificates))

    def _observed(self, only: frozenset[str] | None) -> StoreState:
        since = change_clock_ns()  # what changed from here on may have been read mid-change: not cached
        self._indexed, self._folders, self._version_dirs = self._load_index()
        self._cached = None  # read on the first version the index does not describe
        self._only = only
        self._read = {}
        self._reused = {}
        state = self._observe(only)
        if self._cached is not None and (self._read or len(self._reused) != len(self._cached[1])):
            # versions the index does not describe, as found now (those it does are never kept twice)
            entries = {**self._cached[0], **self._reused}
            entries.update(
                (folder, _encode(cached))
                for folder, cached in self._read.items()
                if settled(cached[:5], since)
            )
            self._cache.save(entries)
        return state

    def _from_cache(self, folder: str) -> Cached | None:
        """The cache's entry for a version folder, decoded (None when it has none or it does not decode).
        The cache is read once per observation, and only if a version is not in the index."""
        if self._cached is None:
            raw = self._cache.load() if self._cache.path else {}
            others: dict[str, object] = {}  # entries of folders not looked at: kept as they are, undecoded
            if self._only is not None:
                prefix = str(self.path) + "/"
                only = self._only
                others = {f: v for f, v in raw.items() if f.removeprefix(prefix).split("/", 1)[0] not in only}
                raw = {f: v for f, v in raw.items() if f not in others}
            self._cached = (others, raw)
        entry = self._cached[1].get(folder)
        return _decode(entry) if entry is not None else None

    def _load_index(self) -> tuple[dict[str, Cached], dict[str, Folder], dict[str, FileKey]]:
        """The store's own index, written by install: per version (keyed ``<certificate>/versions/<version>``,
        returned by full path) its file identities, the version folder's and what a full read finds; per
        certificate (keyed by its name) the identities of its folder and of ``versions``, the live version
        and the versions then.

        Untrusted like a cache: it must be a regular file with one name, owned by the running user, that no
        one else can write (``_index_trust``), every entry is type-checked as it is decoded, and an entry
        counts only while the identity of each file or folder it describes (inode, size, mtime, ctime) is
        unchanged. A folder's identity changes whenever a name in it is made, removed, renamed or replaced
        (a link cannot be rewritten in place), so an unchanged folder still holds what install left. Install
        records an identity only once the clock that stamps changes has moved past it (``_index_folder``),
        so any later change changes it; an identity not older than the index's last write is read in full
        all the same, as a second guard ("racily clean", as git calls it)."""
        path = self.path / INDEX
        try:
            st = os.lstat(path)
        except OSError:
            return {}, {}, {}
        problem = _index_trust(st)
        if problem is not None:
            log.warning("store.index.ignored", path=str(path), reason=problem, note="every version is read")
            return {}, {}, {}
        try:
            entries = self._index.read()
        except OSError as exc:
            log.warning(
                "store.index.ignored", path=str(path), reason=exc.strerror, note="every version is read"
            )
            return {}, {}, {}
        written = st.st_mtime_ns
        versions: dict[str, Cached] = {}
        folders: dict[str, Folder] = {}
        version_dirs: dict[str, FileKey] = {}
        for key, entry in entries.items():
            if "/" not in key:
                folder = _decode_folder(entry)
                if folder is not None and folder[0][3] < written and folder[1][3] < written:
                    folders[key] = folder
                continue
            cached = _decode(entry)
            if cached is not None and all(k is None or k[3] < written for k in cached[:5]):
                versions[f"{self.path}/{key}"] = cached
                dir_key = as_file_key(entry.get("f")) if isinstance(entry, dict) else None
                if dir_key is not None and dir_key[3] < written:
                    version_dirs[f"{self.path}/{key}"] = dir_key
        return versions, folders, version_dirs

    def _index_writable(self) -> bool:
        """Whether the index may be appended to (never through a link or a file someone else can write)."""
        path = self.path / INDEX
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(path)
            problem = _index_trust(st)
            if problem is not None:
                log.warning("store.index.not_written", path=str(path), reason=problem)
                return False
        return True

    def _index_set(self, key: str, entry: dict[str, object]) -> None:
        """Append one index entry without waiting for the disk (the index only saves reading: the switch
        that follows, or the next commit, settles it)."""
        try:
            self._index.set(key, entry, wait=False)
        except OSError as exc:  # the version itself is installed
            log.warning("store.index.not_written", path=str(self.path / INDEX), reason=str(exc))

    def _index_folder(
        self,
        certificate: str,
        folder: Path,
        installed: tuple[Path, Material, dict[str, object]] | None = None,
    ) -> None:
        """Record in the index what a consumer of ``folder`` reads now: its identity and that of ``versions``,
        the live version and the versions there; and, for a version just ``installed`` (its folder, material
        and metadata), its file identities, its folder's and what a full read would find in it.

        Identities are taken first. Then, once the clock that stamps file changes has moved past them, what
        is recorded with them is read back from the disk: a change before the identities were taken is seen
        there, and any change after them gets a new change time, so the identities are stale, never wrong
        (a change within the same step of that clock could otherwise keep them). Only a folder whose links
        are all as install makes them is recorded (one with drift stays read in full until install repairs
        it), and only a version holding exactly what install wrote."""
        if not self._index_writable():
            return
        base = str(folder)
        try:
            folder_key, versions_key = file_key(os.lstat(base)), file_key(os.lstat(base + "/versions"))
            version_key = file_key(os.lstat(installed[0])) if installed is not None else None
        except OSError:
            return
        file_keys = _version_keys(str(installed[0])) if installed is not None else None
        if installed is not None and file_keys is None:
            return
        if not tick_passed([folder_key, versions_key, version_key, *(file_keys or ())]):
            return
        if installed is not None and file_keys is not None:
            self._index_version(certificate, installed, version_key, file_keys)
        try:
            link = os.readlink(base + "/current")
            names = sorted(n for n in os.listdir(base + "/versions") if not n.startswith("."))
        except OSError:
            return
        current = os.path.basename(link)
        if link != f"versions/{current}" or current not in names or _links_drift(base) is not None:
            return
        self._index_set(
            certificate, {"d": list(folder_key), "v": list(versions_key), "cur": current, "names": names}
        )  # lists, as read back from the file: this process's KeyedLog keeps the value as given

    def _index_version(
        self,
        certificate: str,
        installed: tuple[Path, Material, dict[str, object]],
        folder_key: FileKey | None,
        file_keys: VersionKeys,
    ) -> None:
        version, material, meta = installed
        base = str(version)
        if not _holds(base, material, meta):
            return
        if any(not _regular(f"{base}/{name}") for name in FILES):  # a link could lose its target unseen
            folder_key = None
        try:
            key_ok = pki.key_matches(material.cert_pem, material.key_pem)
        except (ValueError, TypeError):
            key_ok = False
        chain_ok = pki.chain_as_written(material.cert_pem, material.chain_pem, material.fullchain_pem)
        entry = _encode((*file_keys, material.info, meta, key_ok, chain_ok))
        entry["f"] = list(folder_key) if folder_key is not None else None
        self._index_set(f"{certificate}/versions/{version.name}", entry)

    def _observe(self, only: frozenset[str] | None) -> StoreState:
        certs: list[StoredCert] = []
        problems: list[str] = []
        try:
            entries = sorted(
                (
                    e
                    for e in os.scandir(self.path)
                    if not e.name.startswith(".") and (only is None or e.name in only)
                ),
                key=lambda e: e.name,
            )
        except FileNotFoundError:
            return StoreState(self.name)  # created on first install
        except OSError as exc:
            return StoreState(
                self.name,
                problems=(f"cannot read store folder {self.path}: {exc.strerror}",),
                reachable=False,
            )
        managed: list[Listed] = []
        # Which entries are managed folders, their versions and links: a few stat/readlink calls per
        # certificate, issued from threads so that a cold disk serves them together.
        for entry, (kind, listed, problem) in zip(entries, map_io(self._probe_entry, entries), strict=True):
            if problem is not None:
                problems.append(problem)
            if listed is not None:
                managed.append(listed)
                continue
            try:
                if kind == "dir":
                    certs.extend(self._observe_foreign_dir(Path(entry.path), problems))
                elif kind == "file" and entry.name.endswith((".pem", ".crt", ".cer")):
                    found = self._read_foreign(Path(entry.path), problems)
                    if found:
                        certs.append(found)
            except OSError as exc:
                problems.append(f"cannot read {entry.path}: {exc.strerror}")
        read = self._read_all(
            [f"{folder}/versions/{v}" for folder, current, versions, _ in managed for v in versions],
            {f"{folder}/versions/{current}" for folder, current, _, _ in managed if current},
            problems,
        )
        for folder, current, versions, drift in managed:
            certs.extend(self._stored(folder, current, versions, read, drift))
        return StoreState(self.name, tuple(certs), tuple(problems))

    def _probe_entry(self, entry: os.DirEntry[str]) -> tuple[str, Listed | None, str | None]:
        """``_probe_entry_in_full``, spared for a certificate folder that, with its ``versions``, still has the
        identity install recorded: its links, live version and versions are then as recorded."""
        known = self._folders.get(entry.name)
        if (
            known is not None
            and unchanged(entry.path, known[0])
            and unchanged(entry.path + "/versions", known[1])
        ):
            return "managed", (entry.path, known[2], list(known[3]), None), None
        return _probe_entry_in_full(entry)

    def _read_all(self, folders: list[str], live: set[str], problems: list[str]) -> dict[str, Observed]:
        """Every version's certificate facts, metadata, whether its key is there and (live versions) the files
        it lacks. A version whose files still have the identities the store's index or the cache recorded is
        taken from there; the others are parsed (in worker processes when there are thousands)."""
        out: dict[str, Observed] = {}
        misses: list[tuple[str, tuple[str, ...]]] = []
        probes = map_io(lambda f: _probe_version(f, f in live, self._version_dirs.get(f)), folders)
        for folder, (keys, missing) in zip(folders, probes, strict=True):
            if keys is not None:
                hit = self._indexed.get(folder)
                if hit is None or hit[:5] != keys:
                    hit = self._from_cache(folder)
                    if hit is not None and hit[:5] == keys:
                        self._reused[folder] = self._cached[1][folder]  # type: ignore[index]
                if hit is not None and hit[:5] == keys:
                    out[folder] = (hit[5], hit[6], hit[7], hit[8], missing)
                    continue
            misses.append((folder, missing))
        results = map_batch(_read_versions, [folder for folder, _ in misses])
        for (folder, missing), result in zip(misses, results, strict=True):
            if isinstance(result, str):
                problems.append(result)
                continue
            self._read[folder] = result
            out[folder] = (result[5], result[6], result[7], result[8], missing)
        return out

    def _stored(
        self,
        folder: str,
        current: str | None,
        versions: list[str],
        read: dict[str, Observed],
        drift: str | None,
    ) -> list[StoredCert]:
        found = [(v, *read[f"{folder}/versions/{v}"]) for v in versions if f"{folder}/versions/{v}" in read]
        found.sort(key=lambda vimk: (str(vimk[2].get("installed_at", "")), vimk[0]))
        out: list[StoredCert] = []
        for i, (version, info, meta, key_ok, chain_ok, missing) in enumerate(found):
            owner = str(meta.get("managed_by", ""))
            superseded = found[i + 1][2].get("installed_at") if i + 1 < len(found) else None
            live = version == current
            version_drift = _drift(missing, key_ok, chain_ok) if live else None
            out.append(
                StoredCert(
                    store=self.name,
                    info=info,
                    ref=f"{os.path.basename(folder)}/{version}",
                    managed_by=owner[len(MANAGED_PREFIX) :] if owner.startswith(MANAGED_PREFIX) else None,
                    current=live,
                    installed_at=_dt(meta.get("installed_at")),
                    superseded_at=_dt(superseded),
                    has_key=key_ok,
                    drift=(drift or version_drift) if live else None,
                )
            )
        return out

    def _observe_foreign_dir(self, folder: Path, problems: list[str]) -> list[StoredCert]:
        for candidate in ("fullchain.pem", "cert.pem"):
            path = folder / candidate
            if path.exists():
                found = self._read_foreign(path, problems)
                return [found] if found else []
        return []

    def _read_foreign(self, path: Path, problems: list[str]) -> StoredCert | None:
        try:
            data = _read(path)
        except OSError as exc:
            problems.append(f"cannot read {path}: {exc.strerror or exc}")
            return None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            return None  # a key or something else: not a certificate
        try:
            info = pki.info_from_pem(data)
        except ValueError as exc:
            problems.append(f"{path} is not a valid PEM certificate ({exc}); left alone")
            return None
        return StoredCert(self.name, info, str(path.relative_to(self.path)), None, has_key=False)

    # --- change ------------------------------------------------------------------------------------------

    def install(self, certificate: str, material: Material, at: datetime) -> StoredCert:
        folder = self.path / certificate
        safe_folder(folder, 0o700, "store folder")  # and the store's own (both hold private keys)
        versions = folder / "versions"
        version = f"{at.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{material.info.thumbprint[:8]}"
        target = versions / version
        existing = self._find(folder, material.info.thumbprint)
        written: tuple[Path, ...] = ()
        if existing is not None and _version_drift(str(existing)) is None:
            version, target = existing.name, existing
            meta = _read_meta(existing)
        else:
            if existing is not None:  # damaged (a file gone, a key that does not match): written afresh
                version, target = existing.name, existing
            meta = {
                "managed_by": f"{MANAGED_PREFIX}{certificate}",
                "thumbprint": material.info.thumbprint,
                "installed_at": at.astimezone(UTC).isoformat(),
            }
            write_folder(
                target,
                {  # the whole version appears at once
                    "privkey.pem": (material.key_pem, 0o600),
                    "cert.pem": (material.cert_pem, 0o644),
                    "chain.pem": (material.chain_pem, 0o644),
                    "fullchain.pem": (material.fullchain_pem, 0o644),
                    "meta.json": (json.dumps(meta, indent=1, sort_keys=True).encode(), 0o644),
                },
                staging=versions,
                settle=False,  # settled with the links, before ``current`` flips
            )
            written = (target,)
        switch_links(folder, "current", f"versions/{version}", FILES, written=written)
        self._index_folder(certificate, folder, (target, material, meta))
        return StoredCert(self.name, material.info, f"{certificate}/{version}", certificate, True, at)

    def _find(self, folder: Path, thumbprint: str) -> Path | None:
        versions = folder / "versions"
        if not versions.is_dir():
            return None
        for entry in versions.iterdir():
            if entry.name.endswith("-" + thumbprint[:8]) and not entry.name.startswith("."):
                try:
                    if pki.info_from_pem(_read(entry / "cert.pem")).thumbprint == thumbprint:
                        return entry
                except (OSError, ValueError):
                    continue
        return None

    def remove(self, ref: str) -> None:
        certificate, _, version = ref.partition("/")
        target = contained(self.path, f"{certificate}/versions/{version}", "store reference")
        folder = target.parent.parent
        link = folder / "current"
        if link.is_symlink() and os.path.basename(os.readlink(link)) == version:
            raise RuntimeError(f"refusing to remove {ref}: it is the live version")
        meta = json.loads(_read(target / "meta.json"))
        if not str(meta.get("managed_by", "")).startswith(MANAGED_PREFIX):
            raise RuntimeError(f"refusing to remove {ref}: certctl did not install it")
        discard(target)
        if self._index_writable():
            try:
                self._index.delete(f"{certificate}/versions/{version}")
            except OSError as exc:  # a left-over entry names a folder that is gone: it is never used
                log.warning("store.index.not_written", path=str(self.path / INDEX), reason=str(exc))
            self._index_folder(certificate, folder)

    def read(self, ref: str) -> Material | None:
        certificate, _, version = ref.partition("/")
        folder = contained(self.path, f"{certificate}/versions/{version}", "store reference")
        try:
            cert = _read(folder / "cert.pem")
            return Material(
                cert,
                _read(folder / "chain.pem"),
                _read(folder / "privkey.pem"),
                pki.info_from_pem(cert),
            )
        except (OSError, ValueError):
            return None


def _links_drift(folder: str) -> str | None:
    """What is wrong with the four names a consumer reads (each must be the link ``current/<name>``)."""
    for name in FILES:
        try:
            target = os.readlink(f"{folder}/{name}")
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError:
            return f"{name} is not a link to current/{name}"
        if target != f"current/{name}":
            return f"{name} points to {target}, not current/{name}"
    return None


def _version_drift(folder: str) -> str | None:
    """What is wrong with a version folder a consumer reads: a file gone, a key that is not the certificate's,
    or a chain that is not as install writes it."""
    missing = tuple(name for name in FILES if not os.path.isfile(f"{folder}/{name}"))
    return _drift(missing, _key_ok(folder), _chain_files_ok(folder))


def _drift(missing: tuple[str, ...], key_ok: bool, chain_ok: bool) -> str | None:
    if missing:
        return f"the live version lacks {', '.join(missing)}"
    if not key_ok:
        return "the live version's privkey.pem does not match its cert.pem"
    if not chain_ok:
        return (
            "the live version's fullchain.pem is not its cert.pem followed by its chain.pem, or chain.pem "
            "holds something other than certificates"
        )
    return None


def _chain_files_ok(folder: str, cert: bytes | None = None) -> bool:
    try:
        cert = _read(folder + "/cert.pem") if cert is None else cert
        return pki.chain_as_written(cert, _read(folder + "/chain.pem"), _read(folder + "/fullchain.pem"))
    except OSError:
        return False


def _key_ok(folder: str) -> bool:
    try:
        return pki.key_matches(_read(folder + "/cert.pem"), _read(folder + "/privkey.pem"))
    except (OSError, ValueError, TypeError):
        return False


def _optional_key(path: str) -> FileKey | None:
    try:
        return file_key(os.stat(path))
    except OSError:
        return None


def _read(path: str | Path) -> bytes:
    """A file of a store folder: a regular file of bounded size (a FIFO or a device planted there is refused
    instead of hanging the process or filling its memory; NotRegular is an OSError)."""
    return read_regular(path, MAX_FILE_BYTES)


def _index_trust(st: os.stat_result) -> str | None:
    """Why the store's index, with this status, must not be read or written (or None)."""
    if stat.S_ISREG(st.st_mode) and st.st_nlink != 1:  # a hard link to another file of ours: appended to
        return f"has {st.st_nlink} names (hard links)"
    return untrusted_file(st)


def _regular(path: str) -> bool:
    """Is ``path`` a regular file itself (not a link to one)?"""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _holds(folder: str, material: Material, meta: dict[str, object]) -> bool:
    """Does the version folder hold ``material`` and ``meta`` (every file install writes)?"""
    try:
        if (
            _read(folder + "/cert.pem") != material.cert_pem
            or _read(folder + "/privkey.pem") != material.key_pem
            or _read(folder + "/chain.pem") != material.chain_pem
            or _read(folder + "/fullchain.pem") != material.fullchain_pem
        ):
            return False
        return bool(json.loads(_read(folder + "/meta.json")) == meta)
    except (OSError, ValueError):
        return False


def _version_keys(folder: str) -> VersionKeys | None:
    try:
        cert_key = file_key(os.stat(folder + "/cert.pem"))
    except OSError:
        return None
    return (
        cert_key,
        _optional_key(folder + "/meta.json"),
        _optional_key(folder + "/privkey.pem"),
        _optional_key(folder + "/chain.pem"),
        _optional_key(folder + "/fullchain.pem"),
    )


# the identities of a version's cert.pem, meta.json, privkey.pem, chain.pem and fullchain.pem (the first
# five of a VersionRead)
VersionKeys = tuple[FileKey, FileKey | None, FileKey | None, FileKey | None, FileKey | None]
# (its file keys, certificate facts, metadata, key present and matching, chain and full chain as install writes)
VersionRead = tuple[
    FileKey,
    FileKey | None,
    FileKey | None,
    FileKey | None,
    FileKey | None,
    CertInfo,
    dict[str, object],
    bool,
    bool,
]
Cached = VersionRead
# (certificate facts, metadata, key present and matching, chain as written, files of FILES the version lacks)
Observed = tuple[CertInfo, dict[str, object], bool, bool, tuple[str, ...]]
# (store folder entry, live version, versions, what is wrong with its links)
Listed = tuple[str, str | None, list[str], str | None]
# what install recorded of a certificate's folder: (its identity, that of versions, live version, versions)
Folder = tuple[FileKey, FileKey, str, tuple[str, ...]]


def _probe_entry_in_full(entry: os.DirEntry[str]) -> tuple[str, Listed | None, str | None]:
    """What a store folder entry is ("managed", "dir", "file"), with a managed folder's listing, or a problem."""
    try:
        if entry.is_dir(follow_symlinks=False) and os.path.isdir(os.path.join(entry.path, "versions")):
            listed, problem = _list_managed(entry.path)
            return "managed", listed, problem
        return ("dir" if entry.is_dir() else "file"), None, None
    except OSError as exc:
        return "other", None, f"cannot read {entry.path}: {exc.strerror}"


def _list_managed(folder: str) -> tuple[Listed | None, str | None]:
    link = None
    with contextlib.suppress(OSError):
        link = os.readlink(folder + "/current")
    try:
        names = sorted(n for n in os.listdir(folder + "/versions") if not n.startswith("."))
    except OSError as exc:
        return None, f"cannot read {folder}/versions: {exc.strerror}"
    current = os.path.basename(link) if link and link == f"versions/{os.path.basename(link)}" else None
    return (folder, current if current in names else None, names, _links_drift(folder)), None


def _probe_version(
    folder: str, live: bool, indexed: FileKey | None = None
) -> tuple[VersionKeys | None, tuple[str, ...]]:
    """The identities of a version's files (``_version_keys``), and (live) which of FILES it lacks.
    ``indexed``: the version folder's identity when it was indexed; while it is unchanged the folder still
    holds the four files install wrote, and they are not looked up one by one."""
    keys = _version_keys(folder)
    if not live:
        return keys, ()
    if indexed is not None and unchanged(folder, indexed):
        return keys, ()
    return keys, tuple(name for name in FILES if not os.path.isfile(f"{folder}/{name}"))


def _read_versions(folders: Sequence[str]) -> list[VersionRead | str]:
    """Parse version folders: (file keys, certificate facts, metadata, key matching) or a problem sentence."""
    out: list[VersionRead | str] = []
    for folder in folders:
        cert_path, meta_path = folder + "/cert.pem", folder + "/meta.json"
        try:
            cert_key = file_key(os.stat(cert_path))
            cert = _read(cert_path)
            info = pki.info_from_pem(cert)
        except OSError as exc:
            out.append(f"cannot read {cert_path}: {exc.strerror or exc}")
            continue
        except ValueError as exc:
            out.append(f"{cert_path} is not a valid PEM certificate ({exc}); left alone")
            continue
        meta: dict[str, object] = {}
        meta_key: FileKey | None = None
        try:
            meta_key = file_key(os.stat(meta_path))
            loaded = json.loads(_read(meta_path))
            meta = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
        out.append(
            (
                cert_key,
                meta_key,
                _optional_key(folder + "/privkey.pem"),
                _optional_key(folder + "/chain.pem"),
                _optional_key(folder + "/fullchain.pem"),
                info,
                meta,
                _key_ok(folder),
                _chain_files_ok(folder, cert),
            )
        )
    return out


def _read_meta(folder: Path) -> dict[str, object]:
    try:
        loaded = json.loads(_read(folder / "meta.json"))
    except (OSError, ValueError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def _dt(value: object) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


def _encode(cached: Cached) -> dict[str, object]:
    c, m, k, ch, fc, info, meta, key_ok, chain_ok = cached
    return {
        "c": list(c),
        "m": list(m) if m else None,
        "k": list(k) if k else None,
        "ch": list(ch) if ch else None,
        "fc": list(fc) if fc else None,
        "i": info_to_json(info),
        "meta": meta,
        "ok": key_ok,
        "chain": chain_ok,
    }


def _decode_folder(entry: object) -> Folder | None:
    """A certificate folder's index entry, when it decodes to well-typed values (the live version among the
    versions, every name a plain folder name: no separator, no NUL, no leading dot); None otherwise."""
    if not isinstance(entry, dict):
        return None
    folder, versions = as_file_key(entry.get("d")), as_file_key(entry.get("v"))
    current, names = entry.get("cur"), entry.get("names")
    if (
        folder is None
        or versions is None
        or not isinstance(names, list)
        or not all(
            isinstance(n, str) and n and "/" not in n and "\x00" not in n and not n.startswith(".")
            for n in names
        )
        or current not in names
    ):
        return None
    return folder, versions, str(current), tuple(names)


def _decode(entry: object) -> Cached | None:
    """An entry of the cache or the index, when it decodes to well-typed values; None otherwise."""
    if (
        not isinstance(entry, dict)
        or not isinstance(entry.get("meta"), dict)
        or not isinstance(entry.get("ok"), bool)
        or not isinstance(entry.get("chain"), bool)  # an entry from before chains were checked: read again
    ):
        return None
    cert_key = as_file_key(entry.get("c"))
    if cert_key is None:
        return None
    meta, key, chain, fullchain = entry.get("m"), entry.get("k"), entry.get("ch"), entry.get("fc")
    meta_key, key_key = as_file_key(meta), as_file_key(key)  # one line each: this runs for every version
    chain_key, fullchain_key = as_file_key(chain), as_file_key(fullchain)
    if (
        (meta_key is None and meta is not None)
        or (key_key is None and key is not None)
        or (chain_key is None and chain is not None)
        or (fullchain_key is None and fullchain is not None)
    ):
        return None
    try:
        # pydantic's validator (20x faster than the generic codec): from JSON, every text field is a str and
        # sans a tuple of them, or it raises; only a time without a zone gets through, and is refused here
        info = info_from_json(entry["i"])
    except Exception:  # noqa: BLE001 - an entry that does not decode is only a miss
        return None
    if info.not_before.tzinfo and info.not_after.tzinfo:
        return (
            cert_key,
            meta_key,
            key_key,
            chain_key,
            fullchain_key,
            info,
            entry["meta"],
            entry["ok"],
            entry["chain"],
        )
    return None
