"""The labelling server's HTTP side: one asyncio event loop owns every connection, in
front of a :class:`~mbrm.labeling.app.LabelingApp` whose blocking work (SQLite,
MuJoCo rendering, model inference) runs on bounded thread pools.

A waiting connection costs the loop nothing, so slow or idle clients cannot hold up
others. Each phase of a request has a deadline (the head from its first byte, the
body, the wait between kept-alive requests, the client reading the answer), the
head has a size limit, and at the connection cap the connection that has waited
longest for a head is dropped to make room. Access (Host header, token) is checked
as soon as the head is in, before the body is read or the store is touched. Every
refused request gets a 4xx with a JSON message and writes nothing.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from urllib.parse import parse_qs, urlsplit

from mbrm.feedback.store import FeedbackStoreError
from mbrm.labeling.api import ApiError, Response, error_response
from mbrm.labeling.app import SLOW_PREFIXES, LabelingApp, allowed_methods
from mbrm.labeling.http1 import (
    MAX_HEAD,
    SECURITY_HEADERS,
    Headers,
    RequestHead,
    content_length,
    encode_response,
    parse_head,
)

LINGER_SECONDS = 1.0  # after the last answer, how long unread input is drained
LINGER_BYTES = 1 << 20


@dataclass(frozen=True)
class Limits:
    """How long and how much one connection may take."""

    head_seconds: float = 5.0  # request line and headers, from their first byte
    body_seconds: float = 10.0  # the body, once the head has been accepted
    idle_seconds: float = 10.0  # a connection with no request under way
    write_seconds: float = 30.0  # the client reading an answer
    max_head: int = MAX_HEAD  # bytes of request line and headers
    max_connections: int = 256  # open at once; more drop the longest-waiting one

    def __post_init__(self) -> None:
        for f in fields(self):
            if not getattr(self, f.name) > 0:
                raise ValueError(f"Limits.{f.name} must be positive; got {getattr(self, f.name)}")


@dataclass(eq=False)
class _Connection:
    task: asyncio.Task[None]
    since: float  # loop time its current wait for a request head began
    waiting: bool = True  # no request under way: may be dropped at the cap
    unread: bool = False  # refused with input perhaps still coming: linger before closing


class HttpServer:
    """HTTP/1.1 over asyncio streams; requests are answered by ``app`` on thread pools."""

    def __init__(
        self, sock: socket.socket, app: LabelingApp, limits: Limits, workers: int, verbose: bool
    ) -> None:
        self.sock, self.app, self.limits, self.verbose = sock, app, limits, verbose
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="mbrm-label")
        # Clips and assistance get their own threads: a label never queues behind them.
        self._slow_pool = ThreadPoolExecutor(max(2, workers // 4), thread_name_prefix="mbrm-media")
        self._connections: dict[_Connection, None] = {}  # insertion-ordered set
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self.ready = threading.Event()

    # ------------------------------------------------------------------ lifetime

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(
            self._accept, sock=self.sock, limit=self.limits.max_head, backlog=512
        )
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            tasks = [c.task for c in self._connections]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()

    def stop(self) -> None:
        """Ask a serving loop to stop (from any thread)."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # the loop has already finished

    def close(self) -> None:
        self.sock.close()
        self._pool.shutdown(wait=True)
        self._slow_pool.shutdown(wait=True)

    # ------------------------------------------------------------------ connections

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a stream server runs each connection as a task
        conn = _Connection(task, asyncio.get_running_loop().time())
        try:
            await self._connection(conn, reader, writer)
        except asyncio.CancelledError:
            # Only this server cancels a connection (dropped at the cap, or stopping);
            # ending quietly keeps asyncio from reporting it as an error.
            writer.transport.abort()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away; what it sent before was answered or not written
        finally:
            self._connections.pop(conn, None)

    async def _connection(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # Every drain waits until the kernel holds all we wrote: a close never lingers.
        writer.transport.set_write_buffer_limits(high=0, low=0)
        if len(self._connections) >= self.limits.max_connections and not self._drop_one():
            busy = ApiError(503, "too many connections; try again", {"Retry-After": "1"})
            try:
                await self._reply(writer, error_response(busy), "HTTP/1.1", keep=False)
            finally:
                writer.transport.abort()
            return
        self._connections[conn] = None
        try:
            while await self._exchange(conn, reader, writer):
                pass
            if conn.unread:
                await self._linger(conn, reader, writer)
        finally:
            if writer.transport.get_write_buffer_size():
                writer.transport.abort()
            else:
                writer.close()

    async def _linger(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Half-close, then discard what the client still sends for a moment: closing
        with unread input (a refused body) would reset the connection, and a reset can
        destroy our answer before the client has read it."""
        if writer.transport.is_closing():
            return
        conn.waiting, conn.since = True, asyncio.get_running_loop().time()
        if writer.can_write_eof():
            writer.write_eof()
        discarded = 0
        try:
            async with asyncio.timeout(LINGER_SECONDS):
                while discarded < LINGER_BYTES and (chunk := await reader.read(65536)):
                    discarded += len(chunk)
        except TimeoutError:
            pass

    def _drop_one(self) -> bool:
        """Close the connection that has waited longest for a request head, if any."""
        waiting = [c for c in self._connections if c.waiting]
        if not waiting:
            return False
        victim = min(waiting, key=lambda c: c.since)
        self._connections.pop(victim, None)
        victim.task.cancel()
        return True

    async def _exchange(
        self, conn: _Connection, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read one request and answer it; True when the connection may carry another."""
        limits = self.limits
        conn.waiting, conn.since = True, asyncio.get_running_loop().time()
        try:
            async with asyncio.timeout(limits.idle_seconds):
                first = await reader.readexactly(1)
        except (TimeoutError, asyncio.IncompleteReadError):
            return False  # no request under way: close without an answer
        try:
            async with asyncio.timeout(limits.head_seconds):
                raw = first + await reader.readuntil(b"\r\n\r\n")
        except TimeoutError:
            conn.unread = True
            slow = ApiError(408, f"request head not received within {limits.head_seconds:g} s")
            return await self._reply(writer, error_response(slow), "HTTP/1.1", keep=False)
        except asyncio.LimitOverrunError:
            conn.unread = True
            big = ApiError(431, f"request head is over the {limits.max_head}-byte limit")
            return await self._reply(writer, error_response(big), "HTTP/1.1", keep=False)
        conn.waiting = False
        t0 = time.perf_counter()
        try:
            head = parse_head(raw)
        except ApiError as e:
            conn.unread = True
            return await self._reply(writer, error_response(e), "HTTP/1.1", keep=False)
        resp, keep = await self._answer(head, reader, writer)
        conn.unread = not keep  # refused before its body was read
        keep = keep and head.keep_alive
        alive = await self._reply(
            writer, resp, head.version, keep=keep, head_only=head.method == "HEAD"
        )
        if self.verbose:
            ms = (time.perf_counter() - t0) * 1000
            path = head.target.split("?")[0]
            print(f"mbrm label: {head.method} {path} {resp.status} {ms:.1f} ms", flush=True)
        return alive

    async def _answer(
        self, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[Response, bool]:
        """The answer to one request, and whether its connection may carry another."""
        app = self.app
        split = urlsplit(head.target)
        path, query = split.path, parse_qs(split.query)
        try:
            # Access first: a stranger's request reads no body and never reaches the store.
            app.check_access(head.headers, query)
            allowed = allowed_methods(path)
            if not allowed:
                raise ApiError(404, f"no such page: {head.method} {path}")
            if head.method not in allowed:
                raise ApiError(
                    405,
                    f"method {head.method} is not allowed on {path}; use {' or '.join(allowed)}",
                    {"Allow": ", ".join(allowed)},
                )
            n = content_length(head.headers, app.max_body)
            body = None
            expect = (head.headers.get("Expect") or "").lower()
            if n and expect == "100-continue" and head.version == "HTTP/1.1":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # every check passed: send it
            if n is not None:
                async with asyncio.timeout(self.limits.body_seconds):
                    body = await reader.readexactly(n)
        except ApiError as e:
            return error_response(e), False  # a body may be left unread: close after
        except TimeoutError:
            slow = ApiError(408, f"request body not received within {self.limits.body_seconds:g} s")
            return error_response(slow), False
        method = "GET" if head.method == "HEAD" else head.method
        pool = self._slow_pool if path.startswith(SLOW_PREFIXES) else self._pool
        call = functools.partial(_handle, app, method, path, query, head.headers, body)
        return await asyncio.get_running_loop().run_in_executor(pool, call), True

    async def _reply(
        self,
        writer: asyncio.StreamWriter,
        resp: Response,
        version: str,
        *,
        keep: bool,
        head_only: bool = False,
    ) -> bool:
        writer.write(encode_response(resp, version, keep_alive=keep, head_only=head_only))
        try:
            async with asyncio.timeout(self.limits.write_seconds):
                await writer.drain()
        except TimeoutError:
            writer.transport.abort()  # a client that does not read its answer
            return False
        return keep


def _handle(
    app: LabelingApp,
    method: str,
    path: str,
    query: dict[str, list[str]],
    headers: Headers,
    body: bytes | None,
) -> Response:
    """One request on a pool thread; every failure becomes a JSON answer."""
    try:
        return app.handle(method, path, query, headers, body)
    except ApiError as e:
        return error_response(e)
    except FeedbackStoreError as e:
        return error_response(ApiError(500, f"feedback store: {e}"))
    except Exception as e:  # answer 500 and keep serving
        traceback.print_exc()
        return error_response(ApiError(500, f"{type(e).__name__}: {e}"))


__all__ = ["SECURITY_HEADERS", "HttpServer", "Limits"]
