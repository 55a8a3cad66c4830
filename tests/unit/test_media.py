"""The media layer: sources, the shared log, consumers as positions, jitter, cleanup."""

from __future__ import annotations

from nonstop.media.consumer import MAX_BUFFERED_BYTES, Consumer
from nonstop.media.jitter import Jitter
from nonstop.media.packet import FORMAT_FLV, rtmp_format
from nonstop.media.registry import SOURCE_IDLE_FREE_S, SourceRegistry
from nonstop.media.source import MAX_LOG_PACKETS, TRIM_EVERY_PACKETS, Source
from nonstop.protocol import amf0, flv
from nonstop.protocol.chunk import ChunkReader

AVC_HEADER = bytes([0x17, 0x00, 0, 0, 0]) + bytes.fromhex("0164001fffe1001967640020acd9405005bb0110000003001000000303c0f18319601000568ebecb22c0")
AAC_HEADER = bytes([0xAF, 0x00, 0x12, 0x10])
KEY = bytes([0x17, 0x01, 0, 0, 0]) + b"K" * 100
INTER = bytes([0x27, 0x01, 0, 0, 0]) + b"P" * 50
AUDIO = bytes([0xAF, 0x01]) + b"A" * 20


class FakeTransport:
    def __init__(self):
        self.chunks: list[bytes] = []
        self.buffered = 0
        self.writes = 0

    def writelines(self, data):
        self.writes += 1
        self.chunks.extend(data)

    def write(self, data):
        self.chunks.append(data)

    def get_write_buffer_size(self):
        return self.buffered

    def is_closing(self):
        return False

    def data(self) -> bytes:
        return b"".join(self.chunks)


class FakeSink:
    def __init__(self):
        self.transport = FakeTransport()
        self.kicked = None
        self.unpublished = 0
        self.published = 0

    def kick(self, reason):
        self.kicked = reason

    def on_source_unpublish(self):
        self.unpublished += 1

    def on_source_publish(self):
        self.published += 1


def make_source(**kw) -> Source:
    kw.setdefault("min_latency", True)
    return Source("__defaultVhost__/live/s", "__defaultVhost__", "live", "s", **kw)


def publish_gop(source: Source, start_ts: int, frames: int = 5, now: float = 0.0) -> int:
    ts = start_ts
    source.on_media(9, ts, KEY, now)
    for _ in range(frames - 1):
        ts += 40
        source.on_media(8, ts, AUDIO, now)
        source.on_media(9, ts, INTER, now)
    return ts


def read_rtmp(data: bytes, chunk_size: int = 60000):
    reader = ChunkReader(chunk_size=chunk_size)
    return reader.feed(data)


def test_new_player_gets_headers_then_starts_at_the_latest_keyframe():
    source = make_source()
    source.on_publish(object(), 0.0)
    source.on_media(18, 0, amf0.encode("@setDataFrame", "onMetaData", {"width": 320.0, "duration": 5.0}), 0.0)
    source.on_media(9, 0, AVC_HEADER, 0.0)
    source.on_media(8, 0, AAC_HEADER, 0.0)
    publish_gop(source, 0)
    publish_gop(source, 1000)
    last = source.jitter.last_out
    sink = FakeSink()
    consumer = Consumer(source, rtmp_format(60000), sink)
    consumer.start(0.0)
    messages = read_rtmp(sink.transport.data())
    kinds = [(m.type_id, m.payload[:2]) for m in messages]
    assert kinds[0][0] == 18 and kinds[1] == (9, AVC_HEADER[:2]) and kinds[2] == (8, AAC_HEADER[:2])
    assert messages[3].payload == KEY, "the GOP starts at the latest keyframe"
    assert messages[1].timestamp == messages[3].timestamp == 170, "headers carry the GOP's time (jitter: +10)"
    assert messages[0].timestamp == 0, "onMetaData at time 0, or FFmpeg sees a data stream"
    assert messages[-1].timestamp == last
    meta = amf0.decode_all(messages[0].payload)
    assert meta[0] == "onMetaData" and meta[1]["server"].startswith("nonstop/") and "duration" not in meta[1]


