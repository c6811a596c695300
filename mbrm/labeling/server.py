"""``mbrm label RUN_DIR``: a local web server where people answer the agent's queries.

In ``feedback=human`` mode the training loop leaves its queries (preferences over
pairs of segments, unacceptable-state questions over one segment; real, imagined or
synthesised, Leike et al. 2018, Sec. 5.2) pending in the run's feedback store. This
server hands them out one at a time through the store's leases, so several people
can label one queue at once without two of them answering the same query, shows
each clip rendered from its states with the models' assistance beside it (Sec. 3.2),
and writes every answer to the store with the annotator's name and time, where the
loop picks it up.

The parts: :mod:`~mbrm.labeling.app` (routes and endpoints over the store),
:mod:`~mbrm.labeling.payloads` (static files, clips, query JSON),
:mod:`~mbrm.labeling.api` (request checks), :mod:`~mbrm.labeling.access` (Host header
and token), :mod:`~mbrm.labeling.http1` (request heads on the wire),
:mod:`~mbrm.labeling.transport` (the asyncio HTTP server), :mod:`~mbrm.labeling.address`
(the addresses it prints), :mod:`~mbrm.labeling.label_server` (the parts put together
for one run). This module is the command line.
"""

from __future__ import annotations

import argparse
import re
import sys
import webbrowser
from pathlib import Path

from mbrm.labeling.access import is_loopback
from mbrm.labeling.address import is_wildcard
from mbrm.labeling.api import MAX_BODY, ApiError
from mbrm.labeling.app import LabelingApp
from mbrm.labeling.clips import FORMATS, default_format
from mbrm.labeling.label_server import LabelServer


def _parse_size(s: str) -> tuple[int, int]:
    m = re.fullmatch(r"([0-9]+)(?:x([0-9]+))?", s)
    if m is None:
        raise argparse.ArgumentTypeError(f"size must be N or WxH; got {s!r}")
    w = int(m[1])
    return w, int(m[2] or w)


def address_lines(server: LabelServer) -> list[str]:
    """Where to open the page: from other machines (a wildcard bind) and from this one."""
    if not is_wildcard(server.host):
        return [f"open {server.url}"]
    first, *others = server.remote_urls
    also = f" (or {', '.join(others)})" if others else ""
    return [f"open {first} from another machine{also}", f"on this machine: {server.local_url}"]


def main(argv: list[str] | None = None) -> None:
    """``mbrm label RUN_DIR [options]``."""
    p = argparse.ArgumentParser(
        prog="mbrm label",
        description="Label a run's pending queries in the browser (feedback=human).",
    )
    p.add_argument("run_dir", type=Path, help="run directory (config.yaml, feedback.sqlite)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default loopback; 0.0.0.0 or :: for annotators on other machines)",
    )
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
    for line in address_lines(server):
        print(f"mbrm label: {line}")
    sys.stdout.flush()
    if not a.no_browser:
        webbrowser.open(server.local_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("\nmbrm label: stopped", file=sys.stderr)
    finally:
        server.close()


__all__ = [
    "MAX_BODY",
    "ApiError",
    "LabelServer",
    "LabelingApp",
    "address_lines",
    "is_loopback",
    "main",
]
