"""Load on loopback: 8 concurrent annotators x 200 labels through the HTTP API.

Each client leases a query, answers it, and now and then tries to answer a query
leased to another client or to answer its own twice; afterwards every query holds
exactly one label, from the client that leased it, with the value it sent.
Throughput and latency are printed (run with -s to see them).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from pathlib import Path

import numpy as np

from mbrm.feedback.segments import Labeller, Preference, Segment, SegmentSource
from mbrm.feedback.store import FeedbackStore, QueryStatus
from mbrm.labeling import LabelServer
from mbrm.tasks import get_task

CLIENTS = 8
LABELS_EACH = 200
VALUES = [p.value for p in Preference]


def make_run(run: Path, n_queries: int) -> None:
    """A run with real reacher segments and ``n_queries`` pending preference queries."""
    task = get_task("reacher_keepout")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task:\n  name: reacher_keepout\n")
    env = task.make_env(0)
    rng = np.random.default_rng(0)
    low, high = task.action_bounds
    with FeedbackStore(
        run / "feedback.sqlite", state_dim=task.state_dim, action_dim=task.action_dim
    ) as store:
        ids = []
        for e in range(6):
            s, _ = env.reset(seed=e)
            states, actions = [s], []
            for _ in range(8):
                actions.append(rng.uniform(low, high))
                states.append(env.step(actions[-1])[0])
            source = SegmentSource.IMAGINED if e % 3 == 0 else SegmentSource.REAL
            ids.append(store.add_segment(Segment(np.stack(states), np.stack(actions), source)))
        for _ in range(n_queries):
            a, b = rng.choice(len(ids), 2, replace=False)
            store.add_query("preference", [ids[a], ids[b]], score=float(rng.random()))
    env.close()


def call(port: int, path: str, body: dict) -> tuple[int, dict, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return resp.status, data, time.perf_counter() - t0


def test_eight_clients_two_hundred_labels_each(tmp_path):
    run = tmp_path / "run"
    make_run(run, CLIENTS * LABELS_EACH)
    latency: dict[str, list[float]] = {"lease": [], "label": [], "refused": []}
    sent: dict[int, tuple[str, str]] = {}  # query id -> (client, value), from 200 answers
    leased_now: dict[str, int] = {}  # client -> the query it holds, for others to poke at
    failures: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        name = f"client{i}"
        rng = np.random.default_rng(i)
        try:
            for n in range(LABELS_EACH):
                code, out, dt = call(port, "/api/lease", {"annotator": name})
                q = out.get("query")
                if code != 200 or q is None:
                    failures.append(f"{name}: lease {code} {out}")
                    return
                with lock:
                    latency["lease"].append(dt)
                    leased_now[name] = q["id"]
                    others = [v for k, v in leased_now.items() if k != name]
                if n % 10 == 0 and others:
                    # A query leased to someone else: refused, nothing written.
                    body = {"query_id": others[0], "annotator": name, "value": "left"}
                    code, out, dt = call(port, "/api/label", body)
                    with lock:
                        latency["refused"].append(dt)
                    if code != 409:
                        failures.append(f"{name}: label of a foreign query gave {code} {out}")
                value = VALUES[rng.integers(len(VALUES))]
                body = {"query_id": q["id"], "annotator": name, "value": value}
                code, out, dt = call(port, "/api/label", body)
                if code != 200:
                    failures.append(f"{name}: label {code} {out}")
                    return
                with lock:
                    latency["label"].append(dt)
                    if q["id"] in sent:
                        failures.append(f"query {q['id']} answered by {sent[q['id']]} and {name}")
                    sent[q["id"]] = (name, value)
                if n % 25 == 0:
                    # The same answer sent twice (a double click): the second is refused.
                    code, out, dt = call(port, "/api/label", body)
                    with lock:
                        latency["refused"].append(dt)
                    if code != 409:
                        failures.append(f"{name}: repeated label gave {code} {out}")
        except Exception as e:  # a crashed client must fail the test, not hang it
            failures.append(f"{name}: {type(e).__name__}: {e}")

    with LabelServer(run, annotator="load", lease_seconds=120, workers=16) as srv:
        port = srv.port
        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        wall = time.perf_counter() - t0
    assert failures == []

    with FeedbackStore(run / "feedback.sqlite") as store:
        assert store.count_labels() == CLIENTS * LABELS_EACH
        assert store.count_queries(QueryStatus.PENDING) == 0
        assert store.label_counts("who") == {
            Labeller.person(f"client{i}").key: LABELS_EACH for i in range(CLIENTS)
        }
        assert len(sent) == CLIENTS * LABELS_EACH
        for query_id, (name, value) in sent.items():
            label = store.get_label(query_id)
            assert (label.who.name, label.value.value) == (name, value)

    n_requests = sum(len(v) for v in latency.values())
    print(
        f"\nlabelling load: {CLIENTS} clients x {LABELS_EACH} labels in {wall:.2f} s: "
        f"{CLIENTS * LABELS_EACH / wall:.0f} labels/s, {n_requests / wall:.0f} requests/s"
    )
    for kind, values in latency.items():
        ms = np.array(values) * 1000
        print(
            f"  {kind:8s} n={len(ms):5d}  p50 {np.percentile(ms, 50):6.1f} ms  "
            f"p95 {np.percentile(ms, 95):6.1f} ms  p99 {np.percentile(ms, 99):6.1f} ms  "
            f"max {ms.max():6.1f} ms"
        )
