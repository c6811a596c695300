"""One run's labelling server: the API over its feedback store, served over HTTP, with
the addresses to open it at.

Composition only: :class:`~mbrm.labeling.app.LabelingApp` answers requests,
:class:`~mbrm.labeling.transport.HttpServer` holds the connections, and
:mod:`~mbrm.labeling.address` names the addresses to print.
"""

from __future__ import annotations

import asyncio
import getpass
import os
import socket
import threading
from pathlib import Path

from mbrm.labeling.access import is_loopback, loopback_hosts, server_token
from mbrm.labeling.address import http_url, is_wildcard, local_host, remote_hosts
from mbrm.labeling.api import ANNOTATOR, MAX_BODY
from mbrm.labeling.app import LabelingApp
from mbrm.labeling.transport import HttpServer, Limits
from mbrm.rundir import CONFIG


class LabelServer:
    """The labelling server for one run directory.

    ``port=0`` picks a free port. A host other than loopback needs a token; one is
    generated when none is given. ``url`` is the address to open (with the token):
    for a wildcard host (``0.0.0.0``, ``::``) one another machine can reach, with
    ``local_url`` for this machine.
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
        limits: Limits | None = None,
        assistance: bool = True,
        verbose: bool = False,
    ) -> None:
        run_dir = Path(run_dir)
        if not (run_dir / CONFIG).exists():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG})")
        if not 1 <= workers <= 256:
            raise ValueError(f"workers must be in 1..256; got {workers}")
        self.token = server_token(host, token)
        self.limits = limits or Limits()
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
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        dualstack = family == socket.AF_INET6 and is_wildcard(host) and socket.has_dualstack_ipv6()
        sock = socket.create_server((host, port), family=family, dualstack_ipv6=dualstack)
        self.host, self.port = host, int(sock.getsockname()[1])
        self._dualstack = dualstack
        self._http = HttpServer(sock, app, self.limits, workers, verbose)
        if is_loopback(host):
            # Only our own address may be named in Host (the port is known only now).
            app.allowed_hosts = loopback_hosts(host, self.port)
        self._thread: threading.Thread | None = None
        self._failure: BaseException | None = None

    @property
    def remote_urls(self) -> list[str]:
        """Addresses another machine can open, best first (the bind address unless a wildcard)."""
        hosts = remote_hosts(self.host, self._dualstack)
        return [http_url(h, self.port, self.token) for h in hosts]

    @property
    def url(self) -> str:
        return self.remote_urls[0]

    @property
    def local_url(self) -> str:
        return http_url(local_host(self.host), self.port, self.token)

    def serve_forever(self) -> None:
        asyncio.run(self._http.serve())

    def start(self) -> LabelServer:
        """Serve from a background thread (for tests and embedding)."""
        self._thread = threading.Thread(target=self._serve_in_thread, daemon=True)
        self._thread.start()
        if not self._http.ready.wait(timeout=30) or self._failure is not None:
            raise RuntimeError(f"the labelling server did not start: {self._failure!r}")
        return self

    def _serve_in_thread(self) -> None:
        try:
            self.serve_forever()
        except BaseException as e:  # reported by start(), which waits on ready
            self._failure = e
            self._http.ready.set()

    def close(self) -> None:
        if self._thread is not None:
            self._http.stop()
            self._thread.join(timeout=60)
            self._thread = None
        self._http.close()

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


__all__ = ["LabelServer", "Limits"]
