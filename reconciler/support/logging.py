"""structlog set-up: logs to stderr, as console text or JSON lines.

structlog (with the terminal library its console renderer brings) takes a tenth of a second to import,
more than a whole `certctl plan` of a few certificates spends on anything else. So modules log through
``get_logger()``, whose logger imports structlog at its first event, and ``configure`` applies its
set-up then, or at once when structlog is already loaded (the daemon, the tests). A command that logs
nothing never loads it.
"""

from __future__ import annotations

import logging
import sys
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import structlog

_pending: tuple[str, str] | None = None  # the set-up asked for before structlog was loaded
_lock = threading.Lock()


class _StderrLogger:
    """Writes each event to whatever sys.stderr is *now* (a logger bound to the stream of the moment it
    was configured keeps writing to it after it is closed or replaced, as in tests and embedding)."""

    def msg(self, message: str) -> None:
        stream = sys.stderr
        stream.write(message + "\n")
        stream.flush()

    log = debug = info = warning = warn = error = critical = exception = fatal = failure = err = msg


class _StderrLoggerFactory:
    def __call__(self, *args: object) -> _StderrLogger:
        return _StderrLogger()


def configure(fmt: str = "console", level: str = "info") -> None:
    """Log to stderr as ``fmt`` ("console" or "json") from ``level`` up: now if structlog is loaded, else
    when the first event is logged."""
    global _pending
    with _lock:
        if "structlog" in sys.modules:
            _pending = None
            _apply(fmt, level)
        else:
            _pending = (fmt, level)


def loaded() -> ModuleType:
    """structlog, with the set-up ``configure`` asked for applied."""
    global _pending
    import structlog

    with _lock:
        if _pending is not None:
            fmt, level = _pending
            _pending = None
            _apply(fmt, level)
    return structlog


class Logger:
    """A structlog logger (``log.info("event", key=value)``, ``log.bind(...)``) that loads structlog at
    its first use."""

    __slots__ = ("_proxy",)

    def __init__(self) -> None:
        self._proxy: Any = None

    def __getattr__(self, name: str) -> Any:
        proxy = self._proxy
        if proxy is None:
            proxy = self._proxy = loaded().get_logger()
        return getattr(proxy, name)


def get_logger() -> Logger:
    return Logger()


def _apply(fmt: str, level: str) -> None:
    import structlog

    processors: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if fmt == "json":
        processors += [
            structlog.processors.dict_tracebacks,
            structlog.processors.JSONRenderer(sort_keys=True),
        ]
    else:
        processors += [structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper(), logging.INFO)),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )
