"""Signals reach a thread of the daemon's own through a socket (``signal.set_wakeup_fd``).

The OS may deliver a signal to any thread; Python runs its handler only when the main thread next
executes bytecode, which may be minutes away while it waits for an action or a timer. The byte the
C-level handler writes to the socket wakes the relay at once, whichever thread received the signal.
SIGHUP asks for a pass; the first SIGTERM/SIGINT asks for a stop, a second one (or the stop grace
running out) ends the process at once, and the next start recovers from the journal.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable

from reconciler.support.logging import get_logger

log = get_logger()


class SignalRelay:
    def __init__(
        self,
        on_hup: Callable[[], None],
        on_stop: Callable[[str], None],
        stop_grace: float,
        exit_code: int = 0,
    ) -> None:
        self.on_hup = on_hup
        self.on_stop = on_stop
        self.stop_grace = stop_grace
        self.exit_code = exit_code
        self.stopping = False

    def install(self) -> None:
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        for name in ("SIGTERM", "SIGINT", "SIGHUP"):
            if hasattr(signal, name):
                signal.signal(getattr(signal, name), lambda _s, _f: None)  # the work happens in _relay
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._relay, args=(reader,), name="certctl-signals", daemon=True).start()

    def _relay(self, reader: socket.socket) -> None:
        stop_deadline: float | None = None
        while True:
            timeout = None if stop_deadline is None else max(0.0, stop_deadline - time.monotonic())
            reader.settimeout(timeout)
            try:
                data = reader.recv(64)
            except TimeoutError:
                log.warning(
                    "daemon.stop.forced",
                    seconds=self.stop_grace,
                    note="actions still running after the stop timeout; the next start recovers from the journal",
                )
                os._exit(self.exit_code)
            for signum in data:
                if signum == getattr(signal, "SIGHUP", None):
                    self.on_hup()
                    continue
                name = signal.Signals(signum).name
                if self.stopping:
                    log.warning("daemon.stop.now", signal=name, note="second stop signal")
                    os._exit(self.exit_code)
                self.stopping = True
                self.on_stop(name)
                stop_deadline = time.monotonic() + self.stop_grace
