"""Rendering rows of results: tabulate's formats, plus json and csv."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any, Iterable, Sequence

import tabulate as _tabulate

EXTRA_FORMATS = ("json", "csv")
FORMATS = tuple(sorted(_tabulate.tabulate_formats)) + EXTRA_FORMATS
DEFAULT_FORMAT = "simple"


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "tolist"):
        return _jsonable(value.tolist())
    return value


def to_json(data: Any) -> str:
    """JSON with non-finite floats written as null / "inf" (JSON has no NaN)."""
    return json.dumps(_jsonable(data), indent=2)


def _cell(value: Any) -> Any:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(str(_cell(v)) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return value


def render(rows: Sequence[dict[str, Any]], fmt: str = DEFAULT_FORMAT, headers: Iterable[str] | None = None,
           data: Any = None, floatfmt: str = "g") -> str:
    """Render ``rows`` (dicts) as a table in ``fmt``; the columns are every key of any row, in the
    order they first appear (a row without one, a diverged run's metrics say, shows it empty).

    For json, ``data`` (if given) is written instead of the rows, so a command can emit its full
    result (histories and all) while the table shows a summary.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    headers = list(headers) if headers is not None else list(dict.fromkeys(k for row in rows for k in row))
    if fmt == "json":
        return to_json(data if data is not None else [dict(r) for r in rows])
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(headers)
        for row in rows:
            writer.writerow([_csv_cell(row.get(h)) for h in headers])
        return out.getvalue().rstrip("\n")
    table = [[_cell(row.get(h)) for h in headers] for row in rows]
    return _tabulate.tabulate(table, headers=headers, tablefmt=fmt, floatfmt=floatfmt)


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(_jsonable(value))
    return "" if value is None else value
