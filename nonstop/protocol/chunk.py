"""The RTMP chunk stream: ChunkReader turns bytes into whole messages, encode_message turns messages into chunks.

The reader is sans-IO and bounded: every cap below is a named constant, and garbage raises ChunkError. It
accepts everything the spec allows a peer to send (all four header formats, 1/2/3-byte basic headers,
extended timestamps) and applies Set Chunk Size and Abort itself, at the exact message boundary, so the
session never has to re-split bytes. Timestamps come out *unwrapped*: a 24/7 stream passes 2**32 ms after
49.7 days, and the reader keeps counting past it instead of jumping back to zero.

The writer side always starts a message with a full type 0 header and continues with type 3 chunks
(architecture decision 2): no per-player compression state, so one encoding serves every player.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nonstop.protocol.errors import ProtocolError

DEFAULT_CHUNK_SIZE = 128  # the spec's initial chunk size, in both directions, until Set Chunk Size

# The message length field is a u24, so no message can be longer than this; it is the default cap, and a
# deployment may lower it per reader. (nginx-rtmp's `max_message` defaults to 1 MiB, which is too small for
# 4K keyframes; SRS has no cap beyond the field.)
MAX_MESSAGE_SIZE = 0xFFFFFF

# The spec lets a peer announce any chunk size in 1..2**31-1. A chunk never carries more than the rest of
# one message, and a message is at most MAX_MESSAGE_SIZE bytes, so every chunk size above that parses the
# same as MAX_MESSAGE_SIZE: we accept the whole range and clamp it there. That also bounds what one
# incomplete chunk can hold in `buffered()`. (SRS only warns outside 128..65536; so we do not refuse either.)
MAX_CHUNK_SIZE = MAX_MESSAGE_SIZE
_MAX_ANNOUNCED_CHUNK_SIZE = 0x7FFFFFFF  # Set Chunk Size's top bit must be zero

# Bytes of incomplete messages held across all chunk streams of one connection. A publisher interleaves at
# most a video frame, an audio frame and perhaps a data message, so room for two maximal messages is
# already generous; past it, a peer is only making us hold memory.
MAX_PARTIAL_BYTES = 2 * MAX_MESSAGE_SIZE + 2

# Chunk streams with state (the previous header, maybe a partial message). FFmpeg, OBS and SRS use 2..8,
# Flash Player a few more per NetStream; each one costs us a small object, and an attacker could otherwise
# create 65598 of them.
MAX_CHUNK_STREAMS = 64

# The smallest chunk size a reader may be told to use, by default: the spec's 1. A server session raises it
# (rtmp.py: MIN_PEER_CHUNK_SIZE), because every chunk costs a header parse, and 1-byte chunks make a peer's
# bytes cost ~15 times the work of the same bytes in 128-byte chunks.
MIN_CHUNK_SIZE = 1

# The longest chunk header: 3-byte basic header + 11-byte type 0 message header + 4-byte extended timestamp.
MAX_HEADER_SIZE = 3 + 11 + 4

_MESSAGE_HEADER_SIZES = (11, 7, 3, 0)  # by header format (fmt) 0..3
_EXTENDED = 0xFFFFFF  # a timestamp (delta) field with this value means "the real value follows in 4 bytes"
_U32 = 1 << 32
_U32_MASK = _U32 - 1
_HALF_U32 = 1 << 31  # a step of more than this, either way, is read as crossing the 32-bit wrap

# Basic header chunk stream ids: 0 and 1 are markers for the 2- and 3-byte forms, 2..63 fit in one byte.
_CSID_TWO_BYTE_MARKER = 0
_CSID_THREE_BYTE_MARKER = 1
_CSID_ONE_BYTE_MAX = 63
_CSID_LONG_FORM_BASE = 64  # the 2- and 3-byte forms carry csid - 64
_CSID_TWO_BYTE_MAX = _CSID_LONG_FORM_BASE + 0xFF
MIN_CSID = 2
MAX_CSID = _CSID_LONG_FORM_BASE + 0xFFFF  # 65599
_CSID_PROTOCOL_CONTROL = 2

MSG_SET_CHUNK_SIZE = 1
MSG_ABORT = 2


class ChunkError(ProtocolError):
    """The peer's chunk stream is malformed or exceeds one of the caps."""


