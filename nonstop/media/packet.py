"""A media message as the source holds it, and the one place where messages are encoded for output.

Each message is encoded at most once per output format (RTMP chunks at one chunk size, or an FLV tag); the
resulting bytes object is shared by every player of that format (architecture decision 2, property 2).
"""

from __future__ import annotations

from nonstop.protocol import flv
from nonstop.protocol.chunk import encode_message
from nonstop.protocol.rtmp import (CSID_AUDIO, CSID_STREAM, CSID_VIDEO, MSG_AUDIO, MSG_VIDEO, PLAY_STREAM_ID)

FORMAT_FLV = "flv"


def rtmp_format(chunk_size: int) -> str:
    """The format key of RTMP output at one chunk size: players that agree on it share bytes."""
    return f"rtmp:{chunk_size}"


class Packet:
    """One audio, video or data message after timestamp correction, with its place in the source's order."""

    __slots__ = ("seq", "type_id", "timestamp", "payload", "keyframe")

    def __init__(self, seq: int, type_id: int, timestamp: int, payload: bytes, keyframe: bool = False):
        self.seq = seq
        self.type_id = type_id
        self.timestamp = timestamp
        self.payload = payload
        self.keyframe = keyframe

    def encode(self, fmt: str) -> bytes:
        return encode_packet(fmt, self.type_id, self.timestamp, self.payload)

    def snapshot(self) -> list:
        return [self.seq, self.type_id, self.timestamp, self.payload, self.keyframe]

    @classmethod
    def restore(cls, data: list) -> "Packet":
        return cls(*data)


def encode_packet(fmt: str, type_id: int, timestamp: int, payload: bytes) -> bytes:
    if fmt == FORMAT_FLV:
        return flv.encode_tag(type_id, timestamp, payload)
    chunk_size = int(fmt.partition(":")[2])
    csid = CSID_VIDEO if type_id == MSG_VIDEO else CSID_AUDIO if type_id == MSG_AUDIO else CSID_STREAM
    return encode_message(csid, type_id, timestamp, PLAY_STREAM_ID, payload, chunk_size)
