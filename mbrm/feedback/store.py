"""Feedback store: segments, queries and labels in one SQLite file.

Feedback is the only source of the agent's objective (Leike et al. 2018, Sec. 3.1)
and it costs a person's time, so the store is built not to lose it. Every write is
one ``BEGIN IMMEDIATE`` transaction on a WAL-mode database: several labelling
processes can append at once, a write that fails validation leaves nothing behind,
and two annotators never hold the same query. Labels record their source (real,
imagined or synthesised segments, Sec. 5.2) and who gave them (a synthetic teacher
with its parameters, or a person). The schema is versioned, and a labelled data set
travels as one ``.npz`` file (arrays plus a JSON document) that another run imports.

``FeedbackStore`` is the one entry point and owns the connection and the clock;
the file and its transactions are in ``schema``, single rows in ``rows``, leases
in ``leases``, training reads in ``datasets`` and the export file in ``export``.
The record types and errors are re-exported here for callers that import them
with the store.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mbrm.feedback import datasets, export, leases, rows
from mbrm.feedback.errors import (
    FeedbackStoreError,
    InvalidExportError,
    InvalidLabelError,
    LeaseConflictError,
    NotAFeedbackStoreError,
    SchemaVersionError,
    ShapeMismatchError,
    UnknownIdError,
)
from mbrm.feedback.records import (
    QUERY_COLUMNS,
    DatasetCounts,
    Label,
    LabelValue,
    Query,
    QueryStatus,
    as_ids,
    as_labeller,
    labeller_params,
    query_from_row,
)
from mbrm.feedback.schema import (
    APPLICATION,
    QUEUE_ORDER,
    SCHEMA_VERSION,
    open_store,
    read_dims,
    read_schema_version,
    write_transaction,
)
from mbrm.feedback.segments import FeedbackKind, Labeller, Preference, Segment


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
        self._conn = open_store(
            self.path,
            state_dim=state_dim,
            action_dim=action_dim,
            busy_timeout=busy_timeout,
            clock=clock,
        )

    @property
    def dims(self) -> tuple[int | None, int | None]:
        """(S, A) of the segments this store holds, None where not fixed yet."""
        return read_dims(self._conn)

    @property
    def schema_version(self) -> int:
        return read_schema_version(self._conn)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> FeedbackStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- segments

    def add_segment(self, segment: Segment) -> int:
        """Store a segment; returns its id."""
        with write_transaction(self._conn) as c:
            return rows.insert_segment(c, segment, self._clock())

    def get_segment(self, segment_id: int) -> Segment:
        return rows.fetch_segment(self._conn, segment_id)

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
        with write_transaction(self._conn) as c:
            return rows.insert_query(
                c,
                FeedbackKind(kind),
                as_ids(segment_ids),
                acquisition=acquisition,
                score=score,
                source=source,
                loop_round=loop_round,
                status=QueryStatus.PENDING,
                created_at=self._clock(),
            )

    def get_query(self, query_id: int) -> Query:
        return rows.fetch_query(self._conn, query_id)

    def pending_queries(
        self, limit: int | None = None, kind: FeedbackKind | str | None = None
    ) -> list[Query]:
        """Pending queries, most informative first (leased ones included)."""
        sql = f"SELECT {QUERY_COLUMNS} FROM queries WHERE status = 'pending'"
        args: list[Any] = []
        if kind is not None:
            sql += " AND kind = ?"
            args.append(FeedbackKind(kind).value)
        sql += f" {QUEUE_ORDER}"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [query_from_row(r) for r in self._conn.execute(sql, args)]

    def count_queries(
        self,
        status: QueryStatus | str | None = None,
        *,
        loop_round: int | None = None,
        excluding_acquisition: str | None = None,
    ) -> int:
        """Number of queries: of a status, of a loop round, not of an acquisition."""
        return self._count(
            "queries q",
            {
                "q.status": None if status is None else QueryStatus(status).value,
                "q.loop_round": loop_round,
            },
            {"q.acquisition": excluding_acquisition},
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

    def _count(
        self, tables: str, equal: dict[str, Any], unequal: dict[str, Any] | None = None
    ) -> int:
        """COUNT(*) over ``tables``: columns with a non-None value equal it in ``equal``,
        differ from it in ``unequal`` (NULL differs)."""
        used = {col: v for col, v in equal.items() if v is not None}
        differ = {col: v for col, v in (unequal or {}).items() if v is not None}
        terms = [f"{col} = ?" for col in used]
        terms += [f"({col} IS NULL OR {col} != ?)" for col in differ]
        where = " AND ".join(terms) or "1=1"
        row = self._conn.execute(
            f"SELECT COUNT(*) FROM {tables} WHERE {where}", [*used.values(), *differ.values()]
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
        return leases.lease_next(self._conn, self._clock, annotator, lease_seconds, kind)

    def release(self, query_id: int, annotator: str) -> None:
        """Give a leased query back to the queue before its lease ends."""
        leases.release(self._conn, query_id, annotator)

    # ------------------------------------------------------------------- labels

    def add_label(self, query_id: int, value: LabelValue, who: Labeller | str) -> int:
        """Answer a pending query; returns the label id.

        Preference queries take a Preference (or its string). Unacceptable queries
        take an UnacceptableLabel, per-state flags [T+1], the first unacceptable step
        (int), or None (no state unacceptable). A plain string ``who`` is a person.
        Labels are final: answering a query twice is an error.
        """
        who = as_labeller(who)
        params = labeller_params(who)
        now = self._clock()
        with write_transaction(self._conn) as c:
            q = leases.pending_for(c, query_id, who, now)
            return rows.insert_label(c, q, value, who, params, now)

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
        who = as_labeller(who)
        params = labeller_params(who)
        now = self._clock()
        with write_transaction(self._conn) as c:
            q = leases.pending_for(c, query_id, who, now)
            label_id = rows.insert_label(c, q, value, who, params, now)
            mark_ids = []
            for seg_id, step in marks:
                qid = rows.insert_query(
                    c,
                    FeedbackKind.UNACCEPTABLE,
                    as_ids([seg_id]),
                    acquisition="annotator",
                    score=None,
                    source=None,
                    loop_round=q.loop_round,
                    status=QueryStatus.PENDING,
                    created_at=now,
                )
                rows.insert_label(c, rows.fetch_query(c, qid), step, who, params, now)
                mark_ids.append(qid)
            return label_id, mark_ids

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
        who = as_labeller(who)
        params = labeller_params(who)
        now = self._clock()
        with write_transaction(self._conn) as c:
            query_id = rows.insert_query(
                c,
                FeedbackKind(kind),
                as_ids(segment_ids),
                acquisition=acquisition,
                score=score,
                source=source,
                loop_round=loop_round,
                status=QueryStatus.PENDING,
                created_at=now,
            )
            return query_id, rows.insert_label(
                c, rows.fetch_query(c, query_id), value, who, params, now
            )

    def skip(self, query_id: int, who: Labeller | str) -> None:
        """Record that ``who`` declined to answer (B-Pref skip); the query leaves the queue."""
        who = as_labeller(who)
        skipped_by = json.dumps({"kind": who.kind, "name": who.name, "params": who.params})
        now = self._clock()
        with write_transaction(self._conn) as c:
            leases.pending_for(c, query_id, who, now)
            c.execute(
                "UPDATE queries SET status = 'skipped', skipped_by = ?, leased_to = NULL, "
                "lease_expires = NULL WHERE id = ?",
                (skipped_by, query_id),
            )

    def get_label(self, query_id: int) -> Label | None:
        """The label of a query, or None while it has none."""
        query_id = self.get_query(query_id).id  # unknown id is an error, not "no label"
        return rows.fetch_label(self._conn, query_id)

    # ----------------------------------------------------------------- datasets

    def preference_pairs(self) -> list[tuple[Segment, Segment, Preference]]:
        """Every preference label as (left, right, answer), cannot_tell included."""
        return datasets.preference_pairs(self._conn)

    def unacceptable_states(
        self, *, with_segments: bool = False
    ) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Judged states and their flags from every unacceptable label.

        Returns states [M, S] (float64) and flags [M] (bool), and with
        ``with_segments`` the id of the segment each state came from [M] (so held-out
        splits can keep a segment's correlated states together). States a teacher did
        not judge (after the first unacceptable step) are left out.
        """
        return datasets.unacceptable_states(self._conn, with_segments=with_segments)

    def label_counts(self, by: Literal["source", "who", "kind"] = "source") -> dict[str, int]:
        """Number of labels per query source ("real", "imagined", ..., "mixed"),
        per labeller (``Labeller.key``), or per feedback kind."""
        return datasets.label_counts(self._conn, by)

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
        return export.export_dataset(self._conn, path, labelled_only=labelled_only)

    def import_dataset(self, path: str | os.PathLike[str]) -> DatasetCounts:
        """Append an exported data set to this store, with new ids.

        The whole file is read and checked first and then written in one transaction:
        a corrupt, foreign or mismatched file raises and leaves the store unchanged.
        """
        return export.import_dataset(self._conn, path)


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