@dataclass(slots=True)
class Message:
    """One reassembled RTMP message."""

    csid: int
    type_id: int
    timestamp: int  # absolute, in ms, unwrapped: can exceed 2**32 on a stream older than 49.7 days
    stream_id: int
    payload: bytes


def unwrap_timestamp(reference: int, wire: int) -> int:
    """The 64-bit timestamp whose low 32 bits are `wire` and that lies closest to `reference`.

    So a wire timestamp that drops by more than 2**31 has wrapped forward, and one that rises by more than
    2**31 right after a wrap is a late message from before it. Never negative.
    """
    candidate = reference - (reference & _U32_MASK) + wire
    if candidate + _HALF_U32 < reference:
        candidate += _U32
    elif candidate > reference + _HALF_U32 and candidate >= _U32:
        candidate -= _U32
    return candidate


class _ChunkStream:
    """What one chunk stream id remembers: the last header's fields and the message being assembled."""

    __slots__ = ("type_id", "stream_id", "length", "ts_field", "extended", "timestamp", "partial")

    def __init__(self):
        self.type_id = 0
        self.stream_id = 0
        self.length = 0
        # The last timestamp or delta field as a 32-bit value (the extended one when `extended`): a type 3
        # header that starts a new message reuses it as its delta.
        self.ts_field = 0
        self.extended = False  # the last type 0/1/2 header used the extended timestamp field
        self.timestamp = 0  # unwrapped timestamp of the current (or last) message
        self.partial: bytearray | None = None  # payload so far of an incomplete message


