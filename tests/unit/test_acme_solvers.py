"""The http-01 solvers (built-in listener, webroot) and the dns-01 solver's helpers, without a CA."""

from __future__ import annotations

import errno
import os
import socket
import socketserver
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.name
import pytest

from reconciler.adapters.solvers import build_solver, http01
from reconciler.adapters.solvers.dns01 import Rfc2136Solver
from reconciler.adapters.solvers.dnscheck import challenge_name, split_host_port
from reconciler.adapters.solvers.http01 import LISTENERS, StandaloneHttp01, WebrootHttp01
from reconciler.core.spec import Rfc2136, Solver
from reconciler.ports import ChallengeTask, SolverError


def http_task(domain: str, token: str) -> ChallengeTask:
    return ChallengeTask(domain=domain, kind="http-01", token=token, key_authorization=f"{token}.thumb")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, token: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/.well-known/acme-challenge/{token}", timeout=2
        ) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_standalone_listener_is_shared_and_stopped_when_unused() -> None:
    port = free_port()
    a, b = StandaloneHttp01("127.0.0.1", port), StandaloneHttp01("127.0.0.1", port)
    first, second = (
        [http_task("a.example", "tokA1"), http_task("b.example", "tokB1")],
        [http_task("c.example", "tokC1")],
    )
    a.prepare(first)
    b.prepare(second)  # a second order on the same address:port shares the listener
    assert LISTENERS.active() == {("127.0.0.1", port): 3}
    assert get(port, "tokA1") == (200, "tokA1.thumb")
    assert get(port, "tokC1") == (200, "tokC1.thumb")
    assert get(port, "unknown")[0] == 404

    a.cleanup(first)
    assert get(port, "tokA1")[0] == 404
    assert get(port, "tokC1") == (200, "tokC1.thumb")
    b.cleanup(second)
    b.cleanup(second)  # twice is harmless
    assert LISTENERS.active() == {}
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()


def test_a_stopped_listener_ends_its_thread_and_closes_every_socket() -> None:
    """``stop`` wakes the serving thread itself (no poll interval to wait out) and closes the listening
    socket and the pair that wakes it; the port is free for the next order."""
    port = free_port()
    listener = http01._Listener("127.0.0.1", port)
    listener.add("tok", "tok.thumb")
    assert get(port, "tok") == (200, "tok.thumb")
    sockets = (listener._server.socket, listener._server._wake, listener._server._waker)
    listener.stop()
    assert not listener._thread.is_alive()
    assert [s.fileno() for s in sockets] == [-1, -1, -1]
    again = http01._Listener("127.0.0.1", port)
    again.stop()


def test_a_silent_connection_is_closed_and_the_listener_answers_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert http01._Handler.timeout is not None and 0 < http01._Handler.timeout <= 60  # never forever
    monkeypatch.setattr(http01._Handler, "timeout", 0.2)  # shorter here
    port = free_port()
    solver = StandaloneHttp01("127.0.0.1", port)
    solver.prepare([http_task("a.example", "tokS")])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as silent:
            assert get(port, "tokS") == (200, "tokS.thumb")  # answered while the silent one waits
            assert silent.recv(1) == b""  # then the silent one is closed by the listener
    finally:
        solver.cleanup([http_task("a.example", "tokS")])


def test_standalone_listener_takes_every_connection_a_ca_opens_at_once() -> None:
    """Let's Encrypt validates each name from several places at once, and a batch of orders validates
    many names: the kernel must queue all those connections until the listener accepts them. With
    socketserver's default queue (5) it dropped the rest, and each such validation waited a second
    for the CA's TCP to try again (here: a connect that times out)."""
    server = http01._Server("127.0.0.1", 0, None)  # type: ignore[arg-type]  # listening, never accepting
    try:
        port = server.server_address[1]
        connections = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(64)]
        for connection in connections:
            connection.close()
    finally:
        server.server_close()


def test_a_listener_that_cannot_be_made_leaves_no_descriptor_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """No socket of that family (IPv6 on a host without it), or no descriptor left: the pair that would
    have woken the listener is closed with the error, not when the error is collected."""
    made: list[tuple[socket.socket, socket.socket]] = []
    real_pair = socket.socketpair

    def pair() -> tuple[socket.socket, socket.socket]:
        made.append(real_pair())
        return made[-1]

    def no_socket(self: object, *args: object, **kwargs: object) -> None:
        raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")

    monkeypatch.setattr(socket, "socketpair", pair)
    monkeypatch.setattr(socketserver.TCPServer, "__init__", no_socket)
    with pytest.raises(SolverError, match="cannot listen on ::1"):
        StandaloneHttp01("::1", free_port()).prepare([http_task("a.example", "tokF")])
    assert len(made) == 1
    assert [s.fileno() for s in made[0]] == [-1, -1]


class _Refusing:
    """A listening socket whose accept fails as given (and whose descriptor is that of a real one)."""

    def __init__(self, real: socket.socket, error: int) -> None:
        self.real, self.error = real, error

    def fileno(self) -> int:
        return self.real.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        raise OSError(self.error, os.strerror(self.error))


