"""Publishers: replay an FLV file over RTMP in real time, looped, and record when each video frame was sent.

The file's timestamps are made continuous across loops (loop k adds k times the file's length plus one frame
interval), as a live encoder's would be; metadata and sequence headers go out once, at the start.

Latency: servers rewrite timestamps, so a frame is recognised by its payload instead. `latency_key` hashes the
first HASH_LEN bytes after the FLV video header, with the payload length; the publisher records its send time
under that key, and a player that receives a message with the same key computes the difference. Frames whose
key occurs twice in the file are ambiguous and never recorded (`MediaFile.ambiguous` counts them).
"""

from __future__ import annotations

import asyncio
import statistics
import time
import zlib
from pathlib import Path

from nonstop.bench.context import FAIL_REJECTED, FAIL_TIMEOUT, classify
from nonstop.protocol import amf0, flv, rtmp
from nonstop.protocol.errors import ProtocolError

HASH_LEN = 32
STREAM_SHIFT = 56  # latency keys: stream index << 56 | payload length (u24) << 32 | crc32
# Messages due within this much are sent together: one write, one timer per batch.
SEND_AHEAD_S = 0.002
# The publisher's outgoing chunk size. FFmpeg and OBS announce 4096 or more; larger chunks mean fewer
# headers for the server to parse. 4096 keeps the ingest path realistic.
PUBLISH_CHUNK_SIZE = 4096
# A frame interval to assume when a file has fewer than two video frames.
DEFAULT_FRAME_MS = 33
ENHANCED_VIDEO = 0x80
ENHANCED_CODED_FRAMES = 1  # Enhanced RTMP PacketType with an SI24 composition time after the FourCC
CODECS_WITH_PACKET_TYPE = (7, 12, 13)  # legacy AVC, HEVC, AV1: PacketType and SI24 after byte 0


def video_header_len(head) -> int:
    """Bytes of FLV video header before the codec data: 5 for legacy AVC, 8 or 5 for Enhanced RTMP."""
    if not head:
        return 0
    first = head[0]
    if first & ENHANCED_VIDEO:
        return 8 if first & 0x0F == ENHANCED_CODED_FRAMES else 5
    return 5 if first & 0x0F in CODECS_WITH_PACKET_TYPE else 1


def latency_key(length: int, head) -> int:
    """The key of a video payload of `length` bytes that starts with `head` (at least PREFIX_LEN bytes of
    it, or all of it). Publisher and player compute it the same way on the same bytes."""
    skip = video_header_len(head)
    return (length << 32) | zlib.crc32(head[skip:skip + HASH_LEN])


class MediaFile:
    """An FLV file ready to replay: metadata, sequence headers, then frames with timestamps from 0."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        tags = flv.read_file_tags(Path(path).read_bytes())
        self.metadata: bytes | None = None
        self.headers: list[tuple[int, bytes]] = []
        frames = []
        for tag in tags:
            if tag.tag_type == flv.TAG_SCRIPT:
                if self.metadata is None and tag.payload.startswith(amf0.encode("onMetaData")):
                    self.metadata = amf0.encode("@setDataFrame") + tag.payload  # as FFmpeg publishes it
                continue
            header = (flv.is_video_sequence_header(tag.payload) if tag.tag_type == flv.TAG_VIDEO
                      else flv.is_audio_sequence_header(tag.payload))
            if header and not frames:
                self.headers.append((tag.tag_type, tag.payload))
            else:
                frames.append(tag)
        if not frames:
            raise ValueError(f"{path}: no audio or video frames")
        base = min(t.timestamp for t in frames)
        video_ts = [t.timestamp for t in frames if t.tag_type == flv.TAG_VIDEO]
        steps = [b - a for a, b in zip(video_ts, video_ts[1:]) if b > a]
        self.frame_ms = statistics.median(steps) if steps else DEFAULT_FRAME_MS
        self.loop_ms = max(t.timestamp for t in frames) - base + self.frame_ms
        keys = [latency_key(len(t.payload), t.payload) if t.tag_type == flv.TAG_VIDEO else None for t in frames]
        counts: dict[int, int] = {}
        for key in keys:
            if key is not None:
                counts[key] = counts.get(key, 0) + 1
        self.ambiguous = sum(c for c in counts.values() if c > 1)
        self.video_frames = len(video_ts)
        # (timestamp from 0, message type, payload, latency key or None)
        self.frames = [(t.timestamp - base, t.tag_type, t.payload,
                        key if key is not None and counts[key] == 1 else None) for t, key in zip(frames, keys)]
        self.payload_bytes = sum(len(t.payload) for t in frames)

    @property
    def kbps(self) -> float:
        """The stream's payload rate in kb/s (1000 bits)."""
        return self.payload_bytes * 8 / self.loop_ms


