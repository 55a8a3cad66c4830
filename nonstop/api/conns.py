"""The HTTP API's connections: counted, bounded in number and in time. aiohttp parses and answers the requests;
this room decides which connections it gets and for how long (issue 10 item 10: 200 slowloris connections
stayed open over a minute, and the API accepted connections beyond every limit).

- **How many:** at most `http_api.max_connections` at once, a pool apart from the media's `max_connections`
  (README: a server full of viewers still answers its liveness probe, and API clients never take a viewer's
  place). The excess is closed at accept, with a log line, as `max_connections` does for the media ports.
- **A request must come in time:** its head and body must arrive within `handshake_timeout` ms (the bound the
  HTTP-FLV port gives a request head) of the connection's start, or of its first byte after the previous
  answer; its handler (a body included) has as long again. A slowloris client is cut there.
- **An idle keep-alive connection** is closed KEEPALIVE_TIMEOUT_S after its last answer (nginx's 75 s).

Each connection's deadline is a `time.monotonic()` value in plain state, checked by the API's one-second tick
(`sweep`); an expired one is reset (nonstop/reset.py), since a client that stalls may also never read.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp.http_exceptions import HttpProcessingError

from nonstop.log import log
from nonstop.media.registry import new_id
from nonstop.reset import reset

# aiohttp keeps an idle keep-alive connection 3630 s by default (longer than any proxy); nginx keeps 75 s.
KEEPALIVE_TIMEOUT_S = 75.0

# A connection's phases, for its deadline.
WAITING = "waiting"         # for a request head: handshake_timeout from the connection's start or first byte
HANDLING = "handling"       # a request is being answered: handshake_timeout again
IDLE = "idle"               # answered; keep-alive until its next first byte, or KEEPALIVE_TIMEOUT_S


class ApiConnection(asyncio.Protocol):
    """One API connection. It sits between the transport and aiohttp's request handler (`handler`), passes
    every callback through, and keeps the connection's phase and deadline."""

    def __init__(self, pool: "ApiConnections", handler: asyncio.Protocol):
        self.pool = pool
        self.handler = handler
        self.cid = new_id()
        self.transport = None
        self.ip = ""
        self.admitted = False
        self.phase = WAITING
        self.deadline: float | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.ip = peer[0] if peer else ""
        if not self.pool.admit(self, time.monotonic()):
            return
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.phase == IDLE:      # the first byte of the next request: it must be whole in time
            self.pool.waiting(self, time.monotonic())
        self.handler.data_received(data)

    def eof_received(self):
        return self.handler.eof_received()

    def connection_lost(self, exc) -> None:
        self.pool.forget(self)
        if self.admitted:
            self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class ApiConnections:
    """Every connection of one ApiServer, with the limits read from the worker's config at each use (so a
    reload applies to what comes next)."""

    def __init__(self, worker):
        self.worker = worker
        self.by_transport: dict[object, ApiConnection] = {}
        self.rejected_total = 0

    def __len__(self) -> int:
        return len(self.by_transport)

    @property
    def request_timeout_s(self) -> float:
        return self.worker.config.handshake_timeout / 1000

    def wrap(self, handler: asyncio.Protocol) -> ApiConnection:
        return ApiConnection(self, handler)

    def admit(self, conn: ApiConnection, now: float) -> bool:
        limit = self.worker.config.http_api.max_connections
        if len(self.by_transport) >= limit:
            self.rejected_total += 1
            log.warn(conn.cid, f"reject API connection from {conn.ip}: http_api.max_connections {limit} reached")
            conn.transport.close()
            return False
        conn.admitted = True
        conn.deadline = now + self.request_timeout_s
        self.by_transport[conn.transport] = conn
        return True

    def forget(self, conn: ApiConnection) -> None:
        if self.by_transport.get(conn.transport) is conn:
            del self.by_transport[conn.transport]

    # ----- the phases, told by the connection (a first byte) and by the API's middleware (a request) -----

    def waiting(self, conn: ApiConnection, now: float) -> None:
        conn.phase = WAITING
        conn.deadline = now + self.request_timeout_s

    def request_started(self, transport, now: float) -> None:
        conn = self.by_transport.get(transport)
        if conn is not None:
            conn.phase = HANDLING
            conn.deadline = now + self.request_timeout_s

    def request_done(self, transport, now: float) -> None:
        conn = self.by_transport.get(transport)
        if conn is not None:
            conn.phase = IDLE
            conn.deadline = now + KEEPALIVE_TIMEOUT_S

    # ----- the sweep ---------------------------------------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Reset every connection past its deadline."""
        for conn in [c for c in self.by_transport.values() if c.deadline is not None and now >= c.deadline]:
            if conn.phase == IDLE:
                why = f"idle for {KEEPALIVE_TIMEOUT_S:g} s after its last answer"
            elif conn.phase == HANDLING:
                why = f"no answer within handshake_timeout {self.worker.config.handshake_timeout} ms"
            else:
                why = f"no whole request within handshake_timeout {self.worker.config.handshake_timeout} ms"
            log.trace(conn.cid, f"close API connection from {conn.ip}: {why}")
            self.forget(conn)
            reset(conn.transport)

    def close_all(self) -> None:
        for conn in list(self.by_transport.values()):
            self.forget(conn)
            reset(conn.transport)


class _OneLine(logging.Handler):
    """aiohttp's own messages (a malformed request, an unhandled exception) as one nonstop log line each, with
    the exception's name and text but no traceback: Python's last-resort handler would print the traceback
    and the client's bytes on stderr, outside the log's format."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            detail = " ".join(str(getattr(exc, "message", exc)).split())
            text = f"{text}: {type(exc).__name__}: {detail}"
        # A malformed request is the client's doing (a warning); anything else would be a bug of ours.
        client_fault = isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 0) < 500
        (log.error if record.levelno >= logging.ERROR and not client_fault else log.warn)("api", text)


def aiohttp_logger() -> logging.Logger:
    """The logger handed to aiohttp's request handlers (AppRunner(logger=...)): warnings and errors only."""
    logger = logging.getLogger("nonstop.api.aiohttp")
    if not logger.handlers:
        logger.addHandler(_OneLine(logging.WARNING))
        logger.setLevel(logging.WARNING)
        logger.propagate = False
    return logger
