"""Safety: the bench loads a server hard, so by default it only talks to this machine."""

from __future__ import annotations

import ipaddress
import resource
import socket
from urllib.parse import urlsplit


class BenchError(Exception):
    """A problem that ends the run, reported as one line."""


def host_is_loopback(host: str) -> bool:
    """True if every address the host name resolves to is a loopback address."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(str(a).split("%")[0]).is_loopback for a in addresses)


def check_target(url: str, *, allow_remote: bool, what: str) -> None:
    """Refuse a non-loopback target unless --allow-remote was given."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https", "ws", "wss") or not parts.hostname:
        raise BenchError(f"{what}: not an http(s) or ws(s) URL: {url!r}")
    if not allow_remote and not host_is_loopback(parts.hostname):
        raise BenchError(f"{what} {url} is not on this machine; pass --allow-remote to load a remote server")


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-files limit towards `wanted` (up to the hard limit); return the new limit.

    Each WebSocket is a file descriptor in the client and in the server; the server subprocess of
    --embedded inherits the raised limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
