"""Serving a local witness (:mod:`~fedchain.anchor.local_evm`, :mod:`~fedchain.anchor.local_tsa`)
over HTTP: on a loopback address unless asked otherwise, in a thread, shut down on leaving.

Loopback by default because a local witness holds its keys in the open (the EVM node's accounts
are unlocked test accounts anyone who reaches it may send from): :func:`serve_http` refuses any
other host unless ``allow_remote`` says the caller means it.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import socket
import threading
from collections.abc import Iterator

from fedchain.errors import ConfigError

__all__ = ["is_loopback_host", "serve_http"]


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this machine only: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # another name: it may resolve anywhere


@contextlib.contextmanager
def serve_http(
    handler: type[http.server.BaseHTTPRequestHandler],
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    allow_remote: bool = False,
) -> Iterator[str]:
    """Answer requests with ``handler`` on ``host``:``port`` (0: any free port) while in the
    block; yields the base URL (``http://127.0.0.1:PORT/``)."""
    if not allow_remote and not is_loopback_host(host):
        raise ConfigError(
            f"{host} is not a loopback address: a local witness is for trying and testing, and "
            "anyone who reaches it can use it; serve it on 127.0.0.1 (or allow remote hosts "
            "explicitly)"
        )
    server_class = http.server.ThreadingHTTPServer
    if ":" in host:  # an IPv6 address

        class Server6(http.server.ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = Server6
    try:
        server = server_class((host, port), handler)
    except OSError as e:
        raise ConfigError(f"cannot serve on {host}:{port}: {e.strerror or e}") from e
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    shown = f"[{host}]" if ":" in host else host
    try:
        yield f"http://{shown}:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
