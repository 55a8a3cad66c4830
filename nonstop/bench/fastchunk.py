"""Header-only parsers for the load generator's players: RTMP chunks, FLV tags and HTTP chunked framing.

A benchmark player must cost far less than the server it measures, so after `play` it does not reassemble
messages the way `nonstop.protocol.chunk.ChunkReader` does (which allocates every payload). These trackers
read the headers out of a caller-owned, reused buffer and step over payload bytes. Of each video message they
keep the timestamp, the length and the first PREFIX_LEN payload bytes (the latency key, see
`nonstop.bench.publisher.latency_key`). Small control messages (Set Chunk Size, Window Acknowledgement Size,
ping, onStatus) are kept whole, because a player has to act on them.

`feed(buf, start, end)` consumes `buf[start:end]` completely: a header cut by the end of a read is kept (at
most MAX_HEADER_SIZE bytes) and finished by the next feed. Completed messages are appended to the `video` and
`control` lists, which the caller reads and clears after each feed.

The RTMP header rules follow `ChunkReader` exactly (the unit tests compare the two on the same bytes): all four
header formats, 1-3 byte basic headers, extended timestamps (repeated on type 3 chunks or not), Set Chunk Size
and Abort applied at the message boundary. Timestamps are not unwrapped past 2**32 (a benchmark runs minutes,
not 49 days).
"""

from __future__ import annotations

from nonstop.protocol.errors import ProtocolError

# Bytes of each video payload kept: the FLV video header is 1..9 bytes (legacy AVC: 5, Enhanced RTMP coded
# frames: 8), then latency_key hashes the next 32; a little slack for longer headers.
PREFIX_LEN = 48
# Non-media messages up to this size are collected whole for the player to act on. Commands and control
# messages are a few hundred bytes; a larger one (an unknown type) is skipped rather than held.
CONTROL_CAP = 64 * 1024
# The same caps as ChunkReader, for the same reasons (a hostile or broken server must not make us hold memory).
MAX_CHUNK_STREAMS = 64
MAX_HEADER_SIZE = 3 + 11 + 4
DEFAULT_CHUNK_SIZE = 128
_MAX_CHUNK_SIZE = 0xFFFFFF  # a chunk never carries more than one message; larger sizes parse the same
_EXTENDED = 0xFFFFFF
_U32_MASK = 0xFFFFFFFF
_CSID_PROTOCOL_CONTROL = 2

MSG_SET_CHUNK_SIZE = 1
MSG_ABORT = 2
MSG_AUDIO = 8
MSG_VIDEO = 9
MSG_DATA_AMF3 = 15
MSG_DATA_AMF0 = 18
_SKIPPED_TYPES = frozenset((MSG_AUDIO, MSG_DATA_AMF3, MSG_DATA_AMF0))  # counted, never collected

# FLV: 9-byte file header + PreviousTagSize0, then per tag an 11-byte header, the payload, a 4-byte size.
FLV_FILE_HEADER = 13
FLV_TAG_HEADER = 11
FLV_PREV_TAG_SIZE = 4
FLV_MAX_HEADER_PADDING = 1024  # as nonstop.protocol.flv: a little DataOffset padding is skipped
FLV_TAG_TYPES = frozenset((8, 9, 18))

# HTTP chunked transfer coding: a size line is a hex number, maybe extensions, CRLF. Node's is "1f40\r\n".
MAX_CHUNK_LINE = 1024


class FastParseError(ProtocolError):
    """The server's byte stream is malformed (or exceeds a cap) in a way the player cannot step over."""


class _Stream:
    """One chunk stream's last header and the message in progress on it."""

    __slots__ = ("type_id", "length", "ts_field", "extended", "timestamp", "stream_id", "left", "head", "body")

    def __init__(self):
        self.type_id = 0
        self.length = 0
        self.ts_field = 0      # the last timestamp or delta field (32-bit), reused by type 3 headers
        self.extended = False  # the last type 0/1/2 header used the extended timestamp field
        self.timestamp = 0
        self.stream_id = 0
        self.left = 0          # payload bytes of the current message still to come; 0: none in progress
        self.head: bytearray | None = None  # video: the payload prefix captured so far
        self.body: bytearray | None = None  # control: the payload collected so far


