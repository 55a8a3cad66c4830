"""The HTTP API's connection bounds (api/conns.py): the pool's limit, and each phase's deadline, driven with
fake transports and explicit times."""

from __future__ import annotations

import io
import logging
from types import SimpleNamespace

from aiohttp.http_exceptions import BadHttpMessage

from nonstop.api.conns import HANDLING, IDLE, KEEPALIVE_TIMEOUT_S, WAITING, ApiConnections, aiohttp_logger
from nonstop.log import log


class FakeTransport:
    def __init__(self):
        self.closed = self.aborted = False

    def get_extra_info(self, name):
        return ("10.0.0.1", 5555) if name == "peername" else None

    def is_closing(self):
        return self.closed or self.aborted

    def close(self):
        self.closed = True

    def abort(self):
        self.aborted = True


class FakeHandler:
    def __init__(self):
        self.calls = []

    def connection_made(self, transport):
        self.calls.append("made")

    def data_received(self, data):
        self.calls.append(data)

    def connection_lost(self, exc):
        self.calls.append("lost")


def pool(limit: int = 3, handshake_ms: int = 10_000) -> ApiConnections:
    config = SimpleNamespace(handshake_timeout=handshake_ms, http_api=SimpleNamespace(max_connections=limit))
    return ApiConnections(SimpleNamespace(config=config))


def connect(conns: ApiConnections):
    handler, transport = FakeHandler(), FakeTransport()
    conn = conns.wrap(handler)
    conn.connection_made(transport)
    return conn, handler, transport


def test_connections_beyond_the_limit_are_closed_at_accept_and_never_reach_aiohttp():
    conns = pool(limit=2)
    first, second = connect(conns), connect(conns)
    conn, handler, transport = connect(conns)
    assert transport.closed and not conn.admitted and handler.calls == []
    assert len(conns) == 2 and conns.rejected_total == 1
    conn.connection_lost(None)
    assert handler.calls == [] and len(conns) == 2
    first[0].connection_lost(None)          # a place frees up
    assert first[1].calls == ["made", "lost"] and len(conns) == 1
    assert connect(conns)[0].admitted


def test_a_request_head_must_be_whole_within_handshake_timeout():
    conns = pool(handshake_ms=2000)
    conn, handler, transport = connect(conns)
    start = conn.deadline - 2.0
    conn.data_received(b"GET / HTTP/1.1\r\n")       # a slowloris drip does not extend the deadline
    conns.sweep(start + 1.9)
    assert not transport.aborted
    conns.sweep(start + 2.0)
    assert transport.aborted and len(conns) == 0
    assert handler.calls == ["made", b"GET / HTTP/1.1\r\n"]


def test_keep_alive_idle_is_bounded_and_the_next_request_gets_the_head_deadline_again(monkeypatch):
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr("nonstop.api.conns.time.monotonic", lambda: clock.now)
    conns = pool(handshake_ms=2000)
    conn, handler, transport = connect(conns)
    t = 1000.0
    assert conn.deadline == t + 2.0
    conns.request_started(transport, t + 0.5)
    assert conn.phase == HANDLING and conn.deadline == t + 2.5
    conns.request_done(transport, t + 0.6)
    assert conn.phase == IDLE and conn.deadline == t + 0.6 + KEEPALIVE_TIMEOUT_S
    conns.sweep(t + 60)
    assert not transport.aborted                    # idle, within keep-alive
    clock.now = t + 60
    conn.data_received(b"G")                        # the next request starts...
    assert conn.phase == WAITING
    conns.sweep(t + 61.9)
    assert not transport.aborted
    conns.sweep(t + 62.1)                           # ...and must be whole within handshake_timeout
    assert transport.aborted


def test_an_idle_keep_alive_connection_is_closed_after_keepalive_timeout():
    conns = pool()
    conn, handler, transport = connect(conns)
    conns.request_started(transport, 1.0)
    conns.request_done(transport, 1.1)
    conns.sweep(1.1 + KEEPALIVE_TIMEOUT_S - 0.01)
    assert not transport.aborted
    conns.sweep(1.1 + KEEPALIVE_TIMEOUT_S)
    assert transport.aborted


def test_aiohttps_messages_become_one_escaped_log_line_without_traceback():
    stream, log.stream = log.stream, io.StringIO()
    try:
        try:
            raise BadHttpMessage("Invalid header value char:\n\n  b'X: \\x1b[31m'\n       ^")
        except BadHttpMessage:
            aiohttp_logger().exception("Error handling request from %s", "127.0.0.1")
        out = log.stream.getvalue()
    finally:
        log.stream = stream
    assert out.count("\n") == 1 and "Traceback" not in out
    assert "[Warn]" in out and "Error handling request from 127.0.0.1: BadHttpMessage: Invalid header value char" in out
    assert aiohttp_logger().level == logging.WARNING
