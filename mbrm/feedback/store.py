"""Feedback store: segments, queries and labels in one SQLite file.

Feedback is the only source of the agent's objective (Leike et al. 2018, Sec. 3.1)
and it costs a person's time, so the store is built not to lose it. Every write is
one ``BEGIN IMMEDIATE`` transaction on a WAL-mode database: several labelling
processes can append at once, a write that fails validation leaves nothing behind,
and two annotators never hold the same query. Labels record their source (real,
imagined or synthesised segments, Sec. 5.2) and who gave them (a synthetic teacher
with its parameters, or a person). The schema is versioned, and a labelled data set
travels as one ``.npz`` file (arrays plus a JSON document) that another run imports.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mbrm.feedback.segments import (
    FeedbackKind,
    Labeller,
    Preference,
    Segment,
    SegmentSource,
    UnacceptableLabel,
)

SCHEMA_VERSION = 1
APPLICATION = "mbrm.feedback"  # meta key 'application': marks a file as ours
EXPORT_FORMAT = "mbrm.feedback.export"
EXPORT_VERSION = 1

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
_QUEUE_ORDER = "ORDER BY score DESC NULLS LAST, id ASC"
_QUERY_COLUMNS = (
    "id, kind, left_id, right_id, status, acquisition, score, source, loop_round, "
    "created_at, leased_to, lease_expires"
)


class FeedbackStoreError(Exception):
    """Base of every error the feedback store raises on purpose."""


class NotAFeedbackStoreError(FeedbackStoreError):
    """The file is not a feedback store (not SQLite, or another program's database)."""


class SchemaVersionError(FeedbackStoreError):
    """The store was written by a newer mbrm with a schema this one cannot read."""


class ShapeMismatchError(FeedbackStoreError, ValueError):
    """Segment arrays whose sizes differ from the store's state or action size."""


class UnknownIdError(FeedbackStoreError, LookupError):
    """No segment or query with that id."""


class InvalidLabelError(FeedbackStoreError, ValueError):
    """A label value that does not fit its query, or a query that takes no label."""


class LeaseConflictError(FeedbackStoreError):
    """The query is leased to another annotator."""


class InvalidExportError(FeedbackStoreError):
    """An export file that is corrupt, foreign, or inconsistent."""


class QueryStatus(StrEnum):
    """Where a query is in its life."""

    PENDING = "pending"  # waiting for an answer
    LABELLED = "labelled"  # answered; exactly one label row
    SKIPPED = "skipped"  # the teacher declined (e.g. B-Pref skip threshold)


@dataclass(frozen=True)
class Query:
    """One question put to a teacher: a preference over two segments or flags over one."""

    id: int
    kind: FeedbackKind
    segment_ids: tuple[int, ...]  # (left, right) for preferences, (segment,) otherwise
    status: QueryStatus
    acquisition: str | None  # name of the acquisition function that chose it
    score: float | None  # its acquisition score (higher = more informative)
    source: str  # segment source, or "mixed" when a pair mixes sources
    loop_round: int | None  # iteration of the training loop that asked it
    created_at: float  # unix seconds
    leased_to: str | None  # annotator holding the lease (may have expired)
    lease_expires: float | None


@dataclass(frozen=True)
class Label:
    """An answer: a Preference, or an UnacceptableLabel, with who gave it and when."""

    id: int
    query_id: int
    kind: FeedbackKind
    value: Preference | UnacceptableLabel
    who: Labeller
    created_at: float


@dataclass(frozen=True)
class DatasetCounts:
    """How many rows an export wrote or an import added."""

    segments: int
    queries: int
    labels: int


UnacceptableValue = UnacceptableLabel | np.ndarray | Sequence[bool] | int | None
LabelValue = Preference | str | UnacceptableValue


class FeedbackStore:
    """Segments, queries and labels in a WAL-mode SQLite file.

    One instance per process (a connection is not shared across ``fork``); any
    number of processes may open the same file. ``state_dim``/``action_dim`` fix
    the segment sizes up front; otherwise the first segment stored fixes them.
    ``clock`` gives unix seconds for timestamps and lease expiry.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        state_dim: int | None = None,
        action_dim: int | None = None,
        busy_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        if self.path.is_dir():
            raise NotAFeedbackStoreError(f"{self.path} is a directory, not a feedback store")
        try:
            # isolation_level=None: transactions are ours (BEGIN IMMEDIATE), not implicit.
            self._conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None)
        except sqlite3.OperationalError as e:
            raise FeedbackStoreError(f"cannot open feedback store {self.path}: {e}") from e
        try:
            self._open()
            self._fix_dims(state_dim, action_dim)
        except BaseException:
            self._conn.close()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self) -> None:
        """Check the file is ours and readable before anything is written to it."""
        c = self._conn
        try:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not tables:
                with self._write():
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
                                ("created_at", repr(self._clock())),
                            ],
                        )
                tables = {
                    r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")
                }
            self._check_tables(tables)
            c.execute("PRAGMA foreign_keys = ON")
            self._use_wal(c)
        except sqlite3.DatabaseError as e:
            name = getattr(e, "sqlite_errorname", "")
            if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise NotAFeedbackStoreError(
                    f"{self.path} is not a feedback store (not a readable SQLite database: {e})"
                ) from e
            if name == "SQLITE_CANTOPEN":
                raise FeedbackStoreError(f"cannot open feedback store {self.path}: {e}") from e
            raise

    def _use_wal(self, c: sqlite3.Connection) -> None:
        """Switch to WAL, retrying while another process holds a lock.

        Changing the journal mode needs the database to itself, and SQLite answers
        "database is locked" at once rather than through the busy handler when another
        process is opening the same new file at that moment.
        """
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                if c.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    c.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _check_tables(self, tables: set[str]) -> None:
        if "meta" not in tables:
            raise NotAFeedbackStoreError(
                f"{self.path} is an SQLite database but not a feedback store "
                f"(no 'meta' table; tables: {sorted(tables)})"
            )
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("application") != APPLICATION:
            raise NotAFeedbackStoreError(
                f"{self.path} is not a feedback store (meta application is "
                f"{meta.get('application')!r}, expected {APPLICATION!r})"
            )
        try:
            version = int(meta["schema_version"])
        except (KeyError, ValueError) as e:
            raise NotAFeedbackStoreError(
                f"{self.path} has no readable schema_version in its meta table"
            ) from e
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self.path} has feedback-store schema version {version}; this version of "
                f"mbrm reads schema {SCHEMA_VERSION} only: open it with a newer mbrm"
            )
        if version < 1 or not _TABLES <= tables:
            raise NotAFeedbackStoreError(
                f"{self.path} has schema version {version} and tables {sorted(tables)}; "
                f"expected version {SCHEMA_VERSION} with {sorted(_TABLES)}"
            )

    def _fix_dims(self, state_dim: int | None, action_dim: int | None) -> None:
        for name, given in (("state_dim", state_dim), ("action_dim", action_dim)):
            if given is not None and (isinstance(given, bool) or int(given) != given or given < 1):
                raise ValueError(f"{name} must be a positive int; got {given!r}")
        if state_dim is None and action_dim is None:
            return
        with self._write():
            self._check_dims(state_dim, action_dim, what="the store's configuration")

    def _check_dims(self, s: int | None, a: int | None, *, what: str) -> None:
        """Compare (S, A) with the store's, recording them if the store has none yet.

        Runs inside a write transaction, so two processes cannot fix different sizes.
        """
        stored = dict(
            self._conn.execute(
                "SELECT key, value FROM meta WHERE key IN ('state_dim', 'action_dim')"
            ).fetchall()
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
                self._conn.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, str(given)))

    @property
    def dims(self) -> tuple[int | None, int | None]:
        """(S, A) of the segments this store holds, None where not fixed yet."""
        meta = dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        s, a = meta.get("state_dim"), meta.get("action_dim")
        return (int(s) if s else None, int(a) if a else None)

    @property
    def schema_version(self) -> int:
        row = self._conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0])

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: all of it is stored, or none of it."""
        self._conn.execute("BEGIN IMMEDIATE")  # take the write lock now, not mid-way
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot across several SELECTs while others write."""
        self._conn.execute("BEGIN")
        try:
            yield self._conn
        finally:
            self._conn.execute("COMMIT")

    # ----------------------------------------------------------------- segments

    def add_segment(self, segment: Segment) -> int:
        """Store a segment; returns its id."""
        with self._write():
            return self._insert_segment(segment, self._clock())

    def _insert_segment(self, seg: Segment, created_at: float) -> int:
        if not isinstance(seg, Segment):
            raise TypeError(f"add_segment needs a Segment; got {type(seg).__name__}")
        if not (np.isfinite(seg.states).all() and np.isfinite(seg.actions).all()):
            raise ValueError("segment has non-finite states or actions; refusing to store it")
        self._check_dims(
            seg.states.shape[1],
            seg.actions.shape[1],
            what=f"segment (states {seg.states.shape}, actions {seg.actions.shape})",
        )
        try:
            meta = json.dumps(seg.meta, sort_keys=True)
        except (TypeError, ValueError) as e:
            raise ValueError(f"segment meta is not JSON-serialisable: {e}") from e
        cur = self._conn.execute(
            "INSERT INTO segments (source, n_states, states, states_dtype, states_shape, "
            "actions, actions_dtype, actions_shape, meta, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seg.source.value,
                seg.states.shape[0],
                *_encode(seg.states),
                *_encode(seg.actions),
                meta,
                created_at,
            ),
        )
        return int(cur.lastrowid)

    def get_segment(self, segment_id: int) -> Segment:
        segment_id = operator.index(segment_id)
        row = self._conn.execute(
            "SELECT states, states_dtype, states_shape, actions, actions_dtype, actions_shape, "
            "source, meta FROM segments WHERE id = ?",
            (segment_id,),
        ).fetchone()
        if row is None:
            raise UnknownIdError(f"no segment with id {segment_id}")
        return Segment(
            _decode(*row[0:3]), _decode(*row[3:6]), SegmentSource(row[6]), json.loads(row[7])
        )

    def _segments(self, ids: set[int]) -> dict[int, Segment]:
        return {i: self.get_segment(i) for i in sorted(ids)}

    # ------------------------------------------------------------------ queries

    def add_query(
        self,
        kind: FeedbackKind | str,
        segment_ids: Sequence[int],
        *,
        acquisition: str | None = None,
        score: float | None = None,
        source: str | None = None,
        loop_round: int | None = None,
    ) -> int:
        """Queue a query over stored segments; returns its id.

        ``kind`` preference takes (left, right) segment ids, unacceptable takes one.
        ``source`` defaults to the segments' source ("mixed" if a pair differs).
        """
        with self._write():
            return self._insert_query(
                FeedbackKind(kind),
                _ids(segment_ids),
                acquisition=acquisition,
                score=score,
                source=source,
                loop_round=loop_round,
                status=QueryStatus.PENDING,
                created_at=self._clock(),
            )

    def _insert_query(
        self,
        kind: FeedbackKind,
        ids: tuple[int, ...],
        *,
        acquisition: str | None,
        score: float | None,
        source: str | None,
        loop_round: int | None,
        status: QueryStatus,
        created_at: float,
    ) -> int:
        need = 2 if kind is FeedbackKind.PREFERENCE else 1
        if len(ids) != need:
            raise ValueError(f"a {kind.value} query takes {need} segment id(s); got {ids}")
        if kind is FeedbackKind.PREFERENCE and ids[0] == ids[1]:
            raise ValueError(f"a preference query needs two different segments; got {ids}")
        if score is not None and not np.isfinite(score):
            raise ValueError(f"acquisition score must be finite; got {score}")
        if loop_round is not None and (isinstance(loop_round, bool) or int(loop_round) < 0):
            raise ValueError(f"loop_round must be a non-negative int; got {loop_round!r}")
        sources = []
        for i in ids:
            row = self._conn.execute("SELECT source FROM segments WHERE id = ?", (i,)).fetchone()
            if row is None:
                raise UnknownIdError(
                    f"{kind.value} query refers to segment {i}, which does not exist"
                )
            sources.append(row[0])
        if source is None:
            source = sources[0] if len(set(sources)) == 1 else "mixed"
        cur = self._conn.execute(
            "INSERT INTO queries (kind, left_id, right_id, status, acquisition, score, source, "
            "loop_round, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                kind.value,
                ids[0],
                ids[1] if need == 2 else None,
                status.value,
                acquisition,
                None if score is None else float(score),
                source,
                None if loop_round is None else int(loop_round),
                created_at,
            ),
        )
        return int(cur.lastrowid)

    def get_query(self, query_id: int) -> Query:
        query_id = operator.index(query_id)
        row = self._conn.execute(
            f"SELECT {_QUERY_COLUMNS} FROM queries WHERE id = ?", (query_id,)
        ).fetchone()
        if row is None:
            raise UnknownIdError(f"no query with id {query_id}")
        return _query(row)

    def pending_queries(
        self, limit: int | None = None, kind: FeedbackKind | str | None = None
    ) -> list[Query]:
        """Pending queries, most informative first (leased ones included)."""
        sql = f"SELECT {_QUERY_COLUMNS} FROM queries WHERE status = 'pending'"
        args: list[Any] = []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(FeedbackKind(kind).value)
        sql += f" {_QUEUE_ORDER}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_query(r) for r in self._conn.execute(sql, args)]

    def count_queries(
        self, status: QueryStatus | str | None = None, *, loop_round: int | None = None
    ) -> int:
        """Number of queries, of one status or all, optionally of one loop round."""
        return self._count(
            "queries q",
            {
                "q.status": None if status is None else QueryStatus(status).value,
                "q.loop_round": loop_round,
            },
        )

    def count_labels(
        self, kind: FeedbackKind | str | None = None, *, loop_round: int | None = None
    ) -> int:
        """Number of labels, of one feedback kind or all, optionally of one loop round."""
        return self._count(
            "labels l JOIN queries q ON q.id = l.query_id",
            {
                "l.kind": None if kind is None else FeedbackKind(kind).value,
                "q.loop_round": loop_round,
            },
        )

    def _count(self, tables: str, equal: dict[str, Any]) -> int:
        """COUNT(*) over ``tables`` where each column with a non-None value equals it."""
        used = {col: v for col, v in equal.items() if v is not None}
        where = " AND ".join(f"{col} = ?" for col in used) or "1=1"
        row = self._conn.execute(
            f"SELECT COUNT(*) FROM {tables} WHERE {where}", list(used.values())
        )
        return int(row.fetchone()[0])

    # ------------------------------------------------------------------- leases

    def lease_next(
        self, annotator: str, lease_seconds: float, kind: FeedbackKind | str | None = None
    ) -> Query | None:
        """Hand the most informative free pending query to ``annotator`` until the lease ends.

        An annotator who still holds a live lease gets that query back (renewed), so
        reloading a labelling page does not take a second query. None when none is free.
        """
        if not annotator:
            raise ValueError("lease_next needs a non-empty annotator name")
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive; got {lease_seconds}")
        kind_sql, kind_args = ("", [])
        if kind is not None:
            kind_sql, kind_args = " AND kind = ?", [FeedbackKind(kind).value]
        now = self._clock()
        with self._write() as c:
            row = c.execute(
                "SELECT id FROM queries WHERE status = 'pending' AND leased_to = ? "
                f"AND lease_expires > ?{kind_sql} ORDER BY id LIMIT 1",
                [annotator, now, *kind_args],
            ).fetchone()
            if row is None:
                row = c.execute(
                    "SELECT id FROM queries WHERE status = 'pending' "
                    f"AND (leased_to IS NULL OR lease_expires <= ?){kind_sql} {_QUEUE_ORDER} "
                    "LIMIT 1",
                    [now, *kind_args],
                ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE queries SET leased_to = ?, lease_expires = ? WHERE id = ?",
                (annotator, now + float(lease_seconds), row[0]),
            )
            return self.get_query(row[0])

    def release(self, query_id: int, annotator: str) -> None:
        """Give a leased query back to the queue before its lease ends."""
        with self._write():
            q = self.get_query(query_id)
            if q.leased_to != annotator:
                raise LeaseConflictError(
                    f"query {query_id} is leased to {q.leased_to!r}, not {annotator!r}"
                )
            self._conn.execute(
                "UPDATE queries SET leased_to = NULL, lease_expires = NULL WHERE id = ?",
                (query_id,),
            )

    def _pending_for(self, query_id: int, who: Labeller, now: float) -> Query:
        """The query, if it is pending and not leased to someone other than ``who``."""
        q = self.get_query(query_id)
        if q.status is not QueryStatus.PENDING:
            raise InvalidLabelError(
                f"query {query_id} is already {q.status.value}; a query is answered once"
            )
        if q.leased_to not in (None, who.name) and q.lease_expires is not None:
            if q.lease_expires > now:
                raise LeaseConflictError(
                    f"query {query_id} is leased to {q.leased_to!r} until "
                    f"{q.lease_expires:.3f}; {who.name!r} cannot answer it"
                )
        return q

    # ------------------------------------------------------------------- labels

    def add_label(self, query_id: int, value: LabelValue, who: Labeller | str) -> int:
        """Answer a pending query; returns the label id.

        Preference queries take a Preference (or its string). Unacceptable queries
        take an UnacceptableLabel, per-state flags [T+1], the first unacceptable step
        (int), or None (no state unacceptable). A plain string ``who`` is a person.
        Labels are final: answering a query twice is an error.
        """
        who = _labeller(who)
        params = _json_params(who)
        now = self._clock()
        with self._write():
            q = self._pending_for(query_id, who, now)
            return self._insert_label(q, value, who, params, now)

    def add_label_with_marks(
        self,
        query_id: int,
        value: LabelValue,
        who: Labeller | str,
        marks: Sequence[tuple[int, int | None]],
    ) -> tuple[int, list[int]]:
        """Answer a query and record unacceptable-state marks on segments, atomically.

        ``marks`` are (segment id, first unacceptable step) pairs, e.g. a person's
        "unacceptable from this frame" on either clip of a preference query; each
        becomes an answered unacceptable query (acquisition "annotator", the same loop
        round). All or nothing: one transaction. Returns (label id, mark query ids).
        """
        who = _labeller(who)
        params = _json_params(who)
        now = self._clock()
        with self._write():
            q = self._pending_for(query_id, who, now)
            label_id = self._insert_label(q, value, who, params, now)
            mark_ids = []
            for seg_id, step in marks:
                qid = self._insert_query(
                    FeedbackKind.UNACCEPTABLE,
                    _ids([seg_id]),
                    acquisition="annotator",
                    score=None,
                    source=None,
                    loop_round=q.loop_round,
                    status=QueryStatus.PENDING,
                    created_at=now,
                )
                self._insert_label(self.get_query(qid), step, who, params, now)
                mark_ids.append(qid)
            return label_id, mark_ids

    def _insert_label(
        self, q: Query, value: LabelValue, who: Labeller, params: str, created_at: float
    ) -> int:
        pref, flags, known = None, None, None
        if q.kind is FeedbackKind.PREFERENCE:
            pref = _preference(value, q.id).value
        else:
            n_states = self._conn.execute(
                "SELECT n_states FROM segments WHERE id = ?", (q.segment_ids[0],)
            ).fetchone()[0]
            label = _unacceptable(value, int(n_states), q.id)
            flags, known = label.flags.tobytes(), label.known.tobytes()
        cur = self._conn.execute(
            "INSERT INTO labels (query_id, kind, preference, flags, known, who_kind, who_name, "
            "who_params, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (q.id, q.kind.value, pref, flags, known, who.kind, who.name, params, created_at),
        )
        self._conn.execute(
            "UPDATE queries SET status = 'labelled', leased_to = NULL, lease_expires = NULL "
            "WHERE id = ?",
            (q.id,),
        )
        return int(cur.lastrowid)

    def add_labelled_query(
        self,
        kind: FeedbackKind | str,
        segment_ids: Sequence[int],
        value: LabelValue,
        who: Labeller | str,
        *,
        acquisition: str | None = None,
        score: float | None = None,
        source: str | None = None,
        loop_round: int | None = None,
    ) -> tuple[int, int]:
        """Record a query together with its answer; returns (query id, label id).

        For a synthetic teacher that answers at once: one transaction, so the query is
        never visible as pending (an annotator cannot lease it in between) and a failed
        label leaves no unanswered query behind.
        """
        who = _labeller(who)
        params = _json_params(who)
        now = self._clock()
        with self._write():
            query_id = self._insert_query(
                FeedbackKind(kind),
                _ids(segment_ids),
                acquisition=acquisition,
                score=score,
                source=source,
                loop_round=loop_round,
                status=QueryStatus.PENDING,
                created_at=now,
            )
            return query_id, self._insert_label(self.get_query(query_id), value, who, params, now)

    def skip(self, query_id: int, who: Labeller | str) -> None:
        """Record that ``who`` declined to answer (B-Pref skip); the query leaves the queue."""
        who = _labeller(who)
        skipped_by = json.dumps({"kind": who.kind, "name": who.name, "params": who.params})
        now = self._clock()
        with self._write():
            self._pending_for(query_id, who, now)
            self._conn.execute(
                "UPDATE queries SET status = 'skipped', skipped_by = ?, leased_to = NULL, "
                "lease_expires = NULL WHERE id = ?",
                (skipped_by, query_id),
            )

    def get_label(self, query_id: int) -> Label | None:
        """The label of a query, or None while it has none."""
        query_id = self.get_query(query_id).id  # unknown id is an error, not "no label"
        row = self._conn.execute(
            "SELECT id, query_id, kind, preference, flags, known, who_kind, who_name, "
            "who_params, created_at FROM labels WHERE query_id = ?",
            (query_id,),
        ).fetchone()
        return None if row is None else _label(row)

    # ----------------------------------------------------------------- datasets

    def preference_pairs(self) -> list[tuple[Segment, Segment, Preference]]:
        """Every preference label as (left, right, answer), cannot_tell included."""
        with self._read() as c:
            rows = c.execute(
                "SELECT q.left_id, q.right_id, l.preference FROM labels l "
                "JOIN queries q ON q.id = l.query_id WHERE l.kind = 'preference' ORDER BY l.id"
            ).fetchall()
            segs = self._segments({i for r in rows for i in r[:2]})
        return [(segs[a], segs[b], Preference(p)) for a, b, p in rows]

    def unacceptable_states(
        self, *, with_segments: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Judged states and their flags from every unacceptable label.

        Returns states [M, S] (float64) and flags [M] (bool), and with
        ``with_segments`` the id of the segment each state came from [M] (so held-out
        splits can keep a segment's correlated states together). States a teacher did
        not judge (after the first unacceptable step) are left out.
        """
        with self._read() as c:
            rows = c.execute(
                "SELECT s.states, s.states_dtype, s.states_shape, l.flags, l.known, s.id "
                "FROM labels l JOIN queries q ON q.id = l.query_id "
                "JOIN segments s ON s.id = q.left_id WHERE l.kind = 'unacceptable' ORDER BY l.id"
            ).fetchall()
        s_dim = self.dims[0] or 0
        states: list[np.ndarray] = [np.zeros((0, s_dim))]  # [M_i, S]
        flags: list[np.ndarray] = [np.zeros(0, dtype=bool)]  # [M_i]
        segs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]  # [M_i]
        for blob, dtype, shape, f, k, seg_id in rows:
            known = np.frombuffer(k, dtype=bool)
            states.append(_decode(blob, dtype, shape).astype(np.float64)[known])
            flags.append(np.frombuffer(f, dtype=bool)[known])
            segs.append(np.full(int(known.sum()), seg_id, dtype=np.int64))
        if with_segments:
            return np.concatenate(states), np.concatenate(flags), np.concatenate(segs)
        return np.concatenate(states), np.concatenate(flags)

    def label_counts(self, by: Literal["source", "who", "kind"] = "source") -> dict[str, int]:
        """Number of labels per query source ("real", "imagined", ..., "mixed"),
        per labeller (``Labeller.key``), or per feedback kind."""
        column = {
            "source": "q.source",
            "who": "l.who_kind || ':' || l.who_name",
            "kind": "l.kind",
        }.get(by)
        if column is None:
            raise ValueError(f"label_counts by must be 'source', 'who' or 'kind'; got {by!r}")
        rows = self._conn.execute(
            f"SELECT {column} AS k, COUNT(*) FROM labels l JOIN queries q ON q.id = l.query_id "
            "GROUP BY k ORDER BY k"
        )
        return {k: int(n) for k, n in rows}

    # ----------------------------------------------------------- export/import

    def export_dataset(
        self, path: str | os.PathLike[str], *, labelled_only: bool = False
    ) -> DatasetCounts:
        """Write segments, queries and labels to one portable ``.npz`` file.

        Arrays are concatenated (states, actions, flags); a JSON document inside the
        file holds everything else plus a SHA-256 of each array. Leases are not
        exported. ``labelled_only`` keeps labelled queries and their segments only.
        The file is written to a temporary name and renamed, so it is never half-done.
        """
        with self._read() as c:
            where = "WHERE status = 'labelled'" if labelled_only else ""
            queries = [
                _query(r) for r in c.execute(f"SELECT {_QUERY_COLUMNS} FROM queries {where}")
            ]
            labels = {
                lab.query_id: lab
                for lab in map(
                    _label,
                    c.execute(
                        "SELECT id, query_id, kind, preference, flags, known, who_kind, "
                        "who_name, who_params, created_at FROM labels ORDER BY id"
                    ),
                )
            }
            if labelled_only:
                seg_ids = {i for q in queries for i in q.segment_ids}
            else:
                seg_ids = {r[0] for r in c.execute("SELECT id FROM segments")}
            created = dict(c.execute("SELECT id, created_at FROM segments").fetchall())
            skipped_by = dict(
                c.execute("SELECT id, skipped_by FROM queries WHERE skipped_by IS NOT NULL")
            )
            segs = self._segments(seg_ids)
            s_dim, a_dim = self.dims
        order = sorted(segs)
        doc: dict[str, Any] = {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_VERSION,
            "schema_version": SCHEMA_VERSION,
            "state_dim": s_dim,
            "action_dim": a_dim,
            "segments": [
                {
                    "id": i,
                    "source": segs[i].source.value,
                    "n_states": segs[i].states.shape[0],
                    "meta": segs[i].meta,
                    "created_at": created[i],
                }
                for i in order
            ],
            "queries": [],
            "labels": [],
        }
        flags, known = [], []
        for q in sorted(queries, key=lambda q: q.id):
            doc["queries"].append(
                {
                    "id": q.id,
                    "kind": q.kind.value,
                    "segments": list(q.segment_ids),
                    "status": q.status.value,
                    "acquisition": q.acquisition,
                    "score": q.score,
                    "source": q.source,
                    "loop_round": q.loop_round,
                    "created_at": q.created_at,
                    "skipped_by": json.loads(skipped_by[q.id]) if q.id in skipped_by else None,
                }
            )
            lab = labels.get(q.id)
            if lab is None:
                continue
            entry: dict[str, Any] = {
                "query": q.id,
                "kind": lab.kind.value,
                "who": {"kind": lab.who.kind, "name": lab.who.name, "params": lab.who.params},
                "created_at": lab.created_at,
            }
            if isinstance(lab.value, Preference):
                entry["preference"] = lab.value.value
            else:
                flags.append(lab.value.flags)
                known.append(lab.value.known)
            doc["labels"].append(entry)
        arrays = {
            "states": np.concatenate([np.zeros((0, s_dim or 0))] + [segs[i].states for i in order]),
            "actions": np.concatenate(
                [np.zeros((0, a_dim or 0))] + [segs[i].actions for i in order]
            ),
            "flags": np.concatenate([np.zeros(0, dtype=bool), *flags]),
            "known": np.concatenate([np.zeros(0, dtype=bool), *known]),
        }
        doc["sha256"] = {k: _digest(v) for k, v in arrays.items()}
        document = np.frombuffer(json.dumps(doc).encode(), dtype=np.uint8)
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            np.savez_compressed(f, document=document, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return DatasetCounts(len(order), len(doc["queries"]), len(doc["labels"]))

    def import_dataset(self, path: str | os.PathLike[str]) -> DatasetCounts:
        """Append an exported data set to this store, with new ids.

        The whole file is read and checked first and then written in one transaction:
        a corrupt, foreign or mismatched file raises and leaves the store unchanged.
        """
        doc, arrays = _read_export(Path(path))
        try:
            segments, queries, labels = _parse_export(doc, arrays)
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise InvalidExportError(f"{path} is not a consistent feedback export: {e}") from e
        with self._write():
            seg_ids: dict[int, int] = {}
            for old_id, seg, created_at in segments:
                seg_ids[old_id] = self._insert_segment(seg, created_at)
            query_ids: dict[int, int] = {}
            for qd in queries:
                query_ids[qd["id"]] = self._insert_query(
                    FeedbackKind(qd["kind"]),
                    tuple(seg_ids[i] for i in qd["segments"]),
                    acquisition=qd["acquisition"],
                    score=qd["score"],
                    source=qd["source"],
                    loop_round=qd["loop_round"],
                    status=QueryStatus(qd["status"]),
                    created_at=float(qd["created_at"]),
                )
                if qd.get("skipped_by") is not None:
                    self._conn.execute(
                        "UPDATE queries SET skipped_by = ? WHERE id = ?",
                        (json.dumps(qd["skipped_by"]), query_ids[qd["id"]]),
                    )
            for old_query, value, who, created_at in labels:
                q = self.get_query(query_ids[old_query])
                self._insert_label(q, value, who, _json_params(who), created_at)
        return DatasetCounts(len(segments), len(queries), len(labels))


# ---------------------------------------------------------------------- helpers


def _ids(ids: Sequence[int]) -> tuple[int, ...]:
    """Ids as Python ints (numpy integers too); a float id is an error, not rounded."""
    return tuple(operator.index(i) for i in ids)


def _encode(a: np.ndarray) -> tuple[bytes, str, str]:
    a = np.ascontiguousarray(a)
    return a.tobytes(), a.dtype.str, json.dumps(list(a.shape))


def _decode(blob: bytes, dtype: str, shape: str) -> np.ndarray:
    dt, dims = np.dtype(dtype), tuple(json.loads(shape))
    if len(blob) != int(np.prod(dims)) * dt.itemsize:
        raise FeedbackStoreError(
            f"stored array of shape {dims} and dtype {dt} has {len(blob)} bytes; store is damaged"
        )
    return np.frombuffer(blob, dtype=dt).reshape(dims).copy()


def _query(row: Sequence[Any]) -> Query:
    ids = (row[2],) if row[3] is None else (row[2], row[3])
    return Query(
        id=row[0],
        kind=FeedbackKind(row[1]),
        segment_ids=ids,
        status=QueryStatus(row[4]),
        acquisition=row[5],
        score=row[6],
        source=row[7],
        loop_round=row[8],
        created_at=row[9],
        leased_to=row[10],
        lease_expires=row[11],
    )


def _label(row: Sequence[Any]) -> Label:
    kind = FeedbackKind(row[2])
    if kind is FeedbackKind.PREFERENCE:
        value: Preference | UnacceptableLabel = Preference(row[3])
    else:
        value = UnacceptableLabel(
            np.frombuffer(row[4], dtype=bool).copy(), np.frombuffer(row[5], dtype=bool).copy()
        )
    who = Labeller(row[6], row[7], json.loads(row[8]))
    return Label(row[0], row[1], kind, value, who, row[9])


def _labeller(who: Labeller | str) -> Labeller:
    if isinstance(who, Labeller):
        return who
    if isinstance(who, str):
        return Labeller.person(who)
    raise TypeError(f"who must be a Labeller or a person's name; got {type(who).__name__}")


def _json_params(who: Labeller) -> str:
    try:
        return json.dumps(who.params, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise InvalidLabelError(f"parameters of {who.key} are not JSON-serialisable: {e}") from e


def _preference(value: Any, query_id: int) -> Preference:
    if isinstance(value, Preference):
        return value
    if isinstance(value, str):
        try:
            return Preference(value)
        except ValueError:
            pass
    raise InvalidLabelError(
        f"query {query_id} is a preference query: its label is one of "
        f"{[p.value for p in Preference]}; got {value!r}"
    )


def _unacceptable(value: Any, n_states: int, query_id: int) -> UnacceptableLabel:
    what = f"query {query_id} is an unacceptable-state query over {n_states} states"
    if isinstance(value, Preference | str | bool | np.bool_ | float | np.floating):
        raise InvalidLabelError(
            f"{what}: its label is per-state flags, a first unacceptable step, or None; "
            f"got {value!r}"
        )
    try:
        if value is None or isinstance(value, int | np.integer):
            return UnacceptableLabel.from_first_step(
                None if value is None else int(value), n_states
            )
        label = value if isinstance(value, UnacceptableLabel) else UnacceptableLabel(value)
    except (TypeError, ValueError) as e:
        raise InvalidLabelError(f"{what}: {e}") from e
    if label.n_states != n_states:
        raise InvalidLabelError(f"{what}: got {label.n_states} flags, expected {n_states}")
    return label


def _digest(a: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _read_export(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Document and arrays of an export file, with its checksums verified."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile) or "document" not in npz.files:
                raise InvalidExportError(f"{path} is not a feedback export (no document inside)")
            contents = {k: npz[k] for k in npz.files}
        doc = json.loads(contents.pop("document").tobytes().decode())
    except InvalidExportError:
        raise
    except Exception as e:  # numpy and zipfile raise many types for damaged files
        raise InvalidExportError(f"{path} is not a readable feedback export: {e!r}") from e
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise InvalidExportError(f"{path} is not a feedback export (format is not {EXPORT_FORMAT})")
    version = doc.get("format_version")
    if not isinstance(version, int) or version > EXPORT_VERSION:
        raise InvalidExportError(
            f"{path} has export format version {version!r}; this mbrm reads up to {EXPORT_VERSION}"
        )
    digests = doc.get("sha256")
    if not isinstance(digests, dict) or set(digests) != set(contents):
        raise InvalidExportError(f"{path}: arrays {sorted(contents)} do not match its checksums")
    for k, a in contents.items():
        if _digest(a) != digests[k]:
            raise InvalidExportError(f"{path}: array {k!r} fails its checksum; the file is corrupt")
    return doc, contents


def _parse_export(
    doc: dict[str, Any], arrays: dict[str, np.ndarray]
) -> tuple[
    list[tuple[int, Segment, float]],
    list[dict[str, Any]],
    list[tuple[int, UnacceptableLabel | Preference, Labeller, float]],
]:
    """Build every object an import will write, so that bad content fails before writing."""
    states, actions = arrays["states"], arrays["actions"]
    flags, known = arrays["flags"], arrays["known"]
    segments, n_states = [], {}
    s0 = a0 = 0
    for sd in doc["segments"]:
        n = int(sd["n_states"])
        seg = Segment(states[s0 : s0 + n], actions[a0 : a0 + n - 1], sd["source"], sd["meta"])
        if seg.states.shape[0] != n:
            raise ValueError(f"segment {sd['id']} runs past the end of the state array")
        segments.append((int(sd["id"]), seg, float(sd["created_at"])))
        n_states[int(sd["id"])] = n
        s0, a0 = s0 + n, a0 + n - 1
    if (s0, a0) != (states.shape[0], actions.shape[0]):
        raise ValueError(f"arrays hold {states.shape[0]} states, segments use {s0}")
    queries = list(doc["queries"])
    kinds = {}
    for qd in queries:
        if any(i not in n_states for i in qd["segments"]):
            raise ValueError(f"query {qd['id']} refers to segments not in the file")
        kinds[int(qd["id"])] = (FeedbackKind(qd["kind"]), qd["segments"], qd["status"])
    if len(kinds) != len(queries):
        raise ValueError("query ids repeat")
    labels = []
    f0 = 0
    for ld in doc["labels"]:
        kind, segs, status = kinds[int(ld["query"])]
        if status != QueryStatus.LABELLED or FeedbackKind(ld["kind"]) is not kind:
            raise ValueError(f"label for query {ld['query']} does not match that query")
        who = Labeller(ld["who"]["kind"], ld["who"]["name"], ld["who"]["params"])
        if kind is FeedbackKind.PREFERENCE:
            value: Preference | UnacceptableLabel = Preference(ld["preference"])
        else:
            n = n_states[segs[0]]
            value = UnacceptableLabel(flags[f0 : f0 + n], known[f0 : f0 + n])
            if value.n_states != n:
                raise ValueError(f"flags of query {ld['query']} run past the end of the array")
            f0 += n
        labels.append((int(ld["query"]), value, who, float(ld["created_at"])))
    if f0 != flags.shape[0]:
        raise ValueError(f"flag array holds {flags.shape[0]} entries, labels use {f0}")
    labelled = {int(q["id"]) for q in queries if q["status"] == QueryStatus.LABELLED}
    if labelled != {q for q, *_ in labels} or len(labels) != len(labelled):
        raise ValueError("labelled queries and labels do not correspond one to one")
    return segments, queries, labels


__all__ = [
    "APPLICATION",
    "SCHEMA_VERSION",
    "DatasetCounts",
    "FeedbackStore",
    "FeedbackStoreError",
    "InvalidExportError",
    "InvalidLabelError",
    "Label",
    "LeaseConflictError",
    "NotAFeedbackStoreError",
    "Query",
    "QueryStatus",
    "SchemaVersionError",
    "ShapeMismatchError",
    "UnknownIdError",
]
