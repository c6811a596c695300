"""The labelling server's HTTP API: every endpoint with good and bad requests.

A bad request gets a 4xx with a JSON message and writes nothing to the store.
"""

from __future__ import annotations

import http.client
import json
import shutil
import socket
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from mbrm.feedback.segments import FeedbackKind, Labeller, Preference
from mbrm.feedback.store import FeedbackStore, QueryStatus
from mbrm.labeling import LabelServer, encode_clip, make_sample_run
from mbrm.labeling.clips import mp4_available
from mbrm.labeling.server import main

SIZE = (64, 64)


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """A sample run with fitted models: 4 preference and 2 unacceptable queries pending."""
    return make_sample_run(
        tmp_path_factory.mktemp("template") / "run",
        preference_queries=4,
        unacceptable_queries=2,
        segment_length=6,
    )


@pytest.fixture
def run(template, tmp_path) -> Path:
    return Path(shutil.copytree(template, tmp_path / "run"))


@pytest.fixture
def server(run):
    with LabelServer(run, annotator="alice", clip_size=SIZE, fps=5) as srv:
        yield srv


class Client:
    """Raw HTTP requests (http.client sends paths exactly as given, '..' included)."""

    def __init__(self, srv: LabelServer, headers: dict[str, str] | None = None) -> None:
        self.srv, self.headers = srv, headers or {}

    def request(self, method, path, body=None, headers=None, raw: bytes | None = None):
        conn = http.client.HTTPConnection(self.srv.host, self.srv.port, timeout=30)
        h = dict(self.headers)
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        conn.request(method, path, body=data, headers=h)
        resp = conn.getresponse()
        payload = resp.read()
        conn.close()
        ctype = resp.getheader("Content-Type", "")
        parsed = json.loads(payload) if ctype == "application/json" and payload else payload
        return resp.status, parsed, resp

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body, **kw)


def snapshot(run: Path) -> tuple:
    """Everything a request could write: labels, query states, leases."""
    with FeedbackStore(run / "feedback.sqlite") as s:
        queries = [
            (q.id, q.status.value, q.leased_to)
            for q in map(s.get_query, range(1, 1 + s.count_queries()))
        ]
        return s.count_labels(), tuple(queries)


def assert_refused(result, status: int, run: Path, before: tuple, text: str = "") -> None:
    code, body, _ = result
    assert code == status, body
    assert isinstance(body, dict) and body["status"] == status and body["error"]
    assert text.lower() in body["error"].lower(), body["error"]
    assert snapshot(run) == before


# ---------------------------------------------------------------------- status, page


def test_status_reports_progress_task_and_assistance(server, run):
    c = Client(server)
    code, body, resp = c.get("/api/status")
    assert code == 200 and resp.getheader("Cache-Control") == "no-store"
    assert body["task"] == "reacher_keepout"
    assert body["annotator"] == "alice"
    assert body["progress"] == {"labelled": 0, "pending": 6, "skipped": 0, "yours": 0}
    assert body["assistance"]["available"] is True
    assert c.get("/api/status?annotator=bob")[1]["annotator"] == "bob"
    before = snapshot(run)
    assert_refused(c.get("/api/status?annotator=%3Cscript%3E"), 400, run, before, "annotator")
    assert_refused(c.get("/api/nothing"), 404, run, before)
    assert_refused(c.request("PUT", "/api/label", {}), 405, run, before)


def test_page_and_static_files(server):
    c = Client(server)
    code, html, resp = c.get("/")
    assert code == 200 and b"/static/app.js" in html
    assert "script-src" not in resp.getheader("Content-Security-Policy")  # default-src 'self'
    assert "default-src 'self'" in resp.getheader("Content-Security-Policy")
    assert resp.getheader("X-Content-Type-Options") == "nosniff"
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        code, data, resp = c.get(f"/static/{name}")
        assert code == 200 and resp.getheader("Content-Type").startswith(ctype) and data
    assert c.get("/favicon.ico")[0] == 204
    for bad in ("/static/../server.py", "/static/clips.py", "/static/", "/static/%2e%2e/server.py"):
        code, body, _ = c.get(bad)
        assert code == 404 and "error" in body, bad


