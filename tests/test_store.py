"""The SQLite study store: schema, migrations, units under their keys, concurrency."""

import json
import multiprocessing
import sqlite3

import pytest

from gdzoo.errors import GdzooError
from gdzoo.study import store as store_mod
from gdzoo.study.store import MIGRATIONS, Store


def test_a_new_store_has_every_migration_applied_once(tmp_path):
    path = tmp_path / "s.db"
    with Store(str(path)) as s:
        assert s.schema_version == len(MIGRATIONS)
    with Store(str(path)) as s:  # opening again applies nothing twice
        rows = s.db.execute("SELECT id, name FROM migrations").fetchall()
        assert [r[0] for r in rows] == list(range(1, len(MIGRATIONS) + 1))
        tables = {r[0] for r in s.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"migrations", "studies", "units", "study_units"} <= tables
        assert s.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_later_migration_is_applied_to_an_older_store(tmp_path, monkeypatch):
    path = str(tmp_path / "s.db")
    Store(path).close()
    monkeypatch.setattr(store_mod, "MIGRATIONS", MIGRATIONS + [("add a note", "ALTER TABLE studies ADD COLUMN note TEXT")])
    with Store(path) as s:
        assert s.schema_version == len(MIGRATIONS) + 1
        assert "note" in [r[1] for r in s.db.execute("PRAGMA table_info(studies)")]


def test_a_store_from_a_newer_gdzoo_is_refused_clearly(tmp_path):
    path = str(tmp_path / "s.db")
    with Store(path) as s, s.write() as db:
        db.execute("INSERT INTO migrations VALUES (99, 'future', 'x')")
    with pytest.raises(GdzooError, match="newer than this gdzoo knows"):
        Store(path)


def test_a_file_that_is_not_a_database_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not SQLite" * 100)
    with pytest.raises(GdzooError, match="cannot open the study store.*--no-store"):
        Store(str(path))


def test_units_are_stored_once_under_their_key(tmp_path):
    with Store(str(tmp_path / "s.db")) as s:
        sid, resumed = s.open_study(plan_key="p1", kind="compare", problem="doubling", command="gdzoo compare",
                                    options={}, keys=["a", "b"])
        assert not resumed
        s.put("a", {"x": 1}, status="done", result=[{"final_loss": 0.5}])
        s.put("a", {"x": 1}, status="failed", error="boom")  # a done unit is never replaced
        s.put("b", {"x": 2}, status="failed", error="boom")
        got = s.results(["a", "b", "c"])
        assert got["a"]["status"] == "done" and got["a"]["result"] == [{"final_loss": 0.5}]
        assert got["b"]["status"] == "failed" and got["b"]["error"] == "boom" and "c" not in got
        again, resumed = s.open_study(plan_key="p1", kind="compare", problem="doubling", command="gdzoo compare",
                                      options={}, keys=["a", "b"])
        assert (again, resumed) == (sid, True)
        (record,) = s.studies()
        assert (record.planned, record.done, record.failed) == (2, 1, 1)
        with pytest.raises(sqlite3.IntegrityError):
            with s.write() as db:
                db.execute("INSERT INTO units (key, unit, status) VALUES ('a', '{}', 'done')")


def test_latest_and_unknown_ids(tmp_path):
    with Store(str(tmp_path / "s.db")) as s:
        with pytest.raises(GdzooError, match="holds no study yet"):
            s.resolve("latest")
        first, _ = s.open_study(plan_key="p1", kind="compare", problem="x", command="c", options={}, keys=["a"])
        second, _ = s.open_study(plan_key="p2", kind="sweep", problem="x", command="c", options={}, keys=["a", "b"])
        assert s.resolve("latest") == second and s.resolve(str(first)) == first
        with pytest.raises(GdzooError, match="no study 7"):
            s.resolve("7")
        with pytest.raises(GdzooError, match="not a study id"):
            s.resolve("seven")


def test_removing_a_study_keeps_units_another_study_uses(tmp_path):
    with Store(str(tmp_path / "s.db")) as s:
        one, _ = s.open_study(plan_key="p1", kind="compare", problem="x", command="c", options={}, keys=["a", "b"])
        two, _ = s.open_study(plan_key="p2", kind="compare", problem="x", command="c", options={}, keys=["b"])
        s.put("a", {}, status="done", result=[])
        s.put("b", {}, status="done", result=[])
        s.remove(one)
        assert set(s.results(["a", "b"])) == {"b"}
        assert [r.id for r in s.studies()] == [two]


def _writer(path, n):
    s = Store(path)
    for i in range(n):
        s.put(f"unit-{i}", {"i": i}, status="done", result=[{"history": list(range(50)), "i": i}])
    s.close()


def _reader(path, n, errors):
    s = Store(path)
    try:
        for _ in range(n):
            s.studies()
            s.results([f"unit-{i}" for i in range(0, 200, 7)])
    except sqlite3.OperationalError as exc:  # "database is locked" and its kind
        errors.put(str(exc))
    finally:
        s.close()


def test_sixteen_readers_and_a_writer_see_no_lock_errors(tmp_path):
    path = str(tmp_path / "s.db")
    with Store(path) as s:
        s.open_study(plan_key="p", kind="compare", problem="x", command="c", options={},
                     keys=[f"unit-{i}" for i in range(200)])
    ctx = multiprocessing.get_context("spawn")
    errors = ctx.Queue()
    readers = [ctx.Process(target=_reader, args=(path, 60, errors)) for _ in range(16)]
    writer = ctx.Process(target=_writer, args=(path, 200))
    for p in readers + [writer]:
        p.start()
    for p in readers + [writer]:
        p.join(120)
    assert all(p.exitcode == 0 for p in readers + [writer])
    found = []
    while not errors.empty():
        found.append(errors.get())
    assert found == []
    with Store(path) as s:
        stored = s.results([f"unit-{i}" for i in range(200)])
        assert len(stored) == 200 and stored["unit-5"]["result"][0]["i"] == 5
        assert json.loads(json.dumps(stored["unit-5"]["result"])) == stored["unit-5"]["result"]