class ChunkReader:
    """Bytes in, complete messages out, for one connection's incoming direction."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE, max_message_size: int = MAX_MESSAGE_SIZE,
                 max_partial_bytes: int = MAX_PARTIAL_BYTES, max_chunk_streams: int = MAX_CHUNK_STREAMS,
                 min_chunk_size: int = MIN_CHUNK_SIZE):
        # Set Chunk Size below this is refused (ChunkError); the initial chunk_size is the caller's choice.
        self.min_chunk_size = min_chunk_size
        self.chunk_size = chunk_size
        self.max_message_size = max_message_size
        self.max_partial_bytes = max_partial_bytes
        self.max_chunk_streams = max_chunk_streams
        self.bytes_received = 0  # everything ever fed, for Acknowledgement messages
        self.failed = False
        # True when the last feed() stopped at its chunk budget: complete chunks may wait in the buffer, and
        # feed(b"") parses on (the shell calls it on a later turn of its loop).
        self.input_pending = False
        self._buffer = bytearray()  # unparsed: the start of an incomplete chunk (more when input_pending)
        self._streams: dict[int, _ChunkStream] = {}
        self._partial_bytes = 0
        # The timestamp of the latest message on any chunk stream: a chunk stream's first type 0 header is
        # unwrapped against it, so a data message on a fresh chunk stream of a 50-day-old stream lands
        # after 2**32 like the audio and video around it.
        self._last_timestamp: int | None = None

    @property
    def chunk_size(self) -> int:
        return self._chunk_size

    @chunk_size.setter
    def chunk_size(self, size: int) -> None:
        """Set by the reader itself on Set Chunk Size, or by the session; clamped (see MAX_CHUNK_SIZE)."""
        if not self.min_chunk_size <= size <= _MAX_ANNOUNCED_CHUNK_SIZE:
            raise ChunkError(f"chunk size {size} outside {self.min_chunk_size}..{_MAX_ANNOUNCED_CHUNK_SIZE}")
        self._chunk_size = min(size, MAX_CHUNK_SIZE)

    @property
    def partial_bytes(self) -> int:
        """Payload bytes held for incomplete messages, across all chunk streams."""
        return self._partial_bytes

    def buffered(self) -> bytes:
        """Bytes received but not yet parsed: the start of an incomplete chunk (at most MAX_HEADER_SIZE +
        chunk_size), plus, when `input_pending`, the complete chunks the last feed's budget left unparsed."""
        return bytes(self._buffer)

    def feed(self, data, max_chunks: int | None = None) -> list[Message]:
        """Parse `data` (any split of the stream) and return the messages it completes, in order.

        Set Chunk Size (type 1) and Abort (type 2) are applied as soon as they complete, before the next
        chunk is parsed, and are still returned. Raises ChunkError on malformed input or an exceeded cap;
        the reader then stays failed.

        `max_chunks` bounds the work of one call: after that many chunks the rest of the bytes is kept, unparsed,
        `input_pending` turns true, and a later `feed(b"")` goes on where this one stopped. A peer's bytes then
        never hold the caller's event loop for longer than a budget's worth of chunks.
        """
        if self.failed:
            raise ChunkError("chunk reader already failed")
        self.bytes_received += len(data)
        if self._buffer:
            self._buffer += data
            buf = self._buffer
        else:
            buf = data
        messages: list[Message] = []
        pos = 0
        budget = -1 if max_chunks is None else max_chunks
        self.input_pending = False
        try:
            while True:
                if budget == 0:
                    self.input_pending = pos < len(buf)
                    break
                used = self._parse_chunk(buf, pos, messages)
                if not used:
                    break
                pos += used
                budget -= 1
        except ChunkError:
            self.failed = True
            raise
        if buf is self._buffer:
            del self._buffer[:pos]
        else:
            self._buffer = bytearray(buf[pos:])
        return messages

    def _parse_chunk(self, buf, pos: int, messages: list[Message]) -> int:
        """Consume one chunk at `pos` if it is complete and return its size, else return 0 and change nothing.

        All checks that only need the header happen before waiting for the payload, so a bad header fails
        at once instead of after the peer had us buffer a chunk's worth of bytes.
        """
        end = len(buf)
        if pos >= end:
            return 0
        first = buf[pos]
        fmt = first >> 6
        csid = first & 0x3F
        p = pos + 1
        if csid == _CSID_TWO_BYTE_MARKER:
            if end - p < 1:
                return 0
            csid = _CSID_LONG_FORM_BASE + buf[p]
            p += 1
        elif csid == _CSID_THREE_BYTE_MARKER:
            if end - p < 2:
                return 0
            csid = _CSID_LONG_FORM_BASE + buf[p] + (buf[p + 1] << 8)
            p += 2
        header_size = _MESSAGE_HEADER_SIZES[fmt]
        if end - p < header_size:
            return 0

        state = self._streams.get(csid)
        if state is None:
            # The spec: a chunk stream starts with a type 0 header. Exception, as in SRS: librtmp sends its
            # first protocol control messages on chunk stream 2 with a type 1 header.
            if fmt != 0 and not (fmt == 1 and csid == _CSID_PROTOCOL_CONTROL):
                raise ChunkError(f"chunk stream {csid} starts with a type {fmt} header")
            if len(self._streams) >= self.max_chunk_streams:
                raise ChunkError(f"more than {self.max_chunk_streams} chunk streams")
        in_progress = state is not None and state.partial is not None
        if in_progress and fmt != 3:
            # The spec sends every chunk after a message's first with a type 3 header; SRS also refuses a
            # type 0 here. We refuse types 1 and 2 too rather than guess which message they belong to.
            raise ChunkError(f"type {fmt} header in the middle of a message on chunk stream {csid}")

        if fmt == 3:
            extended = state.extended
            ts_field = state.ts_field
        else:
            ts_field = (buf[p] << 16) | (buf[p + 1] << 8) | buf[p + 2]
            extended = ts_field == _EXTENDED
        if fmt <= 1:
            length = (buf[p + 3] << 16) | (buf[p + 4] << 8) | buf[p + 5]
            type_id = buf[p + 6]
        else:
            length = state.length
            type_id = state.type_id
        stream_id = struct.unpack_from("<I", buf, p + 7)[0] if fmt == 0 else (state.stream_id if state else 0)
        p += header_size

        if extended:
            if end - p < 4:
                return 0
            value = struct.unpack_from(">I", buf, p)[0]
            if not in_progress:
                ts_field = value
                p += 4
            elif value == ts_field:
                # A type 3 chunk continuing a message whose header used the extended field. FFmpeg, librtmp
                # and SRS repeat the extended timestamp there, as the 2012 spec says; some old encoders
                # (FMLE, per SRS's comments) do not. Like SRS, take the 4 bytes as the repeat only when they
                # equal the message's value, otherwise as payload. The cost: a chunk from a non-repeating
                # peer whose first 4 payload bytes happen to equal the timestamp is misread (odds 2**-32).
                p += 4

        if in_progress:
            remaining = state.length - len(state.partial)
        else:
            if length > self.max_message_size:
                raise ChunkError(f"message of {length} bytes on chunk stream {csid} exceeds "
                                 f"{self.max_message_size}")
            remaining = length
        size = min(self._chunk_size, remaining)
        if size < remaining and self._partial_bytes + size > self.max_partial_bytes:
            raise ChunkError(f"more than {self.max_partial_bytes} bytes of incomplete messages")
        if end - p < size:
            return 0

        # The whole chunk is here: commit.
        if state is None:
            state = self._streams[csid] = _ChunkStream()
            # A fresh type 1 header (librtmp, above) has only a delta: SRS counts it from 0, so do we.
            reference = self._last_timestamp if fmt == 0 else 0
        else:
            reference = state.timestamp
        if not in_progress:
            if fmt == 0:
                state.timestamp = ts_field if reference is None else unwrap_timestamp(reference, ts_field)
            else:
                # Deltas are unsigned, but a "negative" one (u32 near 2**32) from a sloppy encoder is read
                # the same way as an absolute timestamp that went back a little.
                base = reference or 0
                state.timestamp = unwrap_timestamp(base, (base + ts_field) & _U32_MASK)
            if fmt != 3:
                state.extended = extended
            state.ts_field = ts_field
            state.type_id = type_id
            state.length = length
            state.stream_id = stream_id
            self._last_timestamp = state.timestamp
        chunk = buf[p:p + size]
        p += size

        if not in_progress and size == length:
            payload = bytes(chunk)
        else:
            if in_progress:
                state.partial += chunk
            else:
                state.partial = bytearray(chunk)
            self._partial_bytes += size
            if len(state.partial) < state.length:
                return p - pos
            payload = bytes(state.partial)
            self._partial_bytes -= len(payload)
            state.partial = None
        message = Message(csid, state.type_id, state.timestamp, state.stream_id, payload)
        messages.append(message)
        if message.type_id == MSG_SET_CHUNK_SIZE:
            self._apply_set_chunk_size(payload)
        elif message.type_id == MSG_ABORT:
            self.abort(self._control_u32(payload, "Abort"))
        return p - pos

    @staticmethod
    def _control_u32(payload: bytes, name: str) -> int:
        if len(payload) < 4:
            raise ChunkError(f"{name} message of {len(payload)} bytes, needs 4")
        return struct.unpack_from(">I", payload)[0]

    def _apply_set_chunk_size(self, payload: bytes) -> None:
        size = self._control_u32(payload, "Set Chunk Size")
        if not self.min_chunk_size <= size <= _MAX_ANNOUNCED_CHUNK_SIZE:
            raise ChunkError(f"Set Chunk Size {size} outside {self.min_chunk_size}..{_MAX_ANNOUNCED_CHUNK_SIZE}")
        self.chunk_size = size

    def abort(self, csid: int) -> None:
        """Abort Message: drop the partial message on that chunk stream (a no-op if there is none)."""
        state = self._streams.get(csid)
        if state is not None and state.partial is not None:
            self._partial_bytes -= len(state.partial)
            state.partial = None

    # ----- handover -------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Plain state: per-chunk-stream header state, partial payloads and buffered bytes."""
        return {
            "chunk_size": self._chunk_size,
            "max_message_size": self.max_message_size,
            "max_partial_bytes": self.max_partial_bytes,
            "max_chunk_streams": self.max_chunk_streams,
            "min_chunk_size": self.min_chunk_size,
            "input_pending": self.input_pending,
            "bytes_received": self.bytes_received,
            "failed": self.failed,
            "buffer": bytes(self._buffer),
            "last_timestamp": self._last_timestamp,
            "streams": [
                {"csid": csid, "type_id": s.type_id, "stream_id": s.stream_id, "length": s.length,
                 "ts_field": s.ts_field, "extended": s.extended, "timestamp": s.timestamp,
                 "partial": None if s.partial is None else bytes(s.partial)}
                for csid, s in self._streams.items()
            ],
        }

    @classmethod
    def restore(cls, d: dict) -> "ChunkReader":
        """Rebuild from `snapshot()`; raises ChunkError if the snapshot is malformed."""
        try:
            # min_chunk_size and input_pending are newer than the snapshot format: absent from an older build's.
            reader = cls(int(d["chunk_size"]), int(d["max_message_size"]), int(d["max_partial_bytes"]),
                         int(d["max_chunk_streams"]), int(d.get("min_chunk_size", MIN_CHUNK_SIZE)))
            reader.input_pending = bool(d.get("input_pending", False))
            reader.bytes_received = int(d["bytes_received"])
            reader.failed = bool(d["failed"])
            reader._buffer = bytearray(d["buffer"])
            last = d["last_timestamp"]
            reader._last_timestamp = None if last is None else int(last)
            for item in d["streams"]:
                state = _ChunkStream()
                state.type_id = int(item["type_id"])
                state.stream_id = int(item["stream_id"])
                state.length = int(item["length"])
                state.ts_field = int(item["ts_field"])
                state.extended = bool(item["extended"])
                state.timestamp = int(item["timestamp"])
                if item["partial"] is not None:
                    state.partial = bytearray(item["partial"])
                    if len(state.partial) >= state.length:
                        raise ChunkError("bad chunk reader snapshot: complete message held as partial")
                    reader._partial_bytes += len(state.partial)
                reader._streams[int(item["csid"])] = state
        except (KeyError, TypeError, ValueError) as e:
            raise ChunkError(f"bad chunk reader snapshot: {e!r}") from e
        return reader


