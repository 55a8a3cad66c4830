"""Resync: joins what a new upstream session sends onto an edge source's log, so the edge's players notice
as little as possible when the upstream changes (reconnect, failover, redirect, a handover re-establishing
the pull).

An origin answers a new play with its metadata, its sequence headers and its GOP cache (from the latest
keyframe). Three cases, told apart by the bytes alone (media payloads cross an edge unchanged):
- **Same stream, overlapping**: the origin's keyframe is in our log. The messages we already have are
  skipped one by one; the first new one continues the timeline exactly (`jitter.last_in` is set to the last
  skipped message's upstream time). Players see no repeat and no jump.
- **Same headers, no overlap** (we fell behind, or a new publisher with identical encoder settings): the
  headers are skipped and the new keyframe starts a new GOP, a +10 ms step on the timeline (time_jitter).
- **Different stream**: its sequence headers go out inline, then its keyframe.
Until a keyframe arrives, video inter frames are dropped: they would decode against the wrong reference.
The old GOP is dropped at a discontinuity, so a player that joins in between is not given stale frames.

Plain state (four attributes), driven by `admit()`; no I/O.
"""

from __future__ import annotations

from nonstop.protocol import amf0, flv
from nonstop.protocol.rtmp import MSG_AUDIO, MSG_DATA_AMF0, MSG_VIDEO

IDLE = "idle"      # pass everything
SEEK = "seek"      # a new upstream: look for our log's continuation, drop what cannot be decoded yet
WALK = "walk"      # aligned on our log: skip what we already have
GATE = "gate"      # a discontinuity: pass headers and audio, drop video until a keyframe

PASS = True
SKIP = False

# Metadata keys that differ between servers relaying the same stream; they do not make it another stream.
VOLATILE_METADATA = ("duration", "server", "server_version")


class Resync:
    __slots__ = ("mode", "cursor", "last_in", "skipped")

    def __init__(self):
        self.mode = IDLE
        self.cursor = 0       # WALK: the seq of the next log message to compare with
        self.last_in = None   # WALK: the upstream timestamp of the last message skipped
        self.skipped = 0      # messages skipped since begin(), for the log

    def begin(self) -> None:
        """A new upstream session (or the origin's publisher changed): the next messages may repeat ours."""
        self.mode = SEEK
        self.cursor = 0
        self.last_in = None
        self.skipped = 0

    def admit(self, source, type_id: int, timestamp: int, payload: bytes) -> bool:
        """PASS (give the message to `source.on_media`) or SKIP it; may reset the source's GOP and timeline."""
        if self.mode == IDLE:
            return PASS
        verdict = self._admit(source, type_id, timestamp, payload)
        if verdict is SKIP:
            self.skipped += 1
        return verdict

    def _admit(self, source, type_id: int, timestamp: int, payload: bytes) -> bool:
        if type_id == MSG_DATA_AMF0:
            return SKIP if self.mode != GATE and same_metadata(source, payload) else PASS
        if type_id == MSG_VIDEO and flv.is_video_sequence_header(payload) or \
                type_id == MSG_AUDIO and flv.is_audio_sequence_header(payload):
            # Compared with the cached header of the same tracks (E-RTMP multitrack keeps one per track).
            return self._header(source, source.cached_header(type_id, payload), payload)
        keyframe = type_id == MSG_VIDEO and flv.is_video_keyframe(payload)
        if self.mode == GATE:
            if keyframe:
                self.mode = IDLE
                return PASS
            return SKIP if type_id == MSG_VIDEO else PASS
        if self.mode == WALK:
            return self._walk(source, type_id, timestamp, payload, keyframe)
        # SEEK: only a keyframe (or, without video, any frame) can be found in our log and continue it.
        if keyframe or not has_video(source):
            seq = find_in_log(source, type_id, payload)
            if seq:
                self.mode, self.cursor, self.last_in = WALK, seq + 1, timestamp
                return SKIP
            discontinuity(source)
            self.mode = IDLE if keyframe else GATE
            return PASS
        return SKIP     # an inter frame before any keyframe cannot be decoded

    def _header(self, source, current, payload: bytes) -> bool:
        if self.mode != GATE and current is not None and current.payload == payload:
            return SKIP
        if self.mode != GATE:
            discontinuity(source)
            self.mode = GATE
        return PASS

    def _walk(self, source, type_id: int, timestamp: int, payload: bytes, keyframe: bool) -> bool:
        packet = next_frame(source, self.cursor)
        if packet is None:
            # Past the end of what we have: continue the timeline from the last message we skipped.
            source.continue_input_timeline(self.last_in)
            self.mode = IDLE
            return PASS
        if packet.type_id == type_id and packet.payload == payload:
            self.cursor, self.last_in = packet.seq + 1, timestamp
            return SKIP
        # The upstream diverged from our log: start over at its next keyframe.
        discontinuity(source)
        if keyframe:
            self.mode = IDLE
            return PASS
        self.mode = GATE
        return SKIP if type_id == MSG_VIDEO else PASS

    def snapshot(self) -> dict:
        return {"mode": self.mode, "cursor": self.cursor, "last_in": self.last_in, "skipped": self.skipped}

    @classmethod
    def restore(cls, snap: dict) -> "Resync":
        self = cls()
        self.mode, self.cursor, self.last_in, self.skipped = \
            snap["mode"], snap["cursor"], snap["last_in"], snap["skipped"]
        return self


def is_frame(packet) -> bool:
    if packet.type_id == MSG_VIDEO:
        return not flv.is_video_sequence_header(packet.payload)
    if packet.type_id == MSG_AUDIO:
        return not flv.is_audio_sequence_header(packet.payload)
    return False


def has_video(source) -> bool:
    return source.video_sh is not None or source.info.video_codec is not None


def find_in_log(source, type_id: int, payload: bytes) -> int:
    """The seq of the newest frame in the source's log with these bytes, or 0."""
    for packet in reversed(source.packets):
        if packet.type_id == type_id and packet.payload == payload and is_frame(packet):
            return packet.seq
    return 0


def next_frame(source, seq: int):
    """The first audio or video frame in the log at or after `seq`, or None past the end."""
    index = max(seq - source.base_seq, 0)
    packets = source.packets
    while index < len(packets):
        if is_frame(packets[index]):
            return packets[index]
        index += 1
    return None


def discontinuity(source) -> None:
    """What comes next does not continue the log (Source.discontinuity)."""
    source.discontinuity()


def forget_stream(source) -> None:
    """The stream's header state and GOP go, the players are not told (Source.forget_stream)."""
    source.forget_stream()


def same_metadata(source, payload: bytes) -> bool:
    """Whether an `onMetaData` (or `@setDataFrame`) message says what the source's metadata says, apart
    from keys each relaying server rewrites."""
    if source.metadata is None:
        return False
    theirs, ours = _metadata_of(payload), _metadata_of(source.metadata.payload)
    return theirs is not None and theirs == ours


def _metadata_of(payload: bytes) -> dict | None:
    try:
        meta = amf0.metadata_object(amf0.decode_data_message(payload))
    except amf0.DecodeError:
        return None
    if meta is None:
        return None
    return {k: v for k, v in meta.items() if k not in VOLATILE_METADATA}
