"""What one client can make the worker hold or spend (issue 10, items 3, 4 and 7), on the sans-IO core with
byte vectors: the chunk reader's minimum chunk size and per-call chunk budget, the server session's caps before
a client is identified, and the source's GOP cache and shared log bounded in bytes."""

from __future__ import annotations

import struct

import pytest

from nonstop.media.consumer import MAX_BUFFERED_BYTES, Consumer
from nonstop.media.packet import FORMAT_FLV
from nonstop.media.source import LOG_BYTES_PER_GOP_BYTES, Source
from nonstop.protocol import amf0, rtmp
from nonstop.protocol.chunk import (MAX_MESSAGE_SIZE, MAX_PARTIAL_BYTES, ChunkError, ChunkReader,
                                    encode_message)
from nonstop.protocol.errors import ProtocolError
from nonstop.protocol.handshake import ClientHandshake

# ----- hand-written chunks ------------------------------------------------------------------------------------


def type0(csid, ts, length, type_id, stream_id) -> bytes:
    return bytes([csid]) + ts.to_bytes(3, "big") + length.to_bytes(3, "big") + bytes([type_id]) + \
        struct.pack("<I", stream_id)


def type3(csid) -> bytes:
    return bytes([0xC0 | csid])


def set_chunk_size(size: int) -> bytes:
    return type0(2, 0, 4, 1, 0) + struct.pack(">I", size)


def ping(first: bool) -> bytes:
    """A Ping Request (user control 6) on chunk stream 2: a type 0 header first, then 7-byte type 3 repeats."""
    body = struct.pack(">HI", 6, 0)
    return (type0(2, 0, 6, 4, 0) if first else type3(2)) + body


def audio_messages(n: int, size: int = 10) -> bytes:
    """n audio messages of `size` bytes on chunk stream 7: one type 0 header, then a 1-byte type 3 header each."""
    body = bytes([0xAF, 0x01]) + b"a" * (size - 2)
    return type0(7, 0, size, 8, 1) + body + (type3(7) + body) * (n - 1)


# ----- ChunkReader ----------------------------------------------------------------------------------------------

def test_min_chunk_size_refuses_smaller_set_chunk_size_and_default_reader_keeps_the_spec_range():
    assert ChunkReader().feed(set_chunk_size(1))[0].payload == struct.pack(">I", 1)
    for size in (1, 127):
        reader = ChunkReader(min_chunk_size=128)
        with pytest.raises(ChunkError, match=f"Set Chunk Size {size} outside 128"):
            reader.feed(set_chunk_size(size))
        assert reader.failed
    reader = ChunkReader(min_chunk_size=128)
    reader.feed(set_chunk_size(128))
    assert reader.chunk_size == 128


def test_feed_with_a_chunk_budget_stops_and_goes_on_where_it_stopped():
    data = audio_messages(10)
    whole = ChunkReader().feed(data)
    reader = ChunkReader()
    got = reader.feed(data, max_chunks=3)
    assert len(got) == 3 and reader.input_pending
    # Bytes left unparsed are carried by a snapshot (a handover in between loses nothing).
    reader = ChunkReader.restore(reader.snapshot())
    assert reader.input_pending
    while reader.input_pending:
        got += reader.feed(b"", max_chunks=3)
    assert [(m.type_id, m.payload) for m in got] == [(m.type_id, m.payload) for m in whole]
    assert reader.buffered() == b""


def test_budget_counts_chunks_not_messages():
    # One 1000-byte message in 128-byte chunks is 8 chunks: a budget of 4 completes nothing yet.
    data = encode_message(6, 9, 0, 1, b"v" * 1000, 128)
    reader = ChunkReader()
    assert reader.feed(data, max_chunks=4) == [] and reader.input_pending
    assert len(reader.feed(b"", max_chunks=4)) == 1 and not reader.input_pending