# ---------------------------------------------------------------------- leases


def test_lease_hands_each_query_to_one_annotator(server, run):
    c = Client(server)
    code, a1, _ = c.post("/api/lease", {"annotator": "alice"})
    assert code == 200
    q = a1["query"]
    assert q["id"] == 1 and q["kind"] == "preference" and q["leased_to"] == "alice"
    assert [s["side"] for s in q["segments"]] == ["left", "right"]
    assert [s["source"] for s in q["segments"]] == ["real", "imagined"]
    assert q["segments"][1]["imagined"] is True
    assert (
        q["segments"][0]["clip"]["url"]
        == f"/clips/seg{q['segments'][0]['id']}_64x64.{server.app.clips.format}"
    )
    assert q["segments"][0]["clip"]["n_frames"] == 7
    # Asking again (a page reload) gives the same query back, not a second one.
    assert c.post("/api/lease", {"annotator": "alice"})[1]["query"]["id"] == 1
    # The server's default name is used when the request gives none.
    assert c.post("/api/lease", {})[1]["query"]["id"] == 1
    assert c.post("/api/lease", {"annotator": "bob"})[1]["query"]["id"] == 2
    with FeedbackStore(run / "feedback.sqlite") as s:
        assert s.get_query(1).leased_to == "alice" and s.get_query(2).leased_to == "bob"


def test_lease_when_queue_is_empty(server, run):
    c = Client(server)
    for i in range(6):
        assert c.post("/api/lease", {"annotator": f"p{i}"})[1]["query"] is not None
    code, body, _ = c.post("/api/lease", {"annotator": "late"})
    assert code == 200 and body["query"] is None and body["progress"]["pending"] == 6


