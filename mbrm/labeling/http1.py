"""HTTP/1.x on the wire: a request head parsed strictly, and a response encoded.

The transport reads the head (request line and headers) off the socket within a
size limit and a deadline; :func:`parse_head` turns those bytes into a
:class:`RequestHead` or refuses them with an :class:`~mbrm.labeling.api.ApiError`
(400 malformed, 431 too many headers, 505 not HTTP/1.x). Strict on purpose: a
head that two parsers could read differently (folded lines, two lengths, a length
and a chunked encoding) is refused rather than guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from mbrm.labeling.api import ApiError, Response

MAX_HEAD = 16 * 1024  # bytes of request line and headers; a browser sends under 2 KiB
MAX_HEADERS = 64
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
        "object-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
}

_METHOD = re.compile(r"[A-Z]{1,16}")
_TARGET = re.compile(r"/[\x21-\x7e]*")  # origin form: a path and query, visible ASCII
_VERSION = re.compile(r"HTTP/([0-9])\.([0-9])")
_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_LENGTH = re.compile(r"[0-9]{1,12}")


class Headers:
    """Request headers, looked up without regard to case (``get`` as on ``email.Message``)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            self._values.setdefault(name.lower(), []).append(value)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._values.get(name.lower())
        if not values:
            return default
        return ("; " if name.lower() == "cookie" else ", ").join(values)

    def all(self, name: str) -> list[str]:
        return list(self._values.get(name.lower(), []))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values


@dataclass(frozen=True)
class RequestHead:
    method: str
    target: str  # path and query, as sent
    version: str  # "HTTP/1.0" or "HTTP/1.1"
    headers: Headers

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 keeps the connection unless told not to; HTTP/1.0 gets one request."""
        tokens = {t.strip().lower() for t in (self.headers.get("Connection") or "").split(",")}
        return self.version == "HTTP/1.1" and "close" not in tokens


def parse_head(raw: bytes) -> RequestHead:
    """The request line and headers of ``raw`` (which ends with the blank line)."""
    text = raw.decode("latin-1").lstrip("\r\n")  # an empty line before a request is allowed
    lines = text.split("\r\n")
    if lines[-2:] != ["", ""]:
        raise ApiError(400, "malformed request: lines must end with CRLF")
    lines = lines[:-2]
    if not lines:
        raise ApiError(400, "malformed request: no request line")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise ApiError(400, f"malformed request line {lines[0][:80]!r}")
    method, target, version = parts
    m = _VERSION.fullmatch(version)
    if m is None:
        raise ApiError(400, f"malformed HTTP version {version[:16]!r}")
    if m[1] != "1":
        raise ApiError(505, f"{version} is not supported; this server speaks HTTP/1.1")
    version = "HTTP/1.0" if m[2] == "0" else "HTTP/1.1"
    if not _METHOD.fullmatch(method):
        raise ApiError(400, f"malformed method {method[:16]!r}")
    if not _TARGET.fullmatch(target):
        raise ApiError(400, "request target must be a path starting with '/' (visible ASCII)")
    if len(lines) - 1 > MAX_HEADERS:
        raise ApiError(431, f"more than {MAX_HEADERS} header lines")
    pairs = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not _NAME.fullmatch(name):
            raise ApiError(400, f"malformed header line {line[:40]!r}")  # also folded lines
        value = value.strip(" \t")
        if _BAD_VALUE.search(value):
            raise ApiError(400, f"header {name!r} has a control character")
        pairs.append((name, value))
    headers = Headers(pairs)
    if len(headers.all("Host")) > 1:
        raise ApiError(400, "more than one Host header")
    if version == "HTTP/1.1" and "Host" not in headers:
        raise ApiError(400, "an HTTP/1.1 request needs a Host header")
    return RequestHead(method, target, version, headers)


def content_length(headers: Headers, limit: int) -> int | None:
    """The body's announced length (None without one), checked before a byte is read."""
    if "Transfer-Encoding" in headers:
        raise ApiError(411, "send a request body with Content-Length; no Transfer-Encoding")
    values = {v.strip() for v in headers.all("Content-Length")}
    if not values:
        return None
    if len(values) > 1:
        raise ApiError(400, f"conflicting Content-Length headers {sorted(values)}")
    (length,) = values
    if not _LENGTH.fullmatch(length):
        raise ApiError(400, f"bad Content-Length {length!r}")
    n = int(length)
    if n > limit:
        raise ApiError(413, f"request body of {n} bytes is over the {limit}-byte limit")
    return n


def encode_response(
    resp: Response, version: str, *, keep_alive: bool, head_only: bool = False
) -> bytes:
    """Status line, headers and (unless answering HEAD) the body."""
    try:
        reason = HTTPStatus(resp.status).phrase
    except ValueError:
        reason = "Unknown"
    headers = {
        "Date": formatdate(usegmt=True),
        "Server": "mbrm-label",
        "Content-Type": resp.content_type,
        "Content-Length": str(len(resp.body)),
    }
    if resp.content_type == "application/json":
        headers["Cache-Control"] = "no-store"
    headers.update(SECURITY_HEADERS)
    headers.update(resp.headers)
    headers["Connection"] = "keep-alive" if keep_alive else "close"
    lines = [f"{version} {resp.status} {reason}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value:
            raise ValueError(f"response header {name!r} has a line break")
        lines.append(f"{name}: {value}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return head if head_only else head + resp.body


__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "SECURITY_HEADERS",
    "Headers",
    "RequestHead",
    "content_length",
    "encode_response",
    "parse_head",
]
