"""Feedback store: round trip, validation, leases, export/import, concurrent writers."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbrm.feedback import errors, records, rows, schema
from mbrm.feedback import store as store_module
from mbrm.feedback.segments import (
    FeedbackKind,
    Labeller,
    Preference,
    Segment,
    SegmentSource,
    UnacceptableLabel,
)
from mbrm.feedback.store import (
    SCHEMA_VERSION,
    FeedbackStore,
    FeedbackStoreError,
    InvalidExportError,
    InvalidLabelError,
    LeaseConflictError,
    NotAFeedbackStoreError,
    QueryStatus,
    SchemaVersionError,
    ShapeMismatchError,
    UnknownIdError,
)

S, A = 4, 2


class FakeClock:
    """Unix seconds that move only when a test says so."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_segment(rng: np.random.Generator, t: int = 5, source: str = "real") -> Segment:
    return Segment(rng.normal(size=(t + 1, S)), rng.normal(size=(t, A)), source, {"t": t})


def dump(path: Path) -> list[str]:
    """Every row of the database as SQL text: equal dumps mean nothing changed."""
    with sqlite3.connect(path) as c:
        return list(c.iterdump())


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fill(store: FeedbackStore, rng: np.random.Generator, n: int = 6) -> dict[str, list[int]]:
    """A store with both kinds of query in every status, labelled by a teacher and a person."""
    segs = [
        store.add_segment(make_segment(rng, t=3 + i % 3, source=list(SegmentSource)[i % 3]))
        for i in range(n)
    ]
    prefs = [
        store.add_query("preference", [segs[i], segs[i + 1]], acquisition="disagreement", score=i)
        for i in range(n - 1)
    ]
    unacc = [store.add_query("unacceptable", [s], loop_round=1) for s in segs]
    teacher = Labeller.teacher("bpref", beta=1.0, mistake=0.1)
    store.add_label(prefs[0], Preference.LEFT, teacher)
    store.add_label(prefs[1], "cannot_tell", "ada")
    store.add_label(prefs[2], Preference.EQUAL, teacher)
    store.skip(prefs[3], teacher)
    store.add_label(unacc[0], 2, teacher)  # first unacceptable step
    store.add_label(unacc[1], None, "ada")  # nothing unacceptable
    n1 = store.get_segment(segs[2]).states.shape[0]
    store.add_label(unacc[2], np.arange(n1) % 2 == 1, teacher)
    return {"segments": segs, "preferences": prefs, "unacceptable": unacc}


def assert_same_data(a: FeedbackStore, b: FeedbackStore) -> None:
    pa, pb = a.preference_pairs(), b.preference_pairs()
    assert [p for *_, p in pa] == [p for *_, p in pb]
    for (l1, r1, _), (l2, r2, _) in zip(pa, pb, strict=True):
        np.testing.assert_array_equal(l1.states, l2.states)
        np.testing.assert_array_equal(r1.actions, r2.actions)
        assert (l1.source, l1.meta) == (l2.source, l2.meta)
    for x, y in zip(a.unacceptable_states(), b.unacceptable_states(), strict=True):
        np.testing.assert_array_equal(x, y)
    for by in ("source", "who", "kind"):
        assert a.label_counts(by) == b.label_counts(by)
    for status in QueryStatus:
        assert a.count_queries(status) == b.count_queries(status)


# ------------------------------------------------------------------ round trip


def test_segments_round_trip_exactly(tmp_path: Path, rng: np.random.Generator) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite")
    for t in (1, 2, 7, 25):
        seg = Segment(
            rng.normal(size=(t + 1, S)) * 1e6, rng.normal(size=(t, A)), "synthesised", {"ep": t}
        )
        back = store.get_segment(store.add_segment(seg))
        np.testing.assert_array_equal(back.states, seg.states)  # bit-exact, not approximate
        np.testing.assert_array_equal(back.actions, seg.actions)
        assert back.source is SegmentSource.SYNTHESISED and back.meta == {"ep": t}
    with pytest.raises(UnknownIdError, match="no segment with id 99"):
        store.get_segment(99)


