"""Fleet mode: issuance state shared by every node in PostgreSQL, beside each node's own state dir.

In the database (tables ``certctl_*``, created by ``certctl backend migrate``):
  versions   every issued version: metadata, certificate, chain, and its private key sealed with
             AES-256-GCM (the key never enters the database; see ``support.sealing``)
  attempts   per certificate: failures, last error, next retry, ARI window (a backoff holds fleet-wide)
  leases     who is ordering which certificate: one row per certificate, renewed while held; a holder that
             stops renewing loses it after ``leaseTimeout`` and another node takes over
  blobs      local CA and ACME account keys and records, sealed
  records    the ACME challenge journal, each entry tagged with the lease of its order
  nodes      what each node reported after its last pass (``certctl status --fleet``)
  meta       a sealed check value: a wrong encryption key is an error, never a silent reissue

In the node's state dir (as without a database): the apply lock, the journal, deployment and binding
records, caches, and a copy of each version it deployed (``vault/``, keys 0600) for tasks to read.

A new version is announced with NOTIFY on ``certctl_fleet``; daemons LISTEN and reconcile at once.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from reconciler.core.model import Attempts, IssuedVersion, Issuing, Revocation
from reconciler.core.planner import current_version
from reconciler.ports import BackendUnavailable, IssuanceGrant, IssueError, LeaseLost, Material
from reconciler.state.records import attempts_from_json, attempts_to_json, revocation_to_json
from reconciler.state.statedir import StateDir, version_meta
from reconciler.support import pki
from reconciler.support.logging import get_logger
from reconciler.support.sealing import KeyProblem, Sealer

log = get_logger()

CHANNEL = "certctl_fleet"
ISSUANCE_WAIT = 1800.0  # seconds an issuance waits for another node's live lease before giving up (transient)
POLL = 0.5

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE certctl_meta (k text PRIMARY KEY, v bytea NOT NULL);
    CREATE TABLE certctl_versions (
        certificate text NOT NULL, thumbprint text NOT NULL, meta jsonb NOT NULL,
        cert_pem bytea NOT NULL, chain_pem bytea NOT NULL, key_sealed bytea NOT NULL,
        seq bigserial NOT NULL, created_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (certificate, thumbprint));
    CREATE TABLE certctl_attempts (certificate text PRIMARY KEY, data jsonb NOT NULL);
    CREATE TABLE certctl_leases (
        certificate text PRIMARY KEY, node text NOT NULL, token text NOT NULL UNIQUE, replaces text,
        acquired_at timestamptz NOT NULL, heartbeat_at timestamptz NOT NULL);
    CREATE TABLE certctl_blobs (scope text NOT NULL, key text NOT NULL, value bytea NOT NULL,
        PRIMARY KEY (scope, key));
    CREATE TABLE certctl_records (scope text NOT NULL, key text NOT NULL, value jsonb NOT NULL,
        node text NOT NULL, lease text, PRIMARY KEY (scope, key));
    CREATE TABLE certctl_nodes (node text PRIMARY KEY, first_seen timestamptz NOT NULL,
        last_seen timestamptz NOT NULL, report jsonb NOT NULL);
    """,
)
LATEST = len(MIGRATIONS)
MIGRATE_LOCK = 0x63657274  # pg_advisory_xact_lock key: one migration at a time
KEY_CHECK = b"certctl encryption key check"

_LEASE: contextvars.ContextVar[str | None] = contextvars.ContextVar("certctl_lease", default=None)


class EncryptionKeyMismatch(BackendUnavailable):
    pass


def scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    return message


