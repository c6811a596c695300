"""The labelling API over one run's feedback store: its routes and endpoints.

Queries are handed out through the store's leases, so several people can label one
queue at once without two of them answering the same query; every answer is
written with the annotator's name in one transaction (Leike et al. 2018, Sec. 5.2).
Transport-free: :mod:`mbrm.labeling.transport` turns HTTP requests into
:meth:`LabelingApp.handle` calls.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from mbrm.feedback.segments import FeedbackKind, Labeller, Preference, UnacceptableLabel
from mbrm.feedback.store import (
    FeedbackStore,
    InvalidLabelError,
    LeaseConflictError,
    Query,
    QueryStatus,
    UnknownIdError,
)
from mbrm.labeling import access, payloads
from mbrm.labeling.api import (
    MAX_BODY,
    ApiError,
    Response,
    annotator_name,
    frame_index,
    int_id,
    json_body,
    json_response,
    only_fields,
)
from mbrm.labeling.assist import Assistant
from mbrm.labeling.clips import ClipCache, render_states
from mbrm.rundir import FEEDBACK

GET_PATHS = frozenset({"/", "/index.html", "/favicon.ico", "/api/status"})
GET_PREFIXES = ("/static/", "/api/query/", "/api/assist/", "/clips/")
POST_PATHS = frozenset({"/api/lease", "/api/label", "/api/skip", "/api/release"})
# Rendered with MuJoCo or computed by the models: the transport runs these on their
# own threads, so a label never waits behind a clip.
SLOW_PREFIXES = ("/clips/", "/api/assist/")
CANNOT_TELL = Preference.CANNOT_TELL.value


def allowed_methods(path: str) -> tuple[str, ...]:
    """The methods ``path`` answers (empty: no such page); HEAD wherever GET is."""
    if path in POST_PATHS:
        return ("POST",)
    if path in GET_PATHS or path.startswith(GET_PREFIXES):
        return ("GET", "HEAD")
    return ()


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
        self.store_path = self.run_dir / FEEDBACK
        if not self.store_path.exists():
            raise FileNotFoundError(f"{self.run_dir} has no {FEEDBACK}; is it a run directory?")
        self.task = get_task(task_name)
        self.annotator = annotator_name(annotator)
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
        access.check_access(headers, query, token=self.token, allowed_hosts=self.allowed_hosts)

    # ------------------------------------------------------------------ dispatch

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes | None
    ) -> Response:
        if method == "GET":
            if path in ("/", "/index.html"):
                return payloads.static_file("index.html", query, self.token)
            if path == "/favicon.ico":
                return Response(204, b"", "image/x-icon")
            if path.startswith("/static/"):
                return payloads.static_file(path[len("/static/") :], query, self.token)
            if path == "/api/status":
                return json_response(
                    200, self.status(self._name(query.get("annotator", [None])[0]))
                )
            if path.startswith("/api/query/"):
                q = self._get_query(int_id(path[len("/api/query/") :], "query id"))
                return json_response(200, self.query_json(q))
            if path.startswith("/api/assist/"):
                segment_id = int_id(path[len("/api/assist/") :], "segment id")
                return json_response(200, self.assist(segment_id))
            if path.startswith("/clips/"):
                return payloads.clip_file(self.clips, path[len("/clips/") :])
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
            return json_response(200, routes[path](json_body(headers, body)))
        raise ApiError(405, f"method {method} is not allowed")

    # ------------------------------------------------------------------ endpoints

    def _name(self, given: Any) -> str:
        if given is None:
            return self.annotator
        return annotator_name(given)

    def _get_query(self, query_id: int) -> Query:
        try:
            return self.store().get_query(query_id)
        except UnknownIdError as e:
            raise ApiError(404, str(e)) from e

    def status(self, annotator: str) -> dict[str, Any]:
        by_who = self.store().label_counts("who")
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
        return payloads.progress(self.store(), annotator)

    def query_json(self, q: Query) -> dict[str, Any]:
        return payloads.query_payload(q, self.store(), self.clips)

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
        only_fields(body, {"annotator"}, "lease")
        who = self._name(body.get("annotator"))
        q = self.store().lease_next(who, self.lease_seconds)
        return {
            "query": None if q is None else self.query_json(q),
            "progress": self._progress(who),
        }

    def _target(self, body: dict[str, Any], allowed: set[str], what: str) -> tuple[Query, str]:
        only_fields(body, allowed, what)
        if "query_id" not in body:
            raise ApiError(400, f"{what} needs 'query_id'")
        q = self._get_query(int_id(body["query_id"], "query_id"))
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
    ) -> tuple[Preference | UnacceptableLabel | int | None, list[tuple[int, int]]]:
        """The label value and the (segment, first unacceptable step) flags of a request."""
        n = [self._segment_length(i) for i in q.segment_ids]
        if q.kind is FeedbackKind.UNACCEPTABLE:
            if flags is not None:
                raise ApiError(400, "'unacceptable' is for preference queries; send 'value'")
            if value is None:
                return None, []
            if value == CANNOT_TELL:
                # Like a preference's cannot_tell: an answer, but no state judged, so
                # none becomes a training example (not "nothing unacceptable").
                none = np.zeros(n[0], dtype=bool)
                return UnacceptableLabel(none, known=none), []
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n[0]:
                raise ApiError(
                    400,
                    f"query {q.id} is an unacceptable-state query: value must be the frame "
                    f"index (0..{n[0] - 1}) of the first unacceptable state, null for none, "
                    f"or {CANNOT_TELL!r}; got {value!r}",
                )
            return value, []
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
                extra.append((q.segment_ids[i], frame_index(step, n[i], f"unacceptable.{side}")))
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


__all__ = [
    "CANNOT_TELL",
    "GET_PATHS",
    "GET_PREFIXES",
    "POST_PATHS",
    "SLOW_PREFIXES",
    "LabelingApp",
    "allowed_methods",
]