def test_bad_request_bodies_are_refused_and_write_nothing(server, run):
    c = Client(server)
    before = snapshot(run)
    assert_refused(
        c.post("/api/lease", raw=b"{not json", headers={"Content-Type": "application/json"}),
        400,
        run,
        before,
        "malformed JSON",
    )
    assert_refused(
        c.post("/api/lease", raw=b"\xff\xfe", headers={"Content-Type": "application/json"}),
        400,
        run,
        before,
        "malformed",
    )
    assert_refused(c.post("/api/lease", [1, 2]), 400, run, before, "object")
    assert_refused(
        c.post("/api/lease", {"annotator": "alice", "admin": True}),
        400,
        run,
        before,
        "unknown fields",
    )
    assert_refused(c.post("/api/lease", {"annotator": ""}), 400, run, before, "annotator")
    assert_refused(c.post("/api/lease", {"annotator": 7}), 400, run, before, "annotator")
    assert_refused(c.post("/api/lease", {"annotator": "x" * 65}), 400, run, before, "annotator")
    form = c.post(
        "/api/lease",
        raw=b"annotator=alice",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_refused(form, 415, run, before, "application/json")
    assert_refused(c.post("/api/lease", raw=b'{"annotator": "alice"}'), 415, run, before)
    big = {"query_id": 1, "annotator": "alice", "value": "left", "pad": "x" * 20_000}
    assert_refused(c.post("/api/label", big), 413, run, before, "limit")
    assert_refused(c.post("/api/nope", {}), 404, run, before)


def test_missing_and_lying_content_length(server, run):
    before = snapshot(run)
    with socket.create_connection((server.host, server.port), timeout=10) as s:
        s.sendall(
            b"POST /api/lease HTTP/1.0\r\nHost: 127.0.0.1:%d\r\n"
            b"Content-Type: application/json\r\n\r\n" % server.port
        )
        reply = s.recv(65536).decode()
    assert reply.startswith("HTTP/1.0 411"), reply
    code, body, _ = Client(server).post(
        "/api/lease",
        raw=b"{}",
        headers={"Content-Type": "application/json", "Content-Length": "-5"},
    )
    assert code == 400 and "Content-Length" in body["error"]
    assert snapshot(run) == before


# ---------------------------------------------------------------------- labels


def test_label_preference_is_stored_once_with_name_and_time(server, run):
    c = Client(server)
    t0 = time.time()
    q = c.post("/api/lease", {"annotator": "alice"})[1]["query"]
    code, body, _ = c.post(
        "/api/label", {"query_id": q["id"], "annotator": "alice", "value": "right"}
    )
    assert code == 200 and body["query_id"] == q["id"] and body["unacceptable_queries"] == []
    assert body["progress"] == {"labelled": 1, "pending": 5, "skipped": 0, "yours": 1}
    with FeedbackStore(run / "feedback.sqlite") as s:
        lab = s.get_label(q["id"])
        assert lab.value is Preference.RIGHT and lab.who == Labeller.person("alice")
        assert t0 <= lab.created_at <= time.time()
        assert s.get_query(q["id"]).status is QueryStatus.LABELLED
    before = snapshot(run)
    again = c.post("/api/label", {"query_id": q["id"], "annotator": "alice", "value": "left"})
    assert_refused(again, 409, run, before, "already labelled")
    assert_refused(c.post("/api/skip", {"query_id": q["id"]}), 409, run, before, "already")


def test_label_for_a_query_leased_to_someone_else_is_refused(server, run):
    c = Client(server)
    q = c.post("/api/lease", {"annotator": "alice"})[1]["query"]
    before = snapshot(run)
    body = {"query_id": q["id"], "annotator": "bob", "value": "left"}
    assert_refused(c.post("/api/label", body), 409, run, before, "leased to 'alice'")
    assert_refused(
        c.post("/api/skip", {"query_id": q["id"], "annotator": "bob"}), 409, run, before, "leased"
    )
    assert_refused(
        c.post("/api/release", {"query_id": q["id"], "annotator": "bob"}),
        409,
        run,
        before,
        "leased",
    )


def test_bad_label_values_are_refused_and_write_nothing(server, run):
    c = Client(server)
    c.post("/api/lease", {"annotator": "alice"})
    before = snapshot(run)
    cases = [
        ({"query_id": 1, "annotator": "alice", "value": "up"}, 400, "must be one of"),
        ({"query_id": 1, "annotator": "alice", "value": 1}, 400, "must be one of"),
        ({"query_id": 1, "annotator": "alice"}, 400, "needs 'value'"),
        ({"annotator": "alice", "value": "left"}, 400, "needs 'query_id'"),
        ({"query_id": "1; DROP TABLE labels", "value": "left"}, 400, "positive integer"),
        ({"query_id": True, "value": "left"}, 400, "positive integer"),
        ({"query_id": 0, "value": "left"}, 400, "positive integer"),
        ({"query_id": -3, "value": "left"}, 400, "positive integer"),
        ({"query_id": 1.0, "value": "left"}, 400, "positive integer"),
        ({"query_id": 2**70, "value": "left"}, 400, "positive integer"),
        ({"query_id": 999, "value": "left"}, 404, "no query with id 999"),
        ({"query_id": 1, "value": "left", "unacceptable": {"left": 99}}, 400, "frame index"),
        ({"query_id": 1, "value": "left", "unacceptable": {"middle": 1}}, 400, "'left'/'right'"),
        ({"query_id": 1, "value": "left", "unacceptable": [1]}, 400, "'left'/'right'"),
        ({"query_id": 1, "value": "left", "unacceptable": {"left": True}}, 400, "frame index"),
        ({"query_id": 5, "value": "left"}, 400, "frame index"),  # unacceptable query
        ({"query_id": 5, "value": 7}, 400, "frame index"),  # segment has 7 states: 0..6
        ({"query_id": 5, "value": -1}, 400, "frame index"),
        ({"query_id": 5, "value": 2, "unacceptable": {"left": 1}}, 400, "preference queries"),
        ({"query_id": 5, "value": "Cannot tell"}, 400, "'cannot_tell'"),
        ({"query_id": 5, "value": True}, 400, "frame index"),
        ({"query_id": 1, "value": "left", "unacceptable": {"left": "cannot_tell"}}, 400, "frame"),
    ]
    for body, status, text in cases:
        assert_refused(c.post("/api/label", body), status, run, before, text)


def test_unacceptable_marks_on_a_preference_query(server, run):
    c = Client(server)
    q = c.post("/api/lease", {"annotator": "alice"})[1]["query"]
    body = {
        "query_id": q["id"],
        "annotator": "alice",
        "value": "left",
        "unacceptable": {"right": 3},
    }
    code, out, _ = c.post("/api/label", body)
    assert code == 200 and len(out["unacceptable_queries"]) == 1
    with FeedbackStore(run / "feedback.sqlite") as s:
        assert s.get_label(q["id"]).value is Preference.LEFT
        extra = s.get_query(out["unacceptable_queries"][0])
        assert extra.kind is FeedbackKind.UNACCEPTABLE and extra.acquisition == "annotator"
        assert extra.segment_ids == (q["segments"][1]["id"],)
        flags = s.get_label(extra.id).value
        assert flags.first_step == 3 and flags.known.tolist() == [True] * 4 + [False] * 3
        assert s.count_labels() == 2


def test_label_unacceptable_query_with_a_first_step_or_none(server, run):
    c = Client(server)
    code, out, _ = c.post("/api/label", {"query_id": 5, "annotator": "alice", "value": 2})
    assert code == 200 and out["progress"]["labelled"] == 1
    code, out, _ = c.post("/api/label", {"query_id": 6, "annotator": "alice", "value": None})
    assert code == 200 and out["progress"]["labelled"] == 2
    with FeedbackStore(run / "feedback.sqlite") as s:
        assert s.get_label(5).value.first_step == 2
        none = s.get_label(6).value
        assert none.first_step is None and none.known.all()


def test_cannot_tell_on_an_unacceptable_query_judges_no_state(server, run):
    c = Client(server)
    with FeedbackStore(run / "feedback.sqlite") as s:
        judged_before = s.unacceptable_states()[0].shape[0]
    code, out, _ = c.post(
        "/api/label", {"query_id": 5, "annotator": "alice", "value": "cannot_tell"}
    )
    assert code == 200 and out["progress"]["labelled"] == 1
    with FeedbackStore(run / "feedback.sqlite") as s:
        label = s.get_label(5).value
        # An answer, but not "nothing unacceptable": no state becomes a training example.
        assert label.n_states == 7 and not label.known.any() and not label.flags.any()
        assert s.unacceptable_states()[0].shape[0] == judged_before
        assert s.get_query(5).status is QueryStatus.LABELLED


def test_skip_and_release(server, run):
    c = Client(server)
    q = c.post("/api/lease", {"annotator": "alice"})[1]["query"]
    code, out, _ = c.post("/api/release", {"query_id": q["id"], "annotator": "alice"})
    assert code == 200
    assert c.post("/api/lease", {"annotator": "bob"})[1]["query"]["id"] == q["id"]
    code, out, _ = c.post("/api/skip", {"query_id": q["id"], "annotator": "bob"})
    assert code == 200 and out["progress"]["skipped"] == 1
    with FeedbackStore(run / "feedback.sqlite") as s:
        assert s.get_query(q["id"]).status is QueryStatus.SKIPPED
        assert s.count_labels() == 0
    before = snapshot(run)
    assert_refused(c.post("/api/release", {"query_id": 999, "annotator": "bob"}), 404, run, before)
    assert_refused(c.post("/api/skip", {"query_id": "x"}), 400, run, before)


def test_expired_lease_passes_to_the_next_annotator(run):
    with LabelServer(run, annotator="alice", clip_size=SIZE, lease_seconds=0.3) as srv:
        c = Client(srv)
        q = c.post("/api/lease", {"annotator": "alice"})[1]["query"]
        assert c.post("/api/lease", {"annotator": "bob"})[1]["query"]["id"] != q["id"]
        c.post("/api/release", {"query_id": 2, "annotator": "bob"})
        time.sleep(0.4)
        assert c.post("/api/lease", {"annotator": "bob"})[1]["query"]["id"] == q["id"]
        before = snapshot(run)
        late = c.post("/api/label", {"query_id": q["id"], "annotator": "alice", "value": "left"})
        assert_refused(late, 409, run, before, "leased to 'bob'")
        assert (
            c.post("/api/label", {"query_id": q["id"], "annotator": "bob", "value": "equal"})[0]
            == 200
        )
    with FeedbackStore(run / "feedback.sqlite") as s:
        assert s.count_labels() == 1 and s.get_label(q["id"]).who.name == "bob"


# ---------------------------------------------------------------------- query, assist


def test_query_endpoint(server, run):
    c = Client(server)
    code, q, _ = c.get("/api/query/5")
    assert code == 200 and q["kind"] == "unacceptable" and q["segments"][0]["side"] == "segment"
    assert q["leased_to"] is None  # reading a query does not lease it
    before = snapshot(run)
    assert_refused(c.get("/api/query/999"), 404, run, before, "no query")
    assert_refused(c.get("/api/query/abc"), 400, run, before, "positive integer")
    assert_refused(c.get("/api/query/-1"), 400, run, before)


def test_assistance_from_the_run_models(server, run):
    c = Client(server)
    code, a, _ = c.get("/api/assist/1")
    assert code == 200 and a["available"] is True
    assert len(a["reward_mean"]) == 6 and len(a["reward_std"]) == 6  # one per action
    assert len(a["p_unacceptable"]) == 7  # one per state
    assert all(s >= 0 for s in a["reward_std"])
    if a["threshold"] is not None:
        assert a["risky"] == [i for i, p in enumerate(a["p_unacceptable"]) if p >= a["threshold"]]
    assert c.get("/api/assist/999")[0] == 404
    assert c.get("/api/assist/x")[0] == 400


def test_without_a_checkpoint_the_page_says_so(run):
    (run / "checkpoint.pt").unlink()
    with LabelServer(run, annotator="alice", clip_size=SIZE) as srv:
        c = Client(srv)
        status = c.get("/api/status")[1]
        assert status["assistance"]["available"] is False
        assert "no model checkpoint" in status["assistance"]["note"]
        a = c.get("/api/assist/1")[1]
        assert a == {"available": False, "note": status["assistance"]["note"]}


# ---------------------------------------------------------------------- clips


@pytest.mark.parametrize("fmt", [None, "webp", "gif"])
def test_clip_is_rendered_once_and_cached(fmt, run):
    server = LabelServer(run, annotator="alice", clip_size=SIZE, fps=5, clip_format=fmt).start()
    try:
        _check_clip_cache(server, run)
    finally:
        server.close()


def _check_clip_cache(server: LabelServer, run: Path) -> None:
    c = Client(server)
    q = c.post("/api/lease", {"annotator": "alice"})[1]["query"]
    clip = q["segments"][1]["clip"]
    code, data, resp = c.get(clip["url"])
    assert code == 200 and resp.getheader("Content-Type") == clip["media_type"]
    path = run / "clips" / clip["url"].rsplit("/", 1)[1]
    assert path.read_bytes() == data
    frames = np.stack(list(iio.imiter(path)))[..., :3]  # [N, H, W, 3]
    assert frames.shape == (clip["n_frames"], 64, 64, 3)
    assert frames.max() > 0 and frames.std() > 1  # a picture, not a blank
    mtime = path.stat().st_mtime_ns
    assert c.get(clip["url"])[1] == data and path.stat().st_mtime_ns == mtime
    assert [p.name for p in (run / "clips").iterdir()] == [path.name]  # no temp files left


def test_clip_paths_outside_the_cache_are_refused(server, run):
    c = Client(server)
    fmt = server.app.clips.format
    (run / "clips").mkdir(exist_ok=True)
    (run / "clips" / f"seg2_64x64.{fmt}").symlink_to(run / "config.yaml")
    secret = (run / "config.yaml").read_bytes()
    bad = [
        "/clips/../config.yaml",
        "/clips/%2e%2e/config.yaml",
        "/clips/..%2fconfig.yaml",
        "/clips/%2fetc%2fpasswd",
        "/clips//etc/passwd",
        "/clips/" + str(run / "config.yaml"),
        f"/clips/seg1_64x64.{fmt}/../../config.yaml",
        f"/clips/seg2_64x64.{fmt}",  # a symlink planted in the cache
        f"/clips/seg999_64x64.{fmt}",  # no such segment
        f"/clips/seg1_32x32.{fmt}",  # another size than this server renders
        "/clips/seg01_64x64.gif",
        "/clips/seg1_64x64.txt",
        "/clips/",
    ]
    for path in bad:
        code, body, _ = c.get(path)
        assert code == 404, (path, body)
        assert secret not in json.dumps(body).encode()
    assert (run / "clips" / f"seg2_64x64.{fmt}").is_symlink()  # left alone, not followed


@pytest.mark.parametrize("fmt", ["mp4", "webp", "gif"])
def test_encode_clip_round_trip(fmt, tmp_path):
    if fmt == "mp4" and not mp4_available():
        pytest.skip("imageio-ffmpeg is not installed: no mp4 encoder")
    rng = np.random.default_rng(0)
    frames = np.zeros((5, 32, 48, 3), dtype=np.uint8)  # [N, H, W, 3]
    for i in range(5):
        frames[i, :, i * 8 : i * 8 + 16] = rng.integers(100, 255, 3, dtype=np.uint8)
    path = tmp_path / f"clip.{fmt}"
    encode_clip(frames, path, fmt, fps=5)
    back = np.stack(list(iio.imiter(path)))[..., :3]  # [N, H, W, 3]
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 12  # lossy codecs, same pictures
    with pytest.raises(ValueError, match="uint8"):
        encode_clip(frames.astype(float), path, fmt, fps=5)
    with pytest.raises(ValueError, match="format"):
        encode_clip(frames, path, "avi", fps=5)


# ---------------------------------------------------------------------- access


def test_token_is_required_when_set(run):
    token = "t" * 24
    with LabelServer(run, annotator="alice", clip_size=SIZE, token=token) as srv:
        assert srv.url.endswith(f"?token={token}")
        before = snapshot(run)
        for path in ("/", "/api/status", "/static/app.js", "/clips/seg1_64x64.webp"):
            assert_refused(Client(srv).get(path), 403, run, before, "token")
        assert_refused(Client(srv).post("/api/lease", {}), 403, run, before, "token")
        wrong = Client(srv, {"X-Mbrm-Token": "u" * 24})
        assert_refused(wrong.post("/api/lease", {}), 403, run, before, "token")
        assert Client(srv, {"X-Mbrm-Token": token}).post("/api/lease", {})[0] == 200
        code, _, resp = Client(srv).get(f"/?token={token}")
        assert code == 200
        cookie = resp.getheader("Set-Cookie")
        assert cookie.startswith(f"mbrm_token={token}") and "HttpOnly" in cookie
        with_cookie = Client(srv, {"Cookie": f"mbrm_token={token}"})
        assert with_cookie.get("/static/app.js")[0] == 200


def test_binding_off_loopback_generates_a_token(run):
    with LabelServer(run, host="0.0.0.0", annotator="alice", clip_size=SIZE) as srv:
        assert srv.token is not None and len(srv.token) >= 16
        assert srv.url.endswith(f"?token={srv.token}") and "0.0.0.0" not in srv.url
        c = Client(srv)
        c.srv = type("Addr", (), {"host": "127.0.0.1", "port": srv.port})()
        assert c.get("/api/status")[0] == 403
        c.headers = {"X-Mbrm-Token": srv.token}
        assert c.get("/api/status")[0] == 200
    with pytest.raises(ValueError, match="16 characters"):
        LabelServer(run, host="0.0.0.0", token="short", clip_size=SIZE)
    with pytest.raises(ValueError, match="letters, digits"):
        LabelServer(run, host="0.0.0.0", token="x" * 16 + "\r\nSet-Cookie: a=b", clip_size=SIZE)


def test_foreign_host_header_is_refused(server, run):
    before = snapshot(run)
    evil = Client(server, {"Host": f"evil.example:{server.port}"})
    assert_refused(evil.post("/api/lease", {}), 403, run, before, "Host header")
    assert Client(server, {"Host": f"localhost:{server.port}"}).get("/api/status")[0] == 200


def test_main_refuses_a_directory_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit, match="not a run directory"):
        main([str(tmp_path), "--no-browser", "--port", "0"])
    with pytest.raises(SystemExit):
        main(["--clip-format", "avi", str(tmp_path)])
    assert "invalid choice" in capsys.readouterr().err