def test_partial_bytes_cap_with_a_byte_vector():
    # Two messages of 20000 bytes, interleaved in 128-byte chunks: 2 x ~10000 partial bytes passes a 32 KiB cap,
    # a third stream pushes it over.
    reader = ChunkReader(max_partial_bytes=32 * 1024)
    head = type0(4, 0, 20000, 8, 1) + b"x" * 128 + type0(5, 0, 20000, 8, 1) + b"y" * 128
    body = (type3(4) + b"x" * 128 + type3(5) + b"y" * 128) * 100
    reader.feed(head + body)
    assert reader.partial_bytes == 2 * 101 * 128
    with pytest.raises(ChunkError, match="more than 32768 bytes of incomplete messages"):
        reader.feed(type0(6, 0, 20000, 8, 1) + b"z" * 128 + (type3(6) + b"z" * 128) * 100)


# ----- the server session ---------------------------------------------------------------------------------------

def after_handshake() -> rtmp.RtmpSession:
    """A server session whose handshake is done, fed by hand: what a raw-socket client would do."""
    server = rtmp.RtmpSession(rtmp.SERVER)
    client = ClientHandshake()
    assert server.receive_data(client.initial_bytes()) == []
    s0s1s2 = server.data_to_send()
    c2 = client.receive_data(s0s1s2)
    assert server.receive_data(c2) == []
    assert server.state == rtmp.CONNECTING
    return server


def connect_bytes(app: str = "live", pad: int = 0) -> bytes:
    obj = {"app": app, "tcUrl": f"rtmp://h/{app}", "pad": "p" * pad}
    return encode_message(3, 20, 0, 0, amf0.encode("connect", 1.0, obj), 128)


def connected() -> rtmp.RtmpSession:
    server = after_handshake()
    (request,) = server.receive_data(connect_bytes())
    server.accept_connect(request)
    server.data_to_send()
    return server


def command(name: str, tid: float, *args, stream_id: int = 0) -> bytes:
    return encode_message(3, 20, 0, stream_id, amf0.encode(name, tid, None, *args), 128)


def test_one_byte_chunks_before_connect_are_refused():
    server = after_handshake()
    with pytest.raises(ProtocolError, match="Set Chunk Size 1 outside 128"):
        server.receive_data(set_chunk_size(1))
    assert server.state == rtmp.ERROR


def test_a_big_message_before_publish_is_refused():
    server = after_handshake()
    with pytest.raises(ProtocolError, match=f"exceeds {rtmp.MAX_MESSAGE_UNPUBLISHED}"):
        server.receive_data(connect_bytes(pad=40000))


def test_partial_messages_before_publish_are_capped_low():
    # The issue's idle client: connect, then messages left one chunk short. Two 16 MB ones were possible; now
    # the first header announcing more than the unpublished message cap fails.
    server = connected()
    assert server.reader.max_partial_bytes == rtmp.MAX_PARTIAL_UNPUBLISHED
    with pytest.raises(ProtocolError, match="exceeds"):
        server.receive_data(type0(8, 0, MAX_MESSAGE_SIZE, 9, 1) + b"k" * 128)


