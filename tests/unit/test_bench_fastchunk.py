"""The load generator's header-only parsers agree with the full parsers on the same bytes, however split."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.bench.fastchunk import (PREFIX_LEN, ChunkedBody, ChunkTracker, FastParseError, FlvTagTracker,
                                     MAX_CHUNK_STREAMS)
from nonstop.protocol import flv
from nonstop.protocol.chunk import ChunkReader, encode_message

VIDEO, AUDIO, DATA, COMMAND, SET_CHUNK_SIZE, ABORT, USER_CONTROL = 9, 8, 18, 20, 1, 2, 4


def expected(messages):
    """What the tracker must report for the messages ChunkReader produced."""
    video = [(m.timestamp, len(m.payload), m.payload[:PREFIX_LEN]) for m in messages if m.type_id == VIDEO]
    control = [(m.type_id, m.timestamp, m.stream_id, m.payload) for m in messages
               if m.type_id not in (VIDEO, AUDIO, DATA, 15)]
    audio = sum(1 for m in messages if m.type_id == AUDIO)
    return video, control, audio


def track(data: bytes, pieces: list[int] | None = None, tracker: ChunkTracker | None = None):
    """Feed `data` cut at the given piece sizes (cycled), each piece through a fresh reused buffer."""
    tracker = tracker or ChunkTracker()
    buf = bytearray(1 << 16)
    pos, i = 0, 0
    while pos < len(data):
        size = pieces[i % len(pieces)] if pieces else len(data)
        piece = data[pos:pos + size]
        buf[:len(piece)] = piece
        tracker.feed(buf, 0, len(piece))
        pos += len(piece)
        i += 1
    return tracker


def assert_same(data: bytes, pieces=None):
    messages = ChunkReader().feed(data)
    tracker = track(data, pieces)
    video, control, audio = expected(messages)
    assert tracker.video == video
    assert tracker.control == control
    assert tracker.audio_messages == audio


def stream_of(chunk_size: int, messages) -> bytes:
    """A server's output: Set Chunk Size first (at 128), then every message at `chunk_size`."""
    out = [encode_message(2, SET_CHUNK_SIZE, 0, 0, struct.pack(">I", chunk_size), 128)]
    for csid, type_id, ts, payload in messages:
        out.append(encode_message(csid, type_id, ts, 1, payload, chunk_size))
    return b"".join(out)


def sample_messages():
    video = bytes([0x17, 1, 0, 0, 0]) + bytes(range(256)) * 40  # 10 KiB keyframe
    inter = bytes([0x27, 1, 0, 0, 0]) + b"\x5a" * 3000
    return [
        (5, COMMAND, 0, b"\x02\x00\x08onStatus" + b"\x00" * 20),
        (5, DATA, 0, b"\x02\x00\x0aonMetaData" + b"\x00" * 300),
        (6, VIDEO, 0, bytes([0x17, 0, 0, 0, 0, 1, 0x64])),
        (6, VIDEO, 0, video),
        (7, AUDIO, 0, b"\xaf\x01" + b"\x11" * 370),
        (6, VIDEO, 33, inter),
        (7, AUDIO, 21, b"\xaf\x01" + b"\x22" * 370),
        (6, VIDEO, 67, inter[:5] + b"\x01" * 40),
        (6, VIDEO, 100, b""),
    ]


@pytest.mark.parametrize("chunk_size", [128, 1000, 4096, 60000])
@pytest.mark.parametrize("pieces", [None, [1], [7], [13, 1, 2], [4096], [65536]])
def test_tracker_reports_what_chunk_reader_reads_at_any_chunk_size_and_split(chunk_size, pieces):
    assert_same(stream_of(chunk_size, sample_messages()), pieces)


def test_video_message_reports_its_timestamp_length_and_payload_prefix():
    payload = bytes(range(200))
    tracker = track(encode_message(6, VIDEO, 1234, 1, payload, 128), [3])
    assert tracker.video == [(1234, 200, payload[:PREFIX_LEN])]


