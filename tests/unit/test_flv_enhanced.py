"""Enhanced RTMP (veovera enhanced-rtmp v1/v2): the video and audio headers, keyframes and sequence headers
for every codec and for multitrack, the codec details read from sequence headers, the Source's use of them,
and the E-RTMP answer to `connect`.

The byte vectors are built here from the spec's bit layout; the sequence headers are real ones written by
ffmpeg 9 (libx265, libaom-av1, libvpx-vp9, flac, libopus), cut to their parameter sets.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.media.consumer import Consumer
from nonstop.media.packet import FORMAT_FLV, rtmp_format
from nonstop.media.source import Source
from nonstop.protocol import amf0, flv, rtmp
from nonstop.protocol.chunk import ChunkReader
from nonstop.protocol.flv import FlvError
from tests.unit.test_media import AAC_HEADER, AVC_HEADER, FakeSink
from tests.unit.test_rtmp_session import pump


# ----- builders, from the spec's bitstream description ----------------------------------------------------
def ex_video(frame_type: int, packet_type: int, fourcc: bytes = b"hvc1", body: bytes = b"") -> bytes:
    return bytes([0x80 | frame_type << 4 | packet_type]) + fourcc + body


def modex(packet_type: int, data: bytes, modex_type: int = 0) -> bytes:
    """A ModEx block (1..256 bytes of data use the 8-bit size, more the 16-bit one) then the packet type."""
    size = len(data) - 1
    head = bytes([size]) if size < 255 else bytes([255]) + (size).to_bytes(2, "big")
    return head + data + bytes([modex_type << 4 | packet_type])


def multitrack(frame_type: int, packet_type: int, mt_type: int, tracks, fourcc: bytes = b"hvc1",
               audio: bool = False) -> bytes:
    """A multitrack message: tracks is [(track_id, body)] or, for ManyTracksManyCodecs, [(id, fourcc, body)]."""
    first = bytes([0x95]) if audio else bytes([0x80 | frame_type << 4 | 6])
    out = first + bytes([mt_type << 4 | packet_type])
    if mt_type != 2:
        out += fourcc
    for track in tracks:
        if mt_type == 2:
            track_id, track_fourcc, body = track
            out += track_fourcc
        else:
            track_id, body = track
        out += bytes([track_id])
        if mt_type != 0:
            out += len(body).to_bytes(3, "big")
        out += body
    return out


def ex_audio(packet_type: int, fourcc: bytes, body: bytes = b"") -> bytes:
    return bytes([0x90 | packet_type]) + fourcc + body


# Real configuration records (ffmpeg 9).
HEVC_RECORD_720P_MAIN10 = bytes.fromhex(
    "0102200000009000000000005df000fcfdfafa00000f03200001001840010c01ffff02200000030090000003000003005d959409"
    "210001002b42010102200000030090000003000003005da00280802d136595952930bc05a0200000030020000003014122000100"
    "064401c073c189")
AV1_RECORD_640X360 = bytes.fromhex("81010c000a0b0000000cc4ff6736be4010")
VP9_RECORD = bytes.fromhex("010000000015820202020000")
OPUS_HEAD = b"OpusHead\x01\x02\x38\x01\x80\xbb\x00\x00\x00\x00\x00"
FLAC_STREAMINFO = bytes.fromhex("0400040000014a0001840ac440f0000033ae9eee3d7b33a65acb007e856eb0c6601d")
AAC_CONFIG = bytes([0x12, 0x10])


# ----- video headers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("frame_type, packet_type, body, kind", [
    (1, 0, HEVC_RECORD_720P_MAIN10, flv.KIND_SEQUENCE_HEADER),      # SequenceStart
    (1, 1, b"\x00\x00\x00" + b"\x00" * 8, flv.KIND_KEYFRAME),        # CodedFrames, keyframe
    (2, 1, b"\x00\x00\x21" + b"\x00" * 8, flv.KIND_FRAME),           # CodedFrames, inter frame
    (1, 3, b"\x00" * 8, flv.KIND_KEYFRAME),                          # CodedFramesX (no composition time)
    (2, 3, b"\x00" * 8, flv.KIND_FRAME),
    (1, 2, b"", flv.KIND_OTHER),                                     # SequenceEnd
    (5, 4, amf0.encode("colorInfo", {"colorConfig": {}}), flv.KIND_OTHER),   # Metadata (FrameType ignored)
    (1, 5, b"\x80\x00", flv.KIND_SEQUENCE_HEADER),                   # MPEG2TSSequenceStart
])
def test_every_video_packet_type(frame_type, packet_type, body, kind):
    payload = ex_video(frame_type, packet_type, b"hvc1", body)
    header = flv.parse_video_header(payload)
    assert header.enhanced and header.frame_type == frame_type and header.packet_type == packet_type
    assert header.codec == "HEVC" and header.multitrack is None
    assert header.tracks == (flv.Track(0, b"hvc1", 5, len(body)),)
    assert flv.video_kind(payload) == kind
    assert flv.is_video_keyframe(payload) == (kind == flv.KIND_KEYFRAME)
    assert flv.is_video_sequence_header(payload) == (kind == flv.KIND_SEQUENCE_HEADER)


@pytest.mark.parametrize("fourcc, codec", [(b"hvc1", "HEVC"), (b"av01", "AV1"), (b"vp09", "VP9"),
                                           (b"avc1", "H264"), (b"vp08", "VP8"), (b"vvc1", "VVC")])
def test_keyframes_and_sequence_headers_for_every_video_fourcc(fourcc, codec):
    assert flv.video_codec(ex_video(1, 1, fourcc, b"\x00" * 4)) == codec
    assert flv.video_kind(ex_video(1, 0, fourcc, b"\x01")) == flv.KIND_SEQUENCE_HEADER
    assert flv.video_kind(ex_video(1, 1, fourcc, b"\x00" * 4)) == flv.KIND_KEYFRAME
    assert flv.video_kind(ex_video(2, 1, fourcc, b"\x00" * 4)) == flv.KIND_FRAME


def test_unknown_fourcc_is_a_frame_never_a_keyframe():
    payload = ex_video(1, 1, b"xxxx", b"\x00" * 4)
    assert flv.parse_video_header(payload).codec is None
    assert flv.video_kind(payload) == flv.KIND_FRAME


def test_video_command_frame_carries_no_picture():
    payload = bytes([0x80 | 5 << 4 | 1, 0])   # FrameType Command, then the command byte (StartSeek)
    header = flv.parse_video_header(payload)
    assert header.command == 0 and header.tracks == ()
    assert flv.video_kind(payload) == flv.KIND_OTHER
    assert flv.video_kind(bytes([0x57, 0x00])) == flv.KIND_OTHER   # legacy AVC command frame


def test_modex_timestamp_offset_nano_then_the_real_packet_type():
    payload = bytes([0x80 | 1 << 4 | 7]) + modex(1, (123456).to_bytes(3, "big")) + b"av01" + b"\x12\x00"
    header = flv.parse_video_header(payload)
    assert (header.packet_type, header.codec, header.nano_offset) == (1, "AV1", 123456)
    assert header.tracks[0].offset == len(payload) - 2
    assert flv.video_kind(payload) == flv.KIND_KEYFRAME


def test_modex_with_a_16_bit_size_and_audio_modex():
    payload = bytes([0x80 | 2 << 4 | 7]) + modex(3, bytes(300)) + b"hvc1" + b"\x00"
    assert flv.parse_video_header(payload).packet_type == 3
    assert flv.video_kind(payload) == flv.KIND_FRAME
    audio = bytes([0x97]) + modex(0, b"\x00\x00\x01") + b"Opus" + OPUS_HEAD
    header = flv.parse_audio_header(audio)
    assert (header.packet_type, header.codec, header.nano_offset) == (0, "Opus", 1)
    assert flv.is_audio_sequence_header(audio)


# ----- multitrack -----------------------------------------------------------------------------------------
def test_multitrack_one_track():
    payload = multitrack(1, 1, 0, [(1, b"\x00\x00\x00frame")])
    header = flv.parse_video_header(payload)
    assert header.multitrack == flv.MULTITRACK_ONE_TRACK and header.packet_type == 1
    assert header.tracks == (flv.Track(1, b"hvc1", 7, 8),)    # byte 0, multitrack byte, FourCC, track id
    assert payload[7:] == b"\x00\x00\x00frame"
    # Track 1 alone is not where a GOP starts: the default track (0) decides.
    assert flv.video_kind(payload) == flv.KIND_TRACK_KEYFRAME
    assert flv.video_kind(multitrack(2, 1, 0, [(1, b"\x00\x00\x00p")])) == flv.KIND_FRAME
    assert flv.video_kind(multitrack(1, 1, 0, [(0, b"\x00\x00\x00k")])) == flv.KIND_KEYFRAME


def test_multitrack_many_tracks_same_codec():
    payload = multitrack(1, 1, 1, [(0, b"\x00\x00\x00aaaa"), (1, b"\x00\x00\x00bb")], fourcc=b"av01")
    header = flv.parse_video_header(payload)
    assert [(t.track_id, t.fourcc, payload[t.offset:t.offset + t.size]) for t in header.tracks] == [
        (0, b"av01", b"\x00\x00\x00aaaa"), (1, b"av01", b"\x00\x00\x00bb")]
    assert flv.video_kind(payload) == flv.KIND_KEYFRAME and header.codec == "AV1"


def test_multitrack_many_tracks_many_codecs():
    payload = multitrack(1, 0, 2, [(0, b"hvc1", HEVC_RECORD_720P_MAIN10), (1, b"av01", AV1_RECORD_640X360)])
    header = flv.parse_video_header(payload)
    assert [(t.track_id, t.fourcc) for t in header.tracks] == [(0, b"hvc1"), (1, b"av01")]
    assert flv.video_kind(payload) == flv.KIND_SEQUENCE_HEADER
    assert flv.sequence_header_slot(flv.TAG_VIDEO, payload) == "tracks:0,1"
    # Each codec's details come from its own track's record.
    assert flv.parse_hevc_sequence_header(payload)["width"] == 1280
    assert flv.parse_av1_sequence_header(payload)["width"] == 640


def test_multitrack_audio():
    payload = multitrack(0, 0, 1, [(0, OPUS_HEAD), (1, OPUS_HEAD)], fourcc=b"Opus", audio=True)
    header = flv.parse_audio_header(payload)
    assert header.multitrack == 1 and [t.track_id for t in header.tracks] == [0, 1]
    assert flv.is_audio_sequence_header(payload) and flv.audio_codec(payload) == "Opus"
    assert flv.sequence_header_slot(flv.TAG_AUDIO, payload) == "tracks:0,1"
    assert flv.sequence_header_slot(flv.TAG_AUDIO, OPUS_HEAD) == ""
    assert flv.parse_audio_sequence_header(payload) == {"profile": "", "sample_rate": 48000, "channel": 2}


@pytest.mark.parametrize("payload, error", [
    (multitrack(1, 1, 1, [(0, b"abc")])[:-1], "overruns"),                        # size beyond the message
    (bytes([0x86, 0x31]) + b"hvc1", "truncated"),                                # reserved multitrack type 3
    (bytes([0x86, 0x06]) + b"hvc1\x00", "inside a multitrack"),                  # Multitrack in Multitrack
    (bytes([0x88]) + b"hvc1", "reserved VideoPacketType"),
    (bytes([0x87, 0x00]), "truncated"),                                          # ModEx cut short
    (bytes([0x87]) + modex(7, b"\x00") * 9 + b"hvc1", "ModEx"),                  # endless ModEx
    (b"", "empty"),
])
def test_malformed_video_headers_are_flv_errors(payload, error):
    if error == "truncated" and payload[:2] == bytes([0x86, 0x31]):
        error = "reserved AvMultitrackType"
    with pytest.raises(FlvError, match=error):
        flv.parse_video_header(payload)
    assert flv.video_kind(payload) == flv.KIND_OTHER
    assert flv.parse_video_sequence_header(payload) is None


def test_too_many_tracks_is_refused():
    payload = multitrack(1, 1, 1, [(i % 256, b"") for i in range(flv.MAX_TRACKS + 1)])
    with pytest.raises(FlvError, match="tracks"):
        flv.parse_video_header(payload)


# ----- audio headers --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fourcc, codec", [(b"Opus", "Opus"), (b"fLaC", "FLAC"), (b"ac-3", "AC3"),
                                           (b"ec-3", "EAC3"), (b".mp3", "MP3"), (b"mp4a", "AAC")])
def test_every_audio_fourcc_and_packet_type(fourcc, codec):
    for packet_type, is_header in ((0, True), (1, False), (2, False), (4, False)):
        payload = ex_audio(packet_type, fourcc, b"\x00\x01")
        header = flv.parse_audio_header(payload)
        assert header.enhanced and header.packet_type == packet_type and header.codec == codec
        assert flv.is_audio_sequence_header(payload) is is_header
    with pytest.raises(FlvError, match="reserved AudioPacketType"):
        flv.parse_audio_header(ex_audio(3, fourcc))


def test_legacy_audio_header():
    header = flv.parse_audio_header(AAC_HEADER)
    assert not header.enhanced and header.codec == "AAC" and header.packet_type == 0
    assert flv.parse_audio_header(b"\x2f\xff").packet_type == -1


# ----- codec details from sequence headers ----------------------------------------------------------------
def test_hevc_sequence_header_enhanced_and_legacy():
    expected = {"profile": "Main10", "level": "3.1", "width": 1280, "height": 720}
    assert flv.parse_video_sequence_header(ex_video(1, 0, b"hvc1", HEVC_RECORD_720P_MAIN10)) == expected
    legacy = bytes([0x1C, 0, 0, 0, 0]) + HEVC_RECORD_720P_MAIN10      # codec id 12, before E-RTMP
    assert flv.parse_video_sequence_header(legacy) == expected


def test_av1_sequence_header():
    assert flv.parse_video_sequence_header(ex_video(1, 0, b"av01", AV1_RECORD_640X360)) == {
        "profile": "Main", "level": "2.1", "width": 640, "height": 360}
    # ffmpeg first sends an empty SequenceStart, before the encoder's extradata exists.
    assert flv.parse_video_sequence_header(ex_video(1, 0, b"av01")) is None


def test_vp9_sequence_header_has_profile_and_level_but_no_size():
    assert flv.parse_video_sequence_header(ex_video(1, 0, b"vp09", VP9_RECORD)) == {
        "profile": "Profile0", "level": "2.1", "width": 0, "height": 0}


VP9_KEYFRAME_640X360 = ex_video(1, 1, b"vp09", bytes.fromhex("824983420027f016760638241c184a1005c85f"))


def test_vp9_picture_size_from_its_keyframe():
    assert flv.keyframe_picture_size(VP9_KEYFRAME_640X360) == (640, 360)
    assert flv.keyframe_picture_size(ex_video(2, 1, b"vp09", bytes.fromhex("86000000"))) is None  # inter frame
    assert flv.keyframe_picture_size(ex_video(1, 1, b"hvc1", b"\x00" * 16)) is None
    source = make_source()
    source.on_media(9, 0, ex_video(1, 0, b"vp09", VP9_RECORD), 0.0)
    assert source.info.video["width"] == 0
    source.on_media(9, 0, VP9_KEYFRAME_640X360, 0.0)
    assert source.info.video == {"profile": "Profile0", "level": "2.1", "width": 640, "height": 360}


def test_h264_over_enhanced_rtmp_avc1():
    record = AVC_HEADER[5:]
    assert flv.parse_video_sequence_header(ex_video(1, 0, b"avc1", record)) == \
        flv.parse_avc_sequence_header(AVC_HEADER)


def test_audio_sequence_headers():
    assert flv.parse_audio_sequence_header(ex_audio(0, b"Opus", OPUS_HEAD)) == {
        "profile": "", "sample_rate": 48000, "channel": 2}
    assert flv.parse_audio_sequence_header(ex_audio(0, b"fLaC", FLAC_STREAMINFO)) == {
        "profile": "", "sample_rate": 44100, "channel": 1}
    # The spec's layout: 'fLaC' and a metadata block header before STREAMINFO.
    assert flv.parse_audio_sequence_header(ex_audio(0, b"fLaC", b"fLaC\x80\x00\x00\x22" + FLAC_STREAMINFO)) == {
        "profile": "", "sample_rate": 44100, "channel": 1}
    assert flv.parse_audio_sequence_header(ex_audio(0, b"mp4a", AAC_CONFIG)) == \
        flv.parse_aac_sequence_header(AAC_HEADER)
    assert flv.parse_audio_sequence_header(ex_audio(0, b"Opus", b"OpusHead")) is None


# ----- fuzzing --------------------------------------------------------------------------------------------
@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_headers_raise_only_flv_errors(data):
    for payload in (data, b"\x80" + data, b"\x86" + data, b"\x87" + data, b"\x90" + data, b"\x95" + data,
                    b"\x97" + data):
        for parse in (flv.parse_video_header, flv.parse_audio_header):
            try:
                header = parse(payload)
            except FlvError:
                continue
            for track in header.tracks:
                assert 0 <= track.offset and track.offset + track.size <= len(payload)
        assert flv.video_kind(payload) in (flv.KIND_SEQUENCE_HEADER, flv.KIND_KEYFRAME, flv.KIND_FRAME,
                                           flv.KIND_TRACK_KEYFRAME, flv.KIND_OTHER)
        assert flv.is_audio_sequence_header(payload) in (True, False)
        assert isinstance(flv.sequence_header_slot(flv.TAG_VIDEO, payload), str)
        assert isinstance(flv.sequence_header_slot(flv.TAG_AUDIO, payload), str)
        size = flv.keyframe_picture_size(b"\x91vp09" + data)
        assert size is None or (size[0] >= 1 and size[1] >= 1)
        for parse in (flv.parse_video_sequence_header, flv.parse_audio_sequence_header):
            result = parse(payload)
            assert result is None or isinstance(result, dict)


def reference_kind(payload) -> str:
    """video_kind written the slow way, from the full header: the fast paths must agree with it."""
    try:
        header = flv.parse_video_header(payload)
    except FlvError:
        return flv.KIND_OTHER
    if header.frame_type == 5 and header.packet_type != 4:
        return flv.KIND_OTHER
    if not header.enhanced:
        if header.packet_type == -1:
            return flv.KIND_KEYFRAME if header.frame_type == 1 else flv.KIND_FRAME
        return {0: flv.KIND_SEQUENCE_HEADER, 1: flv.KIND_KEYFRAME if header.frame_type == 1 else flv.KIND_FRAME
                }.get(header.packet_type, flv.KIND_OTHER)
    if header.packet_type in (0, 5):
        return flv.KIND_SEQUENCE_HEADER
    if header.packet_type in (1, 3):
        default = header.multitrack is None or any(t.track_id == 0 for t in header.tracks)
        if header.frame_type == 1 and header.codec is not None:
            return flv.KIND_KEYFRAME if default else flv.KIND_TRACK_KEYFRAME
        return flv.KIND_FRAME
    return flv.KIND_OTHER


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.binary(max_size=24),
                 st.tuples(st.integers(0, 255), st.sampled_from([b"hvc1", b"av01", b"xxxx"]), st.binary(max_size=8))
                 .map(lambda t: bytes([t[0]]) + t[1] + t[2])))
def test_fuzz_video_kind_fast_paths_agree_with_the_full_header(payload):
    assert flv.video_kind(payload) == reference_kind(payload)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([b"hvc1", b"av01", b"vp09", b"avc1"]), st.binary(max_size=300))
def test_fuzz_sequence_header_records_never_raise(fourcc, record):
    for payload in (ex_video(1, 0, fourcc, record), multitrack(1, 0, 2, [(0, fourcc, record)])):
        result = flv.parse_video_sequence_header(payload)
        assert result is None or {"profile", "level", "width", "height"} <= set(result)


track_lists = st.lists(st.tuples(st.integers(0, 255), st.sampled_from([b"hvc1", b"av01", b"vp09", b"abcd"]),
                                 st.binary(max_size=40)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 2]), st.integers(1, 4), st.sampled_from([0, 1, 3]), track_lists, st.booleans())
def test_fuzz_multitrack_round_trip(mt_type, frame_type, packet_type, tracks, audio):
    if audio and packet_type == 3:
        packet_type = 4              # audio has no packet type 3 (reserved); 4 is MultichannelConfig
    if mt_type == 0:
        tracks = tracks[:1]
    fourcc = tracks[0][1]
    if mt_type != 2:
        tracks = [(i, fourcc, body) for i, _, body in tracks]
    spec = tracks if mt_type == 2 else [(i, body) for i, _, body in tracks]
    payload = multitrack(frame_type, packet_type, mt_type, spec, fourcc=fourcc, audio=audio)
    header = (flv.parse_audio_header if audio else flv.parse_video_header)(payload)
    assert header.multitrack == mt_type and header.packet_type == packet_type
    got = [(t.track_id, t.fourcc, payload[t.offset:t.offset + t.size]) for t in header.tracks]
    assert got == list(tracks)


# ----- the Source: GOP cache, sequence headers and codec info for every codec ----------------------------
HEVC_SH = ex_video(1, 0, b"hvc1", HEVC_RECORD_720P_MAIN10)
HEVC_KEY = ex_video(1, 1, b"hvc1", b"\x00\x00\x00" + b"K" * 60)
HEVC_INTER = ex_video(2, 3, b"hvc1", b"P" * 30)
TRACK1_SH = multitrack(1, 0, 0, [(1, AV1_RECORD_640X360)], fourcc=b"av01")
TRACK1_KEY = multitrack(1, 1, 0, [(1, b"k" * 20)], fourcc=b"av01")
TRACK1_INTER = multitrack(2, 1, 0, [(1, b"p" * 10)], fourcc=b"av01")
OPUS_SH = ex_audio(0, b"Opus", OPUS_HEAD)
OPUS_FRAME = ex_audio(1, b"Opus", b"o" * 20)
VIDEO_METADATA = ex_video(5, 4, b"hvc1", amf0.encode("colorInfo", {}))


def make_source() -> Source:
    source = Source("__defaultVhost__/live/s", "__defaultVhost__", "live", "s", min_latency=True)
    source.on_publish(object(), 0.0)
    return source


def publish_multitrack_gops(source: Source, gops: int = 2) -> None:
    source.on_media(9, 0, HEVC_SH, 0.0)
    source.on_media(9, 0, TRACK1_SH, 0.0)
    source.on_media(8, 0, OPUS_SH, 0.0)
    ts = 0
    for _ in range(gops):
        source.on_media(9, ts, TRACK1_KEY, 0.0)    # track 1's keyframe first: not where the GOP starts
        source.on_media(9, ts, HEVC_KEY, 0.0)
        source.on_media(9, ts, VIDEO_METADATA, 0.0)
        for _ in range(4):
            ts += 40
            source.on_media(8, ts, OPUS_FRAME, 0.0)
            source.on_media(9, ts, HEVC_INTER, 0.0)
            source.on_media(9, ts, TRACK1_INTER, 0.0)
        ts += 40


def late_joiner_messages(source: Source, fmt: str = rtmp_format(60000)):
    sink = FakeSink()
    Consumer(source, fmt, sink).start(0.0)
    if fmt == FORMAT_FLV:
        data = sink.transport.data()
        return [(t.tag_type, t.payload) for t in flv.FlvReader().feed(data[13:] if data[:3] == b"FLV" else
                                                                       flv.file_header(True, True) + data)]
    return [(m.type_id, m.payload) for m in ChunkReader(chunk_size=60000).feed(sink.transport.data())]


@pytest.mark.parametrize("fmt", [rtmp_format(60000), FORMAT_FLV])
def test_late_joiner_gets_every_tracks_sequence_header_then_starts_at_the_default_tracks_keyframe(fmt):
    source = make_source()
    publish_multitrack_gops(source)
    messages = late_joiner_messages(source, fmt)
    media = [(t, p) for t, p in messages if t in (8, 9)]
    assert media[:3] == [(9, HEVC_SH), (8, OPUS_SH), (9, TRACK1_SH)], "both video tracks' headers, then audio"
    # Track 1's keyframe came just before track 0's, at the same time: the GOP starts there, so the new
    # player gets both tracks' keyframes; its first media message after the headers is a keyframe.
    assert media[3:5] == [(9, TRACK1_KEY), (9, HEVC_KEY)]
    assert (9, TRACK1_INTER) in media[5:]


def test_gop_takes_in_other_tracks_keyframes_only_at_the_same_time_and_right_before():
    source = make_source()
    source.on_media(9, 0, HEVC_SH, 0.0)
    source.on_media(9, 0, TRACK1_SH, 0.0)
    source.on_media(9, 0, HEVC_KEY, 0.0)
    source.on_media(9, 960, TRACK1_KEY, 0.0)       # an earlier time: not part of the next GOP
    source.on_media(9, 1000, TRACK1_KEY, 0.0)      # then audio between: the walk stops at it
    source.on_media(8, 1000, OPUS_FRAME, 0.0)
    source.on_media(9, 1000, HEVC_KEY, 0.0)
    first = source.packets[source.gop_start_seq - source.base_seq]
    assert first.payload == HEVC_KEY and source.gop_frames == 1
    source.on_media(9, 2000, TRACK1_KEY, 0.0)
    source.on_media(9, 2000, TRACK1_KEY, 0.0)
    source.on_media(9, 2000, HEVC_KEY, 0.0)
    first = source.packets[source.gop_start_seq - source.base_seq]
    assert (first.payload, first.timestamp) == (TRACK1_KEY, source.packets[-1].timestamp)
    assert source.gop_frames == 3


def test_codec_info_for_hevc_and_opus_and_frames_count_only_pictures():
    source = make_source()
    publish_multitrack_gops(source, gops=1)
    assert source.info.video_codec == "HEVC", "the default track's codec, not track 1's"
    assert source.info.video == {"profile": "Main10", "level": "3.1", "width": 1280, "height": 720}
    assert source.info.audio_codec == "Opus"
    assert source.info.audio == {"profile": "", "sample_rate": 48000, "channel": 2}
    # 2 keyframes + 8 inter frames (both tracks); not the colorInfo metadata nor the sequence headers.
    assert source.frames == 10


def test_av1_keyframes_make_the_gop():
    source = make_source()
    source.on_media(9, 0, ex_video(1, 0, b"av01", AV1_RECORD_640X360), 0.0)
    for gop in range(3):
        source.on_media(9, gop * 400, ex_video(1, 1, b"av01", b"K"), 0.0)
        for i in range(1, 10):
            source.on_media(9, gop * 400 + i * 40, ex_video(2, 1, b"av01", b"P"), 0.0)
    assert source.info.video == {"profile": "Main", "level": "2.1", "width": 640, "height": 360}
    assert source.packets[source.gop_start_seq - source.base_seq].payload == ex_video(1, 1, b"av01", b"K")
    assert source.gop_frames == 10


def test_multitrack_sequence_headers_survive_snapshot_and_restore_and_go_at_unpublish():
    source = make_source()
    publish_multitrack_gops(source)
    restored = Source.restore(source.snapshot(), 1.0)
    assert [p.payload for p in restored.track_sh.values()] == [TRACK1_SH]
    assert late_joiner_messages(restored)[:3] == late_joiner_messages(source)[:3]
    source.on_unpublish(2.0)
    assert source.track_sh == {} and source.video_sh is None


def test_track_headers_are_bounded_the_oldest_goes():
    from nonstop.media.source import MAX_TRACK_HEADERS
    source = make_source()
    for track_id in range(1, 200):
        source.on_media(9, 0, multitrack(1, 0, 0, [(track_id, AV1_RECORD_640X360)], fourcc=b"av01"), 0.0)
    assert list(source.track_sh) == [f"video:tracks:{i}" for i in range(200 - MAX_TRACK_HEADERS, 200)]


def test_a_newer_track_header_replaces_the_older_and_goes_last():
    source = make_source()
    publish_multitrack_gops(source, gops=1)
    newer = multitrack(1, 0, 0, [(1, AV1_RECORD_640X360 + b"\x00")], fourcc=b"av01")
    source.on_media(9, 500, newer, 0.0)
    assert [p.payload for p in source.track_sh.values()] == [newer]


# ----- connect ----------------------------------------------------------------------------------------------
def connect(**extra):
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = rtmp.RtmpSession(rtmp.CLIENT)
    client.connect("live", "rtmp://h/live", **extra)
    _, ev_server = pump(client, server)
    server.accept_connect(ev_server[0])
    ev_client, _ = pump(client, server)
    return next(e for e in ev_client if isinstance(e, rtmp.Connected))


def test_connect_answers_enhanced_rtmp_capabilities_to_an_enhanced_client():
    connected = connect(fourCcList=["hvc1", "av01", "Opus"], capsEx=2.0)
    props = connected.properties
    assert props["fmsVer"] == rtmp.FMS_VERSION
    assert set(props["fourCcList"]) >= {"hvc1", "av01", "vp09", "avc1", "Opus", "fLaC", "ac-3", "ec-3", ".mp3",
                                         "mp4a"}
    assert props["videoFourCcInfoMap"] == {"*": 4.0} and props["audioFourCcInfoMap"] == {"*": 4.0}
    assert props["capsEx"] == 6.0, "Multitrack | ModEx"
    assert connect(videoFourCcInfoMap={"hvc1": 1.0}).properties["capsEx"] == 6.0


def test_connect_answer_to_a_legacy_client_is_unchanged():
    props = connect().properties
    assert props == {"fmsVer": rtmp.FMS_VERSION, "capabilities": 127.0, "mode": 1.0}


# ----- an edge's resync with multitrack headers ---------------------------------------------------------
def test_edge_reconnect_to_a_multitrack_stream_compares_each_tracks_header_with_its_own():
    from tests.unit.test_cluster_resync import Edge
    headers = [(9, 0, HEVC_SH), (9, 0, TRACK1_SH), (8, 0, OPUS_SH)]
    messages = []
    for i in range(60):
        key = i % 10 == 0
        tag = i.to_bytes(2, "big")
        messages.append((9, i * 100, ex_video(1 if key else 2, 1, b"hvc1", b"\x00\x00\x00" + tag)))
        messages.append((9, i * 100, multitrack(1 if key else 2, 1, 0, [(1, b"\x00\x00\x00" + tag)])))
        messages.append((8, i * 100 + 50, ex_audio(1, b"Opus", tag)))
    edge = Edge()
    edge.session(headers + messages[:100])
    # The origin's answer to the new session: the headers again, then its GOP (from the keyframe at 30).
    edge.session(headers + messages[90:])
    assert edge.frames() == [p for _, _, p in messages], "no repeat and nothing lost across the reconnect"


# ----- the late joiner's invariant under any message sequence --------------------------------------------
any_video = st.one_of(
    st.sampled_from([HEVC_SH, HEVC_KEY, HEVC_INTER, TRACK1_SH, TRACK1_KEY, TRACK1_INTER, VIDEO_METADATA,
                     ex_video(1, 2, b"hvc1"), AVC_HEADER, bytes([0x17, 1, 0, 0, 0, 9]), bytes([0x27, 1, 0, 0, 0, 9]),
                     VP9_KEYFRAME_640X360]),
    st.binary(max_size=12))
any_audio = st.one_of(st.sampled_from([OPUS_SH, OPUS_FRAME, AAC_HEADER]), st.binary(max_size=8))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([8, 9]), st.integers(0, 40), st.data()), max_size=60), st.booleans())
def test_fuzz_a_late_joiner_always_starts_at_a_keyframe(steps, flv_out):
    source = make_source()
    ts = 0
    for type_id, step, data in steps:
        ts += step
        payload = data.draw(any_video if type_id == 9 else any_audio)
        source.on_media(type_id, ts, payload, 0.0)     # never raises, whatever the bytes
    header_count = len(late_joiner_messages(source, FORMAT_FLV if flv_out else rtmp_format(60000)))
    sink = FakeSink()
    Consumer(source, rtmp_format(60000), sink).start(0.0)
    messages = [(m.type_id, m.payload) for m in ChunkReader(chunk_size=60000).feed(sink.transport.data())]
    assert len(messages) == header_count
    headers = 1 if source.metadata else 0
    headers += sum(p is not None for p in (source.video_sh, source.audio_sh)) + len(source.track_sh)
    pictures = [flv.video_kind(p) for t, p in messages[headers:] if t == 9
                and flv.video_kind(p) in (flv.KIND_KEYFRAME, flv.KIND_FRAME, flv.KIND_TRACK_KEYFRAME)]
    if source.gop_start_seq and pictures:
        assert pictures[0] in (flv.KIND_KEYFRAME, flv.KIND_TRACK_KEYFRAME), pictures
