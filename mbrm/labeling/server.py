"""``mbrm label RUN_DIR``: a local web server where people answer the agent's queries.

In ``feedback=human`` mode the training loop leaves its queries (preferences over
pairs of segments, unacceptable-state questions over one segment; real, imagined or
synthesised, Leike et al. 2018, Sec. 5.2) pending in the run's feedback store. This
server hands them out one at a time through the store's leases, so several people
can label one queue at once without two of them answering the same query, shows
each clip rendered from its states with the models' assistance beside it (Sec. 3.2),
and writes every answer to the store with the annotator's name and time, where the
loop picks it up.

Standard library only (``http.server``); a fixed pool of worker threads, each with
its own store connection. Every request is checked before it touches the store:
token (required when bound to anything but loopback), Host header, body size,
content type, JSON shape. A refused request gets a 4xx with a JSON message and
writes nothing.
"""

from __future__ import annotations

import argparse
import getpass
import hmac
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import threading
import time
import traceback
import webbrowser
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from mbrm.feedback.segments import FeedbackKind, Labeller, Preference
from mbrm.feedback.store import (
    FeedbackStore,
    FeedbackStoreError,
    InvalidLabelError,
    LeaseConflictError,
    Query,
    QueryStatus,
    UnknownIdError,
)
from mbrm.labeling.assist import Assistant
from mbrm.labeling.clips import (
    FORMATS,
    ClipCache,
    ClipNotFoundError,
    default_format,
    render_states,
)

MAX_BODY = 16 * 1024  # bytes; the largest valid request is a few hundred
TOKEN_HEADER = "X-Mbrm-Token"
TOKEN_COOKIE = "mbrm_token"
_ANNOTATOR = re.compile(r"^[\w .@+-]{1,64}$")
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


class ApiError(Exception):
    """A refused request: HTTP status and a message for the JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def _json(status: int, payload: Any, **headers: str) -> Response:
    return Response(status, json.dumps(payload).encode(), "application/json", dict(headers))


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LabelingApp:
    """The API over one run's feedback store; transport-free so one handler serves it.

    ``annotator`` is the default name for requests that do not give one. A query is
    leased for ``lease_seconds``; an annotator who does not answer in time loses it
    to the next person who asks.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        task_name: str,
        annotator: str,
        lease_seconds: float = 600.0,
        token: str | None = None,
        allowed_hosts: frozenset[str] | None = None,
        max_body: int = MAX_BODY,
        clip_width: int = 240,
        clip_height: int = 240,
        fps: float = 10.0,
        clip_format: str | None = None,
        assistance: bool = True,
    ) -> None:
        from mbrm.tasks import get_task

        self.run_dir = Path(run_dir)
        self.store_path = self.run_dir / "feedback.sqlite"
        if not self.store_path.exists():
            raise FileNotFoundError(
                f"{self.run_dir} has no feedback.sqlite; is it a run directory?"
            )
        self.task = get_task(task_name)
        self.annotator = _annotator(annotator)
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive; got {lease_seconds}")
        if max_body < 256:
            raise ValueError(f"max_body must be at least 256 bytes; got {max_body}")
        self.lease_seconds = float(lease_seconds)
        self.token = token
        self.allowed_hosts = allowed_hosts
        self.max_body = int(max_body)
        self._local = threading.local()
        self.clips = ClipCache(
            self.run_dir / "clips",
            lambda states, w, h: render_states(self.task, states, w, h),
            lambda i: self.store().get_segment(i),
            width=clip_width,
            height=clip_height,
            fps=fps,
            fmt=clip_format,
        )
        self.assistant = Assistant(self.run_dir) if assistance else None
        self._n_states: dict[int, int] = {}

    # ------------------------------------------------------------------ plumbing

    def store(self) -> FeedbackStore:
        """This thread's own connection (SQLite connections are not shared across threads)."""
        store = getattr(self._local, "store", None)
        if store is None:
            # Closed with its thread: the pool's threads end when the server closes.
            store = FeedbackStore(self.store_path)
            self._local.store = store
        return store

    def check_access(self, headers: Any, query: dict[str, list[str]]) -> None:
        """Host header against DNS rebinding; the token where one is set."""
        if self.allowed_hosts is not None:
            host = (headers.get("Host") or "").strip().lower()
            if host not in self.allowed_hosts:
                raise ApiError(403, f"Host header {host!r} is not this server's address")
        if self.token is None:
            return
        given = headers.get(TOKEN_HEADER) or (query.get("token") or [None])[0]
        if given is None:
            cookie = SimpleCookie(headers.get("Cookie") or "")
            if TOKEN_COOKIE in cookie:
                given = cookie[TOKEN_COOKIE].value
        if given is None or not hmac.compare_digest(given.encode(), self.token.encode()):
            raise ApiError(403, "missing or wrong access token (open the address printed at start)")

    # ------------------------------------------------------------------ dispatch

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes | None
    ) -> Response:
        if method == "GET":
            if path in ("/", "/index.html"):
                return self._static("index.html", query)
            if path == "/favicon.ico":
                return Response(204, b"", "image/x-icon")
            if path.startswith("/static/"):
                return self._static(path[len("/static/") :], query)
            if path == "/api/status":
                return _json(200, self.status(self._name(query.get("annotator", [None])[0])))
            if path.startswith("/api/query/"):
                q = self._get_query(_int_id(path[len("/api/query/") :], "query id"))
                return _json(200, self.query_json(q))
            if path.startswith("/api/assist/"):
                return _json(200, self.assist(_int_id(path[len("/api/assist/") :], "segment id")))
            if path.startswith("/clips/"):
                return self._clip(path[len("/clips/") :])
            raise ApiError(404, f"no such page: {path}")
        if method == "POST":
            routes = {
                "/api/lease": self.lease,
                "/api/label": self.label,
                "/api/skip": self.skip,
                "/api/release": self.release,
            }
            if path not in routes:
                raise ApiError(404, f"no such endpoint: POST {path}")
            return _json(200, routes[path](self._body(headers, body)))
        raise ApiError(405, f"method {method} is not allowed")

    def _body(self, headers: Any, body: bytes | None) -> dict[str, Any]:
        ctype = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ApiError(415, f"request body must be application/json; got {ctype or 'none'!r}")
        if body is None:
            raise ApiError(411, "request needs a Content-Length header")
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ApiError(400, f"malformed JSON body: {e}") from e
        if not isinstance(data, dict):
            raise ApiError(400, f"JSON body must be an object; got {type(data).__name__}")
        return data

    def _static(self, name: str, query: dict[str, list[str]]) -> Response:
        if name not in _STATIC:
            raise ApiError(404, f"no such static file: {name!r}")
        data = resources.files("mbrm.labeling").joinpath("static", name).read_bytes()
        headers = {"Cache-Control": "no-cache"}
        if name == "index.html" and self.token is not None and "token" in query:
            # The page's own requests (scripts, clips) then carry the token as a cookie.
            headers["Set-Cookie"] = (
                f"{TOKEN_COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
            )
        return Response(200, data, _STATIC[name], headers)

    def _clip(self, raw_name: str) -> Response:
        name = unquote(raw_name)
        try:
            path = self.clips.path(name)
        except ClipNotFoundError as e:
            raise ApiError(404, str(e)) from e
        with open(path, "rb") as f:
            data = f.read()
        return Response(
            200,
            data,
            self.clips.info(1, 1).media_type,
            {"Cache-Control": "private, max-age=86400"},
        )

    # ------------------------------------------------------------------ endpoints

    def _name(self, given: Any) -> str:
        if given is None:
            return self.annotator
        return _annotator(given)

    def _get_query(self, query_id: int) -> Query:
        try:
            return self.store().get_query(query_id)
        except UnknownIdError as e:
            raise ApiError(404, str(e)) from e

    def status(self, annotator: str) -> dict[str, Any]:
        store = self.store()
        by_who = store.label_counts("who")
        assist_ok, reason = (
            self.assistant.available() if self.assistant is not None else (False, "turned off")
        )
        return {
            "task": self.task.name,
            "task_description": self.task.description,
            "unacceptable_description": self.task.unacceptable_description,
            "annotator": annotator,
            "default_annotator": self.annotator,
            "progress": self._progress(annotator),
            "labelled_by_you": by_who.get(Labeller.person(annotator).key, 0),
            "lease_seconds": self.lease_seconds,
            "clip_format": self.clips.format,
            "assistance": {"available": assist_ok, "note": reason},
        }

    def _progress(self, annotator: str | None = None) -> dict[str, int]:
        store = self.store()
        out = {
            "labelled": store.count_queries(QueryStatus.LABELLED),
            "pending": store.count_queries(QueryStatus.PENDING),
            "skipped": store.count_queries(QueryStatus.SKIPPED),
        }
        if annotator is not None:
            out["yours"] = store.label_counts("who").get(Labeller.person(annotator).key, 0)
        return out

    def query_json(self, q: Query) -> dict[str, Any]:
        store = self.store()
        sides = ("left", "right") if q.kind is FeedbackKind.PREFERENCE else ("segment",)
        segments = []
        for side, seg_id in zip(sides, q.segment_ids, strict=True):
            seg = store.get_segment(seg_id)
            info = self.clips.info(seg_id, seg.states.shape[0])
            segments.append(
                {
                    "side": side,
                    "id": seg_id,
                    "source": seg.source.value,
                    "imagined": seg.source.value != "real",
                    "n_states": int(seg.states.shape[0]),
                    "clip": {
                        "url": f"/clips/{info.name}",
                        "format": info.format,
                        "media_type": info.media_type,
                        "n_frames": info.n_frames,
                        "fps": info.fps,
                        "width": info.width,
                        "height": info.height,
                    },
                    "assist_url": f"/api/assist/{seg_id}",
                }
            )
        return {
            "id": q.id,
            "kind": q.kind.value,
            "status": q.status.value,
            "source": q.source,
            "acquisition": q.acquisition,
            "score": q.score,
            "loop_round": q.loop_round,
            "leased_to": q.leased_to,
            "lease_expires": q.lease_expires,
            "segments": segments,
        }

    def assist(self, segment_id: int) -> dict[str, Any]:
        try:
            seg = self.store().get_segment(segment_id)
        except UnknownIdError as e:
            raise ApiError(404, str(e)) from e
        if self.assistant is None:
            return {"available": False, "note": "assistance is turned off (--no-assist)"}
        out = self.assistant.for_segment(segment_id, seg)
        if out is None:
            return {"available": False, "note": self.assistant.available()[1]}
        return {"available": True, **out.as_json()}

    def lease(self, body: dict[str, Any]) -> dict[str, Any]:
        _only(body, {"annotator"}, "lease")
        who = self._name(body.get("annotator"))
        q = self.store().lease_next(who, self.lease_seconds)
        return {
            "query": None if q is None else self.query_json(q),
            "progress": self._progress(who),
        }

    def _target(self, body: dict[str, Any], allowed: set[str], what: str) -> tuple[Query, str]:
        _only(body, allowed, what)
        if "query_id" not in body:
            raise ApiError(400, f"{what} needs 'query_id'")
        q = self._get_query(_int_id(body["query_id"], "query_id"))
        who = self._name(body.get("annotator"))
        if q.status is not QueryStatus.PENDING:
            raise ApiError(
                409, f"query {q.id} is already {q.status.value}; a query is answered once"
            )
        return q, who

    def label(self, body: dict[str, Any]) -> dict[str, Any]:
        q, who = self._target(body, {"query_id", "annotator", "value", "unacceptable"}, "label")
        if "value" not in body:
            raise ApiError(400, "label needs 'value'")
        value, extra = self._parse_value(q, body["value"], body.get("unacceptable"))
        store = self.store()
        try:
            # the answer and the annotator's marks on either clip: one transaction
            label_id, extra_ids = store.add_label_with_marks(q.id, value, who, extra)
        except LeaseConflictError as e:
            raise ApiError(409, str(e)) from e
        except InvalidLabelError as e:
            # Answered by someone else between our check and our write: a conflict.
            if store.get_query(q.id).status is not QueryStatus.PENDING:
                raise ApiError(409, str(e)) from e
            raise ApiError(400, str(e)) from e
        return {
            "label_id": label_id,
            "query_id": q.id,
            "unacceptable_queries": extra_ids,
            "progress": self._progress(who),
        }

    def _parse_value(
        self, q: Query, value: Any, flags: Any
    ) -> tuple[Preference | int | None, list[tuple[int, int]]]:
        """The label value and the (segment, first unacceptable step) flags of a request."""
        n = [self._segment_length(i) for i in q.segment_ids]
        if q.kind is FeedbackKind.UNACCEPTABLE:
            if flags is not None:
                raise ApiError(400, "'unacceptable' is for preference queries; send 'value'")
            if value is None:
                return None, []
            return _step(value, n[0], "value"), []
        if not isinstance(value, str) or value not in {p.value for p in Preference}:
            raise ApiError(
                400,
                f"query {q.id} is a preference query: value must be one of "
                f"{[p.value for p in Preference]}; got {value!r}",
            )
        extra: list[tuple[int, int]] = []
        if flags is not None:
            if not isinstance(flags, dict) or not set(flags) <= {"left", "right"}:
                raise ApiError(400, "'unacceptable' must be an object with keys 'left'/'right'")
            for side, step in sorted(flags.items()):
                i = 0 if side == "left" else 1
                extra.append((q.segment_ids[i], _step(step, n[i], f"unacceptable.{side}")))
        return Preference(value), extra

    def _segment_length(self, seg_id: int) -> int:
        if seg_id not in self._n_states:
            self._n_states[seg_id] = int(self.store().get_segment(seg_id).states.shape[0])
        return self._n_states[seg_id]

    def skip(self, body: dict[str, Any]) -> dict[str, Any]:
        q, who = self._target(body, {"query_id", "annotator"}, "skip")
        try:
            self.store().skip(q.id, who)
        except (LeaseConflictError, InvalidLabelError) as e:
            raise ApiError(409, str(e)) from e
        return {"query_id": q.id, "progress": self._progress(who)}

    def release(self, body: dict[str, Any]) -> dict[str, Any]:
        q, who = self._target(body, {"query_id", "annotator"}, "release")
        try:
            self.store().release(q.id, who)
        except LeaseConflictError as e:
            raise ApiError(409, str(e)) from e
        return {"query_id": q.id, "progress": self._progress(who)}


# ---------------------------------------------------------------------- validation


def _annotator(name: Any) -> str:
    if not isinstance(name, str) or not _ANNOTATOR.match(name) or not name.strip():
        raise ApiError(
            400,
            f"annotator must be 1-64 letters, digits, spaces or . @ + - _; got {name!r}",
        )
    return name.strip()


def _int_id(raw: Any, what: str) -> int:
    if isinstance(raw, bool):
        raise ApiError(400, f"{what} must be a positive integer; got {raw!r}")
    if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,18}", raw):
        raw = int(raw)
    if not isinstance(raw, int) or raw < 1 or raw >= 2**63:
        raise ApiError(400, f"{what} must be a positive integer; got {raw!r}")
    return raw


def _step(raw: Any, n_states: int, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < n_states:
        raise ApiError(
            400, f"{what} must be a frame index in 0..{n_states - 1} (or null); got {raw!r}"
        )
    return raw


def _only(body: dict[str, Any], allowed: set[str], what: str) -> None:
    extra = set(body) - allowed
    if extra:
        raise ApiError(400, f"{what} takes {sorted(allowed)}; unknown fields {sorted(extra)}")


# ---------------------------------------------------------------------- HTTP


class _Handler(BaseHTTPRequestHandler):
    server: _PooledServer
    protocol_version = "HTTP/1.0"  # one request per connection: a worker is never held idle
    timeout = 15  # seconds a client may take to send its request
    server_version = "mbrm-label"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        app = self.server.app
        t0 = time.perf_counter()
        try:
            split = urlsplit(self.path)
            query = parse_qs(split.query)
            app.check_access(self.headers, query)
            body = self._read_body(app.max_body) if method == "POST" else None
            resp = app.handle(method, split.path, query, self.headers, body)
        except ApiError as e:
            resp = _json(e.status, {"error": e.message, "status": e.status})
        except FeedbackStoreError as e:
            resp = _json(500, {"error": f"feedback store: {e}", "status": 500})
        except Exception as e:  # answer 500 and keep serving
            traceback.print_exc()
            resp = _json(500, {"error": f"{type(e).__name__}: {e}", "status": 500})
        self._send(resp)
        if self.server.verbose:
            ms = (time.perf_counter() - t0) * 1000
            print(f"mbrm label: {method} {self.path.split('?')[0]} {resp.status} {ms:.1f} ms")

    def _read_body(self, limit: int) -> bytes | None:
        length = self.headers.get("Content-Length")
        if length is None:
            return None
        if not re.fullmatch(r"[0-9]{1,12}", length.strip()):
            raise ApiError(400, f"bad Content-Length {length!r}")
        n = int(length)
        if n > limit:
            raise ApiError(413, f"request body of {n} bytes is over the {limit}-byte limit")
        return self.rfile.read(n)

    def _send(self, resp: Response) -> None:
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            if resp.content_type == "application/json":
                self.send_header("Cache-Control", "no-store")
            for k, v in {**_SECURITY_HEADERS, **resp.headers}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away; nothing was written to the store by sending

    def log_message(self, format: str, *args: Any) -> None:  # stdlib signature
        pass  # request lines are printed by _serve when verbose


class _PooledServer(HTTPServer):
    """HTTPServer with a fixed pool of worker threads (bounded concurrency)."""

    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], app: LabelingApp, workers: int, verbose: bool):
        self.address_family = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
        self.app, self.verbose = app, verbose
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mbrm-label")
        super().__init__(addr, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._pool.submit(self._work, request, client_address)

    def _work(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # one bad connection must not stop the server
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        self._pool.shutdown(wait=True)


class LabelServer:
    """The labelling server for one run directory.

    ``port=0`` picks a free port. A host other than loopback needs a token; one is
    generated when none is given. ``url`` is the address to open (with the token).
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        annotator: str | None = None,
        token: str | None = None,
        lease_seconds: float = 600.0,
        max_body: int = MAX_BODY,
        clip_size: tuple[int, int] = (240, 240),
        fps: float = 10.0,
        clip_format: str | None = None,
        workers: int = 16,
        assistance: bool = True,
        verbose: bool = False,
    ) -> None:
        run_dir = Path(run_dir)
        if not (run_dir / "config.yaml").exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
        if not 1 <= workers <= 256:
            raise ValueError(f"workers must be in 1..256; got {workers}")
        loopback = is_loopback(host)
        if token is None and not loopback:
            token = secrets.token_urlsafe(24)
        if token is not None and len(token) < 16:
            raise ValueError("a token must be at least 16 characters long")
        self.token = token
        app = LabelingApp(
            run_dir,
            task_name=_task_name(run_dir),
            annotator=annotator or _default_annotator(),
            lease_seconds=lease_seconds,
            token=token,
            max_body=max_body,
            clip_width=clip_size[0],
            clip_height=clip_size[1],
            fps=fps,
            clip_format=clip_format,
            assistance=assistance,
        )
        self.app = app
        self._httpd = _PooledServer((host, port), app, workers, verbose)
        self.host, self.port = host, int(self._httpd.server_address[1])
        if loopback:
            # Only our own address may be named in Host: a page on another site that
            # rebinds its DNS name to 127.0.0.1 gets 403.
            names = {host, "localhost", "127.0.0.1", "[::1]"}
            app.allowed_hosts = frozenset(f"{n}:{self.port}".lower() for n in names)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}/"
        return base if self.token is None else f"{base}?token={self.token}"

    def serve_forever(self) -> None:
        self._httpd.serve_forever(poll_interval=0.2)

    def start(self) -> LabelServer:
        """Serve from a background thread (for tests and embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def _task_name(run_dir: Path) -> str:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(run_dir / "config.yaml")
    name = OmegaConf.select(cfg, "task.name")
    if not isinstance(name, str):
        raise ValueError(f"{run_dir / 'config.yaml'} has no task.name")
    return name


def _default_annotator() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return name if name and _ANNOTATOR.match(name) else "annotator"


def _parse_size(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"([0-9]+)(?:x([0-9]+))?", s)
    if m is None:
        raise argparse.ArgumentTypeError(f"size must be N or WxH; got {s!r}")
    w = int(m[1])
    return w, int(m[2] or w)


def main(argv: list[str] | None = None) -> None:
    """``mbrm label RUN_DIR [options]``."""
    p = argparse.ArgumentParser(
        prog="mbrm label",
        description="Label a run's pending queries in the browser (feedback=human).",
    )
    p.add_argument("run_dir", type=Path, help="run directory (config.yaml, feedback.sqlite)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    p.add_argument("--port", type=int, default=8765, help="port; 0 picks a free one")
    p.add_argument("--name", default=None, help="annotator name (default: the OS user name)")
    p.add_argument(
        "--token",
        default=None,
        help="access token (required off loopback; generated and printed when not given)",
    )
    p.add_argument("--lease-seconds", type=float, default=600.0, help="how long a query is held")
    p.add_argument("--clip-size", type=_parse_size, default=(240, 240), help="clip size N or WxH")
    p.add_argument("--fps", type=float, default=10.0, help="clip frames per second")
    p.add_argument(
        "--clip-format",
        choices=("auto", *FORMATS),
        default="auto",
        help=f"clip encoding (auto: {default_format()} here)",
    )
    p.add_argument("--max-body", type=int, default=MAX_BODY, help="largest request body, bytes")
    p.add_argument("--workers", type=int, default=16, help="request worker threads")
    p.add_argument("--no-assist", action="store_true", help="do not load the run's models")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.add_argument("--verbose", action="store_true", help="print every request")
    p.add_argument(
        "--make-sample",
        action="store_true",
        help="first create a small sample run in RUN_DIR (real and imagined reacher clips)",
    )
    a = p.parse_args(argv)
    if a.make_sample:
        from mbrm.labeling.sample import make_sample_run

        try:
            make_sample_run(a.run_dir)
        except FileExistsError as e:
            raise SystemExit(f"mbrm label: {e}") from e
        print(f"mbrm label: sample run written to {a.run_dir}")
    try:
        server = LabelServer(
            a.run_dir,
            host=a.host,
            port=a.port,
            annotator=a.name,
            token=a.token,
            lease_seconds=a.lease_seconds,
            max_body=a.max_body,
            clip_size=a.clip_size,
            fps=a.fps,
            clip_format=None if a.clip_format == "auto" else a.clip_format,
            workers=a.workers,
            assistance=not a.no_assist,
            verbose=a.verbose,
        )
    except (FileNotFoundError, ValueError, KeyError, OSError, ApiError) as e:
        raise SystemExit(f"mbrm label: {e}") from e
    progress = server.app._progress()
    print(
        f"mbrm label: {a.run_dir} ({server.app.task.name}), annotator {server.app.annotator!r}, "
        f"{progress['pending']} pending / {progress['labelled']} labelled"
    )
    if server.token is not None and a.token is None:
        print(f"mbrm label: access token {server.token}")
    print(f"mbrm label: open {server.url}", flush=True)
    if not a.no_browser:
        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nmbrm label: stopped", file=sys.stderr)
    finally:
        server.close()


__all__ = ["MAX_BODY", "ApiError", "LabelServer", "LabelingApp", "is_loopback", "main"]
