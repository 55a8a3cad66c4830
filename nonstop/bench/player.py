"""Players: RTMP and HTTP-FLV viewers that cost little, built on nonstop's sans-IO client session.

An RTMP player does the handshake, `connect`, `createStream` and `play` with `RtmpSession(CLIENT)`. Once the
server says Play.Start it switches to `ChunkTracker`, which only reads chunk headers out of the process's
shared read buffer, and it raises SO_RCVLOWAT so the kernel wakes it once per 64 KiB instead of once per
segment. It still acknowledges bytes per the server's window and answers pings, as real players do (nginx-rtmp
drops a client that ignores its pings).

An HTTP-FLV player sends one GET and reads FLV tag headers the same way (`FlvTagTracker`, under `ChunkedBody`
when the server uses chunked transfer coding).

A `Viewer` is one player across its connections: with `reconnect` it opens a new connection at once when one
ends, and times the gap to the next video frame.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

from nonstop.bench.context import FAIL_ERROR, FAIL_REJECTED, FAIL_TIMEOUT, classify
from nonstop.bench.fastchunk import ChunkedBody, ChunkTracker, FlvTagTracker, PREFIX_LEN
from nonstop.bench.publisher import STREAM_SHIFT, latency_key
from nonstop.bench.stats import FrameStats
from nonstop.protocol import amf0, rtmp
from nonstop.protocol.chunk import encode_message
from nonstop.protocol.errors import ProtocolError
from nonstop.protocol.flv import is_video_sequence_header

# A player whose connection failed before playing waits this long before the next attempt, so a dead server
# does not turn the load generator into a busy loop.
RETRY_DELAY_S = 0.2
# The HTTP response head of an FLV GET is a few hundred bytes; more is not an FLV server.
MAX_HTTP_HEAD = 16 * 1024
USER_AGENT = "nonstop-bench"

# Connection states.
CONNECTING = "connecting"
PLAYING = "playing"
CLOSED = "closed"


class Viewer:
    """One player: its statistics and, with `reconnect`, its successive connections."""

    __slots__ = ("ctx", "index", "target", "stream", "reconnect", "hangup_every", "stats", "bytes",
                 "bytes_at_start", "bytes_at_end", "ttff", "lost_at", "reconnects", "reconnect_gaps", "conn",
                 "latency_base")

    def __init__(self, ctx, index: int, target, stream: int, reconnect: bool = False,
                 hangup_every: float | None = None):
        self.ctx = ctx
        self.index = index
        self.target = target
        self.stream = stream
        self.reconnect = reconnect or hangup_every is not None
        self.hangup_every = hangup_every
        self.stats = FrameStats(ctx.opts.stall_threshold, ctx.opts.hole_ms)
        self.bytes = 0
        self.bytes_at_start = 0
        self.bytes_at_end = 0
        self.ttff: float | None = None       # first connection: connect start to first video frame
        self.lost_at: float | None = None    # when the last playing connection ended, until the next frame
        self.reconnects = 0
        self.reconnect_gaps: list[float] = []
        self.conn = None
        # Only the streams published from this process can be timed (their send times are here).
        self.latency_base = stream << STREAM_SHIFT if stream in ctx.local_streams else None

    def start(self) -> None:
        self.ctx.loop.create_task(self._open())

    async def _open(self) -> None:
        ctx = self.ctx
        if ctx.stopping:
            return
        ctx.attempts += 1
        conn = (RtmpPlayerConnection if self.target.is_rtmp else FlvPlayerConnection)(self)
        self.conn = conn
        try:
            await ctx.loop.create_connection(lambda: conn, self.target.host, self.target.port)
        except OSError as e:
            conn.state = CLOSED
            self.on_closed(conn, classify(e))

    def on_playing(self, conn) -> None:
        self.ctx.ok += 1
        if self.hangup_every is not None:
            self.ctx.loop.call_later(self.hangup_every, conn.hang_up)

    def on_first_frame(self, conn, now: float) -> None:
        if self.ttff is None:
            self.ttff = now - conn.started_at
        if self.lost_at is not None:
            self.reconnect_gaps.append(now - self.lost_at)
            self.lost_at = None

    def on_closed(self, conn, kind: str | None, was_playing: bool = False) -> None:
        """A connection ended: `kind` is the failure kind if it never played, else None."""
        ctx = self.ctx
        now = time.monotonic()
        if was_playing:
            if conn.hung_up:
                ctx.hangups += 1
            elif not ctx.stopping:
                ctx.dropped += 1
            if self.lost_at is None:
                self.lost_at = now
        elif ctx.stopping:
            return  # the run ended while this connection was opening (a reconnect): we closed it, not a failure
        else:
            ctx.failed[kind or FAIL_ERROR] += 1
        if not self.reconnect or ctx.stopping:
            return
        if was_playing:
            self.reconnects += 1
        self.stats.new_connection()
        if was_playing:
            self.start()
        else:
            ctx.loop.call_later(RETRY_DELAY_S, self.start)

    def result(self) -> dict:
        s = self.stats
        return {"stream": self.stream, "bytes": self.bytes_at_end - self.bytes_at_start, "ttff": self.ttff,
                "max_gap": s.max_gap, "stalls": s.stalls, "holes": s.holes, "repeats": s.repeats,
                "frames": s.frames, "reconnects": self.reconnects, "reconnect_gaps": self.reconnect_gaps,
                "reconnecting": self.hangup_every is not None}


class _PlayerConnection(asyncio.BufferedProtocol):
    """What RTMP and HTTP-FLV player connections share: buffer, timing, video accounting, closing."""

    def __init__(self, viewer: Viewer):
        self.viewer = viewer
        self.ctx = viewer.ctx
        self.transport = None
        self.state = CONNECTING
        self.started_at = time.monotonic()
        self.play_sent_at = self.started_at
        self.got_frame = False
        self.hung_up = False
        self.fail_kind: str | None = None
        viewer.stats.new_connection()

    def get_buffer(self, sizehint: int):
        return self.ctx.view

    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.ctx.stopping:
            transport.abort()

    def eof_received(self):
        return False  # let the transport close; connection_lost does the accounting

    def connection_lost(self, exc) -> None:
        if self.state == CLOSED:
            return
        was_playing = self.state == PLAYING
        self.state = CLOSED
        self.viewer.on_closed(self, None if was_playing else (self.fail_kind or classify(exc)), was_playing)

    def check_timeout(self, now: float, timeout: float) -> None:
        if self.state == CONNECTING and now - self.started_at > timeout:
            self.fail(FAIL_TIMEOUT)

    def fail(self, kind: str) -> None:
        if self.fail_kind is None:
            self.fail_kind = kind
        if self.transport is not None:
            self.transport.abort()

    def hang_up(self) -> None:
        if self.state == PLAYING and not self.ctx.stopping:
            self.hung_up = True
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _playing(self) -> None:
        self.state = PLAYING
        self.viewer.on_playing(self)

    def _low_wakeups(self) -> None:
        lowat = self.ctx.opts.rcvlowat
        if lowat:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)

    def _videos(self, videos: list, now: float) -> None:
        """Account for the video messages completed by one read (all arrived at `now`)."""
        viewer = self.viewer
        stats = viewer.stats
        ctx = self.ctx
        base = viewer.latency_base
        timed = base is not None and ctx.measuring
        frames = 0
        for timestamp, length, head in videos:
            if is_video_sequence_header(head):
                continue  # codec configuration, not a picture: stamped like the frame after it
            stats.on_video(timestamp, now)
            frames += 1
            if timed:
                sent = ctx.sent_times.get(latency_key(length, head) | base)
                if sent is None:
                    ctx.latency_unmatched += 1
                elif sent >= self.play_sent_at:  # older frames came from the GOP cache, not live
                    ctx.latency.add(now - sent)
        videos.clear()
        if frames and not self.got_frame:
            self.got_frame = True
            viewer.on_first_frame(self, now)
            self._low_wakeups()  # not before: the first frame's time must not wait for a full 64 KiB


class RtmpPlayerConnection(_PlayerConnection):
    def __init__(self, viewer: Viewer):
        super().__init__(viewer)
        self.session: rtmp.RtmpSession | None = rtmp.RtmpSession(rtmp.CLIENT)
        self.tracker: ChunkTracker | None = None
        self.received = 0
        self.last_ack = 0
        self.window = 0
        self.out_chunk_size = 0

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        target = self.viewer.target
        self.session.connect(target.app, target.tc_url)
        self._flush()

    def buffer_updated(self, nbytes: int) -> None:
        self.viewer.bytes += nbytes
        if self.state == CLOSED:
            return
        tracker = self.tracker
        try:
            if tracker is None:
                self._slow(bytes(self.ctx.buf[:nbytes]))
                return
            tracker.feed(self.ctx.buf, 0, nbytes)
        except ProtocolError:
            self.fail("protocol")
            return
        if tracker.video:
            self._videos(tracker.video, time.monotonic())
        if tracker.control:
            self._control(tracker.control)
        self.received += nbytes
        if self.window and self.received - self.last_ack >= self.window:
            self.last_ack = self.received
            self._send_control(rtmp.MSG_ACK, struct.pack(">I", self.received & 0xFFFFFFFF))

    def _slow(self, data: bytes) -> None:
        """Handshake, connect, createStream, play: the full session, until Play.Start."""
        session = self.session
        events = session.receive_data(data)
        now = time.monotonic()
        videos = []
        started = False
        for event in events:
            if isinstance(event, rtmp.Media):
                if event.type_id == rtmp.MSG_VIDEO:
                    videos.append((event.timestamp, len(event.payload), event.payload[:PREFIX_LEN]))
            elif isinstance(event, rtmp.Connected):
                session.create_stream()
            elif isinstance(event, rtmp.StreamCreated):
                session.play(event.stream_id, self.viewer.target.stream)
                self.play_sent_at = now
            elif isinstance(event, rtmp.Status):
                if event.code == "NetStream.Play.Start":
                    started = True
                elif event.level == "error":
                    self._flush()
                    self.fail(FAIL_REJECTED)
                    return
            elif isinstance(event, rtmp.ConnectRejected):
                self.fail(FAIL_REJECTED)
                return
        self._flush()
        if started and self.state == CONNECTING:
            self._playing()
            self._switch()
        if videos and self.state == PLAYING:
            self._videos(videos, now)

    def _switch(self) -> None:
        """From the full session to the header tracker, at the exact byte the session stopped at."""
        session = self.session
        snap = session.reader.snapshot()
        self.received = snap["bytes_received"]
        self.last_ack = session.last_ack_sent
        self.window = session.peer_window_ack_size
        self.out_chunk_size = session.writer.chunk_size
        self.session = None
        self.tracker = ChunkTracker.from_reader_snapshot(snap)
        if self.tracker.control:
            self._control(self.tracker.control)

    def _control(self, messages: list) -> None:
        for type_id, _ts, _stream_id, payload in messages:
            if type_id == rtmp.MSG_WINDOW_ACK_SIZE and len(payload) >= 4:
                self.window = struct.unpack_from(">I", payload)[0]
            elif type_id == rtmp.MSG_USER_CONTROL and len(payload) >= 6:
                if struct.unpack_from(">H", payload)[0] == rtmp.UC_PING_REQUEST:
                    self._send_control(rtmp.MSG_USER_CONTROL,
                                       struct.pack(">H", rtmp.UC_PING_RESPONSE) + payload[2:6])
            elif type_id == rtmp.MSG_COMMAND_AMF0:
                try:
                    values = amf0.decode_all(payload)
                except amf0.DecodeError:
                    continue
                info = next((v for v in values[2:] if isinstance(v, dict)), {})
                if info.get("level") == "error":
                    self.fail(FAIL_REJECTED)
        messages.clear()

    def _send_control(self, type_id: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(encode_message(rtmp.CSID_CONTROL, type_id, 0, 0, payload, self.out_chunk_size))

    def _flush(self) -> None:
        out = self.session.data_to_send() if self.session is not None else b""
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)


class FlvPlayerConnection(_PlayerConnection):
    def __init__(self, viewer: Viewer):
        super().__init__(viewer)
        self.head = bytearray()
        self.tracker = FlvTagTracker()
        self.body = None  # the tracker, or a ChunkedBody in front of it

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        target = self.viewer.target
        transport.write((f"GET {target.path} HTTP/1.1\r\nHost: {target.host}:{target.port}\r\n"
                         f"User-Agent: {USER_AGENT}\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode())
        self.play_sent_at = time.monotonic()

    def buffer_updated(self, nbytes: int) -> None:
        self.viewer.bytes += nbytes
        if self.state == CLOSED:
            return
        buf = self.ctx.buf
        start = 0
        try:
            if self.body is None:
                start = self._response_head(nbytes)
                if self.body is None:
                    return
            self.body.feed(buf, start, nbytes)
        except ProtocolError:
            self.fail("protocol")
            return
        if self.tracker.video:
            self._videos(self.tracker.video, time.monotonic())

    def _response_head(self, nbytes: int) -> int:
        """Collect the response head; once whole, check it and return where the body starts in the buffer."""
        before = len(self.head)
        self.head += self.ctx.buf[:nbytes]
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > MAX_HTTP_HEAD:
                self.fail("protocol")
            return nbytes
        lines = bytes(self.head[:end]).decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "200":
            self.fail(FAIL_REJECTED)
            return nbytes
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        tracker = self.tracker
        self.body = ChunkedBody(tracker.feed) if chunked else tracker
        self._playing()
        body_start = end + 4 - before  # where the body starts in this read
        self.head = bytearray()
        return body_start
