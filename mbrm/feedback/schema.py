"""The feedback store's SQLite file: its tables, how it is opened, its transactions.

A file is checked to be ours and of a schema this version reads before anything
is written to it, so a wrong path or a newer store is refused rather than altered.
Every write is one ``BEGIN IMMEDIATE`` transaction on a WAL-mode database, so
several labelling processes can append at once and a write that fails leaves
nothing behind. The state and action sizes live in the ``meta`` table and are
fixed under the write lock, so two processes cannot fix different sizes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mbrm.feedback.errors import (
    FeedbackStoreError,
    NotAFeedbackStoreError,
    SchemaVersionError,
    ShapeMismatchError,
)

SCHEMA_VERSION = 1
APPLICATION = "mbrm.feedback"  # meta key 'application': marks a file as ours

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE segments (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL CHECK (source IN ('real', 'imagined', 'synthesised')),
    n_states INTEGER NOT NULL,
    states BLOB NOT NULL,
    states_dtype TEXT NOT NULL,
    states_shape TEXT NOT NULL,
    actions BLOB NOT NULL,
    actions_dtype TEXT NOT NULL,
    actions_shape TEXT NOT NULL,
    meta TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE queries (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('preference', 'unacceptable')),
    left_id INTEGER NOT NULL REFERENCES segments (id),
    right_id INTEGER REFERENCES segments (id),
    status TEXT NOT NULL CHECK (status IN ('pending', 'labelled', 'skipped')),
    acquisition TEXT,
    score REAL,
    source TEXT NOT NULL,
    loop_round INTEGER,
    created_at REAL NOT NULL,
    leased_to TEXT,
    lease_expires REAL,
    skipped_by TEXT,
    CHECK ((kind = 'preference') = (right_id IS NOT NULL))
);
CREATE INDEX queries_by_status ON queries (status, score DESC, id);
CREATE TABLE labels (
    id INTEGER PRIMARY KEY,
    query_id INTEGER NOT NULL UNIQUE REFERENCES queries (id),
    kind TEXT NOT NULL CHECK (kind IN ('preference', 'unacceptable')),
    preference TEXT CHECK (preference IN ('left', 'right', 'equal', 'cannot_tell')),
    flags BLOB,
    known BLOB,
    who_kind TEXT NOT NULL,
    who_name TEXT NOT NULL,
    who_params TEXT NOT NULL,
    created_at REAL NOT NULL,
    CHECK ((kind = 'preference') = (preference IS NOT NULL)),
    CHECK ((kind = 'unacceptable') = (flags IS NOT NULL AND known IS NOT NULL))
);
"""
_TABLES = {"meta", "segments", "queries", "labels"}
# Highest acquisition score first (the most informative query); unscored queries
# after scored ones; ties in the order they were asked.
QUEUE_ORDER = "ORDER BY score DESC NULLS LAST, id ASC"


@contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction: all of it is stored, or none of it."""
    conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not mid-way
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A consistent snapshot across several SELECTs while others write."""
    conn.execute("BEGIN")
    try:
        yield conn
    finally:
        conn.execute("COMMIT")


def open_store(
    path: Path,
    *,
    state_dim: int | None,
    action_dim: int | None,
    busy_timeout: float,
    clock: Callable[[], float],
) -> sqlite3.Connection:
    """A connection to the feedback store at ``path``, created there if the file is new.

    ``clock`` stamps a new store's creation time; given sizes are checked against
    the store's, or recorded if it has none yet.
    """
    if path.is_dir():
        raise NotAFeedbackStoreError(f"{path} is a directory, not a feedback store")
    try:
        # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not implicit.
        conn = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None)
    except sqlite3.OperationalError as e:
        raise FeedbackStoreError(f"cannot open feedback store {path}: {e}") from e
    try:
        _open(conn, path, busy_timeout, clock)
        _fix_dims(conn, state_dim, action_dim)
    except BaseException:
        conn.close()
        raise
    return conn