def test_store_is_wal_and_versioned(tmp_path: Path) -> None:
    path = tmp_path / "f.sqlite"
    FeedbackStore(path).close()
    with sqlite3.connect(path) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        meta = dict(c.execute("SELECT key, value FROM meta"))
    assert meta["schema_version"] == str(SCHEMA_VERSION)
    with FeedbackStore(path) as again:  # reopening an existing store works
        assert again.schema_version == SCHEMA_VERSION


def test_queries_labels_and_datasets(tmp_path: Path, rng: np.random.Generator) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite")
    ids = fill(store, rng)
    q = store.get_query(ids["preferences"][0])
    assert q.kind is FeedbackKind.PREFERENCE and q.status is QueryStatus.LABELLED
    assert q.acquisition == "disagreement" and q.score == 0.0 and q.source == "mixed"
    assert store.get_query(ids["preferences"][3]).status is QueryStatus.SKIPPED
    # Pending queue: highest acquisition score first, unscored after, oldest first.
    pending = store.pending_queries()
    assert [p.id for p in pending] == [ids["preferences"][4], *ids["unacceptable"][3:]]
    assert len(store.pending_queries(limit=2, kind="unacceptable")) == 2

    pairs = store.preference_pairs()
    assert [p for *_, p in pairs] == [Preference.LEFT, Preference.CANNOT_TELL, Preference.EQUAL]
    np.testing.assert_array_equal(pairs[0][0].states, store.get_segment(ids["segments"][0]).states)

    states, flags = store.unacceptable_states()
    # first-step label on segment 0 (4 states) judges states 0..2; None judges all 5 states
    # of segment 1; explicit flags judge all 6 states of segment 2.
    assert states.shape == (3 + 5 + 6, S) and flags.dtype == np.bool_
    np.testing.assert_array_equal(flags[:3], [False, False, True])
    assert not flags[3:8].any() and flags[8:].sum() == 3
    np.testing.assert_array_equal(states[:3], store.get_segment(ids["segments"][0]).states[:3])

    assert store.label_counts("who") == {"person:ada": 2, "teacher:bpref": 4}
    assert store.label_counts("kind") == {"preference": 3, "unacceptable": 3}
    assert store.count_labels() == 6 and store.count_labels("unacceptable") == 3
    assert sum(store.label_counts("source").values()) == 6
    label = store.get_label(ids["preferences"][0])
    assert label is not None and label.who.params == {"beta": 1.0, "mistake": 0.1}
    assert store.get_label(ids["preferences"][4]) is None