class Database:
    """One connection (autocommit; short transactions), shared by a process's threads, re-opened after a
    failure. Every error becomes BackendUnavailable with a message that never holds the DSN's password."""

    def __init__(self, dsn: str, connect_timeout: float = 10.0) -> None:
        self._dsn = dsn
        self._timeout = max(1, int(connect_timeout))
        try:
            info = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise BackendUnavailable(
                "the PostgreSQL connection string (backend.postgres.dsn) cannot be parsed"
            ) from None
        self._secrets = (dsn, str(info.get("password") or ""))
        self.where = (
            f"{info.get('host') or 'localhost'}:{info.get('port') or 5432}/{info.get('dbname') or ''}"
        )
        self._lock = threading.RLock()
        self._conn: psycopg.Connection[Any] | None = None
        self.queries = 0  # statements sent (the benchmark counts them per pass)

    def connect(self, **extra: Any) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(
                self._dsn, autocommit=True, connect_timeout=self._timeout, application_name="certctl", **extra
            )
        except psycopg.Error as exc:
            raise self.unavailable(exc) from None

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        text = scrub(
            str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__, self._secrets
        )
        return BackendUnavailable(f"the PostgreSQL database at {self.where} is unavailable: {text}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Callable[..., list[tuple[Any, ...]]]]:
        """A transaction; yields ``q(sql, params=()) -> rows``."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self.connect()
                conn = self._conn
                with conn.transaction(), conn.cursor() as cur:

                    def q(sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
                        self.queries += 1
                        cur.execute(sql, params)
                        return cur.fetchall() if cur.description is not None else []

                    yield q
            except psycopg.errors.UndefinedTable:
                raise BackendUnavailable(
                    f"the database at {self.where} has no certctl tables: run `certctl backend migrate` first"
                ) from None
            except psycopg.OperationalError as exc:
                self.close()
                raise self.unavailable(exc) from None
            except psycopg.Error as exc:
                raise self.unavailable(exc) from None

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


def schema_version(q: Callable[..., list[tuple[Any, ...]]]) -> int:
    if not q("SELECT to_regclass('certctl_schema') IS NOT NULL")[0][0]:
        return 0
    rows = q("SELECT version FROM certctl_schema")
    return int(rows[0][0]) if rows else 0


def migrate(db: Database, sealer: Sealer) -> tuple[int, int]:
    """Bring the schema to LATEST (each migration in one transaction with the version); refuses a newer one."""
    with db.transaction() as q:
        q("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        before = schema_version(q)
        if before > LATEST:
            raise BackendUnavailable(
                f"the database at {db.where} has certctl schema version {before}, newer than "
                f"this certctl knows ({LATEST}); upgrade certctl instead"
            )
        if before == 0:
            q("CREATE TABLE IF NOT EXISTS certctl_schema (version integer NOT NULL)")
            q("INSERT INTO certctl_schema (version) VALUES (0)")
        for version in range(before + 1, LATEST + 1):
            q(MIGRATIONS[version - 1])
            q("UPDATE certctl_schema SET version = %s", (version,))
            log.info("backend.migrated", version=version)
    check_key(db, sealer)
    return before, LATEST


def check_key(db: Database, sealer: Sealer) -> None:
    """The sealed check value opens with this key (stored with the first key used)."""
    with db.transaction() as q:
        q(
            "INSERT INTO certctl_meta (k, v) VALUES ('key_check', %s) ON CONFLICT (k) DO NOTHING",
            (sealer.seal(KEY_CHECK, "key-check"),),
        )
        stored = bytes(q("SELECT v FROM certctl_meta WHERE k = 'key_check'")[0][0])
    try:
        sealer.open(stored, "key-check")
    except KeyProblem:
        raise EncryptionKeyMismatch(
            f"the encryption key (backend.postgres.encryptionKey) is not the one the private keys in {db.where} are "
            "sealed with; nothing was changed. Use the original key"
        ) from None


class DbBlobs:
    def __init__(self, state: FleetState, scope: str) -> None:
        self.state = state
        self.scope = scope

    def _context(self, key: str) -> str:
        return f"blob:{self.scope}/{key}"

    def get(self, key: str) -> bytes | None:
        with self.state.db.transaction() as q:
            rows = q("SELECT value FROM certctl_blobs WHERE scope = %s AND key = %s", (self.scope, key))
        return self.state.open(bytes(rows[0][0]), self._context(key)) if rows else None

    def create(self, key: str, value: bytes) -> bytes:
        with self.state.db.transaction() as q:
            q(
                "INSERT INTO certctl_blobs (scope, key, value) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                (self.scope, key, self.state.sealer.seal(value, self._context(key))),
            )
        stored = self.get(key)
        assert stored is not None
        return stored

    def put(self, key: str, value: bytes) -> None:
        with self.state.db.transaction() as q:
            q(
                "INSERT INTO certctl_blobs (scope, key, value) VALUES (%s, %s, %s) "
                "ON CONFLICT (scope, key) DO UPDATE SET value = EXCLUDED.value",
                (self.scope, key, self.state.sealer.seal(value, self._context(key))),
            )

    def delete(self, key: str) -> None:
        with self.state.db.transaction() as q:
            q("DELETE FROM certctl_blobs WHERE scope = %s AND key = %s", (self.scope, key))


class DbRecords:
    """The ACME challenge journal in the database. Each entry carries the lease of the order that wrote
    it; ``read`` gives the entries no live order owns (its holder died, or it was written outside a
    lease by this node), which are exactly the ones to clean up."""

    def __init__(self, state: FleetState, scope: str) -> None:
        self.state = state
        self.scope = scope

    def read(self) -> dict[str, Any]:
        with self.state.db.transaction() as q:
            rows = q(
                "SELECT r.key, r.value FROM certctl_records r LEFT JOIN certctl_leases l ON l.token = r.lease "
                "WHERE r.scope = %s AND l.token IS NULL AND (r.lease IS NOT NULL OR r.node = %s)",
                (self.scope, self.state.node),
            )
        return {key: value for key, value in rows}

    def set(self, key: str, value: Any) -> None:
        self.set_all({key: value})

    def set_all(self, values: Mapping[str, Any]) -> None:
        with self.state.db.transaction() as q:
            for key, value in values.items():
                q(
                    "INSERT INTO certctl_records (scope, key, value, node, lease) VALUES (%s, %s, %s, %s, %s) "
                    "ON CONFLICT (scope, key) DO UPDATE SET value = EXCLUDED.value, node = EXCLUDED.node, "
                    "lease = EXCLUDED.lease",
                    (self.scope, key, Jsonb(value), self.state.node, _LEASE.get()),
                )

    def delete(self, key: str, *, wait: bool = True) -> None:  # a transaction: durable either way
        with self.state.db.transaction() as q:
            q("DELETE FROM certctl_records WHERE scope = %s AND key = %s", (self.scope, key))


class FleetState(StateDir):
    """The StateBackend of a fleet node: issuance in PostgreSQL, the rest in the node's state dir."""

    runs_locally = False  # leases, versions and the CA live in the database: no action of it is local work

    def __init__(
        self, path: Path | str, *, node: str, db: Database, sealer: Sealer, lease_timeout: float
    ) -> None:
        super().__init__(path)
        self.node = node
        self.db = db
        self.sealer = sealer
        self.lease_timeout = lease_timeout
        self._checked = False
        self._held: set[str] = set()  # lease tokens this process holds (renewed by the heartbeat thread)
        self._heartbeat: threading.Thread | None = None
        self._held_lock = threading.Lock()
        self.reported: dict[str, Any] | None = None  # the last report this process wrote

    # --- connection and key ------------------------------------------------------------------------

    def ready(self) -> None:
        """The schema is this certctl's and the key opens the check value (once per process)."""
        if self._checked:
            return
        with self.db.transaction() as q:
            version = schema_version(q)
        if version != LATEST:
            what = (
                "has no certctl tables yet"
                if version == 0
                else (f"has certctl schema version {version}, this certctl needs {LATEST}")
            )
            hint = "upgrade certctl" if version > LATEST else "run `certctl backend migrate`"
            raise BackendUnavailable(f"the database at {self.db.where} {what}: {hint}")
        check_key(self.db, self.sealer)
        self._checked = True

    def open(self, sealed: bytes, context: str) -> bytes:
        try:
            return self.sealer.open(sealed, context)
        except KeyProblem as exc:
            raise EncryptionKeyMismatch(
                f"{exc}: the encryption key is not the one it was sealed with; "
                "nothing is reissued because of this. Use the original key"
            ) from None

    # --- versions --------------------------------------------------------------------------------

    def issued(self) -> dict[str, tuple[IssuedVersion, ...]]:
        self.ready()
        with self.db.transaction() as q:
            rows = q("SELECT certificate, thumbprint, meta FROM certctl_versions")
        return self._grouped(rows)

    def issued_for(self, name: str) -> tuple[IssuedVersion, ...]:
        self.ready()
        with self.db.transaction() as q:
            rows = q("SELECT thumbprint, meta FROM certctl_versions WHERE certificate = %s", (name,))
        return self._versions(name, {t: m for t, m in rows})

    def issued_of(self, names: Collection[str]) -> dict[str, tuple[IssuedVersion, ...]]:
        self.ready()
        with self.db.transaction() as q:
            rows = q(
                "SELECT certificate, thumbprint, meta FROM certctl_versions WHERE certificate = ANY(%s)",
                (sorted(names),),
            )
        return self._grouped(rows)

    def _grouped(self, rows: list[tuple[Any, ...]]) -> dict[str, tuple[IssuedVersion, ...]]:
        grouped: dict[str, dict[str, Any]] = {}
        for certificate, thumbprint, meta in rows:
            grouped.setdefault(certificate, {})[thumbprint] = meta
        return {name: self._versions(name, versions) for name, versions in grouped.items()}

    def material(self, name: str, thumbprint: str) -> Material:
        """The version from the database, also written to this node's vault copy (tasks read it there)."""
        self.ready()
        with self.db.transaction() as q:
            rows = q(
                "SELECT cert_pem, chain_pem, key_sealed FROM certctl_versions "
                "WHERE certificate = %s AND thumbprint = %s",
                (name, thumbprint),
            )
        if not rows:
            raise FileNotFoundError(f"version {thumbprint} of {name} is not in the database")
        cert, chain, sealed = (bytes(v) for v in rows[0])
        key = self.open(sealed, f"version:{name}:{thumbprint}")
        material = Material(cert, chain, key, pki.info_from_pem(cert))
        if pki.chain_as_written(cert, chain, material.fullchain_pem):  # a damaged one is never used (actions)
            self.write_vault_files(name, material, if_missing=True)  # a local copy: tasks read it there
        return material

    def chain_kept_at(self, name: str, thumbprint: str) -> str:
        return f"the database's certctl_versions row of {name} {thumbprint}"

    def store_issued(
        self,
        name: str,
        material: Material,
        issuer_id: str,
        domains: tuple[str, ...],
        at: datetime,
        replaced: str | None,
        *,
        issuer: str | None = None,
        issuer_note: str | None = None,
    ) -> IssuedVersion:
        self.ready()
        thumbprint = material.info.thumbprint
        meta = version_meta(
            material, issuer_id, domains, at, replaced, issuer=issuer, issuer_note=issuer_note
        )
        with self.db.transaction() as q:  # the commit point; NOTIFY is delivered with the commit
            lease = _LEASE.get()
            if lease is not None:  # fenced: stored only while the lease is still this order's
                rows = q("SELECT node, token FROM certctl_leases WHERE certificate = %s FOR UPDATE", (name,))
                if not rows or rows[0][1] != lease:
                    lost = LeaseLost(name, str(rows[0][0]) if rows else None, thumbprint)
                    log.error(
                        "fleet.lease.lost",
                        certificate=name,
                        thumbprint=thumbprint,
                        holder=lost.holder,
                        note="this order's certificate is not stored as a version; the other node's is installed",
                    )
                    raise lost
            q(
                "INSERT INTO certctl_versions (certificate, thumbprint, meta, cert_pem, chain_pem, key_sealed) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                (
                    name,
                    thumbprint,
                    Jsonb(meta),
                    material.cert_pem,
                    material.chain_pem,
                    self.sealer.seal(material.key_pem, f"version:{name}:{thumbprint}"),
                ),
            )
            q("SELECT pg_notify(%s, %s)", (CHANNEL, f"version:{name}"))
        self.write_vault_files(name, material)
        return IssuedVersion(
            name, material.info, issuer_id, at, domains, replaced, issuer=issuer, issuer_note=issuer_note
        )

    def mark_revoked(self, name: str, thumbprint: str, revocation: Revocation) -> bool:
        """Record the revocation on the version in the database (every node's next plan replaces it)."""
        self.ready()
        record = {"revoked": revocation_to_json(revocation)}
        with self.db.transaction() as q:
            rows = q(
                "UPDATE certctl_versions SET meta = meta || %s WHERE certificate = %s AND thumbprint = %s "
                "RETURNING thumbprint",
                (Jsonb(record), name, thumbprint),
            )
            if rows:
                q("SELECT pg_notify(%s, %s)", (CHANNEL, f"version:{name}"))
        return bool(rows)

    def forget_issued(self, name: str, thumbprint: str) -> None:
        with self.db.transaction() as q:
            q("DELETE FROM certctl_versions WHERE certificate = %s AND thumbprint = %s", (name, thumbprint))
        super().forget_issued(name, thumbprint)

    def recover_vault(self) -> tuple[int, int]:
        return 0, 0  # the local vault is a copy; the database is the record

    def import_version(self, name: str, material: Material, meta: Mapping[str, Any]) -> bool:
        """Copy one version of a state dir (``certctl backend import``); False when it was there already."""
        thumbprint = material.info.thumbprint
        with self.db.transaction() as q:
            rows = q(
                "INSERT INTO certctl_versions (certificate, thumbprint, meta, cert_pem, chain_pem, key_sealed) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING thumbprint",
                (
                    name,
                    thumbprint,
                    Jsonb(dict(meta)),
                    material.cert_pem,
                    material.chain_pem,
                    self.sealer.seal(material.key_pem, f"version:{name}:{thumbprint}"),
                ),
            )
        return bool(rows)

    # --- attempts ----------------------------------------------------------------------------------

    def attempts(self) -> dict[str, Attempts]:
        self.ready()
        with self.db.transaction() as q:
            rows = q("SELECT certificate, data FROM certctl_attempts")
        return {name: attempts_from_json(name, data) for name, data in rows}

    def attempts_of(self, names: Collection[str]) -> dict[str, Attempts]:
        self.ready()
        with self.db.transaction() as q:
            rows = q(
                "SELECT certificate, data FROM certctl_attempts WHERE certificate = ANY(%s)", (sorted(names),)
            )
        return {name: attempts_from_json(name, data) for name, data in rows}

    def save_attempts(self, attempts: Attempts) -> None:
        with self.db.transaction() as q:
            q(
                "INSERT INTO certctl_attempts (certificate, data) VALUES (%s, %s) "
                "ON CONFLICT (certificate) DO UPDATE SET data = EXCLUDED.data",
                (attempts.certificate, Jsonb(attempts_to_json(attempts))),
            )

    def update_attempts(self, name: str, *, wait: bool = True, **changes: Any) -> Attempts:
        """Each change is its own transaction: committed (durable) whatever ``wait`` says."""
        self.ready()
        with self.db.transaction() as q:
            rows = q("SELECT data FROM certctl_attempts WHERE certificate = %s FOR UPDATE", (name,))
            current = attempts_from_json(name, rows[0][0]) if rows else Attempts(certificate=name)
            updated = replace(current, **changes)
            q(
                "INSERT INTO certctl_attempts (certificate, data) VALUES (%s, %s) "
                "ON CONFLICT (certificate) DO UPDATE SET data = EXCLUDED.data",
                (name, Jsonb(attempts_to_json(updated))),
            )
        return updated

    # --- leases ------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def issuance(self, name: str, replaces: str | None) -> Iterator[IssuanceGrant]:
        """Hold the lease on ordering ``name``: wait while another node holds a live one, take over one whose
        holder stopped renewing it; then order only if no version newer than ``replaces`` appeared."""
        self.ready()
        token = uuid.uuid4().hex
        deadline = time.monotonic() + ISSUANCE_WAIT
        reported: tuple[str, datetime] | None = None
        while True:
            outcome = self._try_lease(name, token, replaces)
            if isinstance(outcome, str | type(None)):
                taken_from = outcome
                break
            if reported != outcome:
                log.info(
                    "fleet.issuance.waiting",
                    certificate=name,
                    holder=outcome[0],
                    since=outcome[1].isoformat(),
                )
                reported = outcome
            if time.monotonic() > deadline:
                raise IssueError(
                    f"{name} is still being issued on {outcome[0]} (since {outcome[1].isoformat()}); "
                    "not ordering a second one",
                    transient=True,
                )
            time.sleep(POLL)
        if taken_from is not None:
            log.warning(
                "fleet.lease.taken_over",
                certificate=name,
                previous_holder=taken_from,
                note="its holder stopped renewing the lease; its challenges are cleaned up and the order redone",
            )
        try:
            newest = current_version(self.issued_for(name))
            if newest is not None and newest.info.thumbprint != replaces:
                log.info(
                    "fleet.issuance.adopted",
                    certificate=name,
                    thumbprint=newest.info.thumbprint,
                    note="another node issued it meanwhile; this node installs that version",
                )
                yield IssuanceGrant(adopt=newest.info.thumbprint, taken_from=taken_from)
                return
            self._hold(token)
            bound = _LEASE.set(token)
            try:
                yield IssuanceGrant(taken_from=taken_from)
            finally:
                _LEASE.reset(bound)
                self._release_hold(token)
        finally:
            with (
                contextlib.suppress(BackendUnavailable),
                self.db.transaction() as q,
            ):  # else it expires by itself
                q("DELETE FROM certctl_leases WHERE certificate = %s AND token = %s", (name, token))

    def _try_lease(self, name: str, token: str, replaces: str | None) -> str | tuple[str, datetime] | None:
        """None: acquired fresh; a node name: taken over from it; (node, since): held live by that node."""
        with self.db.transaction() as q:
            rows = q(
                "SELECT node, acquired_at, heartbeat_at < now() - make_interval(secs => %s) "
                "FROM certctl_leases WHERE certificate = %s FOR UPDATE",
                (self.lease_timeout, name),
            )
            if not rows:
                got = q(
                    "INSERT INTO certctl_leases (certificate, node, token, replaces, acquired_at, heartbeat_at) "
                    "VALUES (%s, %s, %s, %s, now(), now()) ON CONFLICT DO NOTHING RETURNING token",
                    (name, self.node, token, replaces),
                )
                return None if got else ("another node", datetime.now().astimezone())
            holder, since, expired = rows[0]
            if not expired and holder != self.node:
                return holder, since
            q(
                "UPDATE certctl_leases SET node = %s, token = %s, replaces = %s, acquired_at = now(), heartbeat_at = now() "
                "WHERE certificate = %s",
                (self.node, token, replaces, name),
            )
            return str(holder)

    def _hold(self, token: str) -> None:
        with self._held_lock:
            self._held.add(token)
            if self._heartbeat is None or not self._heartbeat.is_alive():
                self._heartbeat = threading.Thread(target=self._beat, name="certctl-lease", daemon=True)
                self._heartbeat.start()

    def _release_hold(self, token: str) -> None:
        with self._held_lock:
            self._held.discard(token)

    def _beat(self) -> None:
        """Renew every held lease each quarter of the lease timeout (one statement for all of them)."""
        while True:
            time.sleep(self.lease_timeout / 4)
            with self._held_lock:
                tokens = sorted(self._held)
                if not tokens:
                    self._heartbeat = None
                    return
            try:
                with self.db.transaction() as q:
                    q("UPDATE certctl_leases SET heartbeat_at = now() WHERE token = ANY(%s)", (tokens,))
            except BackendUnavailable as exc:
                log.warning(
                    "fleet.lease.renew_failed", error=str(exc), note="the leases expire if this goes on"
                )

    def issuing(self) -> dict[str, Issuing]:
        self.ready()
        with self.db.transaction() as q:
            rows = q(
                "SELECT certificate, node, acquired_at FROM certctl_leases "
                "WHERE node <> %s AND heartbeat_at >= now() - make_interval(secs => %s)",
                (self.node, self.lease_timeout),
            )
        return {certificate: Issuing(node, since) for certificate, node, since in rows}

    # --- what issuers keep, and what nodes report ------------------------------------------------------

    def blobs(self, scope: str) -> DbBlobs:  # type: ignore[override]
        return DbBlobs(self, scope)

    def record_log(self, scope: str) -> DbRecords:  # type: ignore[override]
        return DbRecords(self, scope)

    def report(self, summary: Mapping[str, Any]) -> None:
        with self.db.transaction() as q:
            q(
                "INSERT INTO certctl_nodes (node, first_seen, last_seen, report) VALUES (%s, now(), now(), %s) "
                "ON CONFLICT (node) DO UPDATE SET last_seen = now(), report = EXCLUDED.report",
                (self.node, Jsonb(dict(summary))),
            )
        self.reported = dict(summary)

    def fleet(self) -> tuple[datetime, list[tuple[str, datetime, datetime, dict[str, Any]]], dict[str, str]]:
        """(the database's now, every node's (name, first seen, last seen, report), newest thumbprint per
        certificate)."""
        self.ready()
        with self.db.transaction() as q:
            now = q("SELECT now()")[0][0]
            nodes = q("SELECT node, first_seen, last_seen, report FROM certctl_nodes ORDER BY node")
            versions = q(
                "SELECT DISTINCT ON (certificate) certificate, thumbprint FROM certctl_versions "
                "ORDER BY certificate, (meta->>'issued_at') DESC"
            )
        return now, [(n, f, s, r) for n, f, s, r in nodes], {c: t for c, t in versions}

    # --- propagation -----------------------------------------------------------------------------------

    def listen(self, on_change: Callable[[str], None], stop: threading.Event) -> threading.Thread:
        """A thread that LISTENs for new versions and calls ``on_change(payload)``; it reconnects with
        backoff while the database is away and calls ``on_change("reconnected")`` when it is back."""

        def run() -> None:
            delay = 1.0
            lost = False
            while not stop.is_set():
                try:
                    conn = self.db.connect()
                except BackendUnavailable as exc:
                    if not lost:
                        log.warning("fleet.listen.lost", error=str(exc), note="retrying with backoff")
                    lost = True
                    stop.wait(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                try:
                    conn.execute(f"LISTEN {CHANNEL}")
                    if lost:
                        log.info("fleet.listen.restored")
                        on_change("reconnected")
                    lost, delay = False, 1.0
                    while not stop.is_set():
                        for notice in conn.notifies(timeout=1.0):
                            on_change(notice.payload)
                except psycopg.Error as exc:
                    lost = True
                    log.warning(
                        "fleet.listen.lost", error=str(self.db.unavailable(exc)), note="retrying with backoff"
                    )
                finally:
                    with contextlib.suppress(Exception):
                        conn.close()

        thread = threading.Thread(target=run, name="certctl-listen", daemon=True)
        thread.start()
        return thread
