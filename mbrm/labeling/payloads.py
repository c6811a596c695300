"""What the labelling server sends back: the page's static files, rendered clips, and
the JSON of a query (its segments, each with its clip and assistance addresses) and
of the queue's progress."""

from __future__ import annotations

from importlib import resources
from typing import Any
from urllib.parse import unquote

from mbrm.feedback.segments import FeedbackKind, Labeller
from mbrm.feedback.store import FeedbackStore, Query, QueryStatus
from mbrm.labeling.access import token_cookie
from mbrm.labeling.api import ApiError, Response
from mbrm.labeling.clips import ClipCache, ClipNotFoundError

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


def static_file(name: str, query: dict[str, list[str]], token: str | None) -> Response:
    """One of the page's files; the page opened with ``?token=`` also sets the cookie."""
    if name not in STATIC:
        raise ApiError(404, f"no such static file: {name!r}")
    data = resources.files("mbrm.labeling").joinpath("static", name).read_bytes()
    headers = {"Cache-Control": "no-cache"}
    if name == "index.html" and token is not None and "token" in query:
        # The page's own requests (scripts, clips) then carry the token as a cookie.
        headers["Set-Cookie"] = token_cookie(token)
    return Response(200, data, STATIC[name], headers)


def clip_file(clips: ClipCache, raw_name: str) -> Response:
    """A rendered clip by its (URL-quoted) file name, rendered on first request."""
    name = unquote(raw_name)
    try:
        path = clips.path(name)
    except ClipNotFoundError as e:
        raise ApiError(404, str(e)) from e
    with open(path, "rb") as f:
        data = f.read()
    return Response(
        200,
        data,
        clips.info(1, 1).media_type,
        {"Cache-Control": "private, max-age=86400"},
    )


def progress(store: FeedbackStore, annotator: str | None = None) -> dict[str, int]:
    """Queries labelled, pending and skipped; with ``annotator``, how many were theirs."""
    out = {
        "labelled": store.count_queries(QueryStatus.LABELLED),
        "pending": store.count_queries(QueryStatus.PENDING),
        "skipped": store.count_queries(QueryStatus.SKIPPED),
    }
    if annotator is not None:
        out["yours"] = store.label_counts("who").get(Labeller.person(annotator).key, 0)
    return out


def query_payload(q: Query, store: FeedbackStore, clips: ClipCache) -> dict[str, Any]:
    """A query and its segments (left/right of a preference, or the one segment)."""
    sides = ("left", "right") if q.kind is FeedbackKind.PREFERENCE else ("segment",)
    segments = []
    for side, seg_id in zip(sides, q.segment_ids, strict=True):
        seg = store.get_segment(seg_id)
        info = clips.info(seg_id, seg.states.shape[0])
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


__all__ = ["STATIC", "clip_file", "progress", "query_payload", "static_file"]
