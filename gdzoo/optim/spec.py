"""Hyperparameter declarations and the spec language.

A spec names a component and its options, ``adam:lr=0.01,betas=(0.9,0.99)``; a chain
joins elements with ``+``: ``adam:lr=0.01+clip_norm:max_norm=1+l2:weight=1e-4``.
Values are numbers, ``true``/``false``, words, or tuples written ``(a,b)`` or ``a/b``.
A value given without a name fills the component's hyperparameters in declared order
(``csv:data.csv,target=y``).  Every error points at the offending part of the text.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import SpecError

_KINDS = ("float", "int", "bool", "str", "floats", "ints")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter: its name, default, type and a line of help.

    ``kind`` is one of float, int, bool, str, floats (a tuple of floats), ints.
    ``choices`` restricts str values; ``length`` fixes the length of a tuple.  Floats are never
    nan, and infinite only where ``allow_inf`` says so (``norm_type=inf``).
    """

    name: str
    default: Any
    kind: str = "float"
    help: str = ""
    choices: tuple[str, ...] | None = None
    length: int | None = None
    allow_inf: bool = False

    def __post_init__(self):
        if self.kind not in _KINDS:
            raise ValueError(f"Hyper {self.name!r}: kind must be one of {', '.join(_KINDS)}, not {self.kind!r}")

    def _finite(self, value: float | int) -> float | int:
        if isinstance(value, float) and math.isnan(value):
            raise ValueError("not a number")
        if isinstance(value, float) and math.isinf(value) and not self.allow_inf:
            raise ValueError("must be finite")
        return value

    @property
    def type_name(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        if self.kind in ("floats", "ints"):
            item = self.kind[:-1]
            return f"({item},{item})" if self.length == 2 else f"{item}/{item}/..."
        return self.kind

    def coerce(self, value: Any) -> Any:
        """Convert ``value`` (a Python value or the text of a spec) to this hyperparameter's type.

        Raises ValueError with a message that names the hyperparameter and what it expects.
        """
        try:
            return self._coerce(value)
        except (TypeError, ValueError) as exc:
            detail = f" ({exc})" if str(exc) else ""
            raise ValueError(f"{self.name} expects {self.type_name}, got {value!r}{detail}") from None

    def _coerce(self, value: Any) -> Any:
        if value is None:
            if self.default is None:
                return None
            raise ValueError("")
        kind = self.kind
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, (int, float)) and value in (0, 1):
                return bool(value)
            if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
                return value.strip().lower() in _TRUE
            raise ValueError("")
        if kind == "float":
            return self._finite(_to_float(value))
        if kind == "int":
            return _to_int(value)
        if kind == "str":
            if not isinstance(value, str):
                raise ValueError("")
            if self.choices and value not in self.choices:
                raise ValueError(f"choose one of {', '.join(self.choices)}")
            return value
        # tuples
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("(") and text.endswith(")"):
                text = text[1:-1]
            items = [t for t in re.split(r"[,/]", text) if t.strip()] if text.strip() else []
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            items = [value]
        else:
            items = list(value)
        convert = (lambda v: self._finite(_to_float(v))) if kind == "floats" else _to_int
        result = tuple(convert(v) for v in items)
        if self.length is not None and len(result) != self.length:
            raise ValueError(f"{self.length} values needed")
        return result


