"""The labelling API's vocabulary: a refused request, a response, and the checks every
request field passes before it touches the feedback store.

A refused request is an :class:`ApiError` (HTTP status and a message); the transport
answers it as a 4xx with a JSON body and writes nothing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

MAX_BODY = 16 * 1024  # bytes; the largest valid request is a few hundred
ANNOTATOR = re.compile(r"^[\w .@+-]{1,64}$")


class ApiError(Exception):
    """A refused request: HTTP status, a message for the JSON body, and any headers
    the status calls for (``Allow`` with a 405)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = dict(headers or {})


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, **headers: str) -> Response:
    return Response(status, json.dumps(payload).encode(), "application/json", dict(headers))


def error_response(e: ApiError) -> Response:
    """The JSON every refused request gets: ``{"error": message, "status": code}``."""
    body = json.dumps({"error": e.message, "status": e.status}).encode()
    return Response(e.status, body, "application/json", dict(e.headers))


def json_body(headers: Any, body: bytes | None) -> dict[str, Any]:
    """A POST body: JSON, an object, sent as application/json with a length."""
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


def annotator_name(name: Any) -> str:
    if not isinstance(name, str) or not ANNOTATOR.match(name) or not name.strip():
        raise ApiError(
            400,
            f"annotator must be 1-64 letters, digits, spaces or . @ + - _; got {name!r}",
        )
    return name.strip()


def int_id(raw: Any, what: str) -> int:
    if isinstance(raw, bool):
        raise ApiError(400, f"{what} must be a positive integer; got {raw!r}")
    if isinstance(raw, str) and re.fullmatch(r"[0-9]{1,18}", raw):
        raw = int(raw)
    if not isinstance(raw, int) or raw < 1 or raw >= 2**63:
        raise ApiError(400, f"{what} must be a positive integer; got {raw!r}")
    return raw


def frame_index(raw: Any, n_states: int, what: str) -> int:
    if isinstance(raw, bool) or not isinstance(raw, int) or not 0 <= raw < n_states:
        raise ApiError(
            400, f"{what} must be a frame index in 0..{n_states - 1} (or null); got {raw!r}"
        )
    return raw


def only_fields(body: dict[str, Any], allowed: set[str], what: str) -> None:
    extra = set(body) - allowed
    if extra:
        raise ApiError(400, f"{what} takes {sorted(allowed)}; unknown fields {sorted(extra)}")


__all__ = [
    "ANNOTATOR",
    "MAX_BODY",
    "ApiError",
    "Response",
    "annotator_name",
    "error_response",
    "frame_index",
    "int_id",
    "json_body",
    "json_response",
    "only_fields",
]
