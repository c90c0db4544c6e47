"""http-01 solvers: a built-in listener (``standalone``) and files under a served folder (``webroot``)."""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from reconciler.core.spec import HTTP01
from reconciler.ports import ChallengeTask, SolverError
from reconciler.support.fs import atomic_write, write_path_problem
from reconciler.support.logging import get_logger

log = get_logger()

CHALLENGE_PATH = "/.well-known/acme-challenge/"
ACCEPT_PAUSE = 0.1  # seconds the listener pauses when it cannot accept for want of descriptors or memory
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


# --- standalone ------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    # The kernel's queue of connections not yet accepted. socketserver's default (5) overflows as soon as
    # a CA validates a few names at once (Let's Encrypt connects from several places per name): Linux
    # then drops the CA's SYN, and the CA's TCP sends it again only after a second, which made every such
    # validation a second slower.
    request_queue_size = socket.SOMAXCONN
    timeout = 0  # ``handle_request`` is called once a connection waits: it must never wait for another

    def __init__(self, address: str, port: int, listener: _Listener) -> None:
        self.listener = listener
        if ":" in address:
            self.address_family = socket.AF_INET6
        self._wake, self._waker = socket.socketpair()  # a byte on ``_waker`` ends ``serve``
        try:
            super().__init__((address.strip("[]"), port), _Handler)
        except BaseException:  # no socket for that family, no descriptor left, the port taken, ...
            self._wake.close()
            self._waker.close()
            raise

    def serve(self) -> None:
        """Answer requests until ``stop``. (socketserver's ``serve_forever`` notices its ``shutdown`` only
        at its next poll: every order waited up to that poll interval for its listener to stop.)"""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake, selectors.EVENT_READ)
            while True:
                events = selector.select()
                if any(key.fileobj is self._wake for key, _ in events):
                    return
                self.handle_request()  # one connection waits: accepted at once, answered in its thread

    def get_request(self) -> tuple[socket.socket, Any]:
        try:
            return super().get_request()
        except OSError as exc:
            if exc.errno in _OUT_OF_RESOURCES:  # the connection stays queued and the socket readable:
                time.sleep(ACCEPT_PAUSE)  # pause instead of spinning until a descriptor is free again
            raise

    def stop(self) -> None:
        """Make ``serve`` return now."""
        self._waker.send(b"\0")

    def server_close(self) -> None:
        super().server_close()
        self._wake.close()
        self._waker.close()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a connection may stay silent (one that never sends a request is closed then)
    server_version = "certctl-http01"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _answer(self, send_body: bool) -> None:
        body = None
        if self.path.startswith(CHALLENGE_PATH):
            token = self.path[len(CHALLENGE_PATH) :].split("?", 1)[0]
            body = self.server.listener.answer(token)
        if body is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            log.info("http01.request.unknown", path=self.path[:200], client=self.client_address[0])
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if send_body:
            self.wfile.write(data)
        log.debug("http01.request.answered", client=self.client_address[0])

    def log_message(self, format: str, *args: object) -> None:
        pass  # requests are logged through structlog above


class _Listener:
    """One HTTP listener on address:port, shared by every order that needs it; holds tokens by count."""

    def __init__(self, address: str, port: int) -> None:
        self.address = address
        self.port = port
        self._tokens: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        try:
            self._server = _Server(address, port, self)
        except OSError as exc:
            hint = ""
            if exc.errno == errno.EADDRINUSE:
                hint = " (another program listens there: stop it, or use a webroot solver that it serves)"
            elif exc.errno == errno.EACCES:
                hint = " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
            elif exc.errno == errno.EADDRNOTAVAIL:
                hint = " (no interface of this machine has that address)"
            raise SolverError(
                f"http01 standalone: cannot listen on {address}:{port}: {exc.strerror}{hint}"
            ) from None
        self._thread = threading.Thread(
            target=self._server.serve,
            name=f"http01-{address}:{port}",
            daemon=True,
        )
        self._thread.start()
        log.info("http01.listener.started", address=address, port=port)

    def answer(self, token: str) -> str | None:
        with self._lock:
            entry = self._tokens.get(token)
        return entry[0] if entry else None

    def add(self, token: str, key_authorization: str) -> None:
        with self._lock:
            _, count = self._tokens.get(token, (key_authorization, 0))
            self._tokens[token] = (key_authorization, count + 1)

    def remove(self, token: str) -> bool:
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return False
            if entry[1] <= 1:
                del self._tokens[token]
            else:
                self._tokens[token] = (entry[0], entry[1] - 1)
            return True

    def stop(self) -> None:
        self._server.stop()
        self._thread.join(timeout=5)
        self._server.server_close()
        log.info("http01.listener.stopped", address=self.address, port=self.port)


