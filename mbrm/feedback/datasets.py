"""What the learners read from the feedback store.

The reward ensemble trains on preference pairs (Leike et al. 2018, Sec. 3.1) and
the side-constraint classifier on judged states (Sec. 5.6); reports count labels
by source, labeller and kind (Sec. 5.2). Each read is one consistent snapshot, so
a labelling process writing at the same time never leaves a half-read data set.
"""

from __future__ import annotations

import sqlite3
from typing import Literal

import numpy as np

from mbrm.feedback.records import decode_array
from mbrm.feedback.rows import fetch_segments
from mbrm.feedback.schema import read_dims, read_snapshot
from mbrm.feedback.segments import Preference, Segment


def preference_pairs(conn: sqlite3.Connection) -> list[tuple[Segment, Segment, Preference]]:
    """Every preference label as (left, right, answer), cannot_tell included."""
    with read_snapshot(conn) as c:
        rows = c.execute(
            "SELECT q.left_id, q.right_id, l.preference FROM labels l "
            "JOIN queries q ON q.id = l.query_id WHERE l.kind = 'preference' ORDER BY l.id"
        ).fetchall()
        segs = fetch_segments(c, {i for r in rows for i in r[:2]})
    return [(segs[a], segs[b], Preference(p)) for a, b, p in rows]


def unacceptable_states(
    conn: sqlite3.Connection, *, with_segments: bool = False
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Judged states [M, S] (float64), their flags [M] (bool) and optionally segment ids [M].

    States a teacher did not judge (after the first unacceptable step) are left out.
    """
    with read_snapshot(conn) as c:
        rows = c.execute(
            "SELECT s.states, s.states_dtype, s.states_shape, l.flags, l.known, s.id "
            "FROM labels l JOIN queries q ON q.id = l.query_id "
            "JOIN segments s ON s.id = q.left_id WHERE l.kind = 'unacceptable' ORDER BY l.id"
        ).fetchall()
    s_dim = read_dims(conn)[0] or 0
    states: list[np.ndarray] = [np.zeros((0, s_dim))]  # [M_i, S]
    flags: list[np.ndarray] = [np.zeros(0, dtype=bool)]  # [M_i]
    segs: list[np.ndarray] = [np.zeros(0, dtype=np.int64)]  # [M_i]
    for blob, dtype, shape, f, k, seg_id in rows:
        known = np.frombuffer(k, dtype=bool)
        states.append(decode_array(blob, dtype, shape).astype(np.float64)[known])
        flags.append(np.frombuffer(f, dtype=bool)[known])
        segs.append(np.full(int(known.sum()), seg_id, dtype=np.int64))
    if with_segments:
        return np.concatenate(states), np.concatenate(flags), np.concatenate(segs)
    return np.concatenate(states), np.concatenate(flags)


def label_counts(
    conn: sqlite3.Connection, by: Literal["source", "who", "kind"] = "source"
) -> dict[str, int]:
    """Number of labels per query source, per labeller (``Labeller.key``), or per kind."""
    column = {
        "source": "q.source",
        "who": "l.who_kind || ':' || l.who_name",
        "kind": "l.kind",
    }.get(by)
    if column is None:
        raise ValueError(f"label_counts by must be 'source', 'who' or 'kind'; got {by!r}")
    rows = conn.execute(
        f"SELECT {column} AS k, COUNT(*) FROM labels l JOIN queries q ON q.id = l.query_id "
        "GROUP BY k ORDER BY k"
    )
    return {k: int(n) for k, n in rows}


__all__ = ["label_counts", "preference_pairs", "unacceptable_states"]