class Publisher(asyncio.Protocol):
    """One RTMP publisher of `media` to `target`; `index` is its stream number (for latency keys)."""

    def __init__(self, ctx, media: MediaFile, target, index: int):
        self.ctx = ctx
        self.media = media
        self.target = target
        self.index = index
        self.key_base = index << STREAM_SHIFT
        self.session = rtmp.RtmpSession(rtmp.CLIENT)
        self.transport = None
        self.stream_id = 0
        self.started = asyncio.get_running_loop().create_future()
        self.error = ""
        self.publishing = False
        self.t0 = 0.0
        self.position = 0
        self.loops = 0
        self.timer = None
        self.payload_bytes = 0
        self.frames_sent = 0
        self.bytes_at_start = 0
        self.bytes_at_end = 0
        self.max_write_buffer = 0

    async def open(self, timeout: float) -> bool:
        """Connect and publish; True once the server said Publish.Start."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: self, self.target.host, self.target.port),
                                   timeout)
            await asyncio.wait_for(asyncio.shield(self.started), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            self._fail(FAIL_TIMEOUT if isinstance(e, asyncio.TimeoutError) else classify(e), str(e))
        return self.publishing

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.session.connect(self.target.app, self.target.tc_url)
        self._flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.session.receive_data(data)
        except ProtocolError as e:
            self._fail("protocol", str(e))
            return
        for event in events:
            if isinstance(event, rtmp.Connected):
                self.session.release_stream(self.target.stream)
                self.session.create_stream()
            elif isinstance(event, rtmp.ConnectRejected):
                self._fail(FAIL_REJECTED, f"connect rejected: {event.info.get('description', '')}")
            elif isinstance(event, rtmp.StreamCreated):
                self.stream_id = event.stream_id
                self.session.publish(event.stream_id, self.target.stream)
            elif isinstance(event, rtmp.Status):
                if event.code == "NetStream.Publish.Start" and not self.publishing:
                    self._start()
                elif event.level == "error":
                    self._fail(FAIL_REJECTED, f"{event.code}: {event.description}")
        self._flush()

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.ctx.stopping and not self.error:
            self._fail(classify(exc), f"connection lost: {exc or 'closed by the server'}")
        self.publishing = False

    def _flush(self) -> None:
        out = self.session.data_to_send()
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def _fail(self, kind: str, message: str) -> None:
        if not self.error:
            self.error = f"{kind}: {message}"
        if not self.started.done():
            self.started.set_result(False)
        if self.transport is not None:
            self.transport.abort()

    def _start(self) -> None:
        self.publishing = True
        self.session.set_out_chunk_size(PUBLISH_CHUNK_SIZE)
        if self.media.metadata is not None:
            self.session.send_data(self.stream_id, *amf0.decode_all(self.media.metadata))
        self._flush()
        for type_id, payload in self.media.headers:
            self.transport.write(self.session.send_media(type_id, 0, self.stream_id, payload))
        self.ctx.local_streams.add(self.index)
        self.t0 = time.monotonic()
        self.started.set_result(True)
        self._pump()

    def _pump(self) -> None:
        """Send every message due now (and in the next SEND_AHEAD_S), then sleep until the next one."""
        self.timer = None
        if not self.publishing or self.transport is None or self.transport.is_closing():
            return
        now = time.monotonic()
        frames = self.media.frames
        loop_ms = self.media.loop_ms
        sent_times = self.ctx.sent_times
        out = []
        while True:
            rel_ts, type_id, payload, key = frames[self.position]
            ts = rel_ts + self.loops * loop_ms
            due = self.t0 + ts / 1000
            if due > now + SEND_AHEAD_S:
                break
            out.append(self.session.send_media(type_id, int(ts), self.stream_id, payload))
            if key is not None:
                sent_times[key | self.key_base] = now
            self.payload_bytes += len(payload)
            self.frames_sent += 1
            self.position += 1
            if self.position == len(frames):
                self.position = 0
                self.loops += 1
        if out:
            self.transport.writelines(out)
            size = self.transport.get_write_buffer_size()
            if size > self.max_write_buffer:
                self.max_write_buffer = size
        self.timer = asyncio.get_running_loop().call_later(max(0.0, due - time.monotonic()), self._pump)

    def close(self) -> None:
        self.publishing = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.transport is not None:
            self.transport.close()

    def result(self) -> dict:
        return {"index": self.index, "url": self.target.url, "ok": not self.error, "error": self.error,
                "payload_bytes_window": self.bytes_at_end - self.bytes_at_start, "frames_sent": self.frames_sent,
                "loops": self.loops, "max_write_buffer": self.max_write_buffer}
