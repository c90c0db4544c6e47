"""The pemDirectory store on real folders: versions, atomic switch, corrupt and unreadable content."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from reconciler.adapters.issuers.localca import LocalCAIssuer
from reconciler.adapters.stores import pemdir
from reconciler.adapters.stores.pemdir import PemDirectoryStore
from reconciler.core.spec import LocalCA
from reconciler.ports import IssueRequest, Material
from reconciler.state import cache
from reconciler.support import pki

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def issuer(tmp_path: Path) -> LocalCAIssuer:
    return LocalCAIssuer("local", LocalCA(), tmp_path / "state")


def issue(issuer: LocalCAIssuer, alg: str = "ecdsa-p256"):
    return issuer.issue(IssueRequest("web", ("www.example.com", "example.com"), alg))


def test_install_keeps_earlier_versions_and_switches_atomically(
    tmp_path: Path, issuer: LocalCAIssuer
) -> None:
    store = PemDirectoryStore("pem", tmp_path / "pem")
    first, second = issue(issuer), issue(issuer)
    store.install("web", first, datetime(2026, 1, 1, tzinfo=UTC))
    store.install("web", second, datetime(2026, 2, 1, tzinfo=UTC))
    state = store.observe()
    by_thumb = {c.info.thumbprint: c for c in state.certs}
    assert by_thumb[second.info.thumbprint].current and not by_thumb[first.info.thumbprint].current
    assert by_thumb[first.info.thumbprint].superseded_at == datetime(2026, 2, 1, tzinfo=UTC)
    assert all(c.managed_by == "web" and c.has_key for c in state.certs)
    live = tmp_path / "pem" / "web"
    assert (live / "cert.pem").read_bytes() == second.cert_pem
    assert (live / "privkey.pem").read_bytes() == second.key_pem
    assert os.readlink(live / "privkey.pem") == "current/privkey.pem"
    # installing an existing version again only switches back to it
    store.install("web", first, datetime(2026, 3, 1, tzinfo=UTC))
    assert (live / "cert.pem").read_bytes() == first.cert_pem
    assert len(list((live / "versions").iterdir())) == 2
    with pytest.raises(RuntimeError, match="live version"):
        store.remove(by_thumb[first.info.thumbprint].ref)
    store.remove(by_thumb[second.info.thumbprint].ref)
    assert [c.info.thumbprint for c in store.observe().certs] == [first.info.thumbprint]


def test_observes_every_certificate_with_its_facts(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    store = PemDirectoryStore("pem", tmp_path / "pem")
    m = issue(issuer, "rsa-2048")
    store.install("web", m, datetime.now(UTC))
    foreign = tmp_path / "pem" / "other-tool.pem"
    foreign.write_bytes(issue(issuer).cert_pem)
    state = store.observe()
    managed = next(c for c in state.certs if c.managed_by == "web")
    assert (
        managed.info.sans == ("www.example.com", "example.com") and managed.info.subject == "www.example.com"
    )
    assert managed.info.key_algorithm == "rsa-2048" and len(managed.info.thumbprint) == 40
    assert len(managed.info.sha256) == 64 and "certctl local CA local" in managed.info.issuer
    unmanaged = next(c for c in state.certs if c.ref == "other-tool.pem")
    assert unmanaged.managed_by is None


def test_corrupt_pem_is_reported_and_never_crashes(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    store = PemDirectoryStore("pem", tmp_path / "pem")
    store.install("web", issue(issuer), datetime.now(UTC))
    (tmp_path / "pem" / "broken.pem").write_text(
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    )
    version = next((tmp_path / "pem" / "web" / "versions").iterdir())
    (version / "cert.pem").write_text("garbage")
    state = store.observe()
    assert any("broken.pem is not a valid PEM certificate" in p for p in state.problems)
    assert any("cert.pem is not a valid PEM certificate" in p for p in state.problems)


def test_a_store_path_that_is_a_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "pem").write_text("oops")
    state = PemDirectoryStore("pem", tmp_path / "pem").observe()
    assert not state.reachable and "cannot read store folder" in state.problems[0]


def test_unreadable_store_folder_is_reported(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    """Root reads everything, so observe as an unprivileged user, as a service account would."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed to observe as an unprivileged user")
    pem = tmp_path / "pem"
    PemDirectoryStore("pem", pem).install("web", issue(issuer), datetime.now(UTC))
    tmp_path.chmod(0o755)
    pem.chmod(0o700)
    code = (
        "from reconciler.adapters.stores.pemdir import PemDirectoryStore as S; import sys;"
        f"s = S('pem', {str(pem)!r}).observe(); print(s.reachable, s.problems)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("False") and "Permission denied" in result.stdout


def test_the_observation_cache_notices_changed_files(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    cache = tmp_path / "cache"
    store = PemDirectoryStore("pem", tmp_path / "pem", cache)
    m = issue(issuer)
    store.install("web", m, datetime.now(UTC))
    (tmp_path / "pem" / pemdir.INDEX).unlink()  # a version installed by an earlier release: not indexed
    first = PemDirectoryStore("pem", tmp_path / "pem", cache).observe()
    assert list(cache.iterdir()), "the first observation fills the cache"
    again = PemDirectoryStore("pem", tmp_path / "pem", cache).observe()
    assert again == first
    version = next((tmp_path / "pem" / "web" / "versions").iterdir())
    (version / "privkey.pem").unlink()
    assert not PemDirectoryStore("pem", tmp_path / "pem", cache).observe().certs[0].has_key
    other = issue(issuer)
    (version / "cert.pem").write_bytes(other.cert_pem)  # replaced by hand: must be read again
    assert (
        PemDirectoryStore("pem", tmp_path / "pem", cache).observe().certs[0].info.thumbprint
        == other.info.thumbprint
    )
    (version / "cert.pem").write_text("garbage")
    state = PemDirectoryStore("pem", tmp_path / "pem", cache).observe()
    assert state.certs == () and "not a valid PEM certificate" in state.problems[0]


def test_observing_some_certificates_reads_only_their_folders_and_keeps_the_cache_of_the_others(
    tmp_path: Path, issuer: LocalCAIssuer
) -> None:
    cache = tmp_path / "cache"
    store = PemDirectoryStore("pem", tmp_path / "pem", cache)
    web, api = issue(issuer), issuer.issue(IssueRequest("api", ("api.example.com",), "ecdsa-p256"))
    store.install("web", web, datetime.now(UTC))
    store.install("api", api, datetime.now(UTC))
    (tmp_path / "pem" / pemdir.INDEX).unlink()  # versions installed by an earlier release: not indexed
    (tmp_path / "pem" / "other.pem").write_bytes(web.cert_pem)  # another tool's file
    full = PemDirectoryStore("pem", tmp_path / "pem", cache).observe()
    assert {c.managed_by for c in full.certs} == {"web", "api", None}
    cached = sorted(p.read_bytes() for p in cache.iterdir())

    only = PemDirectoryStore("pem", tmp_path / "pem", cache).observe_for({"web"})
    assert [(c.managed_by, c.info.thumbprint) for c in only.certs] == [("web", web.info.thumbprint)]
    assert sorted(p.read_bytes() for p in cache.iterdir()) == cached  # api's entry is still there
    assert PemDirectoryStore("pem", tmp_path / "pem", cache).observe() == full


# --- the store's index --------------------------------------------------------------------------------


def _settle_index(pem: Path) -> Path:
    """Give the index a modification time after every file, folder and link it describes (as a later clock
    tick would)."""
    index = pem / pemdir.INDEX
    latest = max(os.lstat(p).st_ctime_ns for p in [pem, *pem.rglob("*")] if p != index)
    os.utime(index, ns=(latest + 10_000_000, latest + 10_000_000))
    return index


@pytest.fixture
def full_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every version folder observe reads in full (rather than taking from the index or a cache)."""
    read: list[str] = []
    real = pemdir._read_versions

    def recording(folders):
        read.extend(os.path.basename(f) for f in folders)
        return real(folders)

    monkeypatch.setattr(pemdir, "_read_versions", recording)
    return read


def _installed(tmp_path: Path, issuer: LocalCAIssuer) -> tuple[Path, Path]:
    pem = tmp_path / "pem"
    store = PemDirectoryStore("pem", pem)
    store.install("web", issue(issuer), datetime(2026, 1, 1, tzinfo=UTC))
    store.install("web", issue(issuer), datetime(2026, 2, 1, tzinfo=UTC))
    return pem, (pem / "web" / "current").resolve()


def test_the_index_spares_reading_unchanged_versions(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str]
) -> None:
    pem, _ = _installed(tmp_path, issuer)
    index = _settle_index(pem)
    full_reads.clear()  # install reads what it wrote, to index it
    assert os.stat(index).st_mode & 0o777 == 0o600
    with_index = PemDirectoryStore("pem", pem).observe()
    assert full_reads == [] and len(with_index.certs) == 2
    index.unlink()
    assert PemDirectoryStore("pem", pem).observe() == with_index  # the full read finds the same
    assert len(full_reads) == 2


@pytest.fixture
def full_probes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every certificate folder observe looks through link by link (rather than as the index recorded it)."""
    probed: list[str] = []
    real = pemdir._probe_entry_in_full

    def recording(entry):
        probed.append(entry.name)
        return real(entry)

    monkeypatch.setattr(pemdir, "_probe_entry_in_full", recording)
    return probed


def test_an_unchanged_certificate_folder_is_taken_from_the_index_and_finds_the_same(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str], full_probes: list[str]
) -> None:
    pem, live = _installed(tmp_path, issuer)
    _settle_index(pem)
    full_reads.clear()
    with_index = PemDirectoryStore("pem", pem).observe()
    assert full_probes == [] and full_reads == []
    assert next(c for c in with_index.certs if c.current).ref == f"web/{live.name}"
    (pem / pemdir.INDEX).unlink()
    assert PemDirectoryStore("pem", pem).observe() == with_index  # the full read finds the same
    assert full_probes == ["web"]


@pytest.mark.parametrize("change", ["link", "current", "version-added", "file-gone"])
def test_any_change_in_a_certificate_folder_is_looked_at_in_full(
    tmp_path: Path, issuer: LocalCAIssuer, full_probes: list[str], change: str
) -> None:
    pem, live = _installed(tmp_path, issuer)
    _settle_index(pem)
    folder = pem / "web"
    older = next(p for p in (folder / "versions").iterdir() if p != live)
    if change == "link":  # a consumer's name pointed straight at a file
        os.remove(folder / "privkey.pem")
        os.symlink(live / "privkey.pem", folder / "privkey.pem")
    elif change == "current":  # rolled back by hand
        os.remove(folder / "current")
        os.symlink(f"versions/{older.name}", folder / "current")
    elif change == "version-added":
        shutil.copytree(older, folder / "versions" / "20990101T000000Z-ABCDEF01")
    else:
        (live / "fullchain.pem").unlink()
    observed = PemDirectoryStore("pem", pem).observe()
    (pem / pemdir.INDEX).unlink()
    assert observed == PemDirectoryStore("pem", pem).observe()  # what a full look finds, index or not
    current = next(c for c in observed.certs if c.current)
    if change == "link":
        assert current.drift is not None and current.drift.startswith("privkey.pem points to")
        assert full_probes == ["web", "web"]
    elif change == "current":
        assert current.ref == f"web/{older.name}" and current.drift is None
    elif change == "version-added":
        assert len(observed.certs) == 3
    else:
        assert current.drift == "the live version lacks fullchain.pem"


@pytest.mark.parametrize("bad", ["../escape", "a\x00b", ".hidden", "", 5, None])
def test_a_folder_entry_naming_anything_but_plain_versions_is_refused(bad: object) -> None:
    entry = {"d": [1, 2, 3, 4], "v": [1, 2, 3, 4], "cur": "v1", "names": ["v1"]}
    assert pemdir._decode_folder(entry) is not None  # well formed
    assert pemdir._decode_folder({**entry, "names": ["v1", bad]}) is None
    assert pemdir._decode_folder({**entry, "names": "v1"}) is None  # not a list
    assert pemdir._decode_folder({**entry, "cur": "v2"}) is None  # the live version not among them


def test_versions_the_index_describes_are_not_kept_again_in_the_cache(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str]
) -> None:
    pem, live = _installed(tmp_path, issuer)
    cache = tmp_path / "cache"
    (pem / pemdir.INDEX).unlink()
    truth = PemDirectoryStore("pem", pem, cache).observe()  # nothing indexed: both versions read, cached
    cached = json.loads(next(cache.iterdir()).read_text())["entries"]
    assert len(cached) == 2 and len(full_reads) == 2
    store = PemDirectoryStore("pem", pem, cache)
    material = store.read(f"web/{live.name}")
    assert material is not None
    store.install("web", material, datetime(2026, 2, 1, tzinfo=UTC))  # re-indexed
    _settle_index(pem)
    full_reads.clear()
    assert PemDirectoryStore("pem", pem, cache).observe() == truth
    assert full_reads == []
    cached = json.loads(next(cache.iterdir()).read_text())["entries"]
    assert list(cached) == [str(next(p for p in (pem / "web" / "versions").iterdir() if p != live))]