def test_set_chunk_size_applies_from_the_next_chunk():
    tracker = track(stream_of(5000, [(6, VIDEO, 0, b"\x27" + b"x" * 4999)]), [100])
    assert tracker.chunk_size == 5000
    assert len(tracker.video) == 1 and tracker.video[0][1] == 5000


def header(fmt: int, csid: int, *fields: int) -> bytes:
    """A chunk header: fmt 0 (ts, length, type, stream), 1 (delta, length, type), 2 (delta), 3 (none)."""
    out = bytes([fmt << 6 | csid])
    if fmt <= 2:
        out += struct.pack(">I", fields[0])[1:]
    if fmt <= 1:
        out += struct.pack(">I", fields[1])[1:] + bytes([fields[2]])
    if fmt == 0:
        out += struct.pack("<I", fields[3])
    return out


def test_compressed_headers_as_nginx_rtmp_sends_them():
    frame = bytes([0x27, 1, 0, 0, 0]) + b"a" * 95
    data = (header(0, 6, 1000, 100, VIDEO, 1) + frame
            + header(1, 6, 33, 100, VIDEO) + frame       # same stream id, new length and type
            + header(2, 6, 34) + frame                   # same length and type
            + header(3, 6) + frame                       # a new message: the last delta again
            + header(1, 6, 40, 200, VIDEO) + frame + frame[:28] + header(3, 6) + frame[28:] + frame)
    assert_same(data)
    assert_same(data, [1])
    assert [v[0] for v in track(data).video] == [1000, 1033, 1067, 1101, 1141]


def test_extended_timestamp_repeated_on_continuation_chunks():
    payload = bytes([0x17, 1, 0, 0, 0]) + b"z" * 1000
    data = encode_message(6, VIDEO, 0x1234567, 1, payload, 128) + encode_message(6, VIDEO, 0x1234590, 1, payload, 128)
    assert_same(data)
    assert_same(data, [5])
    assert [v[0] for v in track(data).video] == [0x1234567, 0x1234590]


def test_extended_timestamp_not_repeated_on_continuation_chunks():
    payload = bytes([0x17, 1, 0, 0, 0]) + b"q" * 195
    ext = struct.pack(">I", 0x2000000)
    data = header(0, 6, 0xFFFFFF, 200, VIDEO, 1) + ext + payload[:128] + header(3, 6) + payload[128:]
    assert_same(data, [3])


def test_long_chunk_stream_ids():
    data = (encode_message(100, VIDEO, 5, 1, b"\x27\x01" + b"a" * 300, 128)
            + encode_message(400, VIDEO, 6, 1, b"\x27\x01" + b"b" * 300, 128))
    assert_same(data, [1])


def test_abort_drops_the_partial_message():
    frame = bytes([0x27, 1, 0, 0, 0]) + b"c" * 295
    data = (header(0, 6, 10, 300, VIDEO, 1) + frame[:128]
            + encode_message(2, ABORT, 0, 0, struct.pack(">I", 6), 128)
            + encode_message(6, VIDEO, 20, 1, frame, 128))
    assert_same(data, [17])
    assert [v[0] for v in track(data).video] == [20]


def test_tracker_continues_where_a_chunk_reader_stopped():
    data = stream_of(4096, sample_messages())
    for cut in (1, 200, 2000, 5000, 9000, len(data) - 3):
        reader = ChunkReader()
        before = reader.feed(data[:cut])
        tracker = ChunkTracker.from_reader_snapshot(reader.snapshot())
        track(data[cut:], [999], tracker)
        video, control, audio = expected(ChunkReader().feed(data))
        seen_video = [(m.timestamp, len(m.payload), m.payload[:PREFIX_LEN]) for m in before if m.type_id == VIDEO]
        assert seen_video + tracker.video == video, cut


def test_a_stream_starting_with_a_type_3_header_is_refused():
    with pytest.raises(FastParseError):
        track(header(3, 6) + b"x" * 10)


def test_a_new_header_in_the_middle_of_a_message_is_refused():
    with pytest.raises(FastParseError):
        track(header(0, 6, 0, 300, VIDEO, 1) + b"x" * 128 + header(0, 6, 0, 10, VIDEO, 1))


