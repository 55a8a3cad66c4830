"""sd_notify in a few lines of stdlib: tell systemd (Type=notify) that the service is ready, reloading or
stopping, by a datagram to $NOTIFY_SOCKET.

Only the master notifies: systemd's default NotifyAccess=main ignores other processes, and the master strips
NOTIFY_SOCKET from its workers' environment. Without NOTIFY_SOCKET every call is a no-op, so the same code runs
under systemd, in a container and in a terminal.
"""

from __future__ import annotations

import os
import socket
import time

NOTIFY_SOCKET = "NOTIFY_SOCKET"

READY = "READY=1"
RELOADING = "RELOADING=1"
STOPPING = "STOPPING=1"


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, which systemd wants next to RELOADING=1 (Type=notify-reload)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(value: str) -> str | bytes:
    """$NOTIFY_SOCKET as a connect() address: a path, or '@name' for a Linux abstract socket ('\\0name')."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def notify(*assignments: str, environ=os.environ) -> bool:
    """Send `READY=1`-style lines as one datagram. True if sent; False when not under systemd or on error
    (a lost notification must never take the server down: systemd then times out and says so itself)."""
    value = environ.get(NOTIFY_SOCKET)
    if not value:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(socket_address(value))
            sock.sendall("\n".join(assignments).encode())
        return True
    except OSError:
        return False


def ready() -> bool:
    return notify(READY)


def reloading() -> bool:
    return notify(RELOADING, f"MONOTONIC_USEC={monotonic_usec()}")


def stopping() -> bool:
    return notify(STOPPING)
