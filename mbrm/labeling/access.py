"""Who may talk to the labelling server: the Host header and the access token.

Bound to loopback, the server answers only requests that name its own address in
``Host`` (a page on another site that rebinds its DNS name to 127.0.0.1 gets 403).
Bound to anything else it needs a token, given in a header, the query string, or
the cookie the page sets when it is first opened with ``?token=``.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from http.cookies import SimpleCookie
from typing import Any

from mbrm.labeling.api import ApiError

TOKEN_HEADER = "X-Mbrm-Token"
TOKEN_COOKIE = "mbrm_token"
MIN_TOKEN_LENGTH = 16
_TOKEN = re.compile(r"[A-Za-z0-9_.~-]+")


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_token(host: str, token: str | None) -> str | None:
    """The token a server bound to ``host`` uses: the one given, or a new one off loopback."""
    if token is None and not is_loopback(host):
        token = secrets.token_urlsafe(24)
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token must be at least {MIN_TOKEN_LENGTH} characters long")
    if token is not None and not _TOKEN.fullmatch(token):
        # It travels in a URL, a header and a cookie: keep it to characters all three take.
        raise ValueError("a token may hold only letters, digits and - _ . ~")
    return token


def loopback_hosts(host: str, port: int) -> frozenset[str]:
    """The ``Host`` header values that name a loopback server at ``host:port``."""
    names = {host, "localhost", "127.0.0.1", "[::1]"}
    return frozenset(f"{n}:{port}".lower() for n in names)


def check_access(
    headers: Any,
    query: dict[str, list[str]],
    *,
    token: str | None,
    allowed_hosts: frozenset[str] | None,
) -> None:
    """Host header against DNS rebinding; the token where one is set."""
    if allowed_hosts is not None:
        host = (headers.get("Host") or "").strip().lower()
        if host not in allowed_hosts:
            raise ApiError(403, f"Host header {host!r} is not this server's address")
    if token is None:
        return
    given = headers.get(TOKEN_HEADER) or (query.get("token") or [None])[0]
    if given is None:
        cookie = SimpleCookie(headers.get("Cookie") or "")
        if TOKEN_COOKIE in cookie:
            given = cookie[TOKEN_COOKIE].value
    if given is None or not hmac.compare_digest(given.encode(), token.encode()):
        raise ApiError(403, "missing or wrong access token (open the address printed at start)")


def token_cookie(token: str) -> str:
    """The ``Set-Cookie`` value that lets the page's own requests carry the token."""
    return f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"


__all__ = [
    "TOKEN_COOKIE",
    "TOKEN_HEADER",
    "check_access",
    "is_loopback",
    "loopback_hosts",
    "server_token",
    "token_cookie",
]
