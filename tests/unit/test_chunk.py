"""Specification of the RTMP chunk stream (nonstop.protocol.chunk): reading every header form, the writer's
one-encoding-for-all output, extended timestamps, the 2**32 wrap, control messages and the caps."""

from __future__ import annotations

import random
import struct

import pytest

from nonstop.protocol.chunk import (DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE, MAX_HEADER_SIZE, MAX_MESSAGE_SIZE,
                                    ChunkError, ChunkReader, ChunkWriter, Message, encode_message)

# Hand-written chunk headers, independent of the module's encoder.


def basic(fmt: int, csid: int) -> bytes:
    if csid < 64:
        return bytes([fmt << 6 | csid])
    if csid < 320:
        return bytes([fmt << 6, csid - 64])
    return bytes([fmt << 6 | 1, (csid - 64) & 0xFF, (csid - 64) >> 8])


def u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def type0(csid, ts, length, type_id, stream_id, ext=None) -> bytes:
    return basic(0, csid) + u24(ts) + u24(length) + bytes([type_id]) + struct.pack("<I", stream_id) + (
        b"" if ext is None else struct.pack(">I", ext))


def type1(csid, delta, length, type_id, ext=None) -> bytes:
    return basic(1, csid) + u24(delta) + u24(length) + bytes([type_id]) + (
        b"" if ext is None else struct.pack(">I", ext))


def type2(csid, delta, ext=None) -> bytes:
    return basic(2, csid) + u24(delta) + (b"" if ext is None else struct.pack(">I", ext))


def type3(csid, ext=None) -> bytes:
    return basic(3, csid) + (b"" if ext is None else struct.pack(">I", ext))


def set_chunk_size(size: int, csid: int = 2) -> bytes:
    return type0(csid, 0, 4, 1, 0) + struct.pack(">I", size)