def test_every_player_of_a_format_gets_the_same_bytes_objects():
    source = make_source()
    source.on_publish(object(), 0.0)
    sinks = [FakeSink() for _ in range(3)]
    for sink in sinks:
        Consumer(source, FORMAT_FLV, sink).start(0.0)
    publish_gop(source, 0)
    first = sinks[0].transport.chunks
    for sink in sinks[1:]:
        assert len(sink.transport.chunks) == len(first)
        assert all(a is b for a, b in zip(sink.transport.chunks, first)), "encode once, share the bytes"


def test_merged_writes_wait_for_mw_msgs_and_mw_latency():
    source = make_source(min_latency=False, mw_latency_ms=350, mw_msgs=8)
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    Consumer(source, FORMAT_FLV, sink).start(0.0)
    writes_before = sink.transport.writes
    for i in range(20):  # 20 frames, 40 ms apart: 760 ms of media
        source.on_media(9, i * 40, KEY if i == 0 else INTER, 0.0)
    writes = sink.transport.writes - writes_before
    assert 1 <= writes <= 3, f"{writes} writes for 20 messages: writes must be merged"


def test_player_position_survives_snapshot_and_restore_without_gap_or_repeat():
    source = make_source()
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    consumer = Consumer(source, rtmp_format(4096), sink)
    consumer.start(0.0)
    publish_gop(source, 0)
    position = consumer.position
    snap = source.snapshot()
    restored = Source.restore(snap, 0.0)
    sink2 = FakeSink()
    moved = Consumer(restored, rtmp_format(4096), sink2)
    moved.attach(position)
    restored.publisher = object()
    restored.on_media(9, 2000, KEY, 0.0)
    messages = read_rtmp(sink2.transport.data(), 4096)
    assert [m.payload for m in messages] == [KEY], "exactly the next message, nothing resent"
    assert messages[0].timestamp > 160


def test_slow_player_is_cut_back_to_the_keyframe_then_kicked():
    source = make_source(queue_length_ms=1000)
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    consumer = Consumer(source, FORMAT_FLV, sink)
    consumer.start(0.0)
    sink.transport.buffered = MAX_BUFFERED_BYTES + 1  # the player stops reading
    ts = 0
    for gop in range(5):
        ts = publish_gop(source, ts + 40, frames=30, now=0.0)
    assert consumer.position < source.next_seq - 1, "a full transport is not fed"
    sink.transport.buffered = 0
    source.on_media(9, ts + 40, INTER, 5.0)
    assert consumer.dropped > 0 and consumer.position == source.next_seq - 1
    assert sink.kicked is None
    # Stuck for longer than queue_length: disconnected.
    sink.transport.buffered = MAX_BUFFERED_BYTES + 1
    source.on_media(9, ts + 80, INTER, 6.0)
    source.on_media(9, ts + 120, INTER, 8.0)
    assert sink.kicked and "too slow" in sink.kicked


def test_log_memory_is_bounded_with_no_player():
    source = make_source(queue_length_ms=2000)
    source.on_publish(object(), 0.0)
    ts = 0
    for _ in range(50):
        ts = publish_gop(source, ts + 40, frames=25)
    assert len(source.packets) <= 50, "only the GOP stays when nobody lags"


def test_unpublish_notifies_players_and_republish_continues_the_timeline():
    source = make_source()
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    Consumer(source, FORMAT_FLV, sink).start(0.0)
    publish_gop(source, 5000)
    last = source.jitter.last_out
    source.on_unpublish(1.0)
    assert sink.unpublished == 1
    source.on_publish(object(), 2.0)
    assert sink.published == 1
    source.on_media(9, 0, KEY, 2.0)  # the new publisher starts at 0
    assert source.packets[-1].timestamp == source.jitter.last_out
    assert source.packets[-1].timestamp > last, "players see the timeline go on, not jump back"


def test_jitter_full_turns_jumps_into_small_steps():
    j = Jitter("full")
    assert [j.correct(t) for t in (1000, 1040, 1080, 99999, 100039, 50)] == [0, 40, 80, 90, 130, 140]


