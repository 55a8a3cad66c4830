"""Edges make HLS from the stream they pull: a real Worker with an edge vhost (its origin unreachable, so nothing
comes but what the test feeds the source), driven through hls_http.serve with stand-in connections and the
worker's sweep at chosen times. Plus the playlist path's inverse template, and codecs HLS does not carry."""

from __future__ import annotations

import asyncio
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from nonstop.config import load_text
from nonstop.config.schema import Hls
from nonstop.media.hls import Segmenter, m3u8_pattern, render, settings_from_config
from nonstop.media.registry import SourceRegistry
from nonstop.protocol.rtmp import MSG_VIDEO
from nonstop.server import hls_http
from nonstop.server.http_conn import HttpConnection
from nonstop.server.worker import Worker
from tests.unit.test_hls_http import AVC_SH, FakeConn, frame
from tests.unit.test_upgrade_worker import FakeTransport

FRAGMENT_S, WINDOW_S, LINGER_MS = 1, 3, 1000
BOUND_S = 3 * FRAGMENT_S        # a held first-playlist request: 3 target durations


def edge_worker(hls: str = "", top: str = "") -> Worker:
    config = load_text(f"""
        listen 19350;
        {top}
        vhost __defaultVhost__ {{
            cluster {{ mode remote; origin 127.0.0.1:1; linger {LINGER_MS}; retry_min 60000; retry_max 60000; }}
            hls {{ enabled on; hls_fragment {FRAGMENT_S}; hls_window {WINDOW_S}; {hls} }}
        }}
        """)
    return Worker(config)


def ask(worker, path: str, query: str = "") -> FakeConn:
    conn = FakeConn(worker)
    assert hls_http.serve(conn, "GET", path, query)
    return conn


def feed_one_segment(source) -> None:
    now = time.monotonic()
    source.on_media(MSG_VIDEO, 0, AVC_SH, now)
    for i in range(25 * FRAGMENT_S + 1):
        source.on_media(MSG_VIDEO, i * 40, frame(i % 25 == 0), now)


async def stopped(worker: Worker) -> None:
    await worker.cluster.stop()


def test_many_playlist_requests_make_one_pull_and_are_answered_at_the_first_segment():
    async def scenario():
        worker = edge_worker()
        try:
            conns = [ask(worker, "/live/s.m3u8", "token=abc") for _ in range(20)]
            assert not any(c.sent for c in conns), "answered before any segment"
            assert len(worker.cluster.ingesters) == 1 and len(worker.registry.sources) == 1
            ingester = worker.cluster.ingesters["__defaultVhost__/live/s"]
            assert ingester.query == "token=abc" and ingester.hls_waited
            feed_one_segment(ingester.source)
            answers = [c.head_and_body() for c in conns]
            assert all(status == 200 for status, _, _ in answers)
            assert all(b"?hls_ctx=" in body for _, _, body in answers)     # SRS's master playlist
            assert len(worker.hls_sessions.sessions) == 20 and not worker.hls_sessions.held or \
                all(h.done for h in worker.hls_sessions.held)
            # hls_ctx is the HLS server's, not a token for the origin; the next request joins the same pull.
            ask(worker, "/live/s.m3u8", "hls_ctx=abcd1234&token=abc")
            assert len(worker.cluster.ingesters) == 1
        finally:
            await stopped(worker)
    asyncio.run(scenario())


def test_a_stream_the_origin_lacks_gets_404_at_the_bound_and_nothing_stays():
    async def scenario():
        worker = edge_worker()
        try:
            names = [f"ghost{i}" for i in range(10)]
            asked = time.monotonic()
            conns = [ask(worker, f"/live/{name}.m3u8") for name in names]
            assert len(worker.cluster.ingesters) == len(names)
            worker.sweep(asked + BOUND_S - 0.2)
            assert not any(c.sent for c in conns) and len(worker.cluster.ingesters) == len(names)
            worker.sweep(asked + BOUND_S + 0.1)
            assert [c.head_and_body()[0] for c in conns] == [404] * len(names)
            assert not worker.cluster.ingesters, "the pulls of streams the origin lacks stay"
            assert not worker.registry.sources and not worker.hls_index.paths
            assert not worker.hls_sessions.held and not worker.hls_sessions.sessions
            # A segment of a stream no one pulls is no reason to pull it.
            conn = FakeConn(worker)
            assert hls_http.serve(conn, "GET", "/live/ghost0-1.ts", "") is False
            assert not worker.cluster.ingesters
        finally:
            await stopped(worker)
    asyncio.run(scenario())


