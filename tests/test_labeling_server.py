"""The labelling server holds: slow, idle and unauthorised clients cannot stall others.

On loopback only. Half-sent requests are kept open while normal requests are timed;
a token-protected server answers a stranger before reading the body; every refusal
is JSON with its status; a wildcard bind prints an address another machine can open;
and 8 annotators labelling at once, with stalled connections beside them, leave
every acknowledged label in the store exactly once. Figures print with -s.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest

from mbrm.feedback.segments import Labeller, Preference, Segment, SegmentSource
from mbrm.feedback.store import FeedbackStore, QueryStatus
from mbrm.labeling import LabelServer
from mbrm.labeling.access import is_loopback
from mbrm.labeling.label_server import Limits
from mbrm.labeling.server import main
from mbrm.tasks import get_task

HALF_SENT = b"GET / HTTP/1.1\r\nHost: 127.0.0.1"  # no blank line: the head never ends
TOKEN = "k" * 24


def make_run(run: Path, preference: int, unacceptable: int, seed: int = 0) -> Path:
    """A run whose store holds random reacher segments and pending queries of both kinds."""
    task = get_task("reacher_keepout")
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("task:\n  name: reacher_keepout\n")
    rng = np.random.default_rng(seed)
    with FeedbackStore(
        run / "feedback.sqlite", state_dim=task.state_dim, action_dim=task.action_dim
    ) as store:
        ids = [
            store.add_segment(
                Segment(
                    rng.normal(size=(7, task.state_dim)),  # [T+1, S]
                    rng.uniform(-1, 1, size=(6, task.action_dim)),  # [T, A]
                    SegmentSource.REAL,
                )
            )
            for _ in range(8)
        ]
        for _ in range(preference):
            a, b = rng.choice(len(ids), 2, replace=False)
            store.add_query("preference", [ids[a], ids[b]], score=float(rng.random()))
        for _ in range(unacceptable):
            store.add_query("unacceptable", [ids[rng.integers(len(ids))]])
    return run


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path / "run", preference=4, unacceptable=2)


def serve(run: Path, **kw) -> LabelServer:
    return LabelServer(run, annotator="alice", clip_size=(64, 64), assistance=False, **kw)


def request(srv: LabelServer, method: str, path: str, body=None, headers=None, timeout=10):
    """One request on a fresh connection: (status, parsed body, response)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
    h = {"Host": f"127.0.0.1:{srv.port}", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        h["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
    finally:
        conn.close()
    if resp.getheader("Content-Type") == "application/json" and payload:
        return resp.status, json.loads(payload), resp
    return resp.status, payload, resp


def raw_exchange(srv: LabelServer, data: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``data`` as it is and read the answer until the server closes: (answer, seconds)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", srv.port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks), time.perf_counter() - t0


def parse_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def open_half_sent(stack: ExitStack, port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
        s.sendall(HALF_SENT)
        socks.append(s)
    return socks


def closed_by_server(s: socket.socket) -> bool:
    s.settimeout(0.5)
    try:
        return s.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def timed_status(srv: LabelServer, n: int = 5) -> list[float]:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        code, body, _ = request(srv, "GET", "/api/status", timeout=5)
        times.append(time.perf_counter() - t0)
        assert code == 200 and body["progress"]["pending"] == 6
    return times


# ---------------------------------------------------------------------- stalls


def test_fifty_idle_half_sent_connections_do_not_stall_a_request(run):
    with serve(run) as srv, ExitStack() as stack:
        open_half_sent(stack, srv.port, 50)
        time.sleep(0.2)  # every one of them accepted and waiting on its head
        times = timed_status(srv)
        print(
            f"\n50 idle half-sent connections: GET /api/status in "
            f"max {max(times) * 1000:.1f} ms, median {np.median(times) * 1000:.1f} ms "
            f"over {len(times)} requests"
        )
        assert max(times) < 1.0


def test_a_half_sent_head_gets_408_at_its_deadline(run):
    limits = Limits(head_seconds=0.5, body_seconds=0.5, idle_seconds=0.5)
    with serve(run, limits=limits) as srv:
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            t0 = time.perf_counter()
            s.sendall(HALF_SENT)
            answer = b"".join(iter(lambda: s.recv(65536), b""))
            waited = time.perf_counter() - t0
        code, headers, body = parse_answer(answer)
        assert code == 408 and headers["Connection"] == "close"
        assert json.loads(body)["status"] == 408
        assert 0.4 < waited < 3.0
        # A body announced but not sent: 408 too, at the body deadline.
        post = (
            b"POST /api/lease HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: 10\r\n\r\n{" % srv.port
        )
        code, _, body = parse_answer(raw_exchange(srv, post)[0])
        assert code == 408 and "body" in json.loads(body)["error"]
        # A connection that sends nothing is closed quietly once idle too long.
        assert raw_exchange(srv, b"")[0] == b""


def test_at_the_connection_cap_the_longest_waiting_connection_makes_room(run):
    with serve(run, limits=Limits(max_connections=8)) as srv, ExitStack() as stack:
        socks = open_half_sent(stack, srv.port, 30)
        time.sleep(0.2)
        times = timed_status(srv)
        assert max(times) < 1.0, times
        assert closed_by_server(socks[0])  # the oldest was closed to make room
        assert not closed_by_server(socks[-1])


# ---------------------------------------------------------------------- access first


def test_token_is_checked_before_the_body_is_read(run):
    with serve(run, token=TOKEN) as srv:

        def no_store():
            raise AssertionError("a refused request touched the store")

        srv.app.store = no_store  # type: ignore[method-assign]
        # A large body announced and never sent: answered at once, not at a deadline.
        head = (
            b"POST /api/label HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n" % srv.port
        )
        for extra, status in ((b"", 403), (b"X-Mbrm-Token: " + b"w" * 24 + b"\r\n", 403)):
            answer, seconds = raw_exchange(srv, head[:-2] + extra + b"\r\n")
            code, headers, body = parse_answer(answer)
            assert code == status and headers["Connection"] == "close"
            assert "token" in json.loads(body)["error"] and seconds < 1.0
        # With the token, the same request is refused for its size, still unread.
        answer, seconds = raw_exchange(
            srv, head[:-2] + b"X-Mbrm-Token: %s\r\n\r\n" % TOKEN.encode()
        )
        code, _, body = parse_answer(answer)
        assert code == 413 and "limit" in json.loads(body)["error"] and seconds < 1.0


# ---------------------------------------------------------------------- errors as JSON


def test_every_refusal_is_json_with_its_status(run):
    with serve(run) as srv:
        before = _snapshot(run)
        for method, path, allow in (
            ("PATCH", "/api/label", "POST"),
            ("PUT", "/api/lease", "POST"),
            ("DELETE", "/api/status", "GET, HEAD"),
            ("HEAD", "/api/label", "POST"),
            ("OPTIONS", "/", "GET, HEAD"),
        ):
            code, body, resp = request(srv, method, path)
            if method == "HEAD":
                assert code == 405 and body == b""  # a HEAD answer has no body
                assert resp.getheader("Content-Type") == "application/json"
            else:
                assert code == 405 and body["status"] == 405 and method in body["error"]
            assert resp.getheader("Allow") == allow
        code, body, _ = request(srv, "GET", "/no/such/page")
        assert code == 404 and body["status"] == 404
        code, body, _ = request(srv, "POST", "/api/lease", {"pad": "x" * 20_000})
        assert code == 413 and body["status"] == 413
        for raw, status in (
            (b"GET /\r\n\r\n", 400),  # HTTP/0.9
            (b"GET  / HTTP/1.1\r\n\r\n", 400),
            (b"GET http://evil/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
            (b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"y" * 20_000 + b"\r\n\r\n", 431),
            (
                b"POST /api/lease HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % srv.port,
                411,
            ),
            (
                b"POST /api/lease HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}" % srv.port,
                400,
            ),
        ):
            code, headers, body = parse_answer(raw_exchange(srv, raw)[0])
            assert code == status, raw
            assert headers["Content-Type"] == "application/json"
            assert json.loads(body)["status"] == status
        assert _snapshot(run) == before


def test_head_and_keep_alive(run):
    with serve(run) as srv:
        code, body, resp = request(srv, "HEAD", "/api/status")
        assert code == 200 and body == b"" and int(resp.getheader("Content-Length")) > 0
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        try:
            for _ in range(3):  # one connection, three requests
                conn.request("GET", "/api/status")
                resp = conn.getresponse()
                assert resp.status == 200 and json.loads(resp.read())["task"]
                assert resp.getheader("Connection") == "keep-alive"
        finally:
            conn.close()
        # A client that waits for "100 Continue" before sending its body gets it.
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            s.sendall(
                b"POST /api/lease HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n"
                b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                b"Expect: 100-continue\r\n\r\n" % srv.port
            )
            assert s.recv(64).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"{}")
            answer = b"".join(iter(lambda: s.recv(65536), b""))
        code, _, body = parse_answer(answer)
        assert code == 200 and json.loads(body)["query"]["kind"] in ("preference", "unacceptable")


def _snapshot(run: Path) -> tuple:
    with FeedbackStore(run / "feedback.sqlite") as s:
        return s.count_labels(), tuple(
            (q.id, q.status.value, q.leased_to)
            for q in map(s.get_query, range(1, 1 + s.count_queries()))
        )


# ---------------------------------------------------------------------- addresses


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_wildcard_bind_prints_an_address_another_machine_can_open(run, host, capsys, monkeypatch):
    if host == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with serve(run, host=host) as srv:
        remote = srv.url.split("//", 1)[1].rsplit(":", 1)[0].strip("[]")
        assert remote not in ("0.0.0.0", "::", "") and not is_loopback(remote)
        assert srv.url.endswith(f":{srv.port}/?token={srv.token}")
        assert srv.local_url.split("//", 1)[1].startswith(("127.0.0.1:", "[::1]:"))
        local = http.client.HTTPConnection(srv.local_url.split("//")[1].split("/")[0], timeout=10)
        local.request("GET", "/api/status", headers={"X-Mbrm-Token": srv.token})
        assert local.getresponse().status == 200
        local.close()
    monkeypatch.setattr(LabelServer, "serve_forever", lambda self: None)
    main([str(run), "--host", host, "--port", "0", "--no-browser"])
    out = capsys.readouterr().out
    print(out)
    opened = [line for line in out.splitlines() if " open http://" in line]
    assert len(opened) == 1 and "0.0.0.0" not in opened[0] and "[::]" not in opened[0]
    assert "?token=" in opened[0] and "on this machine: http://" in out


# ---------------------------------------------------------------------- load


def test_eight_annotators_empty_the_queue_beside_stalled_connections(tmp_path):
    n_pref, n_unacc, clients = 240, 80, 8
    run = make_run(tmp_path / "run", n_pref, n_unacc, seed=1)
    acked: dict[int, tuple[str, object]] = {}  # query id -> (annotator, value), from 200s
    failures: list[str] = []
    latency: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 120

    def annotator(i: int, port: int) -> None:
        name, rng = f"ann{i}", np.random.default_rng(i)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # kept alive

        def post(path: str, body: dict) -> tuple[int, dict]:
            t0 = time.perf_counter()
            conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            resp = conn.getresponse()
            out = json.loads(resp.read())
            with lock:
                latency.append(time.perf_counter() - t0)
            return resp.status, out

        try:
            while time.monotonic() < deadline:
                code, out = post("/api/lease", {"annotator": name})
                q = out.get("query")
                if code != 200:
                    failures.append(f"{name}: lease {code} {out}")
                    return
                if q is None:
                    if out["progress"]["pending"] == 0:
                        return  # the queue is empty
                    time.sleep(0.01)  # the rest are leased to others
                    continue
                if q["kind"] == "preference":
                    value: object = ["left", "right", "equal", "cannot_tell"][rng.integers(4)]
                else:
                    value = [None, "cannot_tell", int(rng.integers(7))][rng.integers(3)]
                code, out = post(
                    "/api/label", {"query_id": q["id"], "annotator": name, "value": value}
                )
                if code != 200:
                    failures.append(f"{name}: label {code} {out}")
                    return
                with lock:
                    if q["id"] in acked:
                        failures.append(f"query {q['id']} acknowledged twice")
                    acked[q["id"]] = (name, value)
            failures.append(f"{name}: the queue was not empty in time")
        except Exception as e:  # a crashed annotator fails the test, it does not hang it
            failures.append(f"{name}: {type(e).__name__}: {e}")
        finally:
            conn.close()

    with serve(run, lease_seconds=120) as srv, ExitStack() as stack:
        open_half_sent(stack, srv.port, 20)
        threads = [threading.Thread(target=annotator, args=(i, srv.port)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=max(1.0, deadline - time.monotonic() + 5))
        wall = time.perf_counter() - t0
        assert not any(t.is_alive() for t in threads)
    assert failures == []
    assert len(acked) == n_pref + n_unacc

    with FeedbackStore(run / "feedback.sqlite") as store:
        assert store.count_labels() == len(acked)
        assert store.count_queries(QueryStatus.PENDING) == 0
        for query_id, (name, value) in acked.items():
            label = store.get_label(query_id)
            assert label.who == Labeller.person(name)
            if isinstance(label.value, Preference):
                assert label.value.value == value
            elif value == "cannot_tell":
                assert not label.value.known.any()  # no state judged, none acceptable
            else:
                assert label.value.first_step == value and label.value.known[0]
    ms = np.array(latency) * 1000
    print(
        f"\n{clients} annotators, 20 stalled connections: {len(acked)} labels in {wall:.2f} s "
        f"({len(acked) / wall:.0f} labels/s, {len(ms)} requests); latency p50 "
        f"{np.percentile(ms, 50):.1f} ms, p99 {np.percentile(ms, 99):.1f} ms, max {ms.max():.1f} ms"
    )
