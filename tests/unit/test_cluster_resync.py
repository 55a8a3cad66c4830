"""What an edge's players see when its upstream changes: no repeat, no jump when the new session overlaps
what they have; otherwise the new sequence headers and a keyframe, with nothing in between that decodes
wrongly, and a timeline that goes on."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.cluster.resync import GATE, IDLE, PASS, Resync
from nonstop.media.source import Source
from nonstop.protocol import amf0, flv
from nonstop.protocol.rtmp import MSG_AUDIO, MSG_DATA_AMF0, MSG_VIDEO

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0, 0x01, 0x64, 0x00, 0x1F, 0xFF, 0xE1, 0x00, 0x04, 0x67, 0x64, 0x00, 0x1F,
                    0x01, 0x00, 0x04, 0x68, 0xEB, 0xEC, 0xB2])
OTHER_AVC_HEADER = AVC_HEADER[:-1] + b"\xB3"
AAC_HEADER = b"\xaf\x00\x12\x10"
VIDEO_MS, AUDIO_MS = 40, 23


def stream(frames: int, gop: int, start_ts: int = 0, tag: bytes = b"") -> list[tuple[int, int, bytes]]:
    """A publisher's messages after its headers: video every 40 ms (keyframe every `gop`), AAC in between.
    Every payload is distinct."""
    out = []
    for i in range(frames):
        ts = start_ts + i * VIDEO_MS
        kind = 0x17 if i % gop == 0 else 0x27
        out.append((MSG_VIDEO, ts, bytes([kind, 0x01, 0, 0, 0]) + tag + struct.pack(">I", i)))
        out.append((MSG_AUDIO, ts + AUDIO_MS // 2, b"\xaf\x01" + tag + struct.pack(">I", i)))
    return out


def headers() -> list[tuple[int, int, bytes]]:
    return [(MSG_VIDEO, 0, AVC_HEADER), (MSG_AUDIO, 0, AAC_HEADER)]


def origin_play(messages, upto: int) -> list:
    """What an origin sends a new player when it has received messages[:upto]: headers, then its GOP."""
    keyframes = [i for i in range(upto) if messages[i][0] == MSG_VIDEO and flv.is_video_keyframe(messages[i][2])]
    start = keyframes[-1] if keyframes else upto
    return headers() + messages[start:upto]


class Edge:
    """An edge source fed through Resync, recording what it let through, with the time it got."""

    def __init__(self):
        self.source = Source("v/live/s", "v", "live", "s")
        self.resync = Resync()
        self.out: list[tuple[int, int, bytes]] = []

    def session(self, messages) -> None:
        self.resync.begin()
        self.feed(messages)

    def feed(self, messages) -> None:
        for type_id, ts, payload in messages:
            if self.resync.admit(self.source, type_id, ts, payload) is PASS:
                self.source.on_media(type_id, ts, payload, 0.0)
                if type_id != MSG_DATA_AMF0:
                    packet = self.source.packets[-1]
                    self.out.append((packet.type_id, packet.timestamp, packet.payload))

    def frames(self) -> list[bytes]:
        return [p for t, _, p in self.out if not flv.is_video_sequence_header(p)
                and not flv.is_audio_sequence_header(p)]


def test_reconnect_to_the_same_stream_skips_what_players_have_and_keeps_the_time_exact():
    messages = stream(100, 25)
    edge = Edge()
    edge.session(headers() + messages[:130])
    edge.session(origin_play(messages, 150) + messages[150:])
    assert edge.frames() == [p for _, _, p in messages]
    stamps = [ts for _, ts, p in edge.out if p in edge.frames()]
    assert stamps == [ts - messages[0][1] for _, ts, _ in messages]   # one timeline, no step anywhere


def test_a_new_publisher_with_the_same_headers_starts_at_its_keyframe_with_a_small_step():
    old, new = stream(60, 25, tag=b"old"), stream(60, 25, start_ts=0, tag=b"new")
    edge = Edge()
    edge.session(headers() + old[:70])
    last_ts = edge.out[-1][1]
    edge.session(headers() + new[10:])     # the origin's GOP starts mid-stream: inter frames before a keyframe
    passed = edge.out[len(headers()) + 70:]
    assert not any(flv.is_video_sequence_header(p) or flv.is_audio_sequence_header(p) for _, _, p in passed)
    first_video = next(p for t, _, p in passed if t == MSG_VIDEO)
    assert flv.is_video_keyframe(first_video)
    assert passed[0][1] == last_ts + 10                         # time_jitter's step, never backwards
    gop_start = edge.source.packets[edge.source.gop_start_seq - edge.source.base_seq].payload
    assert flv.is_video_keyframe(gop_start) and b"new" in gop_start


def test_a_different_stream_sends_its_headers_inline_then_its_keyframe_and_drops_the_old_gop():
    old, new = stream(40, 25, tag=b"old"), stream(40, 10, start_ts=0, tag=b"new")
    edge = Edge()
    edge.session(headers() + old[:60])
    edge.resync.begin()
    edge.feed([(MSG_VIDEO, 0, OTHER_AVC_HEADER)])
    assert edge.source.gop_start_seq == 0       # a player joining now is not given the old GOP
    assert edge.resync.mode == GATE
    edge.feed([(MSG_AUDIO, 0, AAC_HEADER)] + new[1:6] + new[20:])
    passed = edge.out[len(headers()) + 60:]
    assert passed[0][2] == OTHER_AVC_HEADER and passed[1][2] == AAC_HEADER
    videos = [p for t, _, p in passed[2:] if t == MSG_VIDEO]
    assert flv.is_video_keyframe(videos[0]) and videos[0] == new[20][2]
    assert edge.resync.mode == IDLE


def test_unchanged_metadata_is_not_sent_again_but_new_metadata_is():
    edge = Edge()
    meta = amf0.encode("@setDataFrame", "onMetaData", amf0.EcmaArray({"width": 320.0, "duration": 0.0}))
    edge.session([(MSG_DATA_AMF0, 0, meta)] + headers() + stream(10, 5))
    count = edge.source.next_seq
    same = amf0.encode("onMetaData", amf0.EcmaArray({"width": 320.0, "server": "other/1.0"}))
    edge.resync.begin()
    edge.feed([(MSG_DATA_AMF0, 0, same)])
    assert edge.source.next_seq == count
    edge.feed([(MSG_DATA_AMF0, 0, amf0.encode("onMetaData", amf0.EcmaArray({"width": 640.0})))])
    assert edge.source.next_seq == count + 1


def test_an_audio_only_stream_aligns_on_audio_frames():
    messages = [(MSG_AUDIO, 23 * i, b"\xaf\x01" + struct.pack(">I", i)) for i in range(80)]
    edge = Edge()
    edge.session([(MSG_AUDIO, 0, AAC_HEADER)] + messages[:50])
    edge.session([(MSG_AUDIO, 0, AAC_HEADER)] + messages[40:])
    assert edge.frames() == [p for _, _, p in messages]


def test_resync_state_survives_a_snapshot():
    messages = stream(40, 25)
    edge = Edge()
    edge.session(headers() + messages[:60])
    edge.resync.begin()
    edge.feed(origin_play(messages, 70)[:5])
    edge.resync = Resync.restore(edge.resync.snapshot())
    edge.feed(origin_play(messages, 70)[5:] + messages[70:])
    assert edge.frames() == [p for _, _, p in messages]


@settings(max_examples=300, deadline=None)
@given(st.integers(2, 30), st.integers(1, 160), st.integers(0, 40), st.integers(0, 30))
def test_after_any_reconnect_players_get_no_repeat_and_nothing_undecodable(gop, received, lost, more):
    """The edge got `received` messages, the origin `lost` more before the edge reconnected, then `more`."""
    messages = stream(80, gop)
    received = min(received, len(messages))
    at_origin = min(received + lost, len(messages))
    edge = Edge()
    edge.session(headers() + messages[:received])
    before = len(edge.out)
    edge.session(origin_play(messages, at_origin) + messages[at_origin:at_origin + more])
    frames = edge.frames()
    assert len(frames) == len(set(frames))                          # no repeat
    after = edge.out[before:]
    stamps = [ts for _, ts, _ in edge.out]
    assert stamps == sorted(stamps)                                 # the timeline never goes back
    if not after:
        return
    assert not any(flv.is_video_sequence_header(p) for _, _, p in after)    # same headers: not resent
    original = {p: ts for _, ts, p in messages}
    step = after[0][1] - edge.out[before - 1][1]
    origin_gop = len(origin_play(messages, at_origin)) - len(headers())
    if at_origin - origin_gop < received:
        # The origin's GOP starts inside what the edge has: continued exactly, the step is the publisher's own.
        assert after[0][2] == messages[received][2]
        assert step == original[after[0][2]] - original[edge.out[before - 1][2]]
    else:
        first_video = next((p for t, _, p in after if t == MSG_VIDEO), None)
        assert first_video is None or flv.is_video_keyframe(first_video)
        assert step == 10