def test_hls_sessions_keep_the_pull_until_they_expire_then_linger():
    async def scenario():
        worker = edge_worker()
        try:
            conn = ask(worker, "/live/s.m3u8")
            ingester = worker.cluster.ingesters["__defaultVhost__/live/s"]
            feed_one_segment(ingester.source)
            assert conn.head_and_body()[0] == 200
            last = time.monotonic()
            ask(worker, "/live/s.m3u8", "hls_ctx=v1")
            # Far past linger, while the session lives: the pull stays.
            for t in (1, 2, 3, 2 * WINDOW_S - 0.5):
                worker.sweep(last + t)
                assert worker.cluster.ingesters.get("__defaultVhost__/live/s") is ingester, t
            # The session expired (2 * hls_window): linger starts, then the pull stops.
            worker.sweep(last + 2 * WINDOW_S + 0.1)
            assert not ingester.stopped
            worker.sweep(last + 2 * WINDOW_S + 0.2 + LINGER_MS / 1000)
            assert ingester.stopped and not worker.cluster.ingesters
            # The playlist stays for hls_dispose; a viewer asking again starts the pull again, served at once.
            conn = ask(worker, "/live/s.m3u8", "hls_ctx=v2")
            assert conn.head_and_body()[0] == 200
            again = worker.cluster.ingesters["__defaultVhost__/live/s"]
            assert again is not ingester and ingester.source.hls.unpublished_at is None
        finally:
            await stopped(worker)
    asyncio.run(scenario())


def test_without_hls_ctx_recent_playlist_requests_keep_the_pull():
    async def scenario():
        worker = edge_worker("hls_ctx off;")
        try:
            conn = ask(worker, "/live/s.m3u8")
            ingester = worker.cluster.ingesters["__defaultVhost__/live/s"]
            feed_one_segment(ingester.source)
            status, _, body = conn.head_and_body()
            assert status == 200 and b"#EXTINF" in body and not worker.hls_sessions.sessions
            last = time.monotonic()
            ask(worker, "/live/s.m3u8")
            for t in (1, 2, 3, 2 * WINDOW_S - 0.5):
                worker.sweep(last + t)
                assert not ingester.stopped, t
            worker.sweep(last + 2 * WINDOW_S + 0.1)
            worker.sweep(last + 2 * WINDOW_S + 0.2 + LINGER_MS / 1000)
            assert ingester.stopped and not worker.hls_sessions.anonymous
        finally:
            await stopped(worker)
    asyncio.run(scenario())


def test_an_origin_does_not_hold_a_playlist_request_for_a_stream_it_lacks():
    async def scenario():
        worker = Worker(load_text("listen 19350; vhost __defaultVhost__ { hls { enabled on; } }"))
        assert hls_http.serve(FakeConn(worker), "GET", "/live/none.m3u8", "") is False
        assert not worker.registry.sources and not worker.hls_sessions.held
        await stopped(worker)
    asyncio.run(scenario())


def test_a_handed_over_source_whose_playlist_was_live_is_pulled_again_for_its_hls_viewers():
    async def scenario():
        worker = edge_worker()
        try:
            ask(worker, "/live/s.m3u8")
            ingester = worker.cluster.ingesters["__defaultVhost__/live/s"]
            feed_one_segment(ingester.source)
            # What a new worker gets in a handover: the source and its segmenter, no upstream, no HLS session.
            snap = ingester.source.snapshot()
            await worker.cluster.stop()
            new = edge_worker()
            source = type(ingester.source).restore(snap, time.monotonic())
            new.adopt_source(source)
            assert source.hls.playlist is not None and not new.cluster.ingesters
            new.sweep(time.monotonic())
            assert new.cluster.ingesters["__defaultVhost__/live/s"].source is source
            await new.cluster.stop()
        finally:
            await stopped(worker)
    asyncio.run(scenario())