def test_an_entry_written_in_the_same_clock_tick_as_its_files_is_read_again(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str]
) -> None:
    pem, live = _installed(tmp_path, issuer)
    index = _settle_index(pem)
    ctime = os.stat(live / "cert.pem").st_ctime_ns
    os.utime(index, ns=(ctime, ctime))  # a change within the tick of the index's last write: racily clean
    full_reads.clear()
    PemDirectoryStore("pem", pem).observe()
    assert live.name in full_reads


def test_a_stale_index_is_detected_by_file_identity(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str]
) -> None:
    pem, live = _installed(tmp_path, issuer)
    _settle_index(pem)
    other = issue(issuer)
    (live / "cert.pem").write_bytes(other.cert_pem)  # another certificate written in place by hand
    full_reads.clear()
    state = PemDirectoryStore("pem", pem).observe()
    assert full_reads == [live.name]
    current = next(c for c in state.certs if c.current)
    assert current.info.thumbprint == other.info.thumbprint
    assert current.drift == "the live version's privkey.pem does not match its cert.pem"


def test_drift_is_still_seen_with_an_index(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    pem, live = _installed(tmp_path, issuer)
    _settle_index(pem)
    (live / "chain.pem").unlink()
    assert next(c for c in PemDirectoryStore("pem", pem).observe().certs if c.current).drift == (
        "the live version lacks chain.pem"
    )
    os.remove(pem / "web" / "fullchain.pem")
    os.symlink(live / "fullchain.pem", pem / "web" / "fullchain.pem")
    drift = next(c for c in PemDirectoryStore("pem", pem).observe().certs if c.current).drift
    assert drift is not None and drift.startswith("fullchain.pem points to")
    (live / "privkey.pem").unlink()
    current = next(c for c in PemDirectoryStore("pem", pem).observe().certs if c.current)
    assert not current.has_key


CHAIN_DRIFT = (
    "the live version's fullchain.pem is not its cert.pem followed by its chain.pem, or chain.pem holds "
    "something other than certificates"
)


@pytest.mark.parametrize(
    "edit",
    [
        "fullchain truncated",
        "fullchain of another certificate",
        "chain emptied",
        "a key appended to both",
        "a broken certificate in both",
    ],
)
def test_a_chain_edited_in_place_is_drift_with_or_without_the_index_and_install_repairs_it(
    tmp_path: Path, issuer: LocalCAIssuer, edit: str
) -> None:
    """What a web server reads most, fullchain.pem, edited in place (the same file, new contents: `cp`,
    `cat >`, a configuration tool): seen by the index's fast path as by a full read, and repaired."""
    pem, live = _installed(tmp_path, issuer)
    _settle_index(pem)
    cert, chain, full = (
        (live / "cert.pem").read_bytes(),
        (live / "chain.pem").read_bytes(),
        (live / "fullchain.pem").read_bytes(),
    )
    other = issue(issuer)
    broken = b"-----BEGIN CERTIFICATE-----\nMIIBroken\n-----END CERTIFICATE-----\n"
    edits = {
        "fullchain truncated": {"fullchain.pem": full[: len(full) // 2]},
        "fullchain of another certificate": {"fullchain.pem": other.fullchain_pem},
        "chain emptied": {"chain.pem": b""},
        "a key appended to both": {"chain.pem": chain + other.key_pem, "fullchain.pem": full + other.key_pem},
        "a broken certificate in both": {"chain.pem": chain + broken, "fullchain.pem": full + broken},
    }[edit]
    for name, data in edits.items():
        with open(live / name, "r+b") as fh:  # in place: the same inode, so the folders keep their identity
            fh.write(data)
            fh.truncate()
    assert _live(PemDirectoryStore("pem", pem).observe()).drift == CHAIN_DRIFT
    assert _live(_without_index(pem)).drift == CHAIN_DRIFT
    store = PemDirectoryStore("pem", pem)
    key = (live / "privkey.pem").read_bytes()
    # what the plan does for drift: install the same version again, from the vault's copy of the material
    store.install(
        "web", Material(cert, chain, key, pki.info_from_pem(cert)), datetime(2026, 3, 1, tzinfo=UTC)
    )
    assert os.path.realpath(pem / "web" / "current") == str(live), "the same version, written afresh"
    assert (pem / "web" / "fullchain.pem").read_bytes() == cert + chain
    assert _live(PemDirectoryStore("pem", pem).observe()).drift is None
    assert _live(_without_index(pem)).drift is None


def test_a_chain_installed_damaged_is_recorded_as_drift_and_the_index_agrees_with_a_full_read(
    tmp_path: Path, issuer: LocalCAIssuer
) -> None:
    """The store writes what it is given; what the index records of a chain holding a key must be what a
    full read finds (the executor never installs such a chain: see test_crash_regressions)."""
    pem = tmp_path / "pem"
    good = issue(issuer)
    bad = Material(good.cert_pem, good.chain_pem + good.key_pem, good.key_pem, good.info)
    PemDirectoryStore("pem", pem).install("web", bad, datetime(2026, 1, 1, tzinfo=UTC))
    _settle_index(pem)
    assert _live(PemDirectoryStore("pem", pem).observe()).drift == CHAIN_DRIFT
    assert _live(_without_index(pem)).drift == CHAIN_DRIFT


def test_an_index_entry_whose_chain_identity_is_not_older_than_the_index_is_read_in_full(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str]
) -> None:
    """The second guard ("racily clean") covers the chain files too: an identity recorded in the same
    step of the clock as the index's last write may hide a later change."""
    pem, live = _installed(tmp_path, issuer)
    os.chmod(live / "chain.pem", 0o640)  # a new change time, recorded below as if install had seen it
    chain = os.stat(live / "chain.pem")
    index = pem / pemdir.INDEX
    lines = []
    for line in index.read_text().splitlines():
        entry = json.loads(line)
        if isinstance(entry.get("v"), dict) and "ch" in entry["v"] and entry["k"].endswith(live.name):
            entry["v"]["ch"] = list(cache.file_key(chain))
        lines.append(json.dumps(entry))
    index.write_text("\n".join(lines) + "\n")
    os.utime(index, ns=(chain.st_ctime_ns, chain.st_ctime_ns))  # written in the chain's clock step
    PemDirectoryStore("pem", pem).observe()
    assert live.name in full_reads


def test_a_chain_changed_while_a_version_is_read_is_not_cached(
    tmp_path: Path, issuer: LocalCAIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pem, live = _installed(tmp_path, issuer)
    (pem / pemdir.INDEX).unlink()  # every version is read in full, and cached if nothing moved meanwhile
    real = pemdir._read_versions

    def touching(folders):
        os.chmod(live / "chain.pem", 0o640)  # changed after the observation began
        return real(folders)

    monkeypatch.setattr(pemdir, "_read_versions", touching)
    store = PemDirectoryStore("pem", pem, cache_dir=tmp_path / "cache")
    store.observe()
    cached = store._cache.load()
    assert cached, "the other version is cached"
    assert str(live) not in cached


def test_an_index_entry_from_before_chains_were_checked_is_read_in_full(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str]
) -> None:
    pem, live = _installed(tmp_path, issuer)
    index = pem / pemdir.INDEX
    lines = []
    for line in index.read_text().splitlines():
        entry = json.loads(line)
        if isinstance(entry.get("v"), dict) and "chain" in entry["v"]:
            for name in ("ch", "fc", "chain"):
                entry["v"].pop(name)
        lines.append(json.dumps(entry))
    index.write_text("\n".join(lines) + "\n")
    _settle_index(pem)
    assert _live(PemDirectoryStore("pem", pem).observe()).drift is None
    assert live.name in full_reads, "an entry that says nothing of the chain files is not trusted"


@pytest.mark.parametrize(
    "damage",
    [
        "garbage",
        "bad-file-key",
        "bad-info",
        "bad-ok",
        "time-without-zone",
        "sans-not-a-list",
        "forged-identity",
        "forged-folder",
        "group-writable",
        "symlink",
    ],
)
def test_a_damaged_or_untrusted_index_is_ignored(
    tmp_path: Path, issuer: LocalCAIssuer, full_reads: list[str], damage: str
) -> None:
    pem, live = _installed(tmp_path, issuer)
    index = _settle_index(pem)
    truth = PemDirectoryStore("pem", pem).observe()
    lines = [json.loads(line) for line in index.read_text().splitlines()]
    entry = next(e for e in reversed(lines) if "/" in e["k"])  # the live version's entry
    key = entry["k"]
    if damage == "garbage":
        index.write_bytes(b'\x00\xff not json\n{"k": 1}\n[1, 2]\n')
    elif damage in ("bad-file-key", "bad-info", "bad-ok", "time-without-zone", "sans-not-a-list"):
        info = entry["v"]["i"]
        shapes: dict[str, dict[str, object]] = {
            "bad-file-key": {"c": "x"},
            "bad-info": {"i": {**info, "thumbprint": 5}},
            "bad-ok": {"ok": "yes"},
            "time-without-zone": {"i": {**info, "not_after": "2099-01-01T00:00:00"}},
            "sans-not-a-list": {"i": {**info, "sans": "www.example.com"}},
        }
        index.write_text(json.dumps({"k": key, "v": {**entry["v"], **shapes[damage]}}) + "\n")
    elif damage == "forged-identity":  # claims facts for files that are not those it describes
        forged = {**entry["v"], "c": [1, 2, 3, 4], "ok": True}
        index.write_text(json.dumps({"k": key, "v": forged}) + "\n")
    elif damage == "forged-folder":  # claims an older live version for a folder it does not describe
        folder = json.loads(index.read_text().splitlines()[-1])
        assert folder["k"] == "web"
        forged = {**folder["v"], "d": [1, 2, 3, 4], "cur": folder["v"]["names"][0]}
        wrong = {**folder["v"], "cur": "20990101T000000Z-ABCDEF01"}  # not among its versions
        index.write_text(
            json.dumps({"k": "web", "v": forged}) + "\n" + json.dumps({"k": "api", "v": wrong}) + "\n"
        )
    elif damage == "group-writable":
        os.chmod(index, 0o620)
    else:
        target = tmp_path / "elsewhere.jsonl"
        shutil.move(index, target)
        os.symlink(target, index)
    _settle_index(pem) if damage != "symlink" else None
    full_reads.clear()
    assert PemDirectoryStore("pem", pem).observe() == truth
    assert live.name in full_reads
    if damage == "symlink":  # install never appends through a link planted in the store folder
        before = (tmp_path / "elsewhere.jsonl").read_bytes()
        PemDirectoryStore("pem", pem).install("api", issue(issuer), datetime(2026, 3, 1, tzinfo=UTC))
        assert (tmp_path / "elsewhere.jsonl").read_bytes() == before


def test_remove_drops_the_index_entry(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    pem, live = _installed(tmp_path, issuer)
    store = PemDirectoryStore("pem", pem)
    old = next(c for c in store.observe().certs if not c.current)
    store.remove(old.ref)
    entries = [json.loads(line) for line in (pem / pemdir.INDEX).read_text().splitlines()]
    assert [e["k"] for e in entries[-2:]] == [f"web/versions/{old.ref.split('/')[1]}", "web"]
    assert entries[-2]["v"] is None  # the version's entry is dropped
    assert entries[-1]["v"]["names"] == [live.name]  # and the folder's lists what is left
    live_keys = {e["k"]: e["v"] for e in entries}
    assert live_keys[f"web/versions/{live.name}"] is not None


def test_threads_that_copy_one_version_into_the_vault_at_once_never_fail(
    tmp_path: Path, issuer: LocalCAIssuer
) -> None:
    """A fleet node's actions ask for the same version's vault copy from several executor threads at once."""
    from concurrent.futures import ThreadPoolExecutor

    from reconciler.state.statedir import StateDir

    material = issue(issuer)
    state = StateDir(tmp_path / "node-state")
    start = threading.Barrier(8)

    def copy(_: int) -> Path:
        start.wait()
        return state.write_vault_files("web", material, if_missing=True)

    with ThreadPoolExecutor(max_workers=8) as pool:
        folders = set(pool.map(copy, range(8)))
    (folder,) = folders
    assert (folder / "key.pem").read_bytes() == material.key_pem
    assert (folder / "cert.pem").read_bytes() == material.cert_pem


# --- what the index records is what the disk holds: found by review, each tried here -------------------------


def _live(state):
    return next(c for c in state.certs if c.current)


def _without_index(pem: Path):
    """The same folders observed in full, as if the store had no index."""
    index = pem / pemdir.INDEX
    saved = index.read_bytes()
    index.unlink()
    try:
        return PemDirectoryStore("pem", pem).observe()
    finally:
        index.write_bytes(saved)
        os.chmod(index, 0o600)


@pytest.mark.parametrize("which", ["privkey.pem", "cert.pem", "chain.pem", "fullchain.pem"])
@pytest.mark.parametrize("when", ["before its identity is taken", "after its identity is taken"])
def test_a_file_replaced_while_install_indexes_it_is_never_recorded_with_the_old_facts(
    tmp_path: Path, issuer: LocalCAIssuer, monkeypatch: pytest.MonkeyPatch, which: str, when: str
) -> None:
    pem = tmp_path / "pem"
    good, other = issue(issuer), issue(issuer)

    def replace(folder: str) -> None:
        data = other.key_pem if which == "privkey.pem" else other.cert_pem
        Path(folder, ".new").write_bytes(data)
        os.replace(Path(folder, ".new"), Path(folder, which))

    real_keys, real_tick = pemdir._version_keys, cache.tick_passed

    def keys_after_a_replace(folder: str) -> Any:
        replace(folder)
        return real_keys(folder)

    def tick_after_a_replace(keys: Any) -> bool:
        replace(str(pem / "web" / "current"))
        return real_tick(keys)

    if when == "before its identity is taken":
        monkeypatch.setattr(pemdir, "_version_keys", keys_after_a_replace)
    else:
        monkeypatch.setattr(pemdir, "tick_passed", tick_after_a_replace)
    PemDirectoryStore("pem", pem).install("web", good, datetime(2026, 1, 1, tzinfo=UTC))
    monkeypatch.undo()
    _settle_index(pem)
    fast, full = _live(PemDirectoryStore("pem", pem).observe()), _live(_without_index(pem))
    assert (fast.info.thumbprint, fast.has_key, fast.drift) == (
        full.info.thumbprint,
        full.has_key,
        full.drift,
    )
    assert full.drift == (
        CHAIN_DRIFT
        if which in ("chain.pem", "fullchain.pem")
        else "the live version's privkey.pem does not match its cert.pem"
    )


def test_an_edit_in_the_same_second_on_a_file_system_keeping_seconds_is_never_trusted(
    tmp_path: Path, issuer: LocalCAIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change times of whole seconds (FAT, HFS+, small ext4 inodes): a change later in the same second keeps
    a file's identity, so install records no identities at all there, even after later index writes."""

    def coarse(real):
        def whole_seconds(path, *args, **kwargs):
            st = real(path, *args, **kwargs)
            cut = [st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns]
            cut = [ns // 10**9 * 10**9 for ns in cut]
            return os.stat_result(
                tuple(st[:10]), {"st_atime_ns": cut[0], "st_mtime_ns": cut[1], "st_ctime_ns": cut[2]}
            )

        return whole_seconds

    monkeypatch.setattr(os, "stat", coarse(os.stat))
    monkeypatch.setattr(os, "lstat", coarse(os.lstat))
    pem = tmp_path / "pem"
    good, other = issue(issuer), issue(issuer)
    assert len(good.key_pem) == len(other.key_pem)
    PemDirectoryStore("pem", pem).install("web", good, datetime(2026, 1, 1, tzinfo=UTC))
    with open(pem / "web" / "current" / "privkey.pem", "r+b") as fh:  # in place: same inode, same size
        fh.write(other.key_pem)
    PemDirectoryStore("pem", pem).install("api", other, datetime(2026, 1, 1, tzinfo=UTC))  # a later write
    assert not any(k.startswith("web") for k in PemDirectoryStore("pem", pem)._index.read())
    found = _live(PemDirectoryStore("pem", pem).observe_for({"web"}))
    assert found.drift == "the live version's privkey.pem does not match its cert.pem"


def test_a_version_file_that_is_a_link_keeps_its_folder_read_in_full(
    tmp_path: Path, issuer: LocalCAIssuer
) -> None:
    pem = tmp_path / "pem"
    material = issue(issuer)
    store = PemDirectoryStore("pem", pem)
    store.install("web", material, datetime(2026, 1, 1, tzinfo=UTC))
    live = (pem / "web" / "current").resolve()
    shared = tmp_path / "shared"
    shared.mkdir()
    os.replace(live / "fullchain.pem", shared / "fullchain.pem")
    os.symlink(shared / "fullchain.pem", live / "fullchain.pem")  # kept elsewhere, by hand
    os.remove(pem / "web" / "privkey.pem")  # drift install repairs, reusing the version
    store.install("web", material, datetime(2026, 1, 1, tzinfo=UTC))
    (shared / "fullchain.pem").unlink()  # what a web server reads is gone; the folder did not change
    _settle_index(pem)
    assert _live(PemDirectoryStore("pem", pem).observe()).drift == "the live version lacks fullchain.pem"


def test_an_index_that_is_a_link_is_never_written_through(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    pem, _ = _installed(tmp_path, issuer)
    old = next(c for c in PemDirectoryStore("pem", pem).observe().certs if not c.current)
    victim = tmp_path / "outside" / "victim.conf"
    victim.parent.mkdir()
    (pem / pemdir.INDEX).unlink()
    os.symlink(victim, pem / pemdir.INDEX)
    store = PemDirectoryStore("pem", pem)
    store.remove(old.ref)
    store.install("api", issue(issuer), datetime(2026, 1, 1, tzinfo=UTC))
    assert not victim.exists() and (pem / pemdir.INDEX).is_symlink()
    assert len(store.observe().certs) == 2


def test_an_index_that_is_a_pipe_never_hangs_install_remove_or_observe(
    tmp_path: Path, issuer: LocalCAIssuer
) -> None:
    pem, _ = _installed(tmp_path, issuer)
    old = next(c for c in PemDirectoryStore("pem", pem).observe().certs if not c.current)
    (pem / pemdir.INDEX).unlink()
    os.mkfifo(pem / pemdir.INDEX)
    store = PemDirectoryStore("pem", pem)
    done: list[object] = []

    def work() -> None:
        store.remove(old.ref)
        store.install("api", issue(issuer), datetime(2026, 1, 1, tzinfo=UTC))
        done.append(store.observe())

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(30)
    if worker.is_alive():  # let it go before failing
        os.close(os.open(pem / pemdir.INDEX, os.O_WRONLY | os.O_NONBLOCK))
    assert done and len(done[0].certs) == 2  # type: ignore[attr-defined]


def test_remove_never_makes_an_untrusted_index_trusted(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    """Someone who can write the store folder plants a wrong key and an index (not theirs to trust: group-
    writable) vouching for it; a cleanup must not rewrite that index into one certctl trusts."""
    pem, live = _installed(tmp_path, issuer)
    old = next(c for c in PemDirectoryStore("pem", pem).observe().certs if not c.current)
    index = pem / pemdir.INDEX
    Path(live, ".k").write_bytes(issue(issuer).key_pem)
    os.replace(live / ".k", live / "privkey.pem")
    lines = [json.loads(line) for line in index.read_text().splitlines()]
    entry = next(e for e in reversed(lines) if e["k"] == f"web/versions/{live.name}")["v"]
    st = os.stat(live / "privkey.pem")
    entry.update(k=[st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns], ok=True, f=None)
    body = "".join(json.dumps({"k": f"filler{i}", "v": None}) + "\n" for i in range(80))
    index.unlink()
    index.write_text(body + json.dumps({"k": f"web/versions/{live.name}", "v": entry}) + "\n")
    os.chmod(index, 0o666)
    PemDirectoryStore("pem", pem).remove(old.ref)
    assert stat_mode(index) == 0o666
    _settle_index(pem)
    found = _live(PemDirectoryStore("pem", pem).observe())
    assert found.drift == "the live version's privkey.pem does not match its cert.pem"


def stat_mode(path: Path) -> int:
    return os.stat(path).st_mode & 0o777


def test_an_index_line_nested_past_the_parser_is_skipped(tmp_path: Path, issuer: LocalCAIssuer) -> None:
    pem, _ = _installed(tmp_path, issuer)
    with open(pem / pemdir.INDEX, "a") as fh:
        fh.write('{"k":"x","v":' + "[" * 100_000 + "\n")
    assert len(PemDirectoryStore("pem", pem).observe().certs) == 2


@pytest.mark.parametrize("name", ["cert.pem", "meta.json", "privkey.pem"])
def test_a_pipe_planted_in_a_version_folder_never_hangs_observe(
    tmp_path: Path, issuer: LocalCAIssuer, name: str
) -> None:
    pem, live = _installed(tmp_path, issuer)
    (pem / pemdir.INDEX).unlink()
    os.remove(live / name)
    os.mkfifo(live / name)
    done: list[object] = []
    worker = threading.Thread(
        target=lambda: done.append(PemDirectoryStore("pem", pem).observe()), daemon=True
    )
    worker.start()
    worker.join(30)
    if worker.is_alive():
        os.close(os.open(live / name, os.O_WRONLY | os.O_NONBLOCK))
    assert done
    state = done[0]
    if name == "cert.pem":
        assert any("not a regular file" in p for p in state.problems)  # type: ignore[attr-defined]
    else:
        assert _live(state).drift is not None or name == "meta.json"


def test_the_store_that_installed_a_certificate_takes_its_folder_from_the_index_too(
    tmp_path: Path, issuer: LocalCAIssuer, full_probes: list[str]
) -> None:
    """The daemon keeps its store between passes: what it recorded must read back as from the file."""
    store = PemDirectoryStore("pem", tmp_path / "pem")
    store.install("web", issue(issuer), datetime(2026, 1, 1, tzinfo=UTC))
    full_probes.clear()
    store.observe()  # the index file unchanged since: the store's own view of it is used
    assert full_probes == []
    assert (
        store._folders.keys() == PemDirectoryStore("pem", tmp_path / "pem")._load_index()[1].keys() == {"web"}
    )


def test_an_index_with_a_second_name_is_neither_trusted_nor_written(
    tmp_path: Path, issuer: LocalCAIssuer
) -> None:
    """A hard link to another file of the running user (where the system allows one to be made): appending
    to the index would write into that file."""
    pem, _ = _installed(tmp_path, issuer)
    other = tmp_path / "profile"
    other.write_text("kept\n")
    os.chmod(other, 0o600)
    (pem / pemdir.INDEX).unlink()
    os.link(other, pem / pemdir.INDEX)
    store = PemDirectoryStore("pem", pem)
    assert store._load_index() == ({}, {}, {})
    store.install("api", issue(issuer), datetime(2026, 1, 1, tzinfo=UTC))
    assert other.read_text() == "kept\n"
