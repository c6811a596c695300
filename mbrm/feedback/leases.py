"""Leases: which annotator holds which pending query, and until when.

Several people label from one queue at once, and a person's time is the scarce
resource (Leike et al. 2018, Sec. 3.1), so two annotators must never be shown the
same query. A lease is taken and checked under the store's write lock; it ends
when the query is answered, given back, or its time runs out, and a lapsed lease
frees the query for the next annotator without anyone having to clean it up.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from mbrm.feedback.errors import InvalidLabelError, LeaseConflictError
from mbrm.feedback.records import Query, QueryStatus
from mbrm.feedback.rows import fetch_query
from mbrm.feedback.schema import QUEUE_ORDER, write_transaction
from mbrm.feedback.segments import FeedbackKind, Labeller


def lease_next(
    conn: sqlite3.Connection,
    clock: Callable[[], float],
    annotator: str,
    lease_seconds: float,
    kind: FeedbackKind | str | None = None,
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
    now = clock()
    with write_transaction(conn) as c:
        row = c.execute(
            "SELECT id FROM queries WHERE status = 'pending' AND leased_to = ? "
            f"AND lease_expires > ?{kind_sql} ORDER BY id LIMIT 1",
            [annotator, now, *kind_args],
        ).fetchone()
        if row is None:
            row = c.execute(
                "SELECT id FROM queries WHERE status = 'pending' "
                f"AND (leased_to IS NULL OR lease_expires <= ?){kind_sql} {QUEUE_ORDER} "
                "LIMIT 1",
                [now, *kind_args],
            ).fetchone()
        if row is None:
            return None
        c.execute(
            "UPDATE queries SET leased_to = ?, lease_expires = ? WHERE id = ?",
            (annotator, now + float(lease_seconds), row[0]),
        )
        return fetch_query(c, row[0])


def release(conn: sqlite3.Connection, query_id: int, annotator: str) -> None:
    """Give a leased query back to the queue before its lease ends."""
    with write_transaction(conn) as c:
        q = fetch_query(c, query_id)
        if q.leased_to != annotator:
            raise LeaseConflictError(
                f"query {query_id} is leased to {q.leased_to!r}, not {annotator!r}"
            )
        c.execute(
            "UPDATE queries SET leased_to = NULL, lease_expires = NULL WHERE id = ?",
            (query_id,),
        )


def pending_for(c: sqlite3.Connection, query_id: int, who: Labeller, now: float) -> Query:
    """The query, if it is pending and not leased to someone other than ``who``.

    Runs inside the caller's write transaction, so the answer it guards is the only one.
    """
    q = fetch_query(c, query_id)
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
