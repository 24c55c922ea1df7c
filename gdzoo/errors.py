"""The exceptions gdzoo raises: one base class, so callers (and the CLI) catch one thing."""

from __future__ import annotations

import difflib


class GdzooError(Exception):
    """Base class of every error gdzoo raises on purpose: the message is for a person."""


class SpecError(GdzooError, ValueError):
    """A malformed spec string or a bad hyperparameter value; the message points at the part."""

    def __init__(self, message: str, text: str | None = None, start: int = 0, end: int | None = None):
        self.reason = message
        self.text = text
        self.start = start
        self.end = end
        if text is not None:
            end = max(start + 1, end if end is not None else start + 1)
            message = f"{message}\n  {text}\n  {' ' * start}{'^' * (end - start)}"
        super().__init__(message)


class UnknownComponent(GdzooError, KeyError):
    """A name that no plugin registered; the message lists close matches."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        message = f"unknown {kind} {name!r}"
        if close:
            message += f" (did you mean {' or '.join(close)}?)"
        elif known:
            message += f"; known {kind}s: {', '.join(sorted(known))}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return self.args[0]


class PluginError(GdzooError):
    """A plugin that failed to load or register (raised only in strict mode or for programming errors)."""


class DataError(GdzooError):
    """Data that cannot be used (a missing or malformed CSV file); the message names the file and place."""