def test_jitter_zero_starts_at_zero_and_off_passes_through():
    j = Jitter("zero")
    assert [j.correct(t) for t in (5000, 5040)] == [0, 40]
    j = Jitter("off")
    assert j.correct(123456) == 123456


def test_timestamps_past_2_pow_32_are_written_modulo_2_pow_32():
    source = make_source(time_jitter="off")
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    Consumer(source, rtmp_format(60000), sink).start(0.0)
    source.on_media(9, 2**32 + 500, KEY, 0.0)
    messages = read_rtmp(sink.transport.data())
    assert messages[-1].timestamp % 2**32 == 500


def test_enhanced_rtmp_hevc_keyframe_starts_the_gop():
    source = make_source()
    source.on_publish(object(), 0.0)
    hevc_key = bytes([0x80 | 0x10 | 1]) + b"hvc1" + b"\x00\x00\x00" + b"H" * 10
    source.on_media(9, 0, INTER, 0.0)
    source.on_media(9, 40, hevc_key, 0.0)
    assert source.gop_start_seq == source.next_seq - 1


def test_a_source_is_freed_the_moment_its_publisher_leaves():
    registry = SourceRegistry()
    source = registry.fetch_or_create("v", "live", "s", now=0.0)
    source.on_publish(object(), 0.0)
    assert registry.sweep(100.0) == []
    source.on_unpublish(1.0)
    assert len(registry) == 0 and registry.freed_total == 1
    assert registry.get("v", "live", "s") is None
    assert registry.fetch_or_create("v", "live", "s", now=2.0) is not source


def test_a_source_with_a_waiting_player_is_kept_then_freed_when_it_leaves():
    registry = SourceRegistry()
    source = registry.fetch_or_create("v", "live", "s", now=0.0)
    consumer = Consumer(source, FORMAT_FLV, FakeSink())
    consumer.start(0.0)
    assert registry.sweep(100.0) == []
    consumer.stop(100.0)
    assert len(registry) == 0 and registry.freed_total == 1


def test_a_source_whose_player_leaves_while_it_is_published_is_kept():
    registry = SourceRegistry()
    source = registry.fetch_or_create("v", "live", "s", now=0.0)
    source.on_publish(object(), 0.0)
    consumer = Consumer(source, FORMAT_FLV, FakeSink())
    consumer.start(0.0)
    consumer.stop(1.0)
    assert registry.sweep(100.0) == [] and registry.get("v", "live", "s") is source


def test_a_source_nobody_attached_to_is_freed_by_the_sweep():
    registry = SourceRegistry()
    source = registry.fetch_or_create("v", "live", "s", now=1.0)
    assert registry.sweep(1.0 + SOURCE_IDLE_FREE_S / 2) == []
    assert registry.sweep(1.0 + SOURCE_IDLE_FREE_S) == [source]
    assert len(registry) == 0 and registry.freed_total == 1


def test_flv_tags_parse_back():
    source = make_source()
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    Consumer(source, FORMAT_FLV, sink).start(0.0)
    publish_gop(source, 0)
    reader = flv.FlvReader()
    tags = reader.feed(flv.file_header(True, True) + sink.transport.data())
    assert tags[0].payload == KEY and len(tags) == 9


# ----- rules a mutation probe found untested ---------------------------------------------------------------

def fall_behind_then_catch_up(source: Source, sink: FakeSink, ts: int, now: float) -> int:
    """The player's transport fills up while 3.5 s of media (more than queue_length 1 s) go by, all at the
    wall-clock instant `now` (so the too-slow kick, which counts wall-clock seconds, stays out of it), then
    empties: the next flush must cut the player back."""
    sink.transport.buffered = MAX_BUFFERED_BYTES + 1
    for _ in range(3):
        ts = publish_gop(source, ts + 40, frames=30, now=now)
    sink.transport.buffered = 0
    ts += 40
    source.on_media(9, ts, INTER, now)
    return ts


