"""The study store: every run of every study in one embedded SQLite database.

On by default, like llm's logs: ``$GDZOO_HOME/studies.db`` when GDZOO_HOME is set, else the user
data directory (``$XDG_DATA_HOME/gdzoo`` or ``~/.local/share/gdzoo``).  A unit's results are
stored under its stable key (UNIQUE), so running a study again runs only the units that are not
stored, and a study killed at any moment loses only the units in flight.

Concurrency: WAL journal (readers never block the writer or each other), a busy timeout, every
write in a ``BEGIN IMMEDIATE`` transaction (the write lock is taken up front, so two writers
queue instead of deadlocking on a lock upgrade), and one writer per study (the driver: workers
send results back, they never write).  The schema is versioned by the ``migrations`` table.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from ..errors import GdzooError

BUSY_TIMEOUT_MS = 30_000

# Each migration is applied once, in order, inside one transaction; never edit a released one:
# add a new one (the README's schema section shows the result).
MIGRATIONS: list[tuple[str, str]] = [
    ("create studies, units and study_units", """
        CREATE TABLE studies (
            id INTEGER PRIMARY KEY,
            plan_key TEXT NOT NULL,
            kind TEXT NOT NULL,
            problem TEXT NOT NULL,
            command TEXT NOT NULL,
            options TEXT NOT NULL,
            planned INTEGER NOT NULL,
            status TEXT NOT NULL,
            created_at TEXT NOT NULL,
            finished_at TEXT,
            gdzoo_version TEXT NOT NULL,
            torch_version TEXT NOT NULL
        );
        CREATE INDEX studies_plan_key ON studies (plan_key);
        CREATE TABLE units (
            key TEXT PRIMARY KEY,
            unit TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
            result TEXT,
            error TEXT,
            attempts INTEGER NOT NULL DEFAULT 1,
            started_at TEXT,
            ended_at TEXT,
            host TEXT,
            worker TEXT
        );
        CREATE TABLE study_units (
            study_id INTEGER NOT NULL REFERENCES studies (id) ON DELETE CASCADE,
            position INTEGER NOT NULL,
            key TEXT NOT NULL,
            PRIMARY KEY (study_id, position)
        );
        CREATE INDEX study_units_key ON study_units (key);
    """),
]


def default_path() -> str:
    """Where the store lives unless ``--store`` says otherwise."""
    home = os.environ.get("GDZOO_HOME")
    if home:
        return os.path.join(home, "studies.db")
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "gdzoo", "studies.db")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


@dataclass
class StudyRecord:
    """One row of ``studies``, with its progress."""

    id: int
    plan_key: str
    kind: str
    problem: str
    command: str
    options: dict[str, Any]
    planned: int
    done: int
    failed: int
    status: str
    created_at: str
    finished_at: str | None
    gdzoo_version: str
    torch_version: str


class Store:
    """An open store.  ``Store(path)`` creates the file and its schema where needed."""

    def __init__(self, path: str | None = None):
        self.path = path or default_path()
        folder = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(folder, exist_ok=True)
            self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                                      check_same_thread=False)
            self.db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            self.db.execute("PRAGMA journal_mode = WAL")
            self.db.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at each checkpoint, never corrupt
            self.db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise GdzooError(f"cannot open the study store {self.path!r}: {exc} "
                             f"(--store PATH for another file, --no-store for none)") from None
        except OSError as exc:
            raise GdzooError(f"cannot create the study store {self.path!r}: {exc.strerror or exc} "
                             f"(--store PATH for another file, --no-store for none)") from None

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, its lock taken at the start (``BEGIN IMMEDIATE``)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            self.db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.write() as db:
            db.execute("CREATE TABLE IF NOT EXISTS migrations (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                       "applied_at TEXT NOT NULL)")
            applied = {row[0] for row in db.execute("SELECT id FROM migrations")}
            if applied and max(applied) > len(MIGRATIONS):
                raise sqlite3.DatabaseError(f"its schema (migration {max(applied)}) is newer than this gdzoo knows "
                                            f"({len(MIGRATIONS)}): upgrade gdzoo")
            for number, (name, sql) in enumerate(MIGRATIONS, start=1):
                if number in applied:
                    continue
                for statement in filter(str.strip, sql.split(";")):
                    db.execute(statement)
                db.execute("INSERT INTO migrations (id, name, applied_at) VALUES (?, ?, ?)", (number, name, _now()))

    @property
    def schema_version(self) -> int:
        return self.db.execute("SELECT COALESCE(MAX(id), 0) FROM migrations").fetchone()[0]

    # studies ------------------------------------------------------------------------------------

    def open_study(self, *, plan_key: str, kind: str, problem: str, command: str, options: dict[str, Any],
                   keys: list[str]) -> tuple[int, bool]:
        """The study of this plan: the newest stored one with the same plan key (the same command
        again: it resumes), else a new one.  Returns (id, resumed)."""
        import importlib.metadata

        import torch

        with self.write() as db:
            row = db.execute("SELECT id FROM studies WHERE plan_key = ? ORDER BY id DESC LIMIT 1",
                             (plan_key,)).fetchone()
            if row is not None:
                db.execute("UPDATE studies SET status = 'running', finished_at = NULL WHERE id = ?", (row[0],))
                return row[0], True
            cur = db.execute(
                "INSERT INTO studies (plan_key, kind, problem, command, options, planned, status, created_at, "
                "gdzoo_version, torch_version) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?, ?)",
                (plan_key, kind, problem, command, json.dumps(options, sort_keys=True), len(keys), _now(),
                 importlib.metadata.version("gdzoo"), torch.__version__))
            study_id = cur.lastrowid
            db.executemany("INSERT INTO study_units (study_id, position, key) VALUES (?, ?, ?)",
                           [(study_id, i, key) for i, key in enumerate(keys)])
            return study_id, False

    def finish_study(self, study_id: int, status: str) -> None:
        with self.write() as db:
            db.execute("UPDATE studies SET status = ?, finished_at = ? WHERE id = ?", (status, _now(), study_id))

    def resolve(self, ref: str | int) -> int:
        """A study id from ``ID`` or ``latest``; an unknown one is a clear error."""
        if isinstance(ref, str) and ref.strip().lower() == "latest":
            row = self.db.execute("SELECT MAX(id) FROM studies").fetchone()
            if row[0] is None:
                raise GdzooError(f"the store {self.path!r} holds no study yet")
            return row[0]
        try:
            study_id = int(ref)
        except (TypeError, ValueError):
            raise GdzooError(f"{ref!r} is not a study id; give a number from 'gdzoo studies', or 'latest'") from None
        if self.db.execute("SELECT 1 FROM studies WHERE id = ?", (study_id,)).fetchone() is None:
            raise GdzooError(f"no study {study_id} in {self.path!r} ('gdzoo studies' lists them)")
        return study_id

    def studies(self) -> list[StudyRecord]:
        rows = self.db.execute("""
            SELECT s.id, s.plan_key, s.kind, s.problem, s.command, s.options, s.planned,
                   COUNT(CASE WHEN u.status = 'done' THEN 1 END), COUNT(CASE WHEN u.status = 'failed' THEN 1 END),
                   s.status, s.created_at, s.finished_at, s.gdzoo_version, s.torch_version
            FROM studies s LEFT JOIN study_units su ON su.study_id = s.id LEFT JOIN units u ON u.key = su.key
            GROUP BY s.id ORDER BY s.id""").fetchall()
        return [StudyRecord(*row[:5], json.loads(row[5]), *row[6:]) for row in rows]

    def study(self, ref: str | int) -> StudyRecord:
        study_id = self.resolve(ref)
        return next(s for s in self.studies() if s.id == study_id)

    def study_keys(self, study_id: int) -> list[str]:
        return [row[0] for row in self.db.execute(
            "SELECT key FROM study_units WHERE study_id = ? ORDER BY position", (study_id,))]

    def remove(self, ref: str | int) -> int:
        """Delete a study, and the units no other study uses."""
        study_id = self.resolve(ref)
        with self.write() as db:
            keys = [row[0] for row in db.execute("SELECT key FROM study_units WHERE study_id = ?", (study_id,))]
            db.execute("DELETE FROM study_units WHERE study_id = ?", (study_id,))
            db.execute("DELETE FROM studies WHERE id = ?", (study_id,))
            db.executemany("DELETE FROM units WHERE key = ? AND NOT EXISTS "
                           "(SELECT 1 FROM study_units WHERE study_units.key = units.key)", [(k,) for k in keys])
        return study_id

    # units --------------------------------------------------------------------------------------

    def results(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The stored units among ``keys``: key -> {status, result, error, ...}."""
        keys = list(keys)
        out: dict[str, dict[str, Any]] = {}
        for i in range(0, len(keys), 500):  # SQLite's limit on variables in one statement
            chunk = keys[i:i + 500]
            rows = self.db.execute(
                f"SELECT key, unit, status, result, error, attempts, started_at, ended_at, host, worker FROM units "
                f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
            for key, unit, status, result, error, attempts, started, ended, host, worker in rows:
                out[key] = {"unit": json.loads(unit), "status": status,
                            "result": json.loads(result) if result is not None else None, "error": error,
                            "attempts": attempts, "started_at": started, "ended_at": ended, "host": host,
                            "worker": worker}
        return out

    def put(self, key: str, unit: dict[str, Any], *, status: str, result: Any = None, error: str | None = None,
            attempts: int = 1, started_at: str | None = None, ended_at: str | None = None,
            worker: str | None = None) -> None:
        """Store one unit's outcome (a unit stored as done is never replaced)."""
        with self.write() as db:
            db.execute(
                "INSERT INTO units (key, unit, status, result, error, attempts, started_at, ended_at, host, worker) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (key) DO UPDATE SET unit = excluded.unit, status = excluded.status, "
                "result = excluded.result, error = excluded.error, attempts = excluded.attempts, "
                "started_at = excluded.started_at, ended_at = excluded.ended_at, host = excluded.host, "
                "worker = excluded.worker WHERE units.status != 'done'",
                (key, json.dumps(unit, sort_keys=True), status, None if result is None else json.dumps(result),
                 error, attempts, started_at, ended_at, socket.gethostname(), worker))


now = _now
