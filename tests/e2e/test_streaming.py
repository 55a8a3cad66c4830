"""End to end: the server as a subprocess, ffmpeg publishing, ffmpeg and ffprobe playing RTMP and HTTP-FLV."""

from __future__ import annotations

import re
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from nonstop import __version__
from tests.helpers import (FFPROBE, Server, assert_frames_match_timestamps, ffprobe_json, finish_player,
                           play, publish_file, publish_live, start_player, stop_proc, wait_for)

pytestmark = pytest.mark.timeout(120)


def wait_published(server: Server, stream: str = "livestream", timeout: float = 15) -> None:
    """The stream is live once its HTTP-FLV URL stops answering 404."""
    def ready():
        try:
            with urllib.request.urlopen(server.flv_url(stream), timeout=2) as r:
                r.read(13)
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False
    wait_for(ready, timeout, interval=0.2, what=f"stream {stream} to be published")


LOG_LINE = re.compile(r"^\[[^]]*\]\[\w+\]\[\d+\]\[([^]]+)\] (.*)$")


def conns_logging(log: str, steps: list[str]) -> list[str]:
    """The cids whose log lines start with each of `steps`, in that order (other lines may come between)."""
    by_cid: dict[str, list[str]] = {}
    for line in log.splitlines():
        m = LOG_LINE.match(line)
        if m:
            by_cid.setdefault(m.group(1), []).append(m.group(2))
    found = []
    for cid, messages in by_cid.items():
        todo = iter(messages)
        if all(any(message.startswith(step) for message in todo) for step in steps):
            found.append(cid)
    return found


def assert_clean_decode(result) -> None:
    assert result.returncode == 0, f"player failed: {result.stderr[-2000:]}"
    assert result.stderr.strip() == "", f"decode errors: {result.stderr[-2000:]}"
    assert result.video and result.audio, "both video and audio must be there"


@pytest.fixture
def server():
    with Server() as s:
        yield s


def test_live_publish_plays_over_rtmp_and_http_flv_with_server_version(server):
    publisher = publish_live(server.rtmp_url())
    try:
        wait_published(server)
        probe = ffprobe_json(server.rtmp_url())
        kinds = sorted(s["codec_type"] for s in probe["streams"])
        assert kinds == ["audio", "video"]
        tags = probe["format"].get("tags", {})
        assert tags.get("server_version") == __version__ and tags.get("server") == f"nonstop/{__version__}"
        rtmp_player, flv_player = start_player(server.rtmp_url(), 4), start_player(server.flv_url(), 4)   # at once
        rtmp_result, flv_result = finish_player(rtmp_player, 24), finish_player(flv_player, 24)
        assert_clean_decode(rtmp_result)
        assert_frames_match_timestamps(rtmp_result)
        assert_clean_decode(flv_result)
        assert_frames_match_timestamps(flv_result)
        probe = ffprobe_json(server.flv_url())
        assert probe["format"]["tags"].get("server_version") == __version__
    finally:
        stop_proc(publisher)
    # One log line per event, under each connection's cid: the publisher's connect, publish, unpublish and close,
    # each RTMP player's connect, play and close, each HTTP-FLV player's play and close.
    key = "__defaultVhost__/live/livestream"
    connect = f"connect ip=127.0.0.1, vhost=__defaultVhost__, app=live, tcUrl=rtmp://127.0.0.1:{server.rtmp_port}/live"
    publisher_steps = [connect, f"publish {key}, type=live", f"unpublish {key}: ", "close ip=127.0.0.1, alive="]
    rtmp_player_steps = [connect, f"play {key}, start=", "close ip=127.0.0.1, alive="]
    flv_player_steps = [f"flv play {key} ip=127.0.0.1", "close flv player ip=127.0.0.1"]

    def logged() -> list[int]:
        log = server.log()
        return [len(conns_logging(log, steps)) for steps in (publisher_steps, rtmp_player_steps, flv_player_steps)]
    # 1 publisher, 2 RTMP players (ffprobe, ffmpeg), 3 HTTP-FLV players (the readiness probe, ffmpeg, ffprobe).
    # Each has hung up; the server logs a close once it has read the hang-up.
    want = [1, 2, 3]
    try:
        wait_for(lambda: logged() == want, 10, what="every connection's log lines")
    except AssertionError:
        raise AssertionError(f"connections logged (publisher, RTMP players, FLV players): {logged()}, want {want}"
                             f"\n{server.log()[-4000:]}") from None
    print(f"logged: {want[0]} publisher, {want[1]} RTMP players, {want[2]} HTTP-FLV players")


