"""The daemon's HTTP endpoint: /healthz, /metrics (Prometheus, a dedicated registry) and /status.

Metric names follow cert-manager's (``certmanager_certificate_expiration_timestamp_seconds`` …) with
the ``certctl_`` prefix, so existing alert rules carry over with a rename.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from reconciler.core.status import READY_CONDITIONS, StatusRow, ready_condition
from reconciler.support.logging import get_logger

log = get_logger()

DEFAULT_ADDRESS = "127.0.0.1:9464"


def _timestamp(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


class Metrics:
    """Every metric the daemon exports, in its own CollectorRegistry (never the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.expiration = Gauge(
            "certctl_certificate_expiration_timestamp_seconds",
            "The date after which the certificate expires (Unix seconds)",
            ["name"],
            registry=r,
        )
        self.renewal = Gauge(
            "certctl_certificate_renewal_timestamp_seconds",
            "The time at which certctl will renew the certificate (Unix seconds)",
            ["name"],
            registry=r,
        )
        self.ready = Gauge(
            "certctl_certificate_ready_status",
            "The ready condition of the certificate",
            ["name", "condition"],
            registry=r,
        )
        self.failures = Gauge(
            "certctl_certificate_consecutive_failures",
            "Consecutive failed issuance attempts of the certificate",
            ["name"],
            registry=r,
        )
        self.reconciles = Counter("certctl_reconcile", "Reconcile passes run", registry=r)
        self.duration = Histogram(
            "certctl_reconcile_duration_seconds",
            "Duration of a reconcile pass",
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.errors = Counter(
            "certctl_reconcile_errors",
            "Reconcile passes that did not complete, or in which an action failed",
            registry=r,
        )
        self.actions = Counter(
            "certctl_actions", "Actions carried out, by kind and result", ["kind", "result"], registry=r
        )
        self.desired_valid = Gauge(
            "certctl_desired_state_valid",
            "1 when the desired-state directory is valid, 0 while an edit made it invalid",
            registry=r,
        )
        self.desired_errors = Gauge(
            "certctl_desired_state_errors", "Problems found in the desired-state directory", registry=r
        )
        self.last_success = Gauge(
            "certctl_reconcile_last_success_timestamp_seconds",
            "When the last reconcile pass completed (Unix seconds)",
            registry=r,
        )
        self.next_due = Gauge(
            "certctl_reconcile_next_timestamp_seconds",
            "When the next reconcile pass is scheduled (Unix seconds)",
            registry=r,
        )
        self.git_errors = Counter(
            "certctl_git_pull_errors", "Failed `git pull --ff-only` of the desired state", registry=r
        )
        self.notifications = Counter(
            "certctl_notifications",
            "Notifications sent, by channel, event and result",
            ["channel", "event", "result"],
            registry=r,
        )
        self.info = Gauge(
            "certctl_desired_state_info",
            "The desired-state revision in force (value 1)",
            ["revision"],
            registry=r,
        )
        self._names: set[str] = set()
        self._revision: str | None = None

    def certificates(self, rows: Iterable[StatusRow], now: datetime) -> None:
        """Set the per-certificate gauges from the status rows; drop certificates no longer in the spec."""
        seen: set[str] = set()
        for row in rows:
            name = row.name
            seen.add(name)
            for gauge, value in (
                (self.expiration, _timestamp(row.not_after)),
                (self.renewal, _timestamp(row.renew_at)),
            ):
                if value is None:
                    _remove(gauge, name)
                else:
                    gauge.labels(name=name).set(value)
            condition = ready_condition(row, now)
            for c in READY_CONDITIONS:
                self.ready.labels(name=name, condition=c).set(1 if c == condition else 0)
            self.failures.labels(name=name).set(row.consecutive_failures)
        for name in self._names - seen:
            for gauge in (self.expiration, self.renewal, self.failures):
                _remove(gauge, name)
            for c in READY_CONDITIONS:
                _remove(self.ready, name, c)
        self._names = seen

    def revision(self, revision: str | None) -> None:
        value = revision or "none"
        if value != self._revision:
            if self._revision is not None:
                _remove(self.info, self._revision)
            self.info.labels(revision=value).set(1)
            self._revision = value

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):
        gauge.remove(*labels)


READ_TIMEOUT = 10.0  # seconds a client of the endpoint may stay silent before its connection is closed


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class HttpEndpoint:
    """Serves /healthz, /metrics and /status from a background thread."""

    def __init__(
        self,
        address: str,
        metrics: Metrics,
        health: Callable[[], tuple[bool, dict[str, Any]]],
        status: Callable[[], dict[str, Any]],
    ) -> None:
        host, port = parse_address(address)

        class Handler(BaseHTTPRequestHandler):
            server_version = "certctl"
            timeout = READ_TIMEOUT  # a connection that sends nothing is closed, not kept for ever

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                try:
                    if path == "/metrics":
                        self._send(200, metrics.render(), CONTENT_TYPE_LATEST)
                    elif path == "/healthz":
                        ok, body = health()
                        self._json(200 if ok else 503, body)
                    elif path == "/status":
                        self._json(200, status())
                    else:
                        self._json(404, {"error": f"no such path {path}; try /healthz, /metrics or /status"})
                except Exception as exc:  # noqa: BLE001 - a broken page must not take the daemon down
                    log.error("http.error", path=path, error=str(exc))
                    self._json(500, {"error": str(exc)})

            def _json(self, code: int, body: dict[str, Any]) -> None:
                self._send(code, (json.dumps(body, indent=2) + "\n").encode(), "application/json")

            def _send(self, code: int, data: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http.request", client=self.client_address[0], request=format % args)

        server_class = _Server6 if ":" in host else _Server
        self.server = server_class((host, port), Handler)
        self.address = f"{host}:{self.server.server_address[1]}"
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 5.0}, name="certctl-http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()
        log.info("http.listening", address=self.address, paths=["/healthz", "/metrics", "/status"])

    def stop(self) -> None:
        """Stop listening (the serving thread is a daemon thread: it ends with the process)."""
        self.server.server_close()


def parse_address(address: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` (all interfaces)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"metrics address {address!r} must be host:port, e.g. {DEFAULT_ADDRESS}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
