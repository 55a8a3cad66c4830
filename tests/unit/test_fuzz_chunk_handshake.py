"""Property tests: the chunk reader and the handshakes take any bytes, in any split, and either work or raise
their own error, never another exception, and never hold more memory than their caps allow."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.protocol.chunk import MAX_HEADER_SIZE, ChunkError, ChunkReader, Message, encode_message
from nonstop.protocol.handshake import (HANDSHAKE_SIZE, ClientHandshake, HandshakeError, ServerHandshake)

SMALL_CAPS = dict(max_message_size=2000, max_partial_bytes=3000, max_chunk_streams=6)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` cut at the given positions (taken modulo its length, in order)."""
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, start = [], 0
    for point in points + [len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@st.composite
def chunkish(draw) -> bytes:
    """Bytes shaped like chunks (plausible basic and message headers, random fields), to get past the first
    byte more often than pure noise does."""
    parts = []
    for _ in range(draw(st.integers(1, 12))):
        fmt = draw(st.integers(0, 3))
        csid = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 63]))
        parts.append(bytes([fmt << 6 | csid]))
        if csid in (0, 1):
            parts.append(draw(st.binary(min_size=csid + 1, max_size=csid + 1)))
        ts = draw(st.sampled_from([0, 20, 0xFFFFFE, 0xFFFFFF]))
        if fmt < 3:
            parts.append(ts.to_bytes(3, "big"))
        if fmt < 2:
            parts.append(draw(st.integers(0, 2500)).to_bytes(3, "big"))
            parts.append(bytes([draw(st.sampled_from([1, 2, 8, 9, 18, 20]))]))
        if fmt == 0:
            parts.append(struct.pack("<I", draw(st.integers(0, 3))))
        if draw(st.booleans()):
            parts.append(struct.pack(">I", draw(st.sampled_from([0xFFFFFF, 0x01000000, 0xFFFFFFF0]))))
        parts.append(draw(st.binary(max_size=300)))
    return b"".join(parts)


def check_reader(data: bytes, cuts: list[int]) -> None:
    reader = ChunkReader(**SMALL_CAPS)
    try:
        for piece in split(data, cuts):
            for message in reader.feed(piece):
                assert isinstance(message, Message) and len(message.payload) <= SMALL_CAPS["max_message_size"]
            assert len(reader.buffered()) <= MAX_HEADER_SIZE + reader.chunk_size
            assert 0 <= reader.partial_bytes <= SMALL_CAPS["max_partial_bytes"]
    except ChunkError:
        pass
    assert reader.bytes_received <= len(data)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=8))
def test_chunk_reader_on_arbitrary_bytes_returns_messages_or_raises_chunk_error(data, cuts):
    check_reader(data, cuts)


@settings(max_examples=400, deadline=None)
@given(chunkish(), st.lists(st.integers(0, 4000), max_size=8))
def test_chunk_reader_on_chunk_shaped_garbage_returns_messages_or_raises_chunk_error(data, cuts):
    check_reader(data, cuts)


message_strategy = st.tuples(
    st.sampled_from([2, 3, 4, 6, 63, 64, 319, 320, 65599]),  # every basic header form
    st.integers(3, 255),  # not 1 and 2, which the reader applies
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=700),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(message_strategy, max_size=6), st.integers(1, 300), st.lists(st.integers(0, 5000), max_size=6))
def test_any_encoded_messages_read_back_whatever_the_split(messages, chunk_size, cuts):
    wire = b"".join(encode_message(c, t, ts, sid, p, chunk_size) for c, t, ts, sid, p in messages)
    reader = ChunkReader(chunk_size=chunk_size)
    got = []
    for piece in split(wire, cuts):
        got += reader.feed(piece)
    assert [(m.csid, m.type_id, m.timestamp % 2**32, m.stream_id, m.payload) for m in got] == messages
    assert reader.buffered() == b"" and reader.partial_bytes == 0


@settings(max_examples=300, deadline=None)
@given(st.lists(message_strategy, max_size=6), st.integers(1, 300), st.lists(st.integers(0, 5000), max_size=6),
       st.integers(1, 8))
def test_a_chunk_budget_per_feed_changes_when_messages_come_never_which(messages, chunk_size, cuts, budget):
    """The per-call budget (issue 10 item 7): every feed parses at most `budget` chunks, feed(b"") goes on, and
    the messages are the same, in the same order, as without a budget."""
    wire = b"".join(encode_message(c, t, ts, sid, p, chunk_size) for c, t, ts, sid, p in messages)
    reader = ChunkReader(chunk_size=chunk_size)
    got = []
    for piece in split(wire, cuts):
        got += reader.feed(piece, max_chunks=budget)
        while reader.input_pending:
            got += reader.feed(b"", max_chunks=budget)
    assert [(m.csid, m.type_id, m.timestamp % 2**32, m.stream_id, m.payload) for m in got] == messages
    assert reader.buffered() == b"" and reader.partial_bytes == 0


@settings(max_examples=400, deadline=None)
@given(chunkish(), st.lists(st.integers(0, 4000), max_size=8), st.integers(1, 4))
def test_chunk_reader_with_a_minimum_chunk_size_and_budget_stays_within_its_caps(data, cuts, budget):
    """A server's reader (minimum chunk size 128, small caps, a chunk budget) on chunk-shaped garbage: messages
    or ChunkError, never more than `budget` chunks' worth of messages per call, never a chunk size below 128."""
    reader = ChunkReader(min_chunk_size=128, **SMALL_CAPS)
    try:
        for piece in split(data, cuts):
            for feed_data in (piece, b"", b""):
                messages = reader.feed(feed_data, max_chunks=budget)
                assert len(messages) <= budget
                assert reader.chunk_size >= 128
                assert 0 <= reader.partial_bytes <= SMALL_CAPS["max_partial_bytes"]
    except ChunkError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * HANDSHAKE_SIZE + 200), st.lists(st.integers(0, 4000), max_size=8),
       st.booleans())
def test_server_handshake_on_arbitrary_bytes_returns_bytes_or_raises_and_stays_bounded(data, cuts, valid_c0):
    if valid_c0:
        data = b"\x03" + data
    server = ServerHandshake(random_bytes=lambda n: bytes(n))
    try:
        for piece in split(data, cuts):
            out = server.receive_data(piece)
            assert isinstance(out, bytes) and len(out) in (0, 1 + 2 * HANDSHAKE_SIZE)
            assert len(server.snapshot()["c0c1"]) <= 2 * HANDSHAKE_SIZE + 1
    except HandshakeError:
        return
    assert server.done == (len(data) >= 1 + 2 * HANDSHAKE_SIZE)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2 * HANDSHAKE_SIZE + 200), st.lists(st.integers(0, 4000), max_size=8))
def test_client_handshake_on_arbitrary_bytes_returns_bytes_or_raises_and_stays_bounded(data, cuts):
    client = ClientHandshake(random_bytes=lambda n: bytes(n))
    client.initial_bytes()
    data = b"\x03" + data
    try:
        for piece in split(data, cuts):
            out = client.receive_data(piece)
            assert isinstance(out, bytes) and len(out) in (0, HANDSHAKE_SIZE)
            assert len(client.snapshot()["s0s1"]) <= HANDSHAKE_SIZE + 1
    except HandshakeError:
        raise AssertionError("a valid S0 must never fail")
    assert client.done == (len(data) >= 1 + 2 * HANDSHAKE_SIZE)
