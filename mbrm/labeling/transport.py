"""The labelling server's HTTP side: a standard-library server with a fixed pool of
worker threads, each with its own store connection, in front of a :class:`LabelingApp`.

Every request is checked before it touches the store: token (required when bound to
anything but loopback), Host header, body size, content type, JSON shape. A refused
request gets a 4xx with a JSON message and writes nothing.
"""

from __future__ import annotations

import getpass
import os
import re
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from mbrm.feedback.store import FeedbackStoreError
from mbrm.labeling.access import is_loopback, loopback_hosts, server_token
from mbrm.labeling.api import ANNOTATOR, MAX_BODY, ApiError, Response, json_response
from mbrm.labeling.app import LabelingApp
from mbrm.rundir import CONFIG

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


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
            resp = json_response(e.status, {"error": e.message, "status": e.status})
        except FeedbackStoreError as e:
            resp = json_response(500, {"error": f"feedback store: {e}", "status": 500})
        except Exception as e:  # answer 500 and keep serving
            traceback.print_exc()
            resp = json_response(500, {"error": f"{type(e).__name__}: {e}", "status": 500})
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
            for k, v in {**SECURITY_HEADERS, **resp.headers}.items():
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
        if not (run_dir / CONFIG).exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG})")
        if not 1 <= workers <= 256:
            raise ValueError(f"workers must be in 1..256; got {workers}")
        self.token = server_token(host, token)
        app = LabelingApp(
            run_dir,
            task_name=_task_name(run_dir),
            annotator=annotator or _default_annotator(),
            lease_seconds=lease_seconds,
            token=self.token,
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
        if is_loopback(host):
            # Only our own address may be named in Host (the port is known only now).
            app.allowed_hosts = loopback_hosts(host, self.port)
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

    cfg = OmegaConf.load(run_dir / CONFIG)
    name = OmegaConf.select(cfg, "task.name")
    if not isinstance(name, str):
        raise ValueError(f"{run_dir / CONFIG} has no task.name")
    return name


def _default_annotator() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = ""
    return name if name and ANNOTATOR.match(name) else "annotator"


__all__ = ["SECURITY_HEADERS", "LabelServer"]
