"""Short-lived and idle RTMP connections: churn (connect, then close) and idle cost (connect, createStream, sit).

Churn opens connections at a steady rate during the measurement window. Each completes the handshake and
`connect`, then closes; refused, reset and unanswered connects are counted apart, and the time from the TCP
connect to the `_result` is kept. Idle connections complete `connect` and `createStream` and then only answer
pings until the run ends: what a server spends on a viewer that is not watching.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from nonstop.bench.context import FAIL_ERROR, FAIL_REJECTED, FAIL_TIMEOUT, classify
from nonstop.protocol import rtmp
from nonstop.protocol.errors import ProtocolError

CHURN_OK = "ok"
# Churn outcomes as the report names them: a timed-out connect is "unanswered".
CHURN_UNANSWERED = "unanswered"


class _SessionClient(asyncio.Protocol):
    """An RTMP client connection driven by RtmpSession, reporting one outcome to `done(outcome)`."""

    def __init__(self, target, done):
        self.target = target
        self.done = done
        self.session = rtmp.RtmpSession(rtmp.CLIENT)
        self.transport = None
        self.started_at = time.monotonic()
        self.outcome: str | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.session.connect(self.target.app, self.target.tc_url)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive_data(data)
        except ProtocolError:
            self.finish("protocol")
            return
        for event in events:
            self.on_event(event)
        self._flush()

    def on_event(self, event) -> None:
        if isinstance(event, rtmp.ConnectRejected):
            self.finish(FAIL_REJECTED)

    def eof_received(self):
        return False

    def connection_lost(self, exc) -> None:
        self.finish(classify(exc))

    def check_timeout(self, now: float, timeout: float) -> None:
        if self.outcome is None and now - self.started_at > timeout:
            self.finish(FAIL_TIMEOUT)

    def finish(self, outcome: str) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.done(self, outcome)
        if outcome != CHURN_OK and self.transport is not None:
            self.transport.abort()

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)


class ChurnConnection(_SessionClient):
    def on_event(self, event) -> None:
        if isinstance(event, rtmp.Connected):
            self.finish(CHURN_OK)
            self.transport.close()
        else:
            super().on_event(event)


class IdleConnection(_SessionClient):
    def __init__(self, target, done):
        super().__init__(target, done)
        self.lost_after_ok = None  # called if an idle connection that was ok is closed by the server

    def on_event(self, event) -> None:
        if isinstance(event, rtmp.Connected):
            self.session.create_stream()
        elif isinstance(event, rtmp.StreamCreated):
            self.finish(CHURN_OK)
        elif isinstance(event, rtmp.Status) and event.level == "error":
            self.finish(FAIL_REJECTED)
        else:
            super().on_event(event)

    def connection_lost(self, exc) -> None:
        if self.outcome == CHURN_OK and self.lost_after_ok is not None:
            self.lost_after_ok()
        super().connection_lost(exc)


class ConnectionPool:
    """Churn or idle connections of one process: opened on demand, counted by outcome."""

    def __init__(self, ctx, target, factory):
        self.ctx = ctx
        self.target = target
        self.factory = factory
        self.outcomes: Counter = Counter()
        self.connect_times: list[float] = []
        self.pending: set = set()
        self.open_conns: list = []
        self.attempted = 0
        self.dropped = 0

    def open(self) -> None:
        self.attempted += 1
        conn = self.factory(self.target, self._done)
        if isinstance(conn, IdleConnection):
            conn.lost_after_ok = self._lost
        self.pending.add(conn)
        self.ctx.loop.create_task(self._connect(conn))

    async def _connect(self, conn) -> None:
        try:
            await self.ctx.loop.create_connection(lambda: conn, self.target.host, self.target.port)
        except OSError as e:
            conn.finish(classify(e))

    def _done(self, conn, outcome: str) -> None:
        self.pending.discard(conn)
        self.outcomes[outcome] += 1
        if outcome == CHURN_OK:
            self.connect_times.append(time.monotonic() - conn.started_at)
            if isinstance(conn, IdleConnection):
                self.open_conns.append(conn)

    def _lost(self) -> None:
        if not self.ctx.stopping:
            self.dropped += 1

    def check_timeouts(self, now: float, timeout: float) -> None:
        for conn in list(self.pending):
            conn.check_timeout(now, timeout)

    def close(self) -> None:
        for conn in self.open_conns:
            if conn.transport is not None:
                conn.transport.abort()
        for conn in list(self.pending):
            conn.finish(FAIL_TIMEOUT)

    def result(self) -> dict:
        failed = {k: v for k, v in self.outcomes.items() if k != CHURN_OK}
        return {"attempted": self.attempted, "ok": self.outcomes[CHURN_OK], "failed": failed,
                "dropped": self.dropped, "connect_times": self.connect_times}


def churn_outcome_name(kind: str) -> str:
    """The report's word for a failure kind: a timed-out connect is 'unanswered'."""
    return CHURN_UNANSWERED if kind == FAIL_TIMEOUT else kind if kind else FAIL_ERROR
