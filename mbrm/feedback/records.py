"""What the feedback store hands back, and how its rows and label values are read.

A query is one question put to a teacher (Leike et al. 2018, Sec. 3.1: a
preference over two segments, or per-state unacceptable flags over one), a label
is its answer with who gave it. The helpers here turn table rows into these
records, arrays into blobs and back, and the forms a caller may give a label in
into the one form that is stored; they run no SQL.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from mbrm.feedback.errors import FeedbackStoreError, InvalidLabelError
from mbrm.feedback.segments import FeedbackKind, Labeller, Preference, UnacceptableLabel

# The columns ``query_from_row`` reads, in its order.
QUERY_COLUMNS = (
    "id, kind, left_id, right_id, status, acquisition, score, source, loop_round, "
    "created_at, leased_to, lease_expires"
)


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


def as_ids(ids: Sequence[int]) -> tuple[int, ...]:
    """Ids as Python ints (numpy integers too); a float id is an error, not rounded."""
    return tuple(operator.index(i) for i in ids)


def encode_array(a: np.ndarray) -> tuple[bytes, str, str]:
    """(bytes, dtype, shape) columns of an array."""
    a = np.ascontiguousarray(a)
    return a.tobytes(), a.dtype.str, json.dumps(list(a.shape))


def decode_array(blob: bytes, dtype: str, shape: str) -> np.ndarray:
    """The array ``encode_array`` stored, refusing a blob of the wrong length."""
    dt, dims = np.dtype(dtype), tuple(json.loads(shape))
    if len(blob) != int(np.prod(dims)) * dt.itemsize:
        raise FeedbackStoreError(
            f"stored array of shape {dims} and dtype {dt} has {len(blob)} bytes; store is damaged"
        )
    return np.frombuffer(blob, dtype=dt).reshape(dims).copy()


def query_from_row(row: Sequence[Any]) -> Query:
    """A Query from a row of ``QUERY_COLUMNS``."""
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


def label_from_row(row: Sequence[Any]) -> Label:
    """A Label from a row of every ``labels`` column, in table order."""
    kind = FeedbackKind(row[2])
    if kind is FeedbackKind.PREFERENCE:
        value: Preference | UnacceptableLabel = Preference(row[3])
    else:
        value = UnacceptableLabel(
            np.frombuffer(row[4], dtype=bool).copy(), np.frombuffer(row[5], dtype=bool).copy()
        )
    who = Labeller(row[6], row[7], json.loads(row[8]))
    return Label(row[0], row[1], kind, value, who, row[9])


def as_labeller(who: Labeller | str) -> Labeller:
    """A Labeller as given, or a person of that name."""
    if isinstance(who, Labeller):
        return who
    if isinstance(who, str):
        return Labeller.person(who)
    raise TypeError(f"who must be a Labeller or a person's name; got {type(who).__name__}")


def labeller_params(who: Labeller) -> str:
    """The labeller's parameters as the JSON stored with each of its labels."""
    try:
        return json.dumps(who.params, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise InvalidLabelError(f"parameters of {who.key} are not JSON-serialisable: {e}") from e


def as_preference(value: Any, query_id: int) -> Preference:
    """The answer to a preference query, from a Preference or its string."""
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


def as_unacceptable(value: Any, n_states: int, query_id: int) -> UnacceptableLabel:
    """The answer to an unacceptable-state query over ``n_states`` states.

    From an UnacceptableLabel, per-state flags, the first unacceptable step, or None
    (no state unacceptable). Booleans and floats are refused rather than read as a step.
    """
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


__all__ = [
    "DatasetCounts",
    "Label",
    "LabelValue",
    "Query",
    "QueryStatus",
    "UnacceptableValue",
]