def test_too_many_chunk_streams_are_refused():
    data = b"".join(encode_message(3 + i, AUDIO, 0, 1, b"\xaf\x01", 128) for i in range(MAX_CHUNK_STREAMS + 1))
    with pytest.raises(FastParseError):
        track(data)


message = st.tuples(st.sampled_from([5, 6, 7, 70, 330]), st.sampled_from([VIDEO, AUDIO, DATA, COMMAND, USER_CONTROL]),
                    st.integers(0, 0x2000000), st.binary(max_size=700))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([1, 50, 128, 4096]), st.lists(message, max_size=12),
       st.lists(st.integers(1, 900), min_size=1, max_size=8))
def test_tracker_agrees_with_chunk_reader_on_random_streams(chunk_size, messages, pieces):
    assert_same(stream_of(chunk_size, messages), pieces)


# ----- FLV ------------------------------------------------------------------------------------------------

def flv_stream(tags, padding: int = 0) -> bytes:
    head = flv.file_header(True, True)
    if padding:
        head = head[:5] + struct.pack(">I", 9 + padding) + b"\x00" * padding + head[9:]
    return head + b"".join(flv.encode_tag(t, ts, p) for t, ts, p in tags)


def flv_sample():
    return [(18, 0, b"\x02\x00\x0aonMetaData" + b"\x00" * 50), (9, 0, bytes([0x17, 0, 0, 0, 0, 1])),
            (9, 0, bytes([0x17, 1, 0, 0, 0]) + bytes(range(256)) * 8), (8, 10, b"\xaf\x01" + b"a" * 300),
            (9, 0x1000040, bytes([0x27, 1, 0, 0, 0]) + b"b" * 900), (9, 70, b"")]


def flv_expected(tags):
    return [(ts, len(p), p[:PREFIX_LEN]) for t, ts, p in tags if t == 9]


@pytest.mark.parametrize("pieces", [None, [1], [5], [11, 3], [4096]])
@pytest.mark.parametrize("padding", [0, 7])
def test_flv_tracker_reports_video_tags_at_any_split(pieces, padding):
    tags = flv_sample()
    tracker = FlvTagTracker()
    track(flv_stream(tags, padding), pieces, tracker)
    assert tracker.video == flv_expected(tags)
    assert tracker.audio_messages == 1 and tracker.other_messages == 1


def test_flv_tracker_refuses_a_bad_tag_type():
    with pytest.raises(FastParseError):
        track(flv.file_header(True, True) + b"\x07" + b"\x00" * 14, None, FlvTagTracker())


def test_flv_tracker_refuses_what_is_not_flv():
    with pytest.raises(FastParseError):
        track(b"HTTP/1.1 200 OK\r\n\r\n", None, FlvTagTracker())


def chunked(data: bytes, sizes) -> bytes:
    out, pos, i = [], 0, 0
    while pos < len(data):
        part = data[pos:pos + sizes[i % len(sizes)]]
        out.append(b"%x;ext=1\r\n" % len(part) if i % 2 else b"%X\r\n" % len(part))
        out.append(part + b"\r\n")
        pos += len(part)
        i += 1
    return b"".join(out) + b"0\r\n\r\n"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 2000), min_size=1, max_size=5), st.lists(st.integers(1, 700), min_size=1, max_size=5))
def test_chunked_http_body_yields_the_same_tags(chunk_sizes, pieces):
    tags = flv_sample()
    tracker = FlvTagTracker()
    body = ChunkedBody(tracker.feed)
    data = chunked(flv_stream(tags), chunk_sizes)
    buf = bytearray(4096)
    pos, i = 0, 0
    while pos < len(data):
        piece = data[pos:pos + pieces[i % len(pieces)]]
        buf[:len(piece)] = piece
        body.feed(buf, 0, len(piece))
        pos += len(piece)
        i += 1
    assert tracker.video == flv_expected(tags)
    assert body.finished


def test_chunked_body_refuses_a_bad_size_line():
    with pytest.raises(FastParseError):
        ChunkedBody(lambda *a: None).feed(bytearray(b"zz\r\nabc"), 0, 7)
