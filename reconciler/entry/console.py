"""Human output on a terminal, through rich: coloured plans, apply progress, the confirmation prompt.

What is shown is decided in ``core.render`` as lines of (text, style) segments; this module only maps the
style names to colours. Off a terminal (a pipe, a file, cron, a service) the same lines are written as
plain text, byte for byte what `--json`-free scripts have always read. Colour follows rich's rules: none
with ``NO_COLOR`` set, ``TERM=dumb`` or ``--no-color``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.text import Text

from reconciler.core.render import Line, plain

STYLES = {
    "": "",
    "create": "bold green",
    "update": "bold yellow",
    "delete": "bold red",
    "note": "yellow",
    "heading": "bold",
    "error": "bold red",
    "warning": "yellow",
    "ok": "green",
    "dim": "dim",
}


class Output:
    """Where results go (stdout): rich on a terminal, plain text elsewhere."""

    def __init__(self, stream: TextIO | None = None, *, color: bool = True) -> None:
        self.stream = stream or sys.stdout
        self.terminal = _isatty(self.stream)
        self.console = (
            Console(
                file=self.stream,
                no_color=not color or "NO_COLOR" in os.environ,
                highlight=False,
                markup=False,
                emoji=False,
                soft_wrap=True,
            )
            if self.terminal
            else None
        )

    def lines(self, lines: Sequence[Line]) -> None:
        if self.console is None:
            self.stream.write(plain(lines))
            self.stream.flush()
            return
        for line in lines:
            text = Text()
            for part, style in line:
                text.append(part, style=STYLES.get(style, ""))
            self.console.print(text)

    def line(self, *segments: tuple[str, str]) -> None:
        self.lines([tuple(segments)])

    def write(self, text: str) -> None:
        """Text that has no styles (tables, JSON, Markdown)."""
        self.stream.write(text)
        self.stream.flush()

    def confirm(self, question: str) -> bool:
        """Ask on the terminal; only "y" or "yes" agrees (Enter, EOF, anything else does not)."""
        self.line((question, "heading"), (" [y/N] ", ""))
        try:
            answer = input()
        except EOFError:
            return False
        return answer.strip().lower() in ("y", "yes")

    def confirm_irreversible(self, question: str) -> bool:
        """Ask before something that cannot be undone (a revocation): only the word "yes" agrees."""
        self.line((question, "heading"))
        self.line(("  Only 'yes' will be accepted: ", ""))
        try:
            answer = input()
        except (EOFError, KeyboardInterrupt):
            return False
        return answer.strip() == "yes"


def interactive(stream: TextIO | None = None) -> bool:
    """A person at a terminal: both stdin and stdout are terminals."""
    return _isatty(sys.stdin) and _isatty(stream or sys.stdout)


def _isatty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False
