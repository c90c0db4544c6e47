"""Store ``pemDirectory``: one folder per certificate, every version kept, the live one switched atomically.

  <path>/<certificate>/versions/<YYYYmmddTHHMMSSZ>-<THUMB8>/cert.pem chain.pem fullchain.pem privkey.pem meta.json
  <path>/<certificate>/current -> versions/<id>          (one symlink: flipping it switches all four files at once)
  <path>/<certificate>/{cert,chain,fullchain,privkey}.pem -> current/<file>

A web server reads ``<path>/<certificate>/fullchain.pem`` and ``privkey.pem`` and never sees a
certificate paired with the wrong key: the four links are made before ``current`` (on a first install
they dangle until then), so flipping ``current`` is the one step that switches what a consumer reads.
Observe checks everything a consumer reads (the four links, ``current``, the live version's files and
that its key matches its certificate) and reports a difference as drift, which ``install`` repairs.
Earlier versions stay until cleanup removes them.
Anything else found in the folder (PEM files of other tools) is observed as unmanaged and never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Collection, Sequence
from datetime import UTC, datetime
from pathlib import Path

from reconciler.core.codec import decode
from reconciler.core.model import MANAGED_PREFIX, CertInfo, StoredCert, StoreState, to_plain
from reconciler.ports import Material
from reconciler.state.cache import FileKey, JsonCache, as_file_key, file_key
from reconciler.support import pki
from reconciler.support.fs import (
    contained,
    discard,
    safe_folder,
    switch_links,
    write_folder,
)
from reconciler.support.parallel import map_batch

FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem")


class PemDirectoryStore:
    def __init__(self, name: str, path: Path | str, cache_dir: Path | None = None) -> None:
        self.name = name
        self.path = Path(path)
        self._cache = JsonCache(cache_dir, JsonCache.name_for("pemdir", str(self.path.resolve())))
        self._seen: dict[str, Cached] = {}
        self._known: dict[str, Cached] = {}

    # --- observe -----------------------------------------------------------------------------------

    def observe(self) -> StoreState:
        return self._observed(None)

    def observe_for(self, certificates: Collection[str]) -> StoreState:
        """Only the folders of ``certificates`` (a pass woken for them); other tools' files are not read."""
        return self._observed(frozenset(certificates))

    def _observed(self, only: frozenset[str] | None) -> StoreState:
        raw = self._cache.load() if self._cache.path else {}
        others: dict[str, object] = {}  # cache entries of folders not looked at: kept as they are, undecoded
        if only is not None:
            prefix = str(self.path) + "/"
            others = {f: v for f, v in raw.items() if f.removeprefix(prefix).split("/", 1)[0] not in only}
            raw = {f: v for f, v in raw.items() if f not in others}
        self._known = _from_cache(raw)
        self._seen = {}
        state = self._observe(only)
        if self._cache.path and self._seen != self._known:
            self._cache.save(
                {
                    **others,
                    **{
                        folder: {
                            "c": list(c),
                            "m": list(m) if m else None,
                            "k": list(k) if k else None,
                            "i": to_plain(info),
                            "meta": meta,
                            "ok": key_ok,
                        }
                        for folder, (c, m, k, info, meta, key_ok) in self._seen.items()
                    },
                }
            )
        return state

    def _observe(self, only: frozenset[str] | None) -> StoreState:
        certs: list[StoredCert] = []
        problems: list[str] = []
        try:
            entries = sorted(
                (e for e in os.scandir(self.path) if only is None or e.name in only), key=lambda e: e.name
            )
        except FileNotFoundError:
            return StoreState(self.name)  # created on first install
        except OSError as exc:
            return StoreState(
                self.name,
                problems=(f"cannot read store folder {self.path}: {exc.strerror}",),
                reachable=False,
            )
        managed: list[
            tuple[str, str | None, list[str], str | None]
        ] = []  # (folder, live version, versions, drift)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False) and os.path.isdir(
                    os.path.join(entry.path, "versions")
                ):
                    listed = self._list_managed(entry.path, problems)
                    if listed is not None:
                        managed.append(listed)
                elif entry.is_dir():
                    certs.extend(self._observe_foreign_dir(Path(entry.path), problems))
                elif entry.name.endswith((".pem", ".crt", ".cer")):
                    found = self._read_foreign(Path(entry.path), problems)
                    if found:
                        certs.append(found)
            except OSError as exc:
                problems.append(f"cannot read {entry.path}: {exc.strerror}")
        read = self._read_all(
            [f"{folder}/versions/{v}" for folder, _, versions, _ in managed for v in versions], problems
        )
        for folder, current, versions, drift in managed:
            certs.extend(self._stored(folder, current, versions, read, drift))
        return StoreState(self.name, tuple(certs), tuple(problems))

    @staticmethod
    def _list_managed(
        folder: str, problems: list[str]
    ) -> tuple[str, str | None, list[str], str | None] | None:
        link = None
        with contextlib.suppress(OSError):
            link = os.readlink(folder + "/current")
        try:
            names = sorted(n for n in os.listdir(folder + "/versions") if not n.startswith("."))
        except OSError as exc:
            problems.append(f"cannot read {folder}/versions: {exc.strerror}")
            return None
        current = os.path.basename(link) if link and link == f"versions/{os.path.basename(link)}" else None
        return folder, current if current in names else None, names, _links_drift(folder)

    def _read_all(
        self, folders: list[str], problems: list[str]
    ) -> dict[str, tuple[CertInfo, dict[str, object], bool]]:
        """Every version's certificate facts, metadata and whether its key is there; unchanged versions
        come from the cache, the others are parsed (in worker processes when there are thousands)."""
        out: dict[str, tuple[CertInfo, dict[str, object], bool]] = {}
        misses: list[str] = []
        for folder in folders:
            keys = _version_keys(folder)
            known = self._known.get(folder)
            if keys is not None and known is not None and known[:3] == keys:
                self._seen[folder] = known
                out[folder] = (known[3], known[4], known[5])
            else:
                misses.append(folder)
        for folder, result in zip(misses, map_batch(_read_versions, misses), strict=True):
            if isinstance(result, str):
                problems.append(result)
                continue
            self._seen[folder] = result
            out[folder] = (result[3], result[4], result[5])
        return out

    def _stored(
        self,
        folder: str,
        current: str | None,
        versions: list[str],
        read: dict[str, tuple[CertInfo, dict[str, object], bool]],
        drift: str | None,
    ) -> list[StoredCert]:
        found = [(v, *read[f"{folder}/versions/{v}"]) for v in versions if f"{folder}/versions/{v}" in read]
        found.sort(key=lambda vimk: (str(vimk[2].get("installed_at", "")), vimk[0]))
        out: list[StoredCert] = []
        for i, (version, info, meta, key_ok) in enumerate(found):
            owner = str(meta.get("managed_by", ""))
            superseded = found[i + 1][2].get("installed_at") if i + 1 < len(found) else None
            live = version == current
            version_drift = _version_drift(f"{folder}/versions/{version}", key_ok) if live else None
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
            data = path.read_bytes()
        except OSError as exc:
            problems.append(f"cannot read {path}: {exc.strerror}")
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
        safe_folder(self.path, 0o700, "store folder")  # it holds private keys
        safe_folder(folder, 0o700, "store folder")
        versions = folder / "versions"
        version = f"{at.astimezone(UTC).strftime('%Y%m%dT%H%M%SZ')}-{material.info.thumbprint[:8]}"
        target = versions / version
        existing = self._find(folder, material.info.thumbprint)
        if existing is not None and _version_drift(str(existing), _key_ok(str(existing))) is None:
            version, target = existing.name, existing
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
            )
        switch_links(folder, "current", f"versions/{version}", FILES)
        return StoredCert(self.name, material.info, f"{certificate}/{version}", certificate, True, at)

    def _find(self, folder: Path, thumbprint: str) -> Path | None:
        versions = folder / "versions"
        if not versions.is_dir():
            return None
        for entry in versions.iterdir():
            if entry.name.endswith("-" + thumbprint[:8]) and not entry.name.startswith("."):
                try:
                    if pki.info_from_pem((entry / "cert.pem").read_bytes()).thumbprint == thumbprint:
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
        meta = json.loads((target / "meta.json").read_text())
        if not str(meta.get("managed_by", "")).startswith(MANAGED_PREFIX):
            raise RuntimeError(f"refusing to remove {ref}: certctl did not install it")
        discard(target)

    def read(self, ref: str) -> Material | None:
        certificate, _, version = ref.partition("/")
        folder = contained(self.path, f"{certificate}/versions/{version}", "store reference")
        try:
            cert = (folder / "cert.pem").read_bytes()
            return Material(
                cert,
                (folder / "chain.pem").read_bytes(),
                (folder / "privkey.pem").read_bytes(),
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


def _version_drift(folder: str, key_ok: bool) -> str | None:
    """What is wrong with a version folder a consumer reads: a file gone, or a key that is not the certificate's."""
    missing = [name for name in FILES if not os.path.isfile(f"{folder}/{name}")]
    if missing:
        return f"the live version lacks {', '.join(missing)}"
    if not key_ok:
        return "the live version's privkey.pem does not match its cert.pem"
    return None


def _key_ok(folder: str) -> bool:
    try:
        with open(folder + "/cert.pem", "rb") as cert, open(folder + "/privkey.pem", "rb") as key:
            return pki.key_matches(cert.read(), key.read())
    except (OSError, ValueError, TypeError):
        return False


def _optional_key(path: str) -> FileKey | None:
    try:
        return file_key(os.stat(path))
    except OSError:
        return None


def _version_keys(folder: str) -> tuple[FileKey, FileKey | None, FileKey | None] | None:
    try:
        cert_key = file_key(os.stat(folder + "/cert.pem"))
    except OSError:
        return None
    return cert_key, _optional_key(folder + "/meta.json"), _optional_key(folder + "/privkey.pem")


# (cert.pem, meta.json and privkey.pem file keys, certificate facts, metadata, key present and matching)
VersionRead = tuple[FileKey, FileKey | None, FileKey | None, CertInfo, dict[str, object], bool]
Cached = VersionRead


def _read_versions(folders: Sequence[str]) -> list[VersionRead | str]:
    """Parse version folders: (file keys, certificate facts, metadata, key matching) or a problem sentence."""
    out: list[VersionRead | str] = []
    for folder in folders:
        cert_path, meta_path = folder + "/cert.pem", folder + "/meta.json"
        try:
            cert_key = file_key(os.stat(cert_path))
            with open(cert_path, "rb") as fh:
                info = pki.info_from_pem(fh.read())
        except OSError as exc:
            out.append(f"cannot read {cert_path}: {exc.strerror}")
            continue
        except ValueError as exc:
            out.append(f"{cert_path} is not a valid PEM certificate ({exc}); left alone")
            continue
        meta: dict[str, object] = {}
        meta_key: FileKey | None = None
        try:
            meta_key = file_key(os.stat(meta_path))
            with open(meta_path, "rb") as fh:
                loaded = json.loads(fh.read())
            meta = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            pass
        out.append((cert_key, meta_key, _optional_key(folder + "/privkey.pem"), info, meta, _key_ok(folder)))
    return out


def _dt(value: object) -> datetime | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None


_INFO_TEXT = ("thumbprint", "sha256", "subject", "key_algorithm", "issuer", "serial")


def _from_cache(entries: dict[str, object]) -> dict[str, Cached]:
    """The cache's entries that decode to well-typed values; anything else is dropped (and re-read from disk)."""
    out: dict[str, Cached] = {}
    for folder, entry in entries.items():
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("meta"), dict)
            or not isinstance(entry.get("ok"), bool)
        ):
            continue
        cert_key, meta_key, key_key = (
            as_file_key(entry.get("c")),
            as_file_key(entry.get("m")),
            as_file_key(entry.get("k")),
        )
        if (
            cert_key is None
            or (meta_key is None and entry.get("m") is not None)
            or (key_key is None and entry.get("k") is not None)
        ):
            continue
        try:
            info = decode(CertInfo, entry["i"])
        except Exception:  # noqa: BLE001 - an entry that does not decode is only a cache miss
            continue
        if (
            all(isinstance(getattr(info, f), str) for f in _INFO_TEXT)
            and isinstance(info.sans, tuple)
            and all(isinstance(n, str) for n in info.sans)
            and info.not_before.tzinfo
            and info.not_after.tzinfo
        ):
            out[folder] = (cert_key, meta_key, key_key, info, entry["meta"], entry["ok"])
    return out
