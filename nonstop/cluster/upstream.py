"""UpstreamConnection: one RTMP client connection from this server to an origin, to pull (play) or push
(publish) one stream. An asyncio Protocol feeding the client-role RtmpSession, like RtmpConnection does for
the server role (architecture decision 5): no coroutine holds its state, which is plain attributes plus the
session's own, so `snapshot()` captures it for a handover.

The connection reports to its *link* (the EdgeIngester or EdgeForwarder that owns it) through four calls:
`on_upstream_started(up)`, `on_upstream_media(up, event)`, `on_upstream_status(up, status)` and
`on_upstream_ended(up)`. It ends exactly once, with an outcome that tells the link how to count it.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict

from nonstop.cluster.urls import RtmpTarget
from nonstop.media.registry import new_id
from nonstop.protocol import rtmp
from nonstop.protocol.errors import ProtocolError

PULL = "pull"
PUSH = "push"

# Phases. CONNECTING runs from the TCP connect to Play.Start / Publish.Start, bounded by connect_timeout.
CONNECTING = "connecting"
STARTED = "started"
ENDED = "ended"

# Outcomes: how a connection ended, which decides how the link counts it against the origin.
OUT_STOPPED = "stopped"        # this server ended it (no player left, publisher gone, quitting)
OUT_LOST = "lost"              # the TCP connection broke or the origin closed it
OUT_FAILED = "failed"          # connect error, connect timeout, protocol error, push stalled
OUT_REFUSED = "refused"        # the origin said no: Connect.Rejected without a redirect, Publish.BadName, ...
OUT_NOT_FOUND = "not_found"    # Play.StreamNotFound: the origin is fine but lacks the stream
OUT_REDIRECT = "redirect"      # SRS's RTMP 302; `detail` is the URL to follow
OUT_TIMEOUT = "timeout"        # pull: no data for recv_timeout after the start

# An origin's `|RtmpSampleAccess` data message is for Flash players; the edge's own players get theirs from
# the edge. Matched on its AMF0 encoding: string marker, 2-byte length, the name.
SAMPLE_ACCESS_PREFIX = b"\x02\x00\x11|RtmpSampleAccess"
SNAPSHOT_VERSION = 1


class UpstreamConnection(asyncio.Protocol):
    def __init__(self, link, role: str, target: RtmpTarget, *, now: float, connect_timeout_ms: int,
                 chunk_size: int = rtmp.DEFAULT_OUT_CHUNK_SIZE):
        if role not in (PULL, PUSH):
            raise ValueError(f"role must be {PULL!r} or {PUSH!r}")
        self.link = link
        self.role = role
        self.target = target
        self.cid = new_id()
        self.session = rtmp.RtmpSession(rtmp.CLIENT)
        self.chunk_size = chunk_size
        self.transport = None
        self.phase = CONNECTING
        self.outcome = ""
        self.detail = ""
        self.stream_id = 0
        self.created_at = now
        self.deadline = now + connect_timeout_ms / 1000     # for CONNECTING
        self.started_at = 0.0
        self.last_recv_at = now
        self.stalled_since: float | None = None             # push: since when the socket has not drained
        self.send_bytes = 0
        self.redirect_has_stream = False    # OUT_REDIRECT: `detail` is ex.redirect2 (else ex.redirect, a tcUrl)
        self.restored = False

    # ----- asyncio callbacks ---------------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.phase == ENDED:         # stopped while the TCP connect was in flight
            transport.close()
            return
        if not self.restored:
            self.session.connect(self.target.app, self.target.tc_url)
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self.phase == ENDED:
            return
        self.last_recv_at = time.monotonic()
        try:
            events = self.session.receive_data(data)
            for event in events:
                self._on_event(event)
                if self.phase == ENDED:
                    return
        except ProtocolError as e:
            self.end(OUT_FAILED, f"protocol error: {e}")
            return
        self._flush()

    def eof_received(self):
        self.end(OUT_LOST, "the origin closed the connection")
        return False

    def connection_lost(self, exc) -> None:
        self.end(OUT_LOST, f"connection lost: {exc}" if exc else "connection closed")

    def pause_writing(self) -> None:
        pass    # a push consumer checks the buffer itself before each flush

    def resume_writing(self) -> None:
        self.link.on_upstream_writable(self)

    # ----- the session's events ------------------------------------------------------------------------

    def _on_event(self, event) -> None:
        if isinstance(event, rtmp.Media):
            if self.role == PULL and not event.payload.startswith(SAMPLE_ACCESS_PREFIX):
                if self.phase == CONNECTING:
                    self._started()     # some servers send media without a Play.Start
                self.link.on_upstream_media(self, event)
        elif isinstance(event, rtmp.Connected):
            if self.role == PUSH:
                # Our media goes out as the source's shared bytes at this chunk size (media/packet.py).
                self.session.set_out_chunk_size(self.chunk_size)
                self.session.release_stream(self.target.stream)
            self.session.create_stream()
        elif isinstance(event, rtmp.StreamCreated):
            self.stream_id = event.stream_id
            if self.role == PULL:
                self.session.play(event.stream_id, self.target.stream)
            else:
                self.session.publish(event.stream_id, self.target.stream)
        elif isinstance(event, rtmp.ConnectRejected):
            if event.redirect:
                ex = event.info.get("ex")
                self.redirect_has_stream = isinstance(ex, dict) and event.redirect == ex.get("redirect2")
                self.end(OUT_REDIRECT, event.redirect)
            else:
                self.end(OUT_REFUSED, f"connect rejected: {event.info.get('description', '')}")
        elif isinstance(event, rtmp.Status):
            self._on_status(event)

    def _on_status(self, status: rtmp.Status) -> None:
        code = status.code
        if code in ("NetStream.Play.Start", "NetStream.Publish.Start"):
            if self.phase == CONNECTING:
                self._started()
            return
        if code == "NetStream.Play.StreamNotFound":
            self.end(OUT_NOT_FOUND, f"{code}: {status.description}")
            return
        if status.level == "error":
            self.end(OUT_REFUSED, f"{code}: {status.description}")
            return
        self.link.on_upstream_status(self, status)

    def _started(self) -> None:
        self.phase = STARTED
        self.started_at = time.monotonic()
        self.link.on_upstream_started(self)

    # ----- what the link asks --------------------------------------------------------------------------

    def check(self, now: float, recv_timeout_ms: int) -> None:
        """Enforce the deadlines (plain monotonic values, so they survive a handover)."""
        if self.phase == CONNECTING and now >= self.deadline:
            self.end(OUT_FAILED, "connect timeout")
        elif self.phase == STARTED and self.role == PULL and (now - self.last_recv_at) * 1000 >= recv_timeout_ms:
            self.end(OUT_TIMEOUT, f"no data from the origin for {recv_timeout_ms} ms")
        elif self.phase == STARTED and self.role == PUSH and self.transport is not None:
            if self.transport.get_write_buffer_size() == 0:
                self.stalled_since = None
            elif self.stalled_since is None:
                self.stalled_since = now
            elif (now - self.stalled_since) * 1000 >= recv_timeout_ms:
                self.end(OUT_FAILED, f"push stalled: {self.transport.get_write_buffer_size()} bytes unsent for "
                                     f"{recv_timeout_ms} ms")

    def next_deadline(self, recv_timeout_ms: int) -> float | None:
        """When `check` may next have something to do (monotonic), for the link's wait."""
        if self.phase == CONNECTING:
            return self.deadline
        if self.phase == STARTED:
            base = self.last_recv_at if self.role == PULL else (self.stalled_since or time.monotonic())
            return base + recv_timeout_ms / 1000
        return None

    def stop(self, reason: str = "stopped") -> None:
        self.end(OUT_STOPPED, reason)

    def end(self, outcome: str, detail: str = "") -> None:
        """End once: close the socket (sending what is queued) and tell the link."""
        if self.phase == ENDED:
            return
        self.phase = ENDED
        self.outcome = outcome
        self.detail = detail
        self.session.close()
        if self.transport is not None and not self.transport.is_closing():
            if outcome in (OUT_STOPPED, OUT_NOT_FOUND, OUT_REDIRECT, OUT_REFUSED):
                self.transport.close()
            else:
                self.transport.abort()
        self.link.on_upstream_ended(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.send_bytes += len(data)
            self.transport.write(data)

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out:
            self.write(out)

    @property
    def recv_bytes(self) -> int:
        return self.session.bytes_received

    @property
    def address(self) -> str:
        host = f"[{self.target.host}]" if ":" in self.target.host else self.target.host
        return f"{host}:{self.target.port}"

    # ----- handover ---------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Plain data: with the socket fd, `restore()` in another process goes on mid-stream."""
        return {"version": SNAPSHOT_VERSION, "role": self.role, "cid": self.cid, "target": asdict(self.target),
                "chunk_size": self.chunk_size, "phase": self.phase, "stream_id": self.stream_id,
                "created_at": self.created_at, "deadline": self.deadline, "started_at": self.started_at,
                "last_recv_at": self.last_recv_at, "send_bytes": self.send_bytes,
                "session": self.session.snapshot()}

    @classmethod
    def restore(cls, link, snap: dict) -> "UpstreamConnection":
        """A connection to adopt with `loop.connect_accepted_socket(lambda: up, sock=sock)`: it sends nothing
        new on connection_made; the link is told it started if it had."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown UpstreamConnection snapshot version {snap.get('version')!r}")
        up = cls(link, snap["role"], RtmpTarget(**snap["target"]), now=snap["created_at"], connect_timeout_ms=0,
                 chunk_size=snap["chunk_size"])
        up.cid, up.phase, up.stream_id = snap["cid"], snap["phase"], snap["stream_id"]
        up.created_at, up.deadline, up.started_at = snap["created_at"], snap["deadline"], snap["started_at"]
        up.last_recv_at, up.send_bytes = snap["last_recv_at"], snap["send_bytes"]
        up.session = rtmp.RtmpSession.restore(snap["session"])
        up.restored = True
        return up
