"""Fixtures that run real servers (Pebble, pebble-challtestsrv, BIND 9, nginx) on free loopback ports.

A server that cannot start — most often because its Debian package is missing — FAILS the tests
that need it, with the reason and the fix (``scripts/install-system-deps``); nothing is skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from tests.integration.servers import (
    Bind,
    ChallTestSrv,
    Nginx,
    Pebble,
    PebbleOptions,
    Postgres,
    ServerError,
    ServerPool,
)


def _fail(exc: ServerError) -> None:
    pytest.fail(f"a test server could not start: {exc}", pytrace=False)


def _serve(server: Any) -> Iterator[Any]:
    """Start ``server`` (a failure fails the test, saying why), hand it out, stop it afterwards."""
    try:
        server.start()
    except ServerError as exc:
        server.stop()
        _fail(exc)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server_pool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerPool]:
    """Every server of the session, started on demand, stopped at the end."""
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    yield pool
    pool.stop_all()


@pytest.fixture(scope="session")
def va_http_port(server_pool: ServerPool) -> int:
    """The loopback port every Pebble's VA sends http-01 requests to."""
    return server_pool.http_port


@pytest.fixture(scope="session")
def challtestsrv(server_pool: ServerPool) -> ChallTestSrv:
    """pebble-challtestsrv as DNS: every name → 127.0.0.1."""
    try:
        return server_pool.challtestsrv()
    except ServerError as exc:
        _fail(exc)
        raise


@pytest.fixture(scope="session")
def bind(server_pool: ServerPool) -> Bind:
    """BIND 9 authoritative for ``bind.zone`` (certctl.test), TSIG key ``bind.key_name``/``bind.secret``."""
    try:
        return server_pool.bind()
    except ServerError as exc:
        _fail(exc)
        raise


@pytest.fixture(scope="session")
def pebble_factory(server_pool: ServerPool) -> Callable[..., Pebble]:
    """``pebble_factory(**PebbleOptions fields)`` → a running Pebble with those options (one per distinct set)."""

    def get(**options: Any) -> Pebble:
        try:
            return server_pool.pebble(PebbleOptions(**options))
        except ServerError as exc:
            _fail(exc)
            raise

    return get


@pytest.fixture(scope="session")
def pebble(pebble_factory: Callable[..., Pebble]) -> Pebble:
    """Pebble with pebble-challtestsrv as DNS (every name is 127.0.0.1); http-01 goes to ``va_http_port``."""
    return pebble_factory()


@pytest.fixture(scope="session")
def pebble_bind(pebble_factory: Callable[..., Pebble], bind: Bind) -> Pebble:
    """Pebble that resolves through BIND: dns-01 for names under ``bind.zone``."""
    return pebble_factory(dns="bind")


@pytest.fixture(scope="session")
def nginx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nginx]:
    """nginx serving TLS on ``nginx.endpoint`` from ``nginx.cert_path``/``nginx.key_path``."""
    yield from _serve(Nginx(tmp_path_factory.mktemp("nginx")))


@pytest.fixture
def webroot_nginx(tmp_path: Path, va_http_port: int) -> Iterator[Nginx]:
    """nginx serving ``webroot_nginx.webroot`` over plain HTTP on the VA's http-01 port, for one test."""
    webroot = tmp_path / "webroot"
    webroot.mkdir()
    server = Nginx(tmp_path / "nginx", http_port=va_http_port, webroot=webroot)
    try:
        server.start()
    except ServerError as exc:
        server.stop()
        _fail(exc)
    yield server
    server.stop()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    """Every structlog event (debug and up) logged during the test, from any thread."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    try:
        with capture_logs() as events:
            yield events  # type: ignore[misc]
    finally:
        structlog.configure(**saved)


_SESSION_LOGGING = structlog.get_config()


@pytest.fixture(autouse=True)
def _isolated_logging() -> Iterator[None]:
    """Each test starts with the structlog set-up the session started with: a test that runs the CLI
    (which configures logging to the stderr pytest captures, and closes afterwards) must not leave
    every later log call writing to a closed file."""
    structlog.configure(**_SESSION_LOGGING)
    yield
    structlog.configure(**_SESSION_LOGGING)


@pytest.fixture(scope="session")
def postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One PostgreSQL cluster for the session (each test gets its own database: ``fleet_dsn``)."""
    yield from _serve(Postgres(tmp_path_factory.mktemp("postgres")))


@pytest.fixture
def fleet_dsn(postgres_cluster: Postgres) -> str:
    """A fresh, empty database on the session's cluster: its DSN (with the password)."""
    import secrets

    import psycopg

    name = f"certctl_{secrets.token_hex(6)}"
    with psycopg.connect(postgres_cluster.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_cluster.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="module")
def public_bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    """BIND authoritative for a zone with a public suffix (certctl refuses .test names for an ACME issuer)."""
    server = Bind(tmp_path_factory.mktemp("bind-e2e"), zone="certctl-e2e.net")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def pebble_public_bind(
    tmp_path_factory: pytest.TempPathFactory, public_bind: Bind, va_http_port: int
) -> Iterator[Pebble]:
    server = Pebble(
        tmp_path_factory.mktemp("pebble-e2e"), PebbleOptions(dns="bind"), public_bind.address, va_http_port
    )
    server.start()
    yield server
    server.stop()