def payload_of(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def feed_in_pieces(reader: ChunkReader, data: bytes, step: int) -> list[Message]:
    out = []
    for i in range(0, len(data), step):
        out += reader.feed(data[i:i + step])
    return out


# ----- round trips -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [1, 128, 4096, 60000])
@pytest.mark.parametrize("size", [0, 1, 127, 128, 129, 100000])
def test_encoded_messages_read_back_identically(chunk_size, size):
    payload = payload_of(size, size)
    wire = encode_message(6, 9, 40, 1, payload, chunk_size) + encode_message(7, 8, 41, 1, b"aac", chunk_size)
    for step in (len(wire) or 1, 977):
        reader = ChunkReader(chunk_size=chunk_size)
        assert feed_in_pieces(reader, wire, step) == [Message(6, 9, 40, 1, payload), Message(7, 8, 41, 1, b"aac")]
        assert reader.buffered() == b"" and reader.partial_bytes == 0


def test_messages_survive_a_byte_by_byte_split():
    wire = b"".join(encode_message(csid, 9, ts, 1, payload_of(300, ts), 128)
                    for csid, ts in [(4, 0), (65, 10), (400, 20)])
    reader = ChunkReader()
    messages = feed_in_pieces(reader, wire, 1)
    assert [(m.csid, m.timestamp, len(m.payload)) for m in messages] == [(4, 0, 300), (65, 10, 300), (400, 20, 300)]


@pytest.mark.parametrize("csid,header", [(2, b"\x02"), (63, b"\x3f"), (64, b"\x00\x00"), (319, b"\x00\xff"),
                                         (320, b"\x01\x00\x01"), (65599, b"\x01\xff\xff")])
def test_basic_header_uses_the_one_two_or_three_byte_form_by_csid(csid, header):
    wire = encode_message(csid, 20, 0, 0, b"x", 128)
    assert wire.startswith(header)
    assert ChunkReader().feed(wire) == [Message(csid, 20, 0, 0, b"x")]


def test_three_byte_basic_header_may_encode_a_small_csid():
    # 0x01 marker with (csid - 64) = 6 in little-endian: csid 70, in the long form a peer is allowed to use.
    wire = bytes([0x01, 6, 0]) + u24(0) + u24(1) + b"\x08" + struct.pack("<I", 1) + b"a"
    assert ChunkReader().feed(wire) == [Message(70, 8, 0, 1, b"a")]


def test_stream_id_is_little_endian_in_the_type0_header():
    wire = encode_message(3, 20, 0, 0x01020304, b"", 128)
    assert wire[8:12] == bytes([4, 3, 2, 1])
    assert ChunkReader().feed(wire)[0].stream_id == 0x01020304


def test_writer_uses_a_type0_header_then_type3_chunks():
    wire = encode_message(6, 9, 1000, 1, payload_of(300), 128)
    assert wire == (type0(6, 1000, 300, 9, 1) + payload_of(300)[:128] + type3(6) + payload_of(300)[128:256]
                    + type3(6) + payload_of(300)[256:])


def test_chunk_writer_encodes_with_its_own_chunk_size_and_snapshots_it():
    writer = ChunkWriter()
    assert writer.chunk_size == DEFAULT_CHUNK_SIZE
    writer.chunk_size = 4096
    writer = ChunkWriter.restore(writer.snapshot())
    assert writer.encode(3, 20, 5, 0, payload_of(5000)) == encode_message(3, 20, 5, 0, payload_of(5000), 4096)


@pytest.mark.parametrize("args", [dict(csid=1), dict(csid=65600), dict(chunk_size=0),
                                  dict(payload=bytes(MAX_MESSAGE_SIZE + 1)), dict(type_id=256)])
def test_writer_refuses_arguments_no_peer_could_decode(args):
    call = dict(csid=3, type_id=20, timestamp=0, stream_id=0, payload=b"", chunk_size=128) | args
    with pytest.raises(ValueError):
        encode_message(**call)


# ----- header compression as peers send it ------------------------------------------------------------------

def test_adobe_spec_example_audio_type0_then_type2_then_type3():
    # RTMP spec 5.3.2.1: four 32-byte audio messages, 20 ms apart, on message stream 12345.
    a, b, c, d = (payload_of(32, i) for i in range(4))
    wire = (type0(3, 1000, 32, 8, 12345) + a + type2(3, 20) + b + type3(3) + c + type3(3) + d)
    assert ChunkReader().feed(wire) == [Message(3, 8, ts, 12345, p)
                                        for ts, p in [(1000, a), (1020, b), (1040, c), (1060, d)]]


def test_adobe_spec_example_one_video_message_in_three_chunks():
    # RTMP spec 5.3.2.2: a 307-byte message at chunk size 128 is a type 0 chunk and two type 3 chunks.
    payload = payload_of(307)
    wire = type0(4, 1000, 307, 9, 12346) + payload[:128] + type3(4) + payload[128:256] + type3(4) + payload[256:]
    reader = ChunkReader()
    assert reader.feed(wire[:-51]) == []
    assert reader.partial_bytes == 256
    assert reader.feed(wire[-51:]) == [Message(4, 9, 1000, 12346, payload)]


def test_type1_header_changes_length_and_type_and_keeps_the_stream_id():
    wire = type0(5, 100, 2, 18, 1) + b"ab" + type1(5, 33, 3, 20) + b"cde"
    assert ChunkReader().feed(wire) == [Message(5, 18, 100, 1, b"ab"), Message(5, 20, 133, 1, b"cde")]


def test_type3_header_starting_a_message_after_type0_reuses_its_timestamp_as_delta():
    # SRS's FMLE case: type 0 at 26, then bare 0xC4 audio messages are at 52 and 78 (spec, FFmpeg, SRS agree).
    wire = type0(4, 26, 1, 8, 1) + b"a" + type3(4) + b"b" + type3(4) + b"c"
    assert [m.timestamp for m in ChunkReader().feed(wire)] == [26, 52, 78]


def test_interleaved_chunk_streams_reassemble_independently():
    video, audio = payload_of(300, 1), payload_of(200, 2)
    wire = (type0(6, 0, 300, 9, 1) + video[:128]
            + type0(7, 0, 200, 8, 1) + audio[:128]
            + type3(6) + video[128:256]
            + type3(7) + audio[128:]
            + type3(6) + video[256:])
    assert ChunkReader().feed(wire) == [Message(7, 8, 0, 1, audio), Message(6, 9, 0, 1, video)]


def test_a_fresh_chunk_stream_must_start_with_type0():
    for wire in (type1(4, 0, 1, 8) + b"a", type2(4, 0) + b"a", type3(4) + b"a"):
        with pytest.raises(ChunkError):
            ChunkReader().feed(wire)


def test_librtmp_type1_on_a_fresh_protocol_control_stream_is_accepted():
    # librtmp sends its first control messages on chunk stream 2 with a type 1 header; SRS accepts it.
    ack = type1(2, 0, 4, 3) + struct.pack(">I", 4096)
    assert ChunkReader().feed(ack) == [Message(2, 3, 0, 0, struct.pack(">I", 4096))]


@pytest.mark.parametrize("header", [type0(6, 0, 300, 9, 1), type1(6, 0, 300, 9), type2(6, 0)])
def test_a_non_type3_header_in_the_middle_of_a_message_is_an_error(header):
    reader = ChunkReader()
    reader.feed(type0(6, 0, 300, 9, 1) + bytes(128))
    with pytest.raises(ChunkError):
        reader.feed(header)


def test_a_failed_reader_stays_failed():
    reader = ChunkReader()
    with pytest.raises(ChunkError):
        reader.feed(type3(9))
    with pytest.raises(ChunkError):
        reader.feed(encode_message(3, 20, 0, 0, b"", 128))


# ----- extended timestamps -----------------------------------------------------------------------------------

def test_extended_timestamp_repeats_on_type3_chunks():
    ts = 0x12345678
    payload = payload_of(300)
    wire = encode_message(6, 9, ts, 1, payload, 128)
    ext = struct.pack(">I", ts)
    assert wire == (type0(6, 0xFFFFFF, 300, 9, 1, ext=ts) + payload[:128] + type3(6) + ext + payload[128:256]
                    + type3(6) + ext + payload[256:])
    assert ChunkReader().feed(wire) == [Message(6, 9, ts, 1, payload)]


def test_timestamp_0xffffff_itself_uses_the_extended_field():
    wire = encode_message(6, 9, 0xFFFFFF, 1, b"a", 128)
    assert wire[1:4] == b"\xff\xff\xff" and wire[12:16] == b"\x00\xff\xff\xff"
    assert ChunkReader().feed(wire)[0].timestamp == 0xFFFFFF


def test_type3_continuation_without_the_repeated_extended_timestamp_is_tolerated():
    # Old encoders (FMLE, per SRS) leave the extended timestamp off continuation chunks: the 4 bytes that
    # follow are not the message's timestamp, so they are read as payload.
    payload = payload_of(300)
    wire = type0(6, 0xFFFFFF, 300, 9, 1, ext=0x01000000) + payload[:128] + type3(6) + payload[128:256] + \
        type3(6) + payload[256:]
    assert ChunkReader().feed(wire) == [Message(6, 9, 0x01000000, 1, payload)]


def test_extended_delta_on_type1_and_type2_and_on_a_type3_that_starts_a_message():
    wire = (type0(4, 0, 1, 8, 1) + b"a"
            + type1(4, 0xFFFFFF, 1, 8, ext=0x01000000) + b"b"  # delta 2**24
            + type3(4, ext=0x01000000) + b"c"  # a new message: the delta again, and it is in the header
            + type2(4, 0xFFFFFF, ext=0x02000000) + b"d")
    assert [m.timestamp for m in ChunkReader().feed(wire)] == [0, 0x01000000, 0x02000000, 0x04000000]


def test_extended_delta_repeats_on_continuation_chunks_of_a_delta_message():
    payload = payload_of(200)
    wire = (type0(4, 10, 1, 8, 1) + b"a"
            + type2(4, 0xFFFFFF, ext=0x01000000) + b"b"
            + type1(4, 0xFFFFFF, 200, 9, ext=0x01000000) + payload[:128] + type3(4, ext=0x01000000) + payload[128:])
    assert ChunkReader().feed(wire)[-1] == Message(4, 9, 10 + 2 * 0x01000000, 1, payload)


# ----- the 2**32 wrap ----------------------------------------------------------------------------------------

def test_absolute_timestamps_crossing_2_32_keep_counting():
    wire = b"".join(type0(6, 0xFFFFFF, 1, 9, 1, ext=ts) + b"v" for ts in (0xFFFFFF00, 0xFFFFFFF0))
    wire += type0(6, 0x10, 1, 9, 1) + b"v" + type0(6, 0x20, 1, 9, 1) + b"v"
    assert [m.timestamp for m in ChunkReader().feed(wire)] == [0xFFFFFF00, 0xFFFFFFF0, 2**32 + 0x10, 2**32 + 0x20]


def test_deltas_crossing_2_32_keep_counting():
    wire = type0(6, 0xFFFFFF, 1, 9, 1, ext=0xFFFFFFF0) + b"v" + type2(6, 0x20) + b"v" + type3(6) + b"v"
    assert [m.timestamp for m in ChunkReader().feed(wire)] == [0xFFFFFFF0, 2**32 + 0x10, 2**32 + 0x30]


def test_a_late_message_from_before_the_wrap_stays_before_it():
    wire = (type0(6, 0xFFFFFF, 1, 9, 1, ext=0xFFFFFFF0) + b"v" + type0(6, 0x10, 1, 9, 1) + b"v"
            + type0(6, 0xFFFFFF, 1, 9, 1, ext=0xFFFFFFF8) + b"v")
    assert [m.timestamp for m in ChunkReader().feed(wire)] == [0xFFFFFFF0, 2**32 + 0x10, 0xFFFFFFF8]


def test_writer_sends_timestamps_past_2_32_modulo_and_the_reader_unwraps_them():
    reader = ChunkReader()
    times = [2**32 - 40, 2**32 - 20, 2**32, 2**32 + 20]
    got = []
    for ts in times:
        got += reader.feed(encode_message(6, 9, ts, 1, b"v", 128))
    assert [m.timestamp for m in got] == times


def test_a_jump_of_more_than_2_31_cannot_be_told_from_a_wrap():
    # The wire only carries the low 32 bits; the reader picks the reading closest to the previous message.
    reader = ChunkReader()
    reader.feed(encode_message(6, 9, 100, 1, b"v", 128))
    assert reader.feed(encode_message(6, 9, 3 * 2**32 + 5, 1, b"v", 128))[0].timestamp == 5


def test_a_fresh_chunk_stream_unwraps_against_the_latest_timestamp_of_the_connection():
    wire = type0(6, 0xFFFFFF, 1, 9, 1, ext=0xFFFFFFF0) + b"v" + type0(6, 0x10, 1, 9, 1) + b"v"
    wire += type0(5, 0x15, 1, 18, 1) + b"d"  # metadata on a chunk stream never used before
    assert ChunkReader().feed(wire)[-1].timestamp == 2**32 + 0x15


# ----- control messages the reader applies itself -----------------------------------------------------------

def test_set_chunk_size_applies_to_the_very_next_chunk_in_the_same_feed():
    payload = payload_of(3000)
    wire = set_chunk_size(4096) + encode_message(6, 9, 0, 1, payload, 4096)
    reader = ChunkReader()
    messages = reader.feed(wire)
    assert reader.chunk_size == 4096
    assert messages == [Message(2, 1, 0, 0, struct.pack(">I", 4096)), Message(6, 9, 0, 1, payload)]


def test_set_chunk_size_between_chunks_of_another_message_resplits_its_rest():
    video = payload_of(1000)
    wire = (type0(6, 0, 1000, 9, 1) + video[:128] + set_chunk_size(500) + type3(6) + video[128:628]
            + type3(6) + video[628:])
    reader = ChunkReader()
    assert feed_in_pieces(reader, wire, 7)[-1] == Message(6, 9, 0, 1, video)


@pytest.mark.parametrize("size", [0, 0x80000000, 0xFFFFFFFF])
def test_set_chunk_size_zero_or_with_the_top_bit_set_is_an_error(size):
    with pytest.raises(ChunkError):
        ChunkReader().feed(set_chunk_size(size))


def test_set_chunk_size_shorter_than_4_bytes_is_an_error():
    with pytest.raises(ChunkError):
        ChunkReader().feed(type0(2, 0, 2, 1, 0) + b"\0\1")


def test_huge_set_chunk_size_is_accepted_and_clamped_to_the_largest_message():
    reader = ChunkReader()
    reader.feed(set_chunk_size(0x7FFFFFFF))
    assert reader.chunk_size == MAX_CHUNK_SIZE
    payload = payload_of(200000)
    assert reader.feed(encode_message(6, 9, 0, 1, payload, 0x7FFFFFFF))[0].payload == payload


def test_abort_message_drops_the_partial_message_on_its_chunk_stream():
    reader = ChunkReader()
    reader.feed(type0(6, 0, 300, 9, 1) + bytes(128))
    assert reader.partial_bytes == 128
    abort = type0(2, 0, 4, 2, 0) + struct.pack(">I", 6)
    assert reader.feed(abort) == [Message(2, 2, 0, 0, struct.pack(">I", 6))]
    assert reader.partial_bytes == 0
    # The chunk stream starts over; a type 3 now begins a new message with the previous header.
    assert reader.feed(type3(6) + bytes(128) + type3(6) + bytes(128) + type3(6) + bytes(44))[0].payload == bytes(300)


def test_abort_method_drops_a_partial_and_ignores_unknown_chunk_streams():
    reader = ChunkReader()
    reader.feed(type0(6, 0, 300, 9, 1) + bytes(128))
    reader.abort(99)
    reader.abort(6)
    assert reader.partial_bytes == 0
    assert reader.feed(type0(6, 0, 1, 9, 1) + b"z") == [Message(6, 9, 0, 1, b"z")]


# ----- caps --------------------------------------------------------------------------------------------------

def test_a_message_longer_than_the_cap_fails_at_its_header():
    reader = ChunkReader(max_message_size=1000)
    with pytest.raises(ChunkError):
        reader.feed(type0(6, 0, 1001, 9, 1))


def test_incomplete_messages_across_chunk_streams_are_capped():
    reader = ChunkReader(max_partial_bytes=300)
    reader.feed(type0(6, 0, 1000, 9, 1) + bytes(128) + type0(7, 0, 1000, 8, 1) + bytes(128))
    with pytest.raises(ChunkError):
        reader.feed(type3(6))  # the next 128 bytes would make 384 held


def test_a_completing_chunk_does_not_count_against_the_partial_cap():
    reader = ChunkReader(max_partial_bytes=128)
    assert len(reader.feed(type0(6, 0, 256, 9, 1) + bytes(128) + type3(6) + bytes(128))) == 1


def test_chunk_streams_are_capped():
    reader = ChunkReader(max_chunk_streams=4)
    reader.feed(b"".join(encode_message(csid, 9, 0, 1, b"", 128) for csid in (3, 4, 5, 6)))
    reader.feed(encode_message(6, 9, 0, 1, b"", 128))  # known ones are fine
    with pytest.raises(ChunkError):
        reader.feed(encode_message(7, 9, 0, 1, b"", 128))


def test_buffered_holds_only_an_incomplete_chunk():
    reader = ChunkReader()
    wire = encode_message(6, 9, 0, 1, bytes(1000), 128)
    reader.feed(wire[:200])
    assert reader.buffered() == wire[12 + 128:200]  # 12-byte type 0 header, one 128-byte chunk
    assert len(reader.buffered()) <= MAX_HEADER_SIZE + reader.chunk_size
    assert reader.bytes_received == 200


def test_bytes_received_counts_everything_fed():
    reader = ChunkReader()
    wire = encode_message(6, 9, 0, 1, bytes(1000), 128)
    feed_in_pieces(reader, wire, 33)
    assert reader.bytes_received == len(wire)


# ----- handover ----------------------------------------------------------------------------------------------

def handover_stream() -> bytes:
    video, audio = payload_of(300, 1), payload_of(200, 2)
    return (set_chunk_size(100)
            + type0(6, 0xFFFFFF, 300, 9, 1, ext=0xFFFFFFF0) + video[:100]
            + type0(7, 0xFFFFFF, 200, 8, 1, ext=0xFFFFFFF5) + audio[:100]
            + type3(6, ext=0xFFFFFFF0) + video[100:200]
            + type3(7, ext=0xFFFFFFF5) + audio[100:]
            + type3(6, ext=0xFFFFFFF0) + video[200:]
            + type2(7, 40) + audio[:100] + type3(7) + audio[100:]  # no longer extended: no repeat
            + type1(6, 0x30, 3, 9) + b"end")


def test_snapshot_restore_at_any_byte_gives_the_same_messages():
    wire = handover_stream()
    expected = ChunkReader().feed(wire)
    assert [m.timestamp for m in expected] == [0, 0xFFFFFFF5, 0xFFFFFFF0, 2**32 + 0x1D, 2**32 + 0x20]
    for cut in range(len(wire) + 1):
        first = ChunkReader()
        got = first.feed(wire[:cut])
        second = ChunkReader.restore(first.snapshot())
        got += second.feed(wire[cut:])
        assert got == expected, cut
        assert second.bytes_received == len(wire)


def test_snapshot_is_plain_data():
    reader = ChunkReader()
    reader.feed(handover_stream()[:150])
    snap = reader.snapshot()

    def plain(value):
        if isinstance(value, dict):
            return all(isinstance(k, str) and plain(v) for k, v in value.items())
        if isinstance(value, list):
            return all(plain(v) for v in value)
        return value is None or isinstance(value, (bool, int, str, bytes))
    assert plain(snap)


def test_restore_refuses_a_malformed_snapshot():
    with pytest.raises(ChunkError):
        ChunkReader.restore({"chunk_size": 128})
    snap = ChunkReader().snapshot()
    with pytest.raises(ChunkError):
        ChunkReader.restore({**snap, "chunk_size": 0})