# ----- writing ----------------------------------------------------------------------------------------------

def _basic_header(fmt: int, csid: int) -> bytes:
    if MIN_CSID <= csid <= _CSID_ONE_BYTE_MAX:
        return bytes([fmt << 6 | csid])
    if csid <= _CSID_TWO_BYTE_MAX:
        return bytes([fmt << 6 | _CSID_TWO_BYTE_MARKER, csid - _CSID_LONG_FORM_BASE])
    if csid <= MAX_CSID:
        rest = csid - _CSID_LONG_FORM_BASE
        return bytes([fmt << 6 | _CSID_THREE_BYTE_MARKER, rest & 0xFF, rest >> 8])  # little-endian
    raise ValueError(f"chunk stream id {csid} outside {MIN_CSID}..{MAX_CSID}")


def encode_message(csid: int, type_id: int, timestamp: int, stream_id: int, payload: bytes,
                   chunk_size: int) -> bytes:
    """One message as chunks: a type 0 header, then type 3 chunks every `chunk_size` payload bytes.

    The timestamp is sent modulo 2**32 (the reader on the other side unwraps it). From 0xFFFFFF up it goes in
    the extended field, which is repeated on every type 3 chunk of the message, as FFmpeg, librtmp and SRS
    expect. Raises ValueError for arguments no peer could decode (our bug, not the peer's).
    """
    if not 1 <= chunk_size <= _MAX_ANNOUNCED_CHUNK_SIZE:
        raise ValueError(f"chunk size {chunk_size} outside 1..{_MAX_ANNOUNCED_CHUNK_SIZE}")
    length = len(payload)
    if length > MAX_MESSAGE_SIZE:
        raise ValueError(f"payload of {length} bytes does not fit the u24 length field")
    if not 0 <= type_id <= 0xFF or not 0 <= stream_id <= _U32_MASK:
        raise ValueError(f"type id {type_id} or stream id {stream_id} out of range")
    ts = timestamp & _U32_MASK
    extended = ts >= _EXTENDED
    ext = struct.pack(">I", ts) if extended else b""
    header = (_basic_header(0, csid)
              + struct.pack(">I", _EXTENDED if extended else ts)[1:]
              + struct.pack(">I", length)[1:]
              + struct.pack("<BI", type_id, stream_id) + ext)
    if length <= chunk_size:
        return header + bytes(payload)
    view = memoryview(payload)
    continuation = _basic_header(3, csid) + ext
    parts = [header, view[:chunk_size]]
    for offset in range(chunk_size, length, chunk_size):
        parts.append(continuation)
        parts.append(view[offset:offset + chunk_size])
    return b"".join(parts)


class ChunkWriter:
    """The chunk size one connection uses for the session's own control and command messages."""

    def __init__(self, chunk_size: int = DEFAULT_CHUNK_SIZE):
        self.chunk_size = chunk_size

    def encode(self, csid: int, type_id: int, timestamp: int, stream_id: int, payload: bytes) -> bytes:
        return encode_message(csid, type_id, timestamp, stream_id, payload, self.chunk_size)

    def snapshot(self) -> dict:
        return {"chunk_size": self.chunk_size}

    @classmethod
    def restore(cls, d: dict) -> "ChunkWriter":
        try:
            return cls(int(d["chunk_size"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ChunkError(f"bad chunk writer snapshot: {e!r}") from e
