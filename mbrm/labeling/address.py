"""The addresses to print for a labelling server: one a person on another machine can
open, and one for this machine.

A server bound to a wildcard (``0.0.0.0``, ``::``) listens on every interface, but
``http://0.0.0.0:PORT/`` opens nothing on another machine. The address printed
instead is that of the interface that routes outward, found by ``connect``-ing a
UDP socket to a documentation address (RFC 5737 / RFC 3849): connecting a datagram
socket only picks a route, it sends nothing. The host name is offered beside it.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import quote

from mbrm.labeling.access import is_loopback

# Documentation addresses: never routed to anyone, only used to pick a route.
_PROBE = {socket.AF_INET: ("192.0.2.1", 9), socket.AF_INET6: ("2001:db8::1", 9)}


def is_wildcard(host: str) -> bool:
    """True for a bind address that means every interface ('', 0.0.0.0, ::)."""
    if host == "":
        return True
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def outward_address(family: socket.AddressFamily) -> str | None:
    """This machine's address on the interface that routes outward; None without a route."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(_PROBE[family])
            addr = s.getsockname()[0]
    except OSError:
        return None
    ip = ipaddress.ip_address(addr)
    if ip.is_loopback or ip.is_unspecified or ip.is_link_local:
        return None  # a link-local v6 address needs a zone to be opened: not for people
    return addr


def remote_hosts(bind: str, dualstack: bool = True) -> list[str]:
    """Names another machine can reach a server bound to ``bind`` by, best first."""
    if not is_wildcard(bind):
        return [bind]
    v6 = ":" in bind
    families = [socket.AF_INET6] if v6 and not dualstack else [socket.AF_INET]
    if v6 and dualstack:
        families.append(socket.AF_INET6)
    hosts = [a for a in map(outward_address, families) if a is not None]
    name = socket.gethostname()
    if name and not is_loopback(name):
        hosts.append(name)
    return hosts or [name or "localhost"]


def local_host(bind: str) -> str:
    """The loopback address that reaches a server bound to ``bind`` from this machine."""
    if is_wildcard(bind):
        return "::1" if ":" in bind else "127.0.0.1"
    return bind


def http_url(host: str, port: int, token: str | None) -> str:
    """``http://host:port/``, with ``?token=`` where the server needs one."""
    name = f"[{host}]" if ":" in host else host
    base = f"http://{name}:{port}/"
    return base if token is None else f"{base}?token={quote(token, safe='')}"


__all__ = ["http_url", "is_wildcard", "local_host", "outward_address", "remote_hosts"]