class _Registry:
    """The listeners of this process, by address:port, started on demand and stopped when unused."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listeners: dict[tuple[str, int], tuple[_Listener, int]] = {}
        self._stopping: dict[tuple[str, int], threading.Event] = {}  # set once the old socket is closed

    def acquire(self, address: str, port: int) -> _Listener:
        key = (address, port)
        while True:
            with self._lock:
                stopping = self._stopping.get(key)
                if stopping is None:
                    entry = self._listeners.get(key)
                    listener = entry[0] if entry else _Listener(address, port)
                    self._listeners[key] = (listener, (entry[1] if entry else 0) + 1)
                    return listener
            # The last order just released this port and its socket is still closing: a new listener
            # would find the address in use. Wait for it (a moment), then start afresh.
            stopping.wait(timeout=10)

    def release(self, address: str, port: int) -> None:
        key = (address, port)
        with self._lock:
            entry = self._listeners.get(key)
            if entry is None:
                return
            listener, refs = entry
            if refs > 1:
                self._listeners[key] = (listener, refs - 1)
                return
            del self._listeners[key]
            stopped = self._stopping[key] = threading.Event()
        try:
            listener.stop()
        finally:
            with self._lock:
                self._stopping.pop(key, None)
            stopped.set()

    def get(self, address: str, port: int) -> _Listener | None:
        with self._lock:
            entry = self._listeners.get((address, port))
            return entry[0] if entry else None

    def active(self) -> dict[tuple[str, int], int]:
        """address:port → number of tokens being served (for tests and diagnostics)."""
        with self._lock:
            return {key: refs for key, (_, refs) in self._listeners.items()}


LISTENERS = _Registry()


class StandaloneHttp01:
    """Serves /.well-known/acme-challenge/TOKEN from a built-in listener while an order needs it."""

    def __init__(self, address: str = "0.0.0.0", port: int = 80) -> None:
        self.address = address
        self.port = port

    def __repr__(self) -> str:
        return f"StandaloneHttp01({self.address}:{self.port})"

    def prepare(self, tasks: Sequence[ChallengeTask]) -> None:
        for task in tasks:
            _check(task)
            listener = LISTENERS.acquire(self.address, self.port)  # one reference per token served
            listener.add(task.token, task.key_authorization)
            log.info("http01.token.served", domain=task.domain, address=self.address, port=self.port)

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        for task in tasks:
            if task.kind != HTTP01:
                continue
            listener = LISTENERS.get(self.address, self.port)
            if listener is not None and listener.remove(task.token):
                LISTENERS.release(self.address, self.port)
                log.info("http01.token.removed", domain=task.domain)


# --- webroot ---------------------------------------------------------------------------------


class WebrootHttp01:
    """Writes .well-known/acme-challenge/TOKEN under a folder a web server serves, and removes it."""

    def __init__(self, path: str | Path, companion: tuple[str, bytes] | None = None) -> None:
        self.root = Path(path)
        self.companion = companion  # (file name, content) written beside the tokens, e.g. IIS's web.config
        self._lock = threading.Lock()
        self._created: set[Path] = set()  # folders this solver made (removed again once empty)

    def __repr__(self) -> str:
        return f"WebrootHttp01({self.root})"

    def _folder(self) -> Path:
        return self.root / ".well-known" / "acme-challenge"

    def prepare(self, tasks: Sequence[ChallengeTask]) -> None:
        if not self.root.is_dir():
            raise SolverError(
                f"http01 webroot: the folder {self.root} does not exist (it must be the folder the web server serves)"
            )
        folder = self._folder()
        problem = write_path_problem(folder)
        if problem is not None:
            raise SolverError(f"http01 webroot: refusing to write challenges into {folder}: {problem}")
        # The lock covers making the folders and writing the tokens, and (in cleanup) removing both:
        # another order's cleanup must never remove the folder between this one's check and its write.
        with self._lock:
            for part in (folder.parent, folder):
                if not part.exists():
                    try:
                        part.mkdir(mode=0o755)
                    except FileExistsError:
                        continue
                    except OSError as exc:
                        raise SolverError(f"http01 webroot: cannot create {part}: {exc.strerror}") from None
                    os.chmod(part, 0o755)  # readable by the web server whatever the umask
                    self._created.add(part)
            if self.companion is not None:
                extra = folder / self.companion[0]
                if (
                    not extra.exists()
                ):  # one that was there before is the user's: used as it is, never removed
                    try:
                        atomic_write(extra, self.companion[1], mode=0o644)
                    except OSError as exc:
                        raise SolverError(f"http01 webroot: cannot write {extra}: {exc.strerror}") from None
                    log.info("http01.webroot.companion_written", path=str(extra))
            for task in tasks:
                _check(task)
                target = folder / task.token
                try:
                    atomic_write(target, task.key_authorization, mode=0o644)
                except OSError as exc:
                    raise SolverError(f"http01 webroot: cannot write {target}: {exc.strerror}") from None
                log.info("http01.webroot.written", domain=task.domain, path=str(target))

    def cleanup(self, tasks: Sequence[ChallengeTask]) -> None:
        folder = self._folder()
        failures: list[str] = []
        with self._lock:
            for task in tasks:
                if task.kind != HTTP01 or not _safe_token(task.token):
                    continue
                target = folder / task.token
                try:
                    target.unlink()
                    log.info("http01.webroot.removed", domain=task.domain, path=str(target))
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    failures.append(f"{target}: {exc.strerror}")
            self._remove_companion(folder)
            for part in (folder, folder.parent):
                if part in self._created:
                    with contextlib.suppress(OSError):
                        part.rmdir()  # only when empty: another order may still use it
                        self._created.discard(part)
        if failures:
            raise SolverError("http01 webroot: cannot remove " + "; ".join(failures))

    def _remove_companion(self, folder: Path) -> None:
        """The companion file goes once no token is left beside it, and only if it is exactly the one
        certctl writes (so a file the user had there, or changed, stays; after a crash, ours goes)."""
        if self.companion is None:
            return
        extra = folder / self.companion[0]
        try:
            if any(p.name != extra.name for p in folder.iterdir()) or extra.read_bytes() != self.companion[1]:
                return
            extra.unlink()
        except OSError:
            return
        log.info("http01.webroot.companion_removed", path=str(extra))


def _safe_token(token: str) -> bool:
    return bool(token) and all(c.isalnum() or c in "-_" for c in token)


def _check(task: ChallengeTask) -> None:
    if task.kind != HTTP01:
        raise SolverError(f"an http01 solver cannot answer a {task.kind} challenge for {task.domain}")
    if not _safe_token(task.token):
        raise SolverError(f"the CA sent a challenge token that is not base64url: {task.token[:80]!r}")
