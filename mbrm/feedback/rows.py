"""Reading and writing one segment, query or label row of the feedback store.

Each function runs inside a transaction its caller holds, so the store can put
several of them in one all-or-nothing write (a label with its marks, a query with
its answer, a whole imported data set). Every value is validated here, before its
row is written: a write that fails leaves nothing behind once the caller rolls back.
"""

from __future__ import annotations

import json
import operator
import sqlite3

import numpy as np

from mbrm.feedback.errors import UnknownIdError
from mbrm.feedback.records import (
    QUERY_COLUMNS,
    Label,
    LabelValue,
    Query,
    QueryStatus,
    as_preference,
    as_unacceptable,
    decode_array,
    encode_array,
    label_from_row,
    query_from_row,
)
from mbrm.feedback.schema import check_dims
from mbrm.feedback.segments import FeedbackKind, Labeller, Segment, SegmentSource


def insert_segment(c: sqlite3.Connection, seg: Segment, created_at: float) -> int:
    """Store a segment whose sizes match the store's; returns its id."""
    if not isinstance(seg, Segment):
        raise TypeError(f"add_segment needs a Segment; got {type(seg).__name__}")
    if not (np.isfinite(seg.states).all() and np.isfinite(seg.actions).all()):
        raise ValueError("segment has non-finite states or actions; refusing to store it")
    check_dims(
        c,
        seg.states.shape[1],
        seg.actions.shape[1],
        what=f"segment (states {seg.states.shape}, actions {seg.actions.shape})",
    )
    try:
        meta = json.dumps(seg.meta, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise ValueError(f"segment meta is not JSON-serialisable: {e}") from e
    cur = c.execute(
        "INSERT INTO segments (source, n_states, states, states_dtype, states_shape, "
        "actions, actions_dtype, actions_shape, meta, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            seg.source.value,
            seg.states.shape[0],
            *encode_array(seg.states),
            *encode_array(seg.actions),
            meta,
            created_at,
        ),
    )
    return int(cur.lastrowid)


def fetch_segment(c: sqlite3.Connection, segment_id: int) -> Segment:
    segment_id = operator.index(segment_id)
    row = c.execute(
        "SELECT states, states_dtype, states_shape, actions, actions_dtype, actions_shape, "
        "source, meta FROM segments WHERE id = ?",
        (segment_id,),
    ).fetchone()
    if row is None:
        raise UnknownIdError(f"no segment with id {segment_id}")
    return Segment(
        decode_array(*row[0:3]),
        decode_array(*row[3:6]),
        SegmentSource(row[6]),
        json.loads(row[7]),
    )


def fetch_segments(c: sqlite3.Connection, ids: set[int]) -> dict[int, Segment]:
    """Segments by id, read in id order."""
    return {i: fetch_segment(c, i) for i in sorted(ids)}


def insert_query(
    c: sqlite3.Connection,
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
    """Store a query over stored segments; returns its id.

    ``source`` None takes the segments' source, "mixed" when a pair's sources differ.
    """
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
        row = c.execute("SELECT source FROM segments WHERE id = ?", (i,)).fetchone()
        if row is None:
            raise UnknownIdError(f"{kind.value} query refers to segment {i}, which does not exist")
        sources.append(row[0])
    if source is None:
        source = sources[0] if len(set(sources)) == 1 else "mixed"
    cur = c.execute(
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


def fetch_query(c: sqlite3.Connection, query_id: int) -> Query:
    query_id = operator.index(query_id)
    row = c.execute(f"SELECT {QUERY_COLUMNS} FROM queries WHERE id = ?", (query_id,)).fetchone()
    if row is None:
        raise UnknownIdError(f"no query with id {query_id}")
    return query_from_row(row)


def insert_label(
    c: sqlite3.Connection,
    q: Query,
    value: LabelValue,
    who: Labeller,
    params: str,
    created_at: float,
) -> int:
    """Store the answer to ``q`` and mark it labelled (its lease ends); returns the label id.

    ``params`` is ``who``'s parameters as JSON, encoded once by the caller so that a
    labeller whose parameters cannot be stored fails before any transaction starts.
    """
    pref, flags, known = None, None, None
    if q.kind is FeedbackKind.PREFERENCE:
        pref = as_preference(value, q.id).value
    else:
        n_states = c.execute(
            "SELECT n_states FROM segments WHERE id = ?", (q.segment_ids[0],)
        ).fetchone()[0]
        label = as_unacceptable(value, int(n_states), q.id)
        flags, known = label.flags.tobytes(), label.known.tobytes()
    cur = c.execute(
        "INSERT INTO labels (query_id, kind, preference, flags, known, who_kind, who_name, "
        "who_params, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (q.id, q.kind.value, pref, flags, known, who.kind, who.name, params, created_at),
    )
    c.execute(
        "UPDATE queries SET status = 'labelled', leased_to = NULL, lease_expires = NULL "
        "WHERE id = ?",
        (q.id,),
    )
    return int(cur.lastrowid)


def fetch_label(c: sqlite3.Connection, query_id: int) -> Label | None:
    """The label of a stored query, or None while it has none."""
    row = c.execute(
        "SELECT id, query_id, kind, preference, flags, known, who_kind, who_name, "
        "who_params, created_at FROM labels WHERE query_id = ?",
        (query_id,),
    ).fetchone()
    return None if row is None else label_from_row(row)