class ChunkTracker:
    """RTMP chunk headers in, (timestamp, length, prefix) of video messages and whole control messages out."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, prefix_len: int = PREFIX_LEN):
        self.chunk_size = min(chunk_size, _MAX_CHUNK_SIZE)
        self.prefix_len = prefix_len
        self.streams: dict[int, _Stream] = {}
        self.current: _Stream | None = None  # the stream whose chunk payload is being stepped over
        self.chunk_left = 0                  # payload bytes of the current chunk still to come
        self.partial = b""                   # the start of a header cut by the end of the last feed
        self.video: list[tuple[int, int, bytes]] = []         # (timestamp, length, prefix)
        self.control: list[tuple[int, int, int, bytes]] = []  # (type_id, timestamp, stream_id, payload)
        self.audio_messages = 0
        self.other_messages = 0

    @classmethod
    def from_reader_snapshot(cls, snap: dict, prefix_len: int = PREFIX_LEN) -> "ChunkTracker":
        """Go on where a `ChunkReader` stopped (its `snapshot()`): the player switches to this parser after
        `play` without losing a byte. Returns the tracker; the reader's buffered bytes are fed already."""
        tracker = cls(int(snap["chunk_size"]), prefix_len)
        for item in snap["streams"]:
            st = _Stream()
            st.type_id = int(item["type_id"])
            st.length = int(item["length"])
            st.ts_field = int(item["ts_field"])
            st.extended = bool(item["extended"])
            st.timestamp = int(item["timestamp"]) & _U32_MASK
            st.stream_id = int(item["stream_id"])
            partial = item["partial"]
            if partial is not None:
                st.left = st.length - len(partial)
                if st.type_id == MSG_VIDEO:
                    st.head = bytearray(partial[:prefix_len])
                elif st.type_id not in _SKIPPED_TYPES and st.length <= CONTROL_CAP:
                    st.body = bytearray(partial)
            tracker.streams[int(item["csid"])] = st
        buffered = snap["buffer"]
        if buffered:
            data = bytearray(buffered)
            tracker.feed(data, 0, len(data))
        return tracker

    def feed(self, buf, start: int, end: int) -> None:
        """Consume `buf[start:end]` (a bytearray, bytes or memoryview of bytes). Raises FastParseError."""
        pos = start
        if self.partial:
            pos = self._finish_partial(buf, pos, end)
        prefix_len = self.prefix_len
        while pos < end:
            left = self.chunk_left
            if left:
                st = self.current
                n = left if left <= end - pos else end - pos
                head = st.head
                if head is not None and len(head) < prefix_len:
                    head += buf[pos:pos + min(n, prefix_len - len(head))]
                elif st.body is not None:
                    st.body += buf[pos:pos + n]
                pos += n
                self.chunk_left = left - n
                st.left -= n
                if not st.left:
                    self._complete(st)
                continue
            used = self._header(buf, pos, end)
            if not used:
                self.partial = bytes(buf[pos:end])
                return
            pos += used

    def _finish_partial(self, buf, pos: int, end: int) -> int:
        """Complete a header cut by the last read with the first bytes of this one."""
        old = len(self.partial)
        combined = self.partial + bytes(buf[pos:min(end, pos + MAX_HEADER_SIZE)])
        used = self._header(combined, 0, len(combined))
        if not used:
            self.partial = combined
            return end
        self.partial = b""
        return pos + used - old

    def _header(self, buf, pos: int, end: int) -> int:
        """Parse one chunk header at `pos`: its size, or 0 (changing nothing) if it is not all here."""
        b0 = buf[pos]
        fmt = b0 >> 6
        csid = b0 & 0x3F
        p = pos + 1
        if csid < 2:
            if csid == 0:
                if end - p < 1:
                    return 0
                csid = 64 + buf[p]
                p += 1
            else:
                if end - p < 2:
                    return 0
                csid = 64 + buf[p] + (buf[p + 1] << 8)
                p += 2
        st = self.streams.get(csid)
        in_progress = st is not None and st.left > 0
        if fmt == 0:
            if end - p < 11:
                return 0
            ts_field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            type_id = buf[p + 6]
            stream_id = buf[p + 7] | (buf[p + 8] << 8) | (buf[p + 9] << 16) | (buf[p + 10] << 24)
            extended = ts_field == _EXTENDED
            p += 11
        elif fmt == 1:
            if end - p < 7:
                return 0
            ts_field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            type_id = buf[p + 6]
            stream_id = st.stream_id if st is not None else 0
            extended = ts_field == _EXTENDED
            p += 7
        elif fmt == 2:
            if end - p < 3:
                return 0
            if st is None:
                raise FastParseError(f"chunk stream {csid} starts with a type 2 header")
            ts_field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            length, type_id, stream_id = st.length, st.type_id, st.stream_id
            extended = ts_field == _EXTENDED
            p += 3
        else:
            if st is None:
                raise FastParseError(f"chunk stream {csid} starts with a type 3 header")
            ts_field, extended = st.ts_field, st.extended
            length, type_id, stream_id = st.length, st.type_id, st.stream_id
        if st is None:
            # As ChunkReader (and SRS): a chunk stream starts with type 0, except librtmp's type 1 on csid 2.
            if fmt != 0 and not (fmt == 1 and csid == _CSID_PROTOCOL_CONTROL):
                raise FastParseError(f"chunk stream {csid} starts with a type {fmt} header")
            if len(self.streams) >= MAX_CHUNK_STREAMS:
                raise FastParseError(f"more than {MAX_CHUNK_STREAMS} chunk streams")
        elif in_progress and fmt != 3:
            raise FastParseError(f"type {fmt} header in the middle of a message on chunk stream {csid}")
        if extended:
            if end - p < 4:
                return 0
            value = (buf[p] << 24) | (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
            if not in_progress:
                ts_field = value
                p += 4
            elif value == ts_field:
                p += 4  # the repeated extended timestamp of a continuation chunk (see ChunkReader)

        # The header is complete: commit.
        if st is None:
            st = self.streams[csid] = _Stream()
        self.current = st
        if in_progress:
            self.chunk_left = min(self.chunk_size, st.left)
            return p - pos
        if fmt == 0:
            st.timestamp = ts_field
        else:
            st.timestamp = (st.timestamp + ts_field) & _U32_MASK
        if fmt != 3:
            st.extended = extended
        st.ts_field = ts_field
        st.type_id = type_id
        st.length = length
        st.stream_id = stream_id
        st.left = length
        if type_id == MSG_VIDEO:
            st.head = bytearray()
        elif type_id not in _SKIPPED_TYPES and length <= CONTROL_CAP:
            st.body = bytearray()
        if not length:
            self.chunk_left = 0
            self._complete(st)
        else:
            self.chunk_left = min(self.chunk_size, length)
        return p - pos

    def _complete(self, st: _Stream) -> None:
        type_id = st.type_id
        if type_id == MSG_VIDEO:
            self.video.append((st.timestamp, st.length, bytes(st.head)))
            st.head = None
        elif type_id == MSG_AUDIO:
            self.audio_messages += 1
        elif st.body is not None:
            payload = bytes(st.body)
            st.body = None
            self.control.append((type_id, st.timestamp, st.stream_id, payload))
            if type_id == MSG_SET_CHUNK_SIZE:
                self._set_chunk_size(payload)
            elif type_id == MSG_ABORT:
                self._abort(payload)
        else:
            self.other_messages += 1

    def _set_chunk_size(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise FastParseError("short Set Chunk Size message")
        size = int.from_bytes(payload[:4], "big")
        if not 1 <= size <= 0x7FFFFFFF:
            raise FastParseError(f"Set Chunk Size {size} outside 1..2**31-1")
        self.chunk_size = min(size, _MAX_CHUNK_SIZE)

    def _abort(self, payload: bytes) -> None:
        if len(payload) < 4:
            raise FastParseError("short Abort message")
        st = self.streams.get(int.from_bytes(payload[:4], "big"))
        if st is not None and st.left:
            st.left = 0
            st.head = st.body = None


class FlvTagTracker:
    """FLV tag headers in (an HTTP-FLV body), (timestamp, length, prefix) of video tags out."""

    def __init__(self, prefix_len: int = PREFIX_LEN):
        self.prefix_len = prefix_len
        self.header_done = False
        self.partial = b""
        self.skip = 0        # bytes to step over: PreviousTagSize, header padding
        self.left = 0        # payload bytes of the current tag still to come
        self.tag_type = 0
        self.timestamp = 0
        self.length = 0
        self.head: bytearray | None = None
        self.video: list[tuple[int, int, bytes]] = []
        self.audio_messages = 0
        self.other_messages = 0

    def feed(self, buf, start: int, end: int) -> None:
        pos = start
        if self.partial:
            need = (FLV_FILE_HEADER if not self.header_done else FLV_TAG_HEADER) - len(self.partial)
            take = min(need, end - pos)
            combined = self.partial + bytes(buf[pos:pos + take])
            pos += take
            if take < need:
                self.partial = combined
                return
            self.partial = b""
            self._element(combined, 0)
        prefix_len = self.prefix_len
        while pos < end:
            if self.skip:
                n = min(self.skip, end - pos)
                self.skip -= n
                pos += n
                continue
            left = self.left
            if left:
                n = left if left <= end - pos else end - pos
                head = self.head
                if head is not None and len(head) < prefix_len:
                    head += buf[pos:pos + min(n, prefix_len - len(head))]
                pos += n
                self.left = left - n
                if not self.left:
                    self._complete()
                continue
            need = FLV_TAG_HEADER if self.header_done else FLV_FILE_HEADER
            if end - pos < need:
                self.partial = bytes(buf[pos:end])
                return
            self._element(buf, pos)
            pos += need

    def _element(self, buf, p: int) -> None:
        """The file header or a tag header, whole at buf[p:]."""
        if not self.header_done:
            if bytes(buf[p:p + 3]) != b"FLV":
                raise FastParseError(f"not an FLV stream: {bytes(buf[p:p + 3])!r}")
            offset = (buf[p + 5] << 24) | (buf[p + 6] << 16) | (buf[p + 7] << 8) | buf[p + 8]
            if not 9 <= offset <= 9 + FLV_MAX_HEADER_PADDING:
                raise FastParseError(f"FLV DataOffset {offset} outside 9..{9 + FLV_MAX_HEADER_PADDING}")
            self.header_done = True
            self.skip = offset - 9  # the 13 bytes read include PreviousTagSize0 already
            return
        tag_type = buf[p]
        if tag_type not in FLV_TAG_TYPES:
            raise FastParseError(f"bad FLV tag type 0x{tag_type:02x}")
        self.tag_type = tag_type
        self.length = (buf[p + 1] << 16) | (buf[p + 2] << 8) | buf[p + 3]
        self.timestamp = (buf[p + 4] << 16) | (buf[p + 5] << 8) | buf[p + 6] | (buf[p + 7] << 24)
        self.left = self.length
        self.head = bytearray() if tag_type == MSG_VIDEO else None
        if not self.length:
            self._complete()

    def _complete(self) -> None:
        if self.tag_type == MSG_VIDEO:
            self.video.append((self.timestamp, self.length, bytes(self.head)))
            self.head = None
        elif self.tag_type == MSG_AUDIO:
            self.audio_messages += 1
        else:
            self.other_messages += 1
        self.skip = FLV_PREV_TAG_SIZE


class ChunkedBody:
    """HTTP/1.1 chunked transfer coding: calls `sink(buf, start, end)` for each run of body bytes.

    Node-Media-Server answers HTTP-FLV with it; nonstop and SRS send a plain body until close.
    """

    def __init__(self, sink):
        self.sink = sink
        self.left = 0          # data bytes of the current chunk still to come
        self.crlf = 0          # bytes of the CRLF after a chunk's data still to skip
        self.line = b""        # a size line cut by the end of a read
        self.finished = False  # the last (zero-size) chunk was seen

    def feed(self, buf, start: int, end: int) -> None:
        pos = start
        while pos < end and not self.finished:
            if self.left:
                n = min(self.left, end - pos)
                self.sink(buf, pos, pos + n)
                pos += n
                self.left -= n
                if not self.left:
                    self.crlf = 2
                continue
            if self.crlf:
                n = min(self.crlf, end - pos)
                self.crlf -= n
                pos += n
                continue
            nl = bytes(buf[pos:min(end, pos + MAX_CHUNK_LINE)]).find(b"\n")
            if nl < 0:
                self.line += bytes(buf[pos:end])
                if len(self.line) > MAX_CHUNK_LINE:
                    raise FastParseError("HTTP chunk size line too long")
                return
            line = self.line + bytes(buf[pos:pos + nl])
            self.line = b""
            pos += nl + 1
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise FastParseError(f"bad HTTP chunk size line {line[:40]!r}") from None
            if size == 0:
                self.finished = True
            self.left = size