def test_a_held_request_outlives_the_connections_deadline_for_a_request_head():
    async def scenario():
        worker = edge_worker(top="handshake_timeout 2000;")     # shorter than the hold: 3 s
        try:
            conn, transport = HttpConnection(worker), FakeTransport()
            conn.connection_made(transport)
            conn.data_received(b"GET /live/s.m3u8 HTTP/1.1\r\nHost: x\r\n\r\n")
            worker.sweep(time.monotonic() + 2.5)
            assert not conn.closed and transport.data == b""
            feed_one_segment(worker.cluster.ingesters["__defaultVhost__/live/s"].source)
            assert transport.data.startswith(b"HTTP/1.1 200 OK") and not conn.closed
        finally:
            await stopped(worker)
    asyncio.run(scenario())


# ----- the playlist path's inverse template ------------------------------------------------------------------

NAME = st.text(st.sampled_from("abcxyz019-_."), min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(NAME, NAME, NAME, st.sampled_from(["[app]/[stream].m3u8", "[vhost]/[app]/[stream].m3u8",
                                           "hls/[app]/[stream]/index.m3u8", "[app]/[stream]/[stream].m3u8"]))
def test_a_rendered_playlist_path_gives_back_its_app_and_stream(vhost, app, stream, template):
    path = render(template, vhost, app, stream)
    match = m3u8_pattern(template, vhost).fullmatch(path)
    assert match is not None and (match.group("app"), match.group("stream")) == (app, stream)


def test_paths_that_are_not_the_template_or_templates_without_a_stream_match_nothing():
    pattern = m3u8_pattern("[app]/[stream].m3u8", "__defaultVhost__")
    assert pattern.fullmatch("live/s-3.ts") is None and pattern.fullmatch("s.m3u8") is None
    assert pattern.fullmatch("a/b/s.m3u8").groupdict() == {"app": "a/b", "stream": "s"}
    assert m3u8_pattern("[app]/index.m3u8", "v") is None
    assert m3u8_pattern("[vhost]/[app]/[stream].m3u8", "v").fullmatch("w/live/s.m3u8") is None


# ----- a pull that starts again, and codecs HLS does not carry ----------------------------------------------------

def test_a_pull_attached_again_tells_the_segmenter_its_publisher_is_back():
    registry = SourceRegistry()
    source = registry.fetch_or_create("__defaultVhost__", "live", "s", 0.0)
    source.hls = Segmenter(settings_from_config(Hls(enabled=True, hls_fragment=1)), "__defaultVhost__", "live", "s")
    source.attach_publisher(object(), 1.0)
    source.on_unpublish(2.0)
    assert source.hls.unpublished_at == 2.0
    source.attach_publisher(object(), 30.0)
    # Else hls_dispose would drop the playlist while the new pull feeds it; and it was gone long enough for a
    # discontinuity (the republish window).
    assert source.hls.unpublished_at is None and source.hls.discontinuity_next
    handed_over = registry.fetch_or_create("__defaultVhost__", "live", "t", 0.0)
    handed_over.attach_publisher(object())      # a handed-over publisher: nothing to tell


AV1_SH = bytes((0x80 | 0x10 | 0,)) + b"av01" + bytes.fromhex("81000c000a0b00000024d6c7f8a004")
AV1_SH_2 = bytes((0x80 | 0x10 | 0,)) + b"av01" + bytes.fromhex("81000c000a0b00000024d6c7f8a005")


def test_a_new_configuration_of_a_codec_hls_leaves_out_changes_nothing():
    seg = Segmenter(settings_from_config(Hls(enabled=True, hls_fragment=1)), "__defaultVhost__", "live", "s")
    seg.on_media(MSG_VIDEO, 0, AV1_SH)
    seg.on_media(MSG_VIDEO, 1, AV1_SH_2)
    assert not seg.discontinuity_next and seg.muxer.video_codec is None
    seg.on_media(MSG_VIDEO, 2, AVC_SH)      # a codec it carries comes: that is a new configuration
    assert seg.discontinuity_next and seg.muxer.video_codec == "H264"