def _open(
    c: sqlite3.Connection, path: Path, busy_timeout: float, clock: Callable[[], float]
) -> None:
    """Check the file is ours and readable before anything is written to it."""
    try:
        tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables:
            with write_transaction(c):
                # Another process may have created it between our read and our lock.
                if not c.execute("SELECT 1 FROM sqlite_master WHERE type='table'").fetchone():
                    for stmt in _SCHEMA.split(";"):
                        if stmt.strip():
                            c.execute(stmt)
                    c.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [
                            ("application", APPLICATION),
                            ("schema_version", str(SCHEMA_VERSION)),
                            ("created_at", repr(clock())),
                        ],
                    )
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        _check_tables(c, path, tables)
        c.execute("PRAGMA foreign_keys = ON")
        _use_wal(c, busy_timeout)
    except sqlite3.DatabaseError as e:
        name = getattr(e, "sqlite_errorname", "")
        if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
            raise NotAFeedbackStoreError(
                f"{path} is not a feedback store (not a readable SQLite database: {e})"
            ) from e
        if name == "SQLITE_CANTOPEN":
            raise FeedbackStoreError(f"cannot open feedback store {path}: {e}") from e
        raise


def _use_wal(c: sqlite3.Connection, busy_timeout: float) -> None:
    """Switch to WAL, retrying while another process holds a lock.

    Changing the journal mode needs the database to itself, and SQLite answers
    "database is locked" at once rather than through the busy handler when another
    process is opening the same new file at that moment.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            if c.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                c.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def _check_tables(c: sqlite3.Connection, path: Path, tables: set[str]) -> None:
    if "meta" not in tables:
        raise NotAFeedbackStoreError(
            f"{path} is an SQLite database but not a feedback store "
            f"(no 'meta' table; tables: {sorted(tables)})"
        )
    meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("application") != APPLICATION:
        raise NotAFeedbackStoreError(
            f"{path} is not a feedback store (meta application is "
            f"{meta.get('application')!r}, expected {APPLICATION!r})"
        )
    try:
        version = int(meta["schema_version"])
    except (KeyError, ValueError) as e:
        raise NotAFeedbackStoreError(
            f"{path} has no readable schema_version in its meta table"
        ) from e
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{path} has feedback-store schema version {version}; this version of "
            f"mbrm reads schema {SCHEMA_VERSION} only: open it with a newer mbrm"
        )
    if version < 1 or not _TABLES <= tables:
        raise NotAFeedbackStoreError(
            f"{path} has schema version {version} and tables {sorted(tables)}; "
            f"expected version {SCHEMA_VERSION} with {sorted(_TABLES)}"
        )


def _fix_dims(c: sqlite3.Connection, state_dim: int | None, action_dim: int | None) -> None:
    for name, given in (("state_dim", state_dim), ("action_dim", action_dim)):
        if given is not None and (isinstance(given, bool) or int(given) != given or given < 1):
            raise ValueError(f"{name} must be a positive int; got {given!r}")
    if state_dim is None and action_dim is None:
        return
    with write_transaction(c):
        check_dims(c, state_dim, action_dim, what="the store's configuration")


def check_dims(c: sqlite3.Connection, s: int | None, a: int | None, *, what: str) -> None:
    """Compare (S, A) with the store's, recording them if the store has none yet.

    Runs inside a write transaction, so two processes cannot fix different sizes.
    """
    stored = dict(
        c.execute("SELECT key, value FROM meta WHERE key IN ('state_dim', 'action_dim')").fetchall()
    )
    for key, given in (("state_dim", s), ("action_dim", a)):
        if given is None:
            continue
        if key in stored:
            if int(stored[key]) != given:
                raise ShapeMismatchError(
                    f"{what} has {key}={given}, but this store holds {key}="
                    f"{stored[key]} (states [T+1, {stored.get('state_dim', '?')}], "
                    f"actions [T, {stored.get('action_dim', '?')}])"
                )
        else:
            c.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, str(given)))


def read_dims(c: sqlite3.Connection) -> tuple[int | None, int | None]:
    """(S, A) recorded in the store, None where not fixed yet."""
    meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
    s, a = meta.get("state_dim"), meta.get("action_dim")
    return (int(s) if s else None, int(a) if a else None)


def read_schema_version(c: sqlite3.Connection) -> int:
    """The schema version the store was written with."""
    row = c.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
    return int(row[0])


__all__ = [
    "APPLICATION",
    "QUEUE_ORDER",
    "SCHEMA_VERSION",
    "check_dims",
    "open_store",
    "read_dims",
    "read_schema_version",
    "read_snapshot",
    "write_transaction",
]