def test_bytes_before_identified_are_budgeted():
    server = connected()
    data = ping(True) + ping(False) * (rtmp.MAX_BYTES_BEFORE_IDENTIFIED // 7)
    with pytest.raises(ProtocolError, match=f"more than {rtmp.MAX_BYTES_BEFORE_IDENTIFIED} bytes sent before"):
        for i in range(0, len(data), 4096):
            server.receive_data(data[i:i + 4096])
    # Nothing past the budget was parsed: the work an unidentified client causes is bounded by it.
    assert server.reader.bytes_received <= rtmp.MAX_BYTES_BEFORE_IDENTIFIED


def accept(server: rtmp.RtmpSession, name: str) -> None:
    events = server.receive_data(command("createStream", 2.0) + command(name, 3.0, "s", stream_id=1))
    request = events[-1]
    if name == "publish":
        server.accept_publish(request)
    else:
        server.accept_play(request)
    server.data_to_send()


def test_an_accepted_publisher_gets_the_full_caps():
    server = connected()
    accept(server, "publish")
    assert server.identified
    assert (server.reader.max_message_size, server.reader.max_partial_bytes) == (MAX_MESSAGE_SIZE, MAX_PARTIAL_BYTES)
    frame = bytes([0x17, 0x01, 0, 0, 0]) + b"k" * 2_000_000
    events = []
    data = encode_message(6, 9, 0, 1, frame, 128)
    events += server.receive_data(data)
    while server.input_pending:
        events += server.receive_data(b"")
    assert [len(e.payload) for e in events if isinstance(e, rtmp.Media)] == [len(frame)]


def test_a_player_is_identified_but_keeps_the_small_message_cap():
    server = connected()
    accept(server, "play")
    assert server.identified and server.reader.max_message_size == rtmp.MAX_MESSAGE_UNPUBLISHED
    data = ping(True) + ping(False) * (rtmp.MAX_BYTES_BEFORE_IDENTIFIED // 7 + 100)
    for i in range(0, len(data), 4096):
        server.receive_data(data[i:i + 4096])
    assert server.state == rtmp.CONNECTED


def test_receive_data_parses_at_most_a_budget_of_chunks_per_call():
    server = connected()
    accept(server, "publish")
    events = server.receive_data(audio_messages(3000))
    assert len(events) == rtmp.MAX_CHUNKS_PER_CALL and server.input_pending
    while server.input_pending:
        events += server.receive_data(b"")
    assert len(events) == 3000


def test_caps_and_identification_survive_snapshot_and_restore():
    server = connected()
    restored = rtmp.RtmpSession.restore(server.snapshot())
    assert not restored.identified and restored.reader.min_chunk_size == rtmp.MIN_PEER_CHUNK_SIZE
    assert restored.reader.max_message_size == rtmp.MAX_MESSAGE_UNPUBLISHED
    accept(server, "publish")
    snap = server.snapshot()
    assert rtmp.RtmpSession.restore(snap).identified
    del snap["identified"]      # an older build's snapshot: a publishing session was identified
    assert rtmp.RtmpSession.restore(snap).identified


def test_the_client_role_keeps_the_spec_range_and_no_budget():
    client = rtmp.RtmpSession(rtmp.CLIENT)
    assert client.identified and client.reader.min_chunk_size == 1
    assert client.reader.max_message_size == MAX_MESSAGE_SIZE


# ----- the source: GOP cache and shared log in bytes -----------------------------------------------------------

KEY = bytes([0x17, 0x01, 0, 0, 0])
INTER = bytes([0x27, 0x01, 0, 0, 0])


def make_source(**kw) -> Source:
    kw.setdefault("min_latency", True)
    return Source("__defaultVhost__/live/s", "__defaultVhost__", "live", "s", **kw)


def log_payload(source: Source) -> int:
    return sum(len(p.payload) for p in source.packets)


def test_the_issue_publisher_cannot_pin_gigabytes():
    """Issue 10 item 3: one keyframe then 2400 inter frames of 256 KB (1 ms apart, so queue_length never trims)
    took the worker from 46 MB to 667 MB. The payload object is shared, so this test itself stays small."""
    source = make_source()
    source.on_publish(object(), 0.0)
    frame = INTER + b"p" * (256 * 1024)
    source.on_media(9, 0, KEY + b"k" * (256 * 1024), 0.0)
    worst = 0
    for i in range(2400):
        source.on_media(9, i + 1, frame, 0.0)
        worst = max(worst, log_payload(source))
    print(f"log payload at most {worst / 2**20:.1f} MiB over 2400 frames of 256 KB (bound "
          f"{LOG_BYTES_PER_GOP_BYTES * source.gop_cache_max_bytes / 2**20:.0f} MiB)")
    assert worst <= LOG_BYTES_PER_GOP_BYTES * source.gop_cache_max_bytes
    assert source.log_bytes == log_payload(source)


def test_gop_over_its_byte_bound_is_cleared_and_late_joiners_start_at_the_next_keyframe():
    source = make_source(gop_cache_max_bytes=100_000)
    source.on_publish(object(), 0.0)
    source.on_media(9, 0, KEY + b"k" * 1000, 0.0)
    assert source.start_position() == source.gop_start_seq - 1
    for i in range(20):
        source.on_media(9, 40 * (i + 1), INTER + b"p" * 10_000, 0.0)
    assert source.gop_start_seq == 0 and source.gop_cache_cleared == 1, "the GOP passed 100 KB: cleared"
    assert log_payload(source) <= 2 * 100_000
    # No truncated GOP is ever offered: a late joiner gets nothing old, then starts at the next keyframe.
    assert source.start_position() == source.next_seq - 1
    source.on_media(9, 1000, KEY + b"k" * 1000, 0.0)
    assert source.packets[source.start_position() + 1 - source.base_seq].keyframe


def test_frames_bound_still_clears_as_srs_does():
    source = make_source(gop_cache_max_frames=10)
    source.on_publish(object(), 0.0)
    source.on_media(9, 0, KEY, 0.0)
    for i in range(10):
        source.on_media(9, i + 1, INTER, 0.0)
    assert source.gop_start_seq == 0


def test_a_player_behind_but_within_its_bound_loses_nothing_when_the_gop_is_cleared():
    source = make_source(gop_cache_max_bytes=100_000)
    source.on_publish(object(), 0.0)

    class Sink:
        kicked = None

        class transport:
            buffered = 0
            chunks = []

            @classmethod
            def writelines(cls, data):
                cls.chunks.extend(data)

            @classmethod
            def get_write_buffer_size(cls):
                return cls.buffered

            @staticmethod
            def is_closing():
                return False

        def kick(self, reason):
            self.kicked = reason

    sink = Sink()
    source.on_media(9, 0, KEY + b"k" * 1000, 0.0)
    consumer = Consumer(source, FORMAT_FLV, sink)
    consumer.start(0.0)
    sink.transport.buffered = MAX_BUFFERED_BYTES + 1     # a burst: the player is not fed for a moment
    for i in range(15):
        source.on_media(9, 40 * (i + 1), INTER + b"p" * 10_000, 0.0)
    assert source.gop_start_seq == 0, "the GOP cache was cleared"
    sink.transport.buffered = 0
    source.on_media(9, 1000, INTER, 0.1)
    assert consumer.dropped == 0 and consumer.position == source.next_seq - 1 and sink.kicked is None
    # Far behind, past the log's byte bound: cut back, as when it is queue_length behind.
    sink.transport.buffered = MAX_BUFFERED_BYTES + 1
    for i in range(40):
        source.on_media(9, 1040 + 40 * i, INTER + b"p" * 10_000, 0.2)
    assert log_payload(source) <= 2 * 100_000
    sink.transport.buffered = 0
    source.on_media(9, 3000, INTER, 0.3)
    assert consumer.dropped > 0 and consumer.position == source.next_seq - 1


def test_byte_counts_survive_snapshot_and_restore():
    source = make_source(gop_cache_max_bytes=500_000)
    source.on_publish(object(), 0.0)
    source.on_media(9, 0, KEY + b"k" * 1000, 0.0)
    for i in range(5):
        source.on_media(9, 40 * (i + 1), INTER + b"p" * 1000, 0.0)
    restored = Source.restore(source.snapshot(), 1.0)
    assert (restored.gop_cache_max_bytes, restored.log_bytes, restored.gop_bytes) == \
        (500_000, source.log_bytes, source.gop_bytes)
    snap = source.snapshot()
    assert "gop_cache_max_bytes" not in snap["config"], "an older build's Source() would refuse the key"


# ----- the directives --------------------------------------------------------------------------------------------

def test_identify_timeout_and_gop_cache_max_bytes_directives():
    from nonstop.config import ConfigError, load_text
    config = load_text("listen 1935;\nvhost __defaultVhost__ { }\n", "nonstop.conf", env={})
    assert config.identify_timeout == 60000
    assert config.vhosts["__defaultVhost__"].play.gop_cache_max_bytes == 32 << 20
    config = load_text("listen 1935;\nidentify_timeout 1500;\nvhost v { play { gop_cache_max_bytes 1000000; } }\n",
                       "nonstop.conf", env={"NONSTOP_IDENTIFY_TIMEOUT": "2500"})
    assert config.identify_timeout == 2500      # the environment overrides the file, as for every directive
    assert config.vhosts["v"].play.gop_cache_max_bytes == 1_000_000
    for text, message in (("identify_timeout 0;\n", "nonstop.conf:2: identify_timeout: expected a positive integer"),
                          ("vhost v {\nplay { gop_cache_max_bytes 0; }\n}\n",
                           "nonstop.conf:3: play.gop_cache_max_bytes: expected a positive integer")):
        with pytest.raises(ConfigError, match=message):
            load_text("listen 1935;\n" + text, "nonstop.conf", env={})


# ----- the shell: RtmpConnection's deadlines and per-read budget --------------------------------------------------

class FakeTransport:
    def __init__(self):
        self.data = b""
        self.closed = False
        self.reading = True
        self.pauses = 0

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 50000) if name == "peername" else default

    def write(self, data):
        self.data += data

    def writelines(self, chunks):
        self.data += b"".join(chunks)

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_write_buffer_size(self):
        return 0

    def is_reading(self):
        return self.reading

    def pause_reading(self):
        self.reading = False
        self.pauses += 1

    def resume_reading(self):
        self.reading = True


def shell_connected(config_text: str = "listen 1935;\nidentify_timeout 2000;\nvhost __defaultVhost__ { }\n"):
    from nonstop.config import load_text
    from nonstop.server.rtmp_conn import RtmpConnection
    from nonstop.server.worker import Worker
    worker = Worker(load_text(config_text, "nonstop.conf", env={}))
    conn, transport = RtmpConnection(worker), FakeTransport()
    conn.connection_made(transport)
    client = ClientHandshake()
    conn.data_received(client.initial_bytes())
    conn.data_received(client.receive_data(transport.data))
    transport.data = b""
    conn.data_received(connect_bytes())
    assert b"NetConnection.Connect.Success" in transport.data
    return worker, conn, transport


def test_a_connected_client_has_until_identify_timeout_to_publish_or_play():
    import time
    _, conn, transport = shell_connected()
    now = time.monotonic()
    conn.check_deadline(now + 1.5)
    assert not conn.closed
    conn.check_deadline(now + 2.1)
    assert conn.closed and transport.closed


def test_play_lifts_the_identify_deadline_and_stopping_rearms_it():
    import time
    _, conn, transport = shell_connected()
    conn.data_received(command("createStream", 2.0) + command("play", 3.0, "s", stream_id=1))
    assert conn.role == "play" and conn.deadline is None
    now = time.monotonic()
    conn.check_deadline(now + 100)
    assert not conn.closed, "a player is identified: no identify deadline"
    conn.data_received(command("closeStream", 4.0, stream_id=1))
    assert conn.role == ""
    conn.check_deadline(now + 100)          # re-armed from here
    assert not conn.closed and conn.deadline == pytest.approx(now + 102)
    conn.check_deadline(now + 102.1)
    assert conn.closed


def test_one_read_is_parsed_a_budget_at_a_time_with_reading_paused_between():
    import asyncio

    async def run():
        _, conn, transport = shell_connected()
        conn.data_received(command("createStream", 2.0) + command("publish", 3.0, "s", stream_id=1))
        assert conn.role == "publish"
        conn.data_received(audio_messages(3000))
        assert transport.pauses == 1 and not transport.reading and conn.source.recv_bytes == 1024 * 10
        for _ in range(10):
            await asyncio.sleep(0)
        assert transport.reading and conn.source.recv_bytes == 3000 * 10
        assert not conn.session.input_pending
    asyncio.run(run())
