"""Listening sockets, created explicitly (architecture decision 8).

They are never created by `create_server(host, port)`: the master creates (or adopts) them and its workers
inherit them, so a new worker serves the very same kernel sockets and no connect is refused during an upgrade.
"""

from __future__ import annotations

import socket

# Linux caps the accept queue at net.core.somaxconn (4096 on current kernels); ask for the most.
LISTEN_BACKLOG = 4096


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def endpoint_of(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return host, port
