"""SQLite's WAL is checkpointed by a background thread, never inside a commit.

SQLite's own checkpoint runs in the commit that takes the WAL past 1,000 pages, so one claim
in many waited for pages to be copied and synced. Observed here through the database file:
frames still in the WAL leave it small; a checkpoint copies them in.
"""

from __future__ import annotations

import gc
import sqlite3
import time
from pathlib import Path

from sqlalchemy import text

from reminders import db
from reminders.db import _Checkpointer, make_engine

PAGE = 4096
ROW = 3 * PAGE  # a row a few pages long


def _write(conn: sqlite3.Connection, rows: int, commits: int = 1) -> None:
    for _ in range(commits):
        conn.executemany("INSERT INTO blobs (data) VALUES (?)", [(b"x" * ROW,)] * rows)
        conn.commit()


def _database(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)")
    conn.commit()
    return conn


def test_the_engines_connections_leave_checkpoints_to_the_thread(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA wal_autocheckpoint")).scalar() == 0
            conn.execute(text("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB)"))
            conn.commit()
            for _ in range(40):  # 1,200 pages in commits of 30: past SQLite's own threshold
                conn.execute(
                    text("INSERT INTO blobs (data) VALUES (:data)"),
                    [{"data": b"x" * ROW}] * 10,
                )
                conn.commit()
        # The module's thread looks every CHECKPOINT_EVERY seconds and copies the frames in.
        deadline = time.monotonic() + 10 * db.CHECKPOINT_EVERY + 5
        while path.stat().st_size < 400 * ROW and time.monotonic() < deadline:
            time.sleep(0.05)
        assert path.stat().st_size >= 400 * ROW
    finally:
        engine.dispose()


def test_a_look_checkpoints_only_a_wal_that_changed(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    conn = _database(path)
    _write(conn, 100, commits=5)  # 1,500 pages, none copied in by the commits
    assert path.stat().st_size < 10 * PAGE
    checkpointer = _Checkpointer(interval=3600)
    assert checkpointer.checkpoint(str(path)) is True
    assert path.stat().st_size >= 500 * ROW
    assert checkpointer.checkpoint(str(path)) is False  # nothing new since
    _write(conn, 10)
    assert checkpointer.checkpoint(str(path)) is True
    conn.close()


def test_frames_a_reader_still_needs_are_checkpointed_on_a_later_look(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    conn = _database(path)
    _write(conn, 10)
    reader = sqlite3.connect(path, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM blobs").fetchone()  # a snapshot before the writes below
    _write(conn, 100)
    checkpointer = _Checkpointer(interval=3600)
    assert checkpointer.checkpoint(str(path)) is False  # the reader's snapshot holds them back
    reader.execute("COMMIT")
    assert checkpointer.checkpoint(str(path)) is True  # the WAL did not change: tried again
    assert path.stat().st_size >= 110 * ROW
    reader.close()
    conn.close()


def test_a_removed_database_is_not_created_again(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    conn = _database(path)
    _write(conn, 10)
    checkpointer = _Checkpointer(interval=3600)
    wal = Path(f"{path}-wal")
    kept = wal.read_bytes()
    conn.close()  # the last connection: SQLite checkpoints and removes the WAL itself
    path.unlink()
    wal.write_bytes(kept)  # a WAL left behind by a database removed under a running process
    assert checkpointer.checkpoint(str(path)) is False
    assert not path.exists()


def test_the_thread_ends_with_the_last_engine_it_watched(tmp_path: Path) -> None:
    checkpointer = _Checkpointer(interval=0.02)
    engine = make_engine(f"sqlite:///{tmp_path / 'r.db'}")
    checkpointer.watch(engine, str(tmp_path / "r.db"))
    thread = checkpointer._thread
    assert thread is not None and thread.is_alive()
    engine.dispose()
    del engine
    gc.collect()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert checkpointer._thread is None
