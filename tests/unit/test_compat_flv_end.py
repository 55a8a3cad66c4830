"""HTTP-FLV's chunked framing around the shared bytes, and the republish_window directive (issue 11, item 3)."""

from __future__ import annotations

from nonstop.config import load_text
from nonstop.media.consumer import Consumer
from nonstop.media.packet import FORMAT_FLV
from tests.unit.test_media import AVC_HEADER, FakeSink, make_source, publish_gop


def dechunk(data: bytes) -> tuple[bytes, int]:
    """The body of a chunked stream and its number of chunks; fails on bad framing."""
    body, count = b"", 0
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        assert size > 0, "no terminator from the consumer: the connection writes it"
        body += data[:size]
        assert data[size:size + 2] == b"\r\n"
        data = data[size + 2:]
        count += 1
    return body, count


def play(chunked: bool) -> bytes:
    source = make_source(min_latency=True)
    source.on_publish(object(), 0.0)
    source.on_media(9, 0, AVC_HEADER, 0.0)
    publish_gop(source, 0)
    sink = FakeSink()
    consumer = Consumer(source, FORMAT_FLV, sink)
    consumer.chunked = chunked
    consumer.start(0.0)
    publish_gop(source, 1000)
    data = sink.transport.data()
    if not chunked:
        assert consumer.bytes_sent == len(data), "bytes_sent counts the FLV bytes, not the framing"
    return data


def test_chunked_consumer_frames_exactly_the_bytes_a_plain_one_writes():
    plain = play(False)
    body, chunks = dechunk(play(True))
    assert body == plain and chunks >= 3


def test_chunked_survives_the_consumer_snapshot():
    consumer = Consumer(make_source(), FORMAT_FLV, FakeSink())
    consumer.chunked = True
    other = Consumer(make_source(), FORMAT_FLV, FakeSink())
    other.restore_counters(consumer.snapshot())
    assert other.chunked is True
    del_key = consumer.snapshot()
    del del_key["chunked"]                      # a snapshot from a version without chunked framing
    other.restore_counters(del_key)
    assert other.chunked is False


def test_republish_window_directive():
    conf = load_text("listen 1935; vhost v { http_remux { enabled on; republish_window 1500; } }", "t.conf")
    assert conf.vhosts["v"].http_remux.republish_window == 1500
    conf = load_text("listen 1935; vhost v { http_remux { enabled on; } }", "t.conf")
    assert conf.vhosts["v"].http_remux.republish_window == 5000