def test_empty_store_datasets(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite", state_dim=S, action_dim=A)
    states, flags = store.unacceptable_states()
    assert states.shape == (0, S) and flags.shape == (0,)
    assert store.preference_pairs() == [] and store.lease_next("ada", 10) is None


# ------------------------------------------------------------- bad input


def test_shapes_fixed_by_first_segment(tmp_path: Path, rng: np.random.Generator) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite")
    store.add_segment(make_segment(rng))
    before = dump(store.path)
    with pytest.raises(ShapeMismatchError, match=r"state_dim=5, but this store holds state_dim=4"):
        store.add_segment(Segment(np.zeros((3, 5)), np.zeros((2, A))))
    with pytest.raises(ShapeMismatchError, match=r"action_dim=3.*action_dim=2"):
        store.add_segment(Segment(np.zeros((3, S)), np.zeros((2, 3))))
    with pytest.raises(ValueError, match="non-finite"):
        store.add_segment(Segment(np.full((3, S), np.nan), np.zeros((2, A))))
    assert dump(store.path) == before
    with pytest.raises(ShapeMismatchError, match="state_dim=6"):
        FeedbackStore(store.path, state_dim=6)


def test_shapes_fixed_at_creation(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite", state_dim=3, action_dim=1)
    assert store.dims == (3, 1)
    with pytest.raises(ShapeMismatchError, match=r"states \(3, 4\).*state_dim=3"):
        store.add_segment(Segment(np.zeros((3, 4)), np.zeros((2, 1))))


def test_bad_labels_write_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite")
    ids = fill(store, rng)
    pref, unacc = ids["preferences"][4], ids["unacceptable"][4]  # pending; segment has 5 states
    before = dump(store.path)
    bad = [
        (UnknownIdError, "no query with id 999", 999, Preference.LEFT),
        (InvalidLabelError, "preference query", pref, "up"),
        (InvalidLabelError, "preference query", pref, np.zeros(5, dtype=bool)),
        (InvalidLabelError, "unacceptable-state query", unacc, Preference.LEFT),
        (InvalidLabelError, "unacceptable-state query", unacc, True),
        (InvalidLabelError, "got 3 flags, expected 5", unacc, np.zeros(3, dtype=bool)),
        (InvalidLabelError, "outside the segment's states", unacc, 7),
        (InvalidLabelError, "must be bool", unacc, [0.2, 0.1, 0.0, 0.0, 0.0]),
        (InvalidLabelError, "already labelled", ids["preferences"][0], Preference.RIGHT),
        (InvalidLabelError, "already skipped", ids["preferences"][3], Preference.RIGHT),
    ]
    for error, message, query, value in bad:
        with pytest.raises(error, match=message):
            store.add_label(query, value, "ada")
    with pytest.raises(InvalidLabelError, match="not JSON-serialisable"):
        store.add_label(pref, "left", Labeller.teacher("t", fn=object()))
    with pytest.raises(UnknownIdError, match="segment 999"):
        store.add_query("unacceptable", [999])
    with pytest.raises(ValueError, match="two different segments"):
        store.add_query("preference", [1, 1])
    with pytest.raises(ValueError, match="takes 2 segment id"):
        store.add_query("preference", [1])
    with pytest.raises(ValueError, match="score must be finite"):
        store.add_query("unacceptable", [1], score=float("nan"))
    assert dump(store.path) == before


def test_flags_given_as_label_object(tmp_path: Path, rng: np.random.Generator) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite")
    seg = store.add_segment(make_segment(rng, t=3))
    q = store.add_query("unacceptable", [seg])
    store.add_label(q, UnacceptableLabel.from_first_step(0, 4), "ada")
    label = store.get_label(q)
    assert label is not None and isinstance(label.value, UnacceptableLabel)
    assert label.value.first_step == 0 and label.value.known.sum() == 1


def test_numpy_ids_and_atomic_labelled_query(tmp_path: Path, rng: np.random.Generator) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite")
    ids = np.array([store.add_segment(make_segment(rng, t=3)) for _ in range(2)])  # int64
    q = store.add_query(FeedbackKind.PREFERENCE, ids, score=np.float32(0.5))
    assert store.get_query(np.int64(q)).segment_ids == (1, 2)
    with pytest.raises(TypeError):
        store.get_segment(1.0)  # type: ignore[arg-type]
    query, label = store.add_labelled_query("unacceptable", ids[:1], [0, 0, 1, 1], "ada")
    assert store.get_query(query).status is QueryStatus.LABELLED
    assert store.get_label(query).id == label  # type: ignore[union-attr]
    before = dump(store.path)
    with pytest.raises(InvalidLabelError, match="got 2 flags, expected 4"):
        store.add_labelled_query("unacceptable", ids[:1], [0, 1], "ada")
    assert dump(store.path) == before  # no unanswered query left behind


def test_foreign_files_are_refused_unchanged(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("these are not the labels you are looking for\n" * 20)
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as c:
        c.execute("CREATE TABLE users (name TEXT)")
        c.execute("INSERT INTO users VALUES ('ada')")
    c.close()
    fake_meta = tmp_path / "fake.sqlite"
    with sqlite3.connect(fake_meta) as c:
        c.execute("CREATE TABLE meta (key TEXT, value TEXT)")
        c.execute("INSERT INTO meta VALUES ('application', 'someone.else')")
    c.close()
    for path, message in [
        (text, "not a readable SQLite database"),
        (other, "no 'meta' table"),
        (fake_meta, "application is 'someone.else'"),
        (tmp_path, "is a directory"),
    ]:
        digest = None if path.is_dir() else file_digest(path)
        with pytest.raises(NotAFeedbackStoreError, match=message):
            FeedbackStore(path)
        if digest is not None:
            assert file_digest(path) == digest
    with sqlite3.connect(other) as c:
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "delete"  # not switched to WAL
    with pytest.raises(FeedbackStoreError, match="cannot open feedback store"):
        FeedbackStore(tmp_path / "missing" / "f.sqlite")


def test_newer_schema_is_refused_unchanged(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "f.sqlite"
    with FeedbackStore(path) as store:
        fill(store, rng)
    with sqlite3.connect(path) as c:
        c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    c.close()
    before, digest = dump(path), file_digest(path)
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        FeedbackStore(path)
    assert file_digest(path) == digest and dump(path) == before


# ------------------------------------------------------------------- leases


def test_lease_is_exclusive_until_it_expires(tmp_path: Path, rng: np.random.Generator) -> None:
    clock = FakeClock()
    path = tmp_path / "f.sqlite"
    ada, bob = FeedbackStore(path, clock=clock), FeedbackStore(path, clock=clock)
    seg = [ada.add_segment(make_segment(rng)) for _ in range(3)]
    q1 = ada.add_query("preference", [seg[0], seg[1]], score=2.0)
    q2 = ada.add_query("preference", [seg[1], seg[2]], score=1.0)

    got = ada.lease_next("ada", lease_seconds=60)
    assert got is not None and got.id == q1 and got.leased_to == "ada"
    assert got.lease_expires == clock.t + 60
    again = ada.lease_next("ada", lease_seconds=60)  # a page reload keeps the same query
    assert again is not None and again.id == q1
    other = bob.lease_next("bob", lease_seconds=60)
    assert other is not None and other.id == q2  # never the query ada holds
    assert bob.lease_next("carol", lease_seconds=60) is None

    before = dump(path)
    with pytest.raises(LeaseConflictError, match="leased to 'ada'"):
        bob.add_label(q1, Preference.RIGHT, "bob")
    with pytest.raises(LeaseConflictError, match="leased to 'ada'"):
        bob.skip(q1, "bob")
    with pytest.raises(LeaseConflictError, match="leased to 'ada', not 'bob'"):
        bob.release(q1, "bob")
    assert dump(path) == before

    clock.t += 61  # both leases expire: the queries are free again
    taken = bob.lease_next("carol", lease_seconds=60)
    assert taken is not None and taken.id == q1 and taken.leased_to == "carol"
    with pytest.raises(LeaseConflictError, match="leased to 'carol'"):
        ada.add_label(q1, Preference.LEFT, "ada")
    bob.add_label(q2, Preference.LEFT, "bob")  # bob's lease expired, but nobody took q2
    ada.release(q1, "carol")
    ada.add_label(q1, Preference.EQUAL, Labeller.person("ada"))
    assert ada.count_queries("labelled") == 2 and ada.lease_next("ada", 10) is None
    with pytest.raises(ValueError, match="lease_seconds must be positive"):
        ada.lease_next("ada", 0)


# ----------------------------------------------------------- export / import


def test_export_import_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    src = FeedbackStore(tmp_path / "a.sqlite")
    fill(src, rng)
    counts = src.export_dataset(tmp_path / "data.npz")
    assert (counts.segments, counts.queries, counts.labels) == (6, 11, 6)
    dst = FeedbackStore(tmp_path / "b.sqlite")
    assert dst.import_dataset(tmp_path / "data.npz") == counts
    assert_same_data(src, dst)
    skipped = [q for q in range(1, 12) if dst.get_query(q).status is QueryStatus.SKIPPED]
    assert len(skipped) == 1


def test_import_appends_with_new_ids(tmp_path: Path, rng: np.random.Generator) -> None:
    src = FeedbackStore(tmp_path / "a.sqlite")
    fill(src, rng)
    src.export_dataset(tmp_path / "data.npz")
    dst = FeedbackStore(tmp_path / "b.sqlite")
    own = dst.add_segment(make_segment(rng))
    own_q = dst.add_query("unacceptable", [own])
    dst.add_label(own_q, 0, "bob")
    dst.import_dataset(tmp_path / "data.npz")
    assert dst.count_queries() == 12 and dst.label_counts("who")["person:bob"] == 1
    assert len(dst.preference_pairs()) == 3
    # The imported first preference query refers to remapped segments with the same arrays.
    imported = dst.get_query(own_q + 1)
    assert imported.segment_ids == (own + 1, own + 2)
    np.testing.assert_array_equal(
        dst.get_segment(imported.segment_ids[1]).states, src.get_segment(2).states
    )
    states, flags = dst.unacceptable_states()
    assert states.shape[0] == 1 + src.unacceptable_states()[0].shape[0] and flags[0]


def test_labelled_only_export(tmp_path: Path, rng: np.random.Generator) -> None:
    src = FeedbackStore(tmp_path / "a.sqlite")
    ids = fill(src, rng)
    counts = src.export_dataset(tmp_path / "data.npz", labelled_only=True)
    labelled = [q for q in ids["preferences"] + ids["unacceptable"] if src.get_label(q)]
    assert counts.queries == len(labelled) == 6 and counts.labels == 6
    assert counts.segments == len({i for q in labelled for i in src.get_query(q).segment_ids})
    dst = FeedbackStore(tmp_path / "b.sqlite")
    dst.import_dataset(tmp_path / "data.npz")
    assert dst.count_queries("pending") == 0
    assert [p for *_, p in dst.preference_pairs()] == [p for *_, p in src.preference_pairs()]


def test_export_with_unparsable_array_header_is_refused(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """A header numpy cannot tokenize (closing brace damaged) is an InvalidExportError."""
    import zipfile

    src = FeedbackStore(tmp_path / "a.sqlite")
    fill(src, rng)
    good = tmp_path / "data.npz"
    src.export_dataset(good)
    bad = tmp_path / "bad.npz"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(bad, "w", zipfile.ZIP_DEFLATED) as zout:
        for i, name in enumerate(zin.namelist()):
            member = bytearray(zin.read(name))
            if i == 0:
                member[member.index(b"}")] ^= 0xFF
            zout.writestr(name, bytes(member))
    dst = FeedbackStore(tmp_path / "b.sqlite")
    fill(dst, rng)
    before = dump(dst.path)
    with pytest.raises(InvalidExportError, match="not a readable feedback export"):
        dst.import_dataset(bad)
    assert dump(dst.path) == before


def test_corrupt_export_is_refused_unchanged(tmp_path: Path, rng: np.random.Generator) -> None:
    src = FeedbackStore(tmp_path / "a.sqlite")
    fill(src, rng)
    good = tmp_path / "data.npz"
    src.export_dataset(good)
    raw = good.read_bytes()
    dst = FeedbackStore(tmp_path / "b.sqlite")
    fill(dst, rng)
    before = dump(dst.path)

    bad = tmp_path / "bad.npz"
    refused, passed = 0, []
    positions = np.linspace(0, len(raw) - 1, 60).astype(int)
    for pos in positions:
        damaged = bytearray(raw)
        damaged[pos] ^= 0xFF
        bad.write_bytes(bytes(damaged))
        fresh = FeedbackStore(tmp_path / f"fresh{pos}.sqlite")
        try:
            fresh.import_dataset(bad)
        except InvalidExportError:
            refused += 1
            with pytest.raises(InvalidExportError):
                dst.import_dataset(bad)
            assert dump(dst.path) == before
        else:
            # Only bytes the data does not depend on (e.g. zip timestamps) may pass,
            # and then what was imported is the original data.
            assert_same_data(src, fresh)
            passed.append(int(pos))
        fresh.close()
    assert refused >= 0.8 * len(positions), passed
    for damaged in (raw[: len(raw) // 2], b"", b"\x00" * 100):
        bad.write_bytes(damaged)
        with pytest.raises(InvalidExportError):
            dst.import_dataset(bad)
    assert dump(dst.path) == before


def test_foreign_and_inconsistent_exports_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    src = FeedbackStore(tmp_path / "a.sqlite")
    fill(src, rng)
    src.export_dataset(tmp_path / "data.npz")
    dst = FeedbackStore(tmp_path / "b.sqlite")
    dst.add_segment(make_segment(rng))
    before = dump(dst.path)
    with np.load(tmp_path / "data.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}

    def write(name: str, **replace: np.ndarray) -> Path:
        path = tmp_path / name
        with open(path, "wb") as f:
            np.savez(f, **{**arrays, **replace})
        return path

    doc = json.loads(arrays["document"].tobytes())

    def with_doc(**changes: object) -> np.ndarray:
        return np.frombuffer(json.dumps({**doc, **changes}).encode(), dtype=np.uint8)

    no_doc = tmp_path / "plain.npz"
    np.savez(no_doc, x=np.zeros(3))
    cases = [
        (no_doc, "no document"),
        (tmp_path / "a.sqlite", "not a readable feedback export"),
        (write("foreign.npz", document=with_doc(format="someone.else")), "not a feedback export"),
        (write("newer.npz", document=with_doc(format_version=99)), "format version 99"),
        (write("tampered.npz", states=arrays["states"] + 1.0), "fails its checksum"),
        (write("extra.npz", extra=np.zeros(2)), "do not match its checksums"),
        (write("dangling.npz", document=with_doc(labels=doc["labels"][1:])), "one to one"),
    ]
    for path, message in cases:
        with pytest.raises(InvalidExportError, match=message):
            dst.import_dataset(path)
    other = FeedbackStore(tmp_path / "c.sqlite", state_dim=S + 1)
    with pytest.raises(ShapeMismatchError, match=f"state_dim={S + 1}"):
        other.import_dataset(tmp_path / "data.npz")
    assert other.count_queries() == 0 and other.preference_pairs() == []
    assert dump(dst.path) == before


# ---------------------------------------------------------- concurrent writers

N_QUEUE = 90  # queries shared by all workers through leases
N_OWN = 40  # queries each worker creates and labels itself


def _label_worker(path: str, name: str, seed: int, start: Any, results: Any) -> None:
    """Take leased queries until the queue is empty, and add and label queries of its own."""
    rng = np.random.default_rng(seed)
    store = FeedbackStore(path, busy_timeout=60)
    start.wait()  # all workers begin together, so their writes really interleave
    done: list[int] = []
    own = 0
    while True:
        # A moment of "thinking" between writes, as a labeller has: SQLite's busy wait is
        # not fair, and without it one process can hold the queue to itself.
        time.sleep(rng.uniform(0.0, 0.004))
        q = store.lease_next(name, lease_seconds=300)
        if q is not None:
            if q.kind is FeedbackKind.PREFERENCE:
                store.add_label(q.id, Preference.LEFT, name)
            else:
                store.add_label(q.id, int(rng.integers(0, 3)), name)
            done.append(q.id)
        if own < N_OWN:
            seg = store.add_segment(make_segment(rng, t=2))
            store.add_labelled_query(
                "unacceptable", [seg], None, Labeller.teacher(name, seed=seed), acquisition=name
            )
            own += 1
        if q is None and own == N_OWN:
            break
    store.close()
    results.put((name, done))


def test_concurrent_writers_lose_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "f.sqlite"
    with FeedbackStore(path) as store:
        segs = [store.add_segment(make_segment(rng, t=2)) for _ in range(N_QUEUE + 1)]
        for i in range(N_QUEUE):
            if i % 2:
                store.add_query("preference", [segs[i], segs[i + 1]], score=float(i))
            else:
                store.add_query("unacceptable", [segs[i]])
    names = ["w0", "w1", "w2"]
    ctx = mp.get_context("spawn")  # no inherited connections or threads
    start, queue = ctx.Barrier(len(names)), ctx.Queue()
    workers = [
        ctx.Process(target=_label_worker, args=(str(path), n, i, start, queue))
        for i, n in enumerate(names)
    ]
    for w in workers:
        w.start()
    done = dict(queue.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    results = [done[n] for n in names]
    taken = [q for r in results for q in r]
    assert sorted(taken) == list(range(1, N_QUEUE + 1))  # each queued query labelled once
    # The queue was really shared. (Not "every worker": SQLite's busy wait is not fair,
    # and in about one run in eight one process is starved of the queue.)
    assert sum(len(r) > 0 for r in results) >= 2, [len(r) for r in results]
    with FeedbackStore(path) as store:
        assert store.count_queries() == N_QUEUE + len(names) * N_OWN
        assert store.count_queries("labelled") == N_QUEUE + len(names) * N_OWN
        by_who = store.label_counts("who")
        for n, r in zip(names, results, strict=True):
            assert by_who.get(f"person:{n}", 0) == len(r) and by_who[f"teacher:{n}"] == N_OWN
        assert len(store.preference_pairs()) == N_QUEUE // 2


def _create_and_write(path: str, start: Any) -> None:
    start.wait()  # every process finds no store and tries to create it
    with FeedbackStore(path) as store:
        for _ in range(10):
            store.add_segment(Segment(np.zeros((3, S)), np.zeros((2, A))))


def test_processes_creating_one_store_at_once(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    workers = [ctx.Process(target=_create_and_write, args=(str(path), start)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
        assert w.exitcode == 0
    with sqlite3.connect(path) as c:
        assert c.execute("SELECT COUNT(*) FROM segments").fetchone()[0] == 30
        assert (
            c.execute("SELECT COUNT(*) FROM meta WHERE key = 'schema_version'").fetchone()[0] == 1
        )


def test_label_with_marks_is_all_or_nothing(tmp_path: Path, rng: np.random.Generator) -> None:
    store = FeedbackStore(tmp_path / "f.sqlite")
    left, right = (
        store.add_segment(make_segment(rng, t=4)),
        store.add_segment(make_segment(rng, t=4)),
    )
    q = store.add_query("preference", [left, right], loop_round=3)
    before = (store.count_labels(), store.count_queries())
    with pytest.raises(ValueError, match="outside"):
        store.add_label_with_marks(q, "left", "ada", [(left, 1), (right, 99)])  # step 99 is bad
    assert (store.count_labels(), store.count_queries()) == before
    assert store.get_query(q).status is QueryStatus.PENDING
    label_id, marks = store.add_label_with_marks(q, "left", "ada", [(left, 1), (right, None)])
    assert store.get_label(q).id == label_id and len(marks) == 2
    assert store.count_labels(loop_round=3) == 3  # the answer and both marks, in its round
    assert store.get_label(marks[0]).value.first_step == 1


def test_store_reexports_the_objects_of_the_modules_that_define_them() -> None:
    for name in store_module.__all__:
        home = next(m for m in (errors, records, schema, store_module) if name in vars(m))
        assert getattr(store_module, name) is getattr(home, name), name


def test_row_writes_commit_only_with_their_callers_transaction(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "f.sqlite"
    FeedbackStore(path).close()
    before = dump(path)
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        with pytest.raises(RuntimeError), schema.write_transaction(conn) as c:
            seg = rows.insert_segment(c, make_segment(rng), created_at=1.0)
            assert rows.fetch_segment(c, seg).states.shape == (6, S)
            raise RuntimeError  # a later step of the same write fails
    finally:
        conn.close()
    assert dump(path) == before
