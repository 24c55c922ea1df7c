"""Tabular data: CSV files read into a standardised Dataset, with errors that name the file, line and column."""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass

import torch

from ..errors import DataError
from .problem import Dataset

DELIMITERS = ",;\t"
MAX_AUTO_CLASSES = 10  # task=auto: integer targets with at most this many distinct values are classes


@dataclass
class Table:
    """A CSV file's header and rows of cell text, with each row's line number for messages."""

    path: str
    columns: list[str]
    rows: list[list[str]]
    lines: list[int]


@dataclass
class CsvData:
    """A CSV file ready for training: the Dataset, the task it poses, class labels and feature scaling."""

    dataset: Dataset
    task: str
    labels: list[str]  # the original target value of each class index (classification only)
    mean: torch.Tensor  # each feature's mean and standard deviation before standardising
    std: torch.Tensor


def standardize(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Columns scaled to zero mean and unit (population) std; constant columns are only centred."""
    mean = X.mean(dim=0)
    std = X.std(dim=0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (X - mean) / std, mean, std


def read_table(path: str) -> Table:
    """Read a CSV file with a header row (delimiter ',', ';' or tab, taken from the header line)."""
    path = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{path} is a directory, not a CSV file") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})") \
            from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = max(DELIMITERS, key=first.count) if any(d in first for d in DELIMITERS) else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    rows, lines = [], []
    try:
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue  # blank line
            if header is None:
                header = [cell.strip() for cell in row]
                _check_header(path, header, reader.line_num)
                continue
            if len(row) != len(header):
                raise DataError(f"{path} line {reader.line_num}: {len(row)} values, but the header has "
                                f"{len(header)} columns ({', '.join(header)})")
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{path} line {reader.line_num}: not valid CSV ({exc})") from None
    if header is None:
        raise DataError(f"{path} is empty: expected a header row naming the columns, then one row per example")
    if not rows:
        raise DataError(f"{path} has a header row but no data rows")
    return Table(path, header, rows, lines)


def _check_header(path: str, header: list[str], line: int) -> None:
    for i, name in enumerate(header, 1):
        if not name:
            raise DataError(f"{path} line {line}: column {i} of the header has no name")
    duplicates = sorted({name for name in header if header.count(name) > 1})
    if duplicates:
        raise DataError(f"{path} line {line}: column name(s) {', '.join(map(repr, duplicates))} appear more "
                        f"than once in the header")
    if all(_number(name) is not None for name in header):
        raise DataError(f"{path} line {line} should be a header row naming the columns, but it holds only "
                        f"numbers ({', '.join(header)})")


def _number(text: str) -> float | None:
    """The finite number a cell holds, or None."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _missing(text: str) -> bool:
    """An empty cell, or one holding NaN or infinity: a missing value."""
    return not text or text.lower().lstrip("+-") in ("nan", "inf", "infinity")


def _cell_error(table: Table, row: int, column: int) -> DataError:
    where = f"{table.path} line {table.lines[row]}, column {table.columns[column]!r}"
    text = table.rows[row][column].strip()
    if not text:
        return DataError(f"{where} is empty (missing values are not supported: fill or drop the row)")
    if _missing(text):
        return DataError(f"{where}: {text!r} is not a finite number (missing values are not supported)")
    return DataError(f"{where}: {text!r} is not a number")


def numeric_column(table: Table, column: int) -> list[float]:
    """A column's cells as numbers; the first bad cell raises DataError naming its line and column."""
    values = []
    for row, cells in enumerate(table.rows):
        value = _number(cells[column])
        if value is None:
            raise _cell_error(table, row, column)
        values.append(value)
    return values


def load_csv(path: str, target: str | None = None, task: str = "auto") -> CsvData:
    """Read a CSV file into standardised features and a target (the last column unless named).

    ``task`` is regression, classification or auto: auto picks classification when the target
    holds words (e.g. yes/no), or whole numbers that read as class labels (see _class_indices:
    0/1, or 1..k without a gap, at most MAX_AUTO_CLASSES, some repeated); else regression.
    """
    table = read_table(path)
    target = table.columns[-1] if target is None else target
    if target not in table.columns:
        raise DataError(f"{table.path} has no column {target!r}; its columns are: {', '.join(table.columns)}")
    t = table.columns.index(target)
    features = [i for i in range(len(table.columns)) if i != t]
    if not features:
        raise DataError(f"{table.path} has only the target column {target!r}: at least one feature column "
                        f"is needed")
    X = torch.tensor([numeric_column(table, i) for i in features], dtype=torch.float64).T
    X, mean, std = standardize(X)
    y, task, labels = _target(table, t, task)
    classes = len(labels) if task == "classification" else 0
    dataset = Dataset(X, y, [table.columns[i] for i in features], target, classes)
    return CsvData(dataset, task, labels, mean, std)


def _class_indices(numbers: list[float]) -> bool:
    """Whole numbers that read as class labels: 2 to MAX_AUTO_CLASSES distinct values counting up
    from 0 or 1 without a gap (0/1, 1..5), some repeated.  Other integers (3, 5, 8, 8, 6) are
    quantities: regression."""
    if not all(n.is_integer() for n in numbers):
        return False
    distinct = sorted(set(numbers))
    if not 2 <= len(distinct) <= min(MAX_AUTO_CLASSES, len(numbers) - 1):
        return False
    return distinct[0] in (0, 1) and distinct == [distinct[0] + i for i in range(len(distinct))]


def _target(table: Table, column: int, task: str) -> tuple[torch.Tensor, str, list[str]]:
    """The target tensor, the resolved task, and the class labels in class-index order."""
    cells = [cells[column].strip() for cells in table.rows]
    numbers = [_number(cell) for cell in cells]
    missing = next((i for i, cell in enumerate(cells) if _missing(cell)), None)
    if missing is not None:
        raise _cell_error(table, missing, column)
    numeric = None not in numbers
    if task == "auto":
        if len(set(cells)) < 2:
            raise DataError(f"{table.path}: target column {table.columns[column]!r} holds one value only "
                            f"({cells[0]!r}): there is nothing to learn")
        task = "classification" if not numeric or _class_indices(numbers) else "regression"
    if task == "regression":
        return torch.tensor(numeric_column(table, column), dtype=torch.float64), task, []
    keys = numbers if numeric else cells
    distinct = sorted(set(keys))
    if len(distinct) < 2:
        raise DataError(f"{table.path}: target column {table.columns[column]!r} holds one value only "
                        f"({cells[0]!r}); classification needs at least 2 classes")
    index = {key: i for i, key in enumerate(distinct)}
    y = torch.tensor([index[key] for key in keys])
    labels = [_label(key) for key in distinct]
    return (y.double() if len(distinct) == 2 else y), task, labels


def _label(key: float | str) -> str:
    if isinstance(key, float) and key.is_integer():
        return str(int(key))
    return str(key)