def test_copy_published_file_two_players_at_once(server, test_flv):
    publisher = publish_file(server.rtmp_url("copy"), test_flv)
    try:
        wait_published(server, "copy")
        first = start_player(server.rtmp_url("copy"), 4)
        second = start_player(server.flv_url("copy"), 4)
        for result in (finish_player(first, 30), finish_player(second, 30)):
            assert_clean_decode(result)
            assert_frames_match_timestamps(result)
    finally:
        stop_proc(publisher)


def first_video_packet_flags(url: str) -> str:
    out = subprocess.run([FFPROBE, "-v", "error", "-select_streams", "v", "-show_entries", "packet=flags",
                          "-of", "csv=p=0", "-read_intervals", "%+#5", url],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[0]


def test_late_joiner_starts_on_a_keyframe(server, test_flv):
    publisher = publish_file(server.rtmp_url(), test_flv)
    try:
        wait_published(server)
        time.sleep(1.5)  # join mid-GOP on purpose (keyframes are 1 s apart)
        assert first_video_packet_flags(server.rtmp_url()).startswith("K")
        assert first_video_packet_flags(server.flv_url()).startswith("K")
    finally:
        stop_proc(publisher)


def test_busy_publish_is_refused_and_the_first_publisher_goes_on(server, test_flv):
    publisher = publish_file(server.rtmp_url(), test_flv)
    try:
        wait_published(server)
        second = publish_file(server.rtmp_url(), test_flv)
        code = second.wait(timeout=15)
        assert code != 0, "the second publisher must be refused"
        assert "busy" in server.log()
        assert publisher.poll() is None
        result = play(server.flv_url(), 2)
        assert_clean_decode(result)
    finally:
        stop_proc(publisher)


def test_unpublish_then_republish_and_the_player_resumes(server, test_flv):
    publisher = publish_file(server.rtmp_url(), test_flv)
    wait_published(server)
    player = start_player(server.flv_url(), 6)
    time.sleep(2)
    stop_proc(publisher)
    wait_for(lambda: "unpublish" in server.log(), 10, what="unpublish")
    publisher = publish_file(server.rtmp_url(), test_flv)
    try:
        result = finish_player(player, 40)
        assert result.returncode == 0, result.stderr
        assert_frames_match_timestamps(result)
        pts = result.video_pts()
        assert pts[-1] - pts[0] > 5, "the player went on after the republish"
    finally:
        stop_proc(publisher)


def test_http_flv_of_an_unpublished_stream_is_404(server):
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(server.flv_url("nobody"), timeout=5)
    assert e.value.code == 404


def test_max_connections_is_enforced_at_accept():
    import socket
    with Server(max_connections=3) as server:
        held = [socket.create_connection(("127.0.0.1", server.rtmp_port)) for _ in range(3)]
        extra = socket.create_connection(("127.0.0.1", server.rtmp_port), timeout=5)
        extra.settimeout(5)
        try:
            assert extra.recv(1) == b"", "the connection over max_connections is closed at once"
        except ConnectionResetError:
            pass
        wait_for(lambda: "max_connections 3" in server.log(), 5, what="the rejection log line")
        for s in held + [extra]:
            s.close()


def test_rtmp_player_gets_unpublish_notify_and_resumes_on_republish(server):
    """ffmpeg ends its RTMP play on UnpublishNotify (its choice); a player that follows the notify resumes."""
    import asyncio

    from nonstop.protocol import rtmp
    from tests.rtmp_client import AVC_HEADER, AVC_INTER, AVC_KEYFRAME, RtmpTestClient

    async def scenario():
        player = await RtmpTestClient().open(server.rtmp_port)
        await player.play("resume")
        for round_ in range(2):
            publisher = await RtmpTestClient().open(server.rtmp_port)
            status = await publisher.publish("resume")
            assert status.code == "NetStream.Publish.Start"
            publisher.send_media(rtmp.MSG_VIDEO, 0, AVC_HEADER)
            publisher.send_media(rtmp.MSG_VIDEO, 0, AVC_KEYFRAME)
            for i in range(1, 20):
                publisher.send_media(rtmp.MSG_VIDEO, i * 40, AVC_INTER)
            await publisher.drain()
            media = await player.wait_for(lambda e: isinstance(e, rtmp.Media) and e.payload == AVC_KEYFRAME)
            assert media.type_id == rtmp.MSG_VIDEO
            await publisher.close()
            notify = await player.wait_for(lambda e: isinstance(e, rtmp.Status))
            assert notify.code == "NetStream.Play.UnpublishNotify"
        await player.close()

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_publisher_timeouts_first_packet_and_idle_but_never_a_publisher_that_sends():
    """publish.firstpkt_timeout bounds the wait for the first media message only; after it, normal_timeout
    bounds the silence between messages. A publisher that keeps sending is never closed (it was, once: the
    first-packet deadline outlived the first packet)."""
    import asyncio

    from nonstop.protocol import rtmp
    from tests.rtmp_client import AVC_HEADER, AVC_INTER, AVC_KEYFRAME, RtmpTestClient

    timeout_ms = 1000
    body = f"publish {{ firstpkt_timeout {timeout_ms}; normal_timeout {timeout_ms}; }}"

    async def closed_after(client: RtmpTestClient, limit: float) -> float:
        started = time.monotonic()
        while True:
            try:
                if not await client.read_once(max(0.01, started + limit - time.monotonic())):
                    return time.monotonic() - started
            except (ConnectionError, OSError):
                return time.monotonic() - started
            except asyncio.TimeoutError:
                raise AssertionError(f"still connected after {limit}s")

    async def scenario(port: int):
        sender, silent, stopper = [await RtmpTestClient().open(port) for _ in range(3)]
        for client, name in ((sender, "sender"), (silent, "silent"), (stopper, "stopper")):
            assert (await client.publish(name)).code == "NetStream.Publish.Start"
        for client in (sender, stopper):
            client.send_media(rtmp.MSG_VIDEO, 0, AVC_HEADER)
            client.send_media(rtmp.MSG_VIDEO, 0, AVC_KEYFRAME)
        started = time.monotonic()
        waits = [asyncio.ensure_future(closed_after(silent, 3 * 2 * timeout_ms / 1000)),
                 asyncio.ensure_future(closed_after(stopper, 3 * 2 * timeout_ms / 1000))]
        ts = 0
        while time.monotonic() - started < 3.5 * timeout_ms / 1000:     # well past both timeouts
            ts += 100
            sender.send_media(rtmp.MSG_VIDEO, ts, AVC_INTER)
            await sender.drain()
            await asyncio.sleep(0.1)
        silent_after, stopper_after = await asyncio.gather(*waits)
        # Still connected: it answers a new stream at once.
        sender.session.create_stream()
        sender._flush()
        await sender.wait_for(lambda e: isinstance(e, rtmp.StreamCreated), timeout=5)
        for client in (sender, silent, stopper):
            await client.close()
        return silent_after, stopper_after

    with Server(vhost_body=body) as server:
        silent_after, stopper_after = asyncio.run(asyncio.wait_for(scenario(server.rtmp_port), 30))
        # The sweep runs every second: a deadline is seen up to 1 s late (goal: timeout + 1 s).
        print(f"silent publisher closed after {silent_after:.2f}s, one that stopped after {stopper_after:.2f}s "
              f"(timeouts {timeout_ms} ms, goal {timeout_ms / 1000 + 1:.0f}s)")
        assert silent_after >= timeout_ms / 1000 * 0.9 and stopper_after >= timeout_ms / 1000 * 0.9
        log = server.log()
        assert f"publisher sent no media for {timeout_ms} ms" in log
        assert f"publisher idle for {timeout_ms} ms" in log
        assert log.count("reason=publisher sent no media") == 1, "only the silent publisher times out"
        assert log.count("reason=publisher idle") == 1, "only the publisher that stopped times out"