def _to_float(value: Any) -> float | int:
    """A float; whole numbers written without a point stay ints (so messages read like torch's)."""
    if isinstance(value, bool):
        raise ValueError("")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = value.strip()
        if re.fullmatch(r"[+-]?\d+", value):
            return int(value)
    if hasattr(value, "item") and callable(value.item):  # 0-d tensors and numpy scalars
        value = value.item()
    return float(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("")
        return int(value)
    if isinstance(value, str):
        f = float(value.strip())
        if not f.is_integer():
            raise ValueError("")
        return int(f)
    return int(value)


@dataclass
class Element:
    """One parsed element of a spec: a name and its options as written (strings)."""

    name: str
    options: dict[str, str] = field(default_factory=dict)
    positional: list[str] = field(default_factory=list)
    text: str = ""
    start: int = 0  # offset of this element in the whole spec, for error carets
    spans: dict[str, tuple[int, int]] = field(default_factory=dict)  # option -> span in the whole spec


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*$")


def split_chain(text: str) -> list[tuple[int, str]]:
    """Split a chain spec at top-level ``+`` signs (not the ``+`` of ``1e+3``)."""
    parts: list[tuple[int, str]] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
        elif ch == "+" and depth == 0:
            exponent = i >= 2 and text[i - 1] in "eE" and (text[i - 2].isdigit() or text[i - 2] == ".") \
                and i + 1 < len(text) and text[i + 1].isdigit()
            if not exponent:
                parts.append((start, text[start:i]))
                start = i + 1
    parts.append((start, text[start:]))
    return parts


def parse_element(text: str, whole: str | None = None, offset: int = 0) -> Element:
    """Parse ``name:key=value,key=value`` (leading/trailing blanks allowed)."""
    whole = text if whole is None else whole
    lead = len(text) - len(text.lstrip())
    body = text.strip()
    offset += lead
    if not body:
        raise SpecError("empty spec element (a stray '+'?)", whole, offset, offset + 1)
    name, sep, rest = body.partition(":")
    name = name.strip()
    if not _NAME.match(name):
        raise SpecError(f"bad component name {name!r}: expected a name like adam or clip_norm",
                        whole, offset, offset + len(name))
    element = Element(name=name, text=body, start=offset)
    if not sep:
        return element
    pos = offset + len(body) - len(rest)
    if not rest.strip():
        raise SpecError(f"nothing after ':' in {name!r}: expected key=value options", whole, pos - 1, pos)
    for opt_start, opt in _split_options(rest, whole, pos):
        abs_start = pos + opt_start
        stripped = opt.strip()
        abs_start += len(opt) - len(opt.lstrip())
        span = (abs_start, abs_start + len(stripped))
        if not stripped:
            raise SpecError(f"empty option in {name!r}", whole, abs_start, abs_start + 1)
        key, eq, value = stripped.partition("=")
        if not eq:
            element.positional.append(stripped)
            element.spans[f"#{len(element.positional) - 1}"] = span
            continue
        key = key.strip()
        if not _NAME.match(key):
            raise SpecError(f"bad option name {key!r} in {name!r}", whole, *span)
        if not value.strip():
            raise SpecError(f"option {key!r} of {name!r} has no value", whole, *span)
        if key in element.options:
            raise SpecError(f"option {key!r} given twice in {name!r}", whole, *span)
        element.options[key] = value.strip()
        element.spans[key] = span
    return element


def _split_options(text: str, whole: str | None = None, offset: int = 0) -> list[tuple[int, str]]:
    """Split options at top-level commas; errors point into ``whole`` (``text`` starts at ``offset``)."""
    if whole is None:
        whole, offset = text, 0
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth -= 1
            if depth < 0:
                raise SpecError("unbalanced ')'", whole, offset + i, offset + i + 1)
        elif ch == "," and depth == 0:
            parts.append((start, text[start:i]))
            start = i + 1
    if depth:
        raise SpecError("unbalanced '('", whole, offset + start, offset + len(text.rstrip()))
    parts.append((start, text[start:]))
    return parts


def parse_chain(text: str) -> list[Element]:
    """Parse a chain spec ``a:k=v+b:k=v`` into its elements."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty spec: expected a name like 'adam' or a chain like 'adam:lr=0.01+clip_norm'")
    return [parse_element(part, text, start) for start, part in split_chain(text)]


def bind(element: Element, hypers: Sequence[Hyper], kind: str, whole: str | None = None,
         check: Callable[[dict], None] | None = None, base: dict | None = None) -> dict[str, Any]:
    """Turn an element's written options into typed values, checked against ``hypers``.

    ``base`` holds defaults to start from (a registered variant's own defaults).
    Unknown options and bad values raise SpecError pointing into ``whole``.
    """
    whole = element.text if whole is None else whole
    by_name = {h.name: h for h in hypers}
    values = dict(base) if base is not None else {h.name: h.default for h in hypers}
    names = [h.name for h in hypers]
    if len(element.positional) > len(names):
        span = element.spans[f"#{len(names)}"]
        raise SpecError(f"{kind} {element.name!r} takes at most {len(names)} unnamed value(s); "
                        f"name the option, e.g. {names[0] if names else 'key'}=...", whole, *span)
    items = [(names[i], v, element.spans[f"#{i}"]) for i, v in enumerate(element.positional)]
    items += [(k, v, element.spans[k]) for k, v in element.options.items()]
    seen = set()
    for key, raw, span in items:
        if key in seen:
            raise SpecError(f"option {key!r} of {element.name!r} given twice", whole, *span)
        seen.add(key)
        if key not in by_name:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            valid = ", ".join(names) if names else "none"
            raise SpecError(f"{kind} {element.name!r} has no option {key!r}{hint}; valid options: {valid}",
                            whole, *span)
        try:
            values[key] = by_name[key].coerce(raw)
        except ValueError as exc:
            raise SpecError(f"{element.name}: {exc}", whole, *span) from None
    if check is not None:
        try:
            check(values)
        except ValueError as exc:
            raise SpecError(f"{element.name}: {exc}", whole, element.start, element.start + len(element.text)) \
                from None
    return values


def format_value(value: Any) -> str:
    """Write a value the way the spec language reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, tuple):
        return "(" + ",".join(format_value(v) for v in value) + ")"
    return str(value)