@pytest.mark.parametrize(
    ("error", "paused"), [(errno.EMFILE, True), (errno.ENFILE, True), (errno.ECONNABORTED, False)]
)
def test_out_of_descriptors_the_listener_pauses_instead_of_spinning(
    monkeypatch: pytest.MonkeyPatch, error: int, paused: bool
) -> None:
    """While accept fails for want of descriptors the connection stays queued and the socket readable:
    without a pause the serving thread would spin on it. A connection the client gave up on is simply
    gone: no pause then."""
    pauses: list[float] = []
    monkeypatch.setattr(time, "sleep", pauses.append)  # the listener's pause (nothing else sleeps here)
    server = http01._Server("127.0.0.1", 0, None)  # type: ignore[arg-type]
    real = server.socket
    server.socket = _Refusing(real, error)  # type: ignore[assignment]
    try:
        with pytest.raises(OSError) as raised:
            server.get_request()
        assert raised.value.errno == error
        assert pauses == ([http01.ACCEPT_PAUSE] if paused else [])
    finally:
        server.socket = real
        server.server_close()


def test_standalone_refuses_unsafe_tokens_and_other_kinds() -> None:
    solver = StandaloneHttp01("127.0.0.1", free_port())
    with pytest.raises(SolverError, match="not base64url"):
        solver.prepare([http_task("a.example", "../../etc/passwd")])
    with pytest.raises(SolverError, match="cannot answer a dns-01"):
        solver.prepare([ChallengeTask("a.example", "dns-01", "t", "k", "v")])
    assert LISTENERS.active() == {}


def test_webroot_writes_and_removes(tmp_path: Path) -> None:
    root = tmp_path / "site"
    root.mkdir()
    solver = WebrootHttp01(root)
    tasks = [http_task("a.example", "tokA"), http_task("b.example", "tokB")]
    solver.prepare(tasks)
    folder = root / ".well-known" / "acme-challenge"
    assert (folder / "tokA").read_text() == "tokA.thumb"
    assert stat.S_IMODE((folder / "tokA").stat().st_mode) == 0o644
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    solver.cleanup(tasks)
    assert list(root.iterdir()) == []  # the folders it made are gone too


def test_webroot_keeps_folders_it_did_not_make(tmp_path: Path) -> None:
    folder = tmp_path / ".well-known" / "acme-challenge"
    folder.mkdir(parents=True)
    (tmp_path / ".well-known" / "security.txt").write_text("contact")
    solver = WebrootHttp01(tmp_path)
    solver.prepare([http_task("a.example", "tokA")])
    solver.cleanup([http_task("a.example", "tokA")])
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert (tmp_path / ".well-known" / "security.txt").exists()


def test_webroot_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(SolverError, match="does not exist"):
        WebrootHttp01(tmp_path / "nope").prepare([http_task("a.example", "tok")])


def test_split_host_port() -> None:
    assert split_host_port("ns1.example.com") == ("ns1.example.com", 53)
    assert split_host_port("127.0.0.1:5353") == ("127.0.0.1", 5353)
    assert split_host_port("[2001:db8::1]:5353") == ("2001:db8::1", 5353)
    assert split_host_port("2001:db8::1") == ("2001:db8::1", 53)


def test_challenge_name() -> None:
    assert challenge_name("*.example.com") == dns.name.from_text("_acme-challenge.example.com")
    assert challenge_name("www.example.com") == dns.name.from_text("_acme-challenge.www.example.com")


def test_dns01_refuses_names_outside_its_zone() -> None:
    solver = Rfc2136Solver(Rfc2136.model_validate({"server": "127.0.0.1:1", "zone": "example.com"}))
    with pytest.raises(SolverError, match=r"outside the zone example\.com"):
        solver.prepare([ChallengeTask("example.org", "dns-01", "t", "k", "v")])


def test_build_solver_kinds(tmp_path: Path) -> None:
    assert isinstance(
        build_solver(Solver.model_validate({"http01": {"standalone": {"port": 8080}}})), StandaloneHttp01
    )
    assert isinstance(
        build_solver(Solver.model_validate({"http01": {"webroot": {"path": str(tmp_path)}}})), WebrootHttp01
    )
    dns_solver = Solver.model_validate(
        {"dns01": {"rfc2136": {"server": "ns1.example.com", "zone": "example.com"}}}
    )
    assert isinstance(build_solver(dns_solver), Rfc2136Solver)


def test_webroot_orders_in_parallel_leave_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Order B cleans up while order A is between making the folder and writing its token."""
    import threading

    from reconciler.adapters.solvers import http01
    from reconciler.ports import ChallengeTask

    solver = http01.WebrootHttp01(tmp_path)
    task_a = ChallengeTask("a.example.com", "http-01", "tokenA", "tokenA.key")
    task_b = ChallengeTask("b.example.com", "http-01", "tokenB", "tokenB.key")
    solver.prepare([task_b])
    in_write, real_write = threading.Event(), http01.atomic_write  # type: ignore[attr-defined]

    def slow_write(*args: object, **kwargs: object) -> None:
        in_write.set()
        threading.Event().wait(0.3)  # B's cleanup tries to run now
        real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(http01, "atomic_write", slow_write)
    order_a = threading.Thread(target=solver.prepare, args=([task_a],))
    order_a.start()
    assert in_write.wait(5)
    solver.cleanup([task_b])
    order_a.join(5)
    assert (tmp_path / ".well-known" / "acme-challenge" / "tokenA").read_text() == "tokenA.key"
    solver.cleanup([task_a])
    assert list(tmp_path.iterdir()) == []