def test_a_player_cut_back_three_times_within_a_minute_is_disconnected_at_the_fourth():
    source = make_source(queue_length_ms=1000)
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    consumer = Consumer(source, FORMAT_FLV, sink)
    consumer.start(0.0)
    ts, dropped = 0, 0
    for round_ in range(1, 4):
        ts = fall_behind_then_catch_up(source, sink, ts, now=float(round_))
        assert consumer.cutbacks == round_ and consumer.dropped > dropped, f"cut back in round {round_}"
        assert consumer.position == source.next_seq - 1, "a cut-back player is fed from the newest keyframe on"
        assert sink.kicked is None, f"{round_} cutbacks within a minute are allowed"
        dropped = consumer.dropped
    fall_behind_then_catch_up(source, sink, ts, now=4.0)
    assert sink.kicked == "player stays behind: cut back 3 times in 60s"


def test_cutbacks_more_than_a_minute_apart_never_disconnect_a_player():
    source = make_source(queue_length_ms=1000)
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    consumer = Consumer(source, FORMAT_FLV, sink)
    consumer.start(0.0)
    ts = 0
    for round_ in range(6):
        ts = fall_behind_then_catch_up(source, sink, ts, now=round_ * 61.0)
        assert consumer.cutbacks == 1, "the count starts again after CUTBACK_WINDOW_S"
    assert sink.kicked is None and consumer.dropped > 0


def test_a_player_that_caught_up_gets_a_fresh_queue_length_when_it_falls_behind_again():
    source = make_source(queue_length_ms=1000)
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    consumer = Consumer(source, FORMAT_FLV, sink)
    consumer.start(0.0)
    sink.transport.buffered = MAX_BUFFERED_BYTES + 1
    source.on_media(9, 40, KEY, 0.0)            # behind since 0.0
    sink.transport.buffered = 0
    source.on_media(9, 80, INTER, 0.5)          # caught up: everything was written
    assert consumer.position == source.next_seq - 1
    sink.transport.buffered = MAX_BUFFERED_BYTES + 1
    source.on_media(9, 120, INTER, 5.0)         # behind again, since 5.0 (not since 0.0)
    source.on_media(9, 160, INTER, 5.9)         # 0.9 s < queue_length
    assert sink.kicked is None, "a player behind for 0.9 s of a 1 s queue_length is not too slow"
    source.on_media(9, 200, INTER, 6.1)
    assert sink.kicked and sink.kicked.startswith("player too slow"), "1.1 s behind: too slow"


def test_a_paused_player_never_makes_the_log_longer_than_max_log_packets():
    """Audio only, 1 ms apart: no keyframe trims the log and nothing is older than queue_length, so only
    MAX_LOG_PACKETS bounds what a paused player keeps in memory."""
    source = make_source(queue_length_ms=30000)
    source.on_publish(object(), 0.0)
    sink = FakeSink()
    consumer = Consumer(source, FORMAT_FLV, sink)
    consumer.start(0.0)
    consumer.paused = True
    for i in range(3 * MAX_LOG_PACKETS):
        source.on_media(8, i, AUDIO, 0.0)
        assert len(source.packets) <= MAX_LOG_PACKETS + TRIM_EVERY_PACKETS
    source.trim()
    assert len(source.packets) == MAX_LOG_PACKETS, "the newest MAX_LOG_PACKETS are kept, no fewer"
    assert len(source.encodings[FORMAT_FLV]) == MAX_LOG_PACKETS and source.base_seq == source.next_seq - MAX_LOG_PACKETS
    # The player resumes: what it missed is gone, so it is cut back to the newest message, not fed stale bytes.
    consumer.paused = False
    sink.transport.chunks.clear()
    source.on_media(8, 3 * MAX_LOG_PACKETS, AUDIO, 0.0)
    assert consumer.dropped >= 2 * MAX_LOG_PACKETS and consumer.position == source.next_seq - 1
    source.on_media(8, 3 * MAX_LOG_PACKETS + 1, AUDIO, 0.0)
    assert len(sink.transport.chunks) == 1, "then it goes on with the next message"
