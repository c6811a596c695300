"""A labelled data set as one portable ``.npz`` file, and its import into another store.

Feedback costs a person's time (Leike et al. 2018, Sec. 3.1), so labels collected
in one run are worth carrying to the next. The file holds the concatenated arrays
(states, actions, flags, known) and a JSON document with everything else and a
SHA-256 of each array. It is written to a temporary name and renamed, so it is
never half-done; it is read and checked whole before an import writes anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np

from mbrm.feedback.errors import InvalidExportError
from mbrm.feedback.records import (
    QUERY_COLUMNS,
    DatasetCounts,
    QueryStatus,
    label_from_row,
    labeller_params,
    query_from_row,
)
from mbrm.feedback.rows import (
    fetch_query,
    fetch_segments,
    insert_label,
    insert_query,
    insert_segment,
)
from mbrm.feedback.schema import SCHEMA_VERSION, read_dims, read_snapshot, write_transaction
from mbrm.feedback.segments import (
    FeedbackKind,
    Labeller,
    Preference,
    Segment,
    UnacceptableLabel,
)

EXPORT_FORMAT = "mbrm.feedback.export"
EXPORT_VERSION = 1


def export_dataset(
    conn: sqlite3.Connection, path: str | os.PathLike[str], *, labelled_only: bool = False
) -> DatasetCounts:
    """Write segments, queries and labels to one portable ``.npz`` file.

    Leases are not exported. ``labelled_only`` keeps labelled queries and their
    segments only.
    """
    with read_snapshot(conn) as c:
        where = "WHERE status = 'labelled'" if labelled_only else ""
        queries = [
            query_from_row(r) for r in c.execute(f"SELECT {QUERY_COLUMNS} FROM queries {where}")
        ]
        labels = {
            lab.query_id: lab
            for lab in map(
                label_from_row,
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
        segs = fetch_segments(c, seg_ids)
        s_dim, a_dim = read_dims(c)
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
        "actions": np.concatenate([np.zeros((0, a_dim or 0))] + [segs[i].actions for i in order]),
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


def import_dataset(conn: sqlite3.Connection, path: str | os.PathLike[str]) -> DatasetCounts:
    """Append an exported data set to the store, with new ids, in one transaction."""
    doc, arrays = _read_export(Path(path))
    try:
        segments, queries, labels = _parse_export(doc, arrays)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InvalidExportError(f"{path} is not a consistent feedback export: {e}") from e
    with write_transaction(conn) as c:
        seg_ids: dict[int, int] = {}
        for old_id, seg, created_at in segments:
            seg_ids[old_id] = insert_segment(c, seg, created_at)
        query_ids: dict[int, int] = {}
        for qd in queries:
            query_ids[qd["id"]] = insert_query(
                c,
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
                c.execute(
                    "UPDATE queries SET skipped_by = ? WHERE id = ?",
                    (json.dumps(qd["skipped_by"]), query_ids[qd["id"]]),
                )
        for old_query, value, who, created_at in labels:
            q = fetch_query(c, query_ids[old_query])
            insert_label(c, q, value, who, labeller_params(who), created_at)
    return DatasetCounts(len(segments), len(queries), len(labels))


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


__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "export_dataset", "import_dataset"]
