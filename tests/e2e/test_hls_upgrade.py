"""HLS viewers through upgrades, as fully as RTMP and HTTP-FLV viewers: hls.js on the console's player page plays
through three upgrades; an LL-HLS blocking reload pending at an upgrade is answered by the new worker; the hls_ctx
sessions keep their ids, counters and kicks; and hundreds of held requests and idle keep-alive connections during
an upgrade see no error while an RTMP player of another stream barely notices."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request

import pytest

from tests.browser import CHROMIUM, Browser
from tests.e2e.ops_helpers import process_alive
from tests.e2e.test_hls import (HLS_BODY, PlaylistPoller, assert_one_unbroken_playlist, get, m3u8_url,
                                segments_of, wait_segments)
from tests.e2e.upgrade_helpers import TimedPlayer, UpgradeServer
from tests.helpers import make_test_flv, publish_file, publish_live, stop_proc, wait_for

pytestmark = pytest.mark.timeout(150)

# LL-HLS with 6 s segments: a blocking reload for the next segment's first part, sent right after a segment is
# cut, waits ~6.5 s: long enough to be pending when the upgrade's handover runs (an upgrade takes 2-5 s here).
FRAGMENT_S = 6
LL_BODY = (f"hls {{ enabled on; hls_fragment {FRAGMENT_S}; hls_window 24; hls_dispose 30; hls_use_fmp4 on; "
           "hls_part 0.5; }")
# The bound on what an upgrade costs a viewer (the handover stall), asserted as is.
STALL_BOUND_S = 0.4


@pytest.fixture(scope="module")
def flv_40s(media_dir):
    return make_test_flv(media_dir / "upgrade-40s.flv", seconds=40)


def api_clients(server) -> list[dict]:
    with urllib.request.urlopen(server.api("/api/v1/clients?count=1000"), timeout=5) as r:
        return [c for c in json.load(r)["clients"] if c["type"] == "hls-play"]


def next_part(playlist: str) -> tuple[int, int]:
    """(msn, part) of the first part a playlist does not list yet."""
    listed = segments_of(playlist)
    msn = listed[-1][0] + 1
    return msn, playlist.split(listed[-1][1])[-1].count("#EXT-X-PART:")


def lists(playlist: str, msn: int, part: int) -> bool:
    listed = segments_of(playlist)
    last = listed[-1][0]
    return msn <= last or (msn == last + 1 and part < playlist.split(listed[-1][1])[-1].count("#EXT-X-PART:"))


def raw_request(port: int, target: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=15)
    sock.sendall(f"GET {target} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response with a Content-Length, from a blocking socket (status 0: closed before one)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return 0, {}, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(65536)
        if not chunk:
            return 0, headers, body
        body += chunk
    return int(lines[0].split()[1]), headers, body


def wait_for_the_first_cut(server) -> int:
    """Wait until the stream's first segment is cut (its playlist appears); the media sequence number of the
    segment after the open one, whose first part comes about FRAGMENT_S later."""
    base = m3u8_url(server) + "?hls_ctx=cut"
    wait_for(lambda: get(base)[0] == 200, 3 * FRAGMENT_S, interval=0.05, what="the first segment")
    return segments_of(get(base)[2].decode())[-1][0] + 2


# ----- hls.js on the console's player page --------------------------------------------------------------------

# Before the page's scripts: every hls.js error (fatal or not) and every failed response are recorded, and the
# video's currentTime is sampled against the wall clock.
WATCH_JS = """
window.__hlsErrors = [];
let __Hls;
Object.defineProperty(window, 'Hls', { configurable: true, get: () => __Hls, set: (Orig) => {
  __Hls = class extends Orig {
    constructor(config) {
      super(config);
      this.on(Orig.Events.ERROR, (_, d) => window.__hlsErrors.push(`${d.fatal ? 'fatal ' : ''}${d.details}`));
    }
  };
}});
window.__samples = [];
setInterval(() => {
  const v = document.querySelector('video');
  if (!v) return;
  const q = v.getVideoPlaybackQuality ? v.getVideoPlaybackQuality() : {};
  window.__samples.push([performance.now() / 1000, v.currentTime, q.totalVideoFrames || 0, q.droppedVideoFrames || 0]);
}, 100);
"""


@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (make test-deps installs it)")
def test_hlsjs_on_the_player_page_plays_through_three_upgrades(flv_40s, tmp_path):
    """hls.js on /players/, and beside it a playlist poller and ffmpeg's HLS demuxer (the issue: "test it with
    ffmpeg's HLS demuxer and with hls.js"), through the same three upgrades."""
    server = UpgradeServer(vhost_body=HLS_BODY).start()
    publisher = publish_file(server.rtmp_url(), flv_40s, loop=False)
    failed: list[str] = []
    poller = None
    try:
        wait_segments(server, 2)
        poller = PlaylistPoller(server.http_port, "/live/livestream.m3u8?hls_ctx=upgrade")
        poller.start()
        player = TimedPlayer(m3u8_url(server) + "?hls_ctx=ffmpeg", 60).start()
        with Browser() as browser:
            page = browser.new_page()

            def on_network(method: str, params: dict) -> None:
                if method == "Network.responseReceived" and params["response"]["status"] >= 400:
                    failed.append(f"{params['response']['status']} {params['response']['url']}")
                elif method == "Network.loadingFailed" and not params.get("canceled"):
                    failed.append(f"failed {params.get('errorText')}")
            browser.loop.call_soon_threadsafe(browser.listeners[page.session].append, on_network)
            page.call("Network.enable")
            page.call("Page.addScriptToEvaluateOnNewDocument", {"source": WATCH_JS})
            page.goto(f"http://127.0.0.1:{server.http_port}/players/?url=/live/livestream.m3u8")
            page.wait_for("window.nonstopPlayer.kind === 'hls' && document.querySelector('video').currentTime > 1",
                          20, what="hls.js to play")
            for n in (1, 2, 3):
                before = page.eval("document.querySelector('video').currentTime")
                page.wait_for(f"document.querySelector('video').currentTime > {before + 1.5}", 10,
                              what=f"playback before upgrade {n}")
                took = server.upgrade(n)
                assert server.log().count("upgrade done") == n, server.log()[-4000:]
                print(f"upgrade {n} done in {took:.2f}s")
            before = page.eval("document.querySelector('video').currentTime")
            page.wait_for(f"document.querySelector('video').currentTime > {before + 3}", 10,
                          what="playback after the last upgrade")
            samples = page.eval("window.__samples")
            errors = page.eval("window.__hlsErrors")
            state = page.eval("window.nonstopPlayer.state + ' ' + window.nonstopPlayer.error")
            page_errors = list(page.errors)
        seen = len(poller.segments)
        wait_for(lambda: len(poller.segments) >= seen + 1, 20, what="a segment after the last upgrade")
        poller.stop.set()
        poller.join(10)
        player.quit()
        result = player.finish(40)
    finally:
        if poller is not None:
            poller.stop.set()
        stop_proc(publisher)
        server.stop()
    assert_one_unbroken_playlist(poller, result, tmp_path)
    playing = [s for s in samples if s[1] > 0]
    first, last = playing[0], playing[-1]
    wall, played, frames = last[0] - first[0], last[1] - first[1], last[2] - first[2]
    steps = [(b[1] - a[1]) - (b[0] - a[0]) for a, b in zip(playing, playing[1:])]
    print(f"hls.js on /players/: {played:.2f} s of media in {wall:.2f} s of wall clock, {frames} frames decoded, "
          f"{last[3]} dropped, largest currentTime step beyond the wall clock {max(steps):+.3f} s, smallest "
          f"{min(steps):+.3f} s; hls.js errors {errors}, failed responses {failed}, player state {state!r}")
    assert not errors and not failed and not page_errors, (errors, failed, page_errors)
    assert "error" not in state
    assert abs(played - wall) < 0.5, "playback did not keep up with the wall clock (a stall or a jump)"
    # currentTime never jumps: between two samples 0.1 s apart it moves by the wall time, give or take a frame
    # and a timer's jitter (a seek over a hole would show as a step of a segment or more).
    assert max(steps) < 0.3 and min(steps) > -0.3, (max(steps), min(steps))
    assert frames >= 25 * wall * 0.9


# ----- LL-HLS through an upgrade: held requests, sessions, keep-alive connections, under load ---------------------

HELD = 300
IDLE = 100


class ExitWatch(threading.Thread):
    """When a process is last seen alive (polled every 20 ms)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.gone_at, self.stop = pid, None, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            if not process_alive(self.pid):
                self.gone_at = time.monotonic()
                return


def test_ll_hls_through_an_upgrade_held_requests_sessions_and_keep_alives(test_flv):
    """One upgrade with, on an LL-HLS stream, a viewer's blocking reload pending (answered by the new worker the
    moment the part exists there), sessions with counters and a kicked one, and a hostile load of HELD more
    held requests and IDLE idle keep-alive connections; meanwhile an RTMP player of another stream."""
    # min_latency on: the RTMP player gets each frame as it comes (as the chaos test measures its 400 ms bound),
    # not merged writes of up to mw_latency (350 ms), which would be most of the gap measured.
    server = UpgradeServer(vhost_body=LL_BODY + " min_latency on;", max_connections=2000).start()
    publisher = publish_file(server.rtmp_url(), test_flv)
    other = publish_live(server.rtmp_url("other"))
    socks: list[socket.socket] = []
    player = watch = None
    try:
        player = TimedPlayer(server.rtmp_url("other"), 60).start()
        msn = wait_for_the_first_cut(server)
        base = m3u8_url(server)
        path = "/live/livestream.m3u8"
        for ctx in ("viewer01", "kicked01"):
            status, _, body = get(base + f"?hls_ctx={ctx}")
            assert status == 200
            uri = segments_of(body.decode())[-1][1]
            assert get(f"http://127.0.0.1:{server.http_port}/live/{uri}")[0] == 200
        req = urllib.request.Request(server.api("/api/v1/clients/kicked01"), method="DELETE")
        assert urllib.request.urlopen(req, timeout=5).status == 200
        before, before_at = {c["id"]: c for c in api_clients(server)}, time.monotonic()
        assert "viewer01" in before and "kicked01" not in before, before
        idle = []
        for i in range(IDLE):
            sock = raw_request(server.http_port, f"{path}?hls_ctx=idle{i:04d}")
            status, headers, _ = read_response(sock)
            assert status == 200 and headers["connection"] == "keep-alive"
            idle.append(sock)
        wait_for(player.playing, 20, what="the RTMP player of the other stream")
        # Right after the first segment was cut: the first part of the one after the open one comes ~6 s later.
        viewer = raw_request(server.http_port, f"{path}?hls_ctx=viewer01&_HLS_msn={msn}&_HLS_part=0")
        started = time.monotonic()
        held = [raw_request(server.http_port, f"{path}?hls_ctx=held{i:04d}&_HLS_msn={msn}&_HLS_part={i % 3}")
                for i in range(HELD)]
        socks = idle + held + [viewer]
        seen: dict = {}

        def poll():     # when the awaited part is first listed (whichever worker answers)
            while "at" not in seen and time.monotonic() - started < 15:
                status, _, body = get(base + "?hls_ctx=poller")
                if status == 200 and lists(body.decode(), msn, 0):
                    seen["at"] = time.monotonic()
                time.sleep(0.02)
        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        watch = ExitWatch(server.live_worker_pids()[-1])
        watch.start()
        upgrade_at = time.monotonic()
        took = server.upgrade(1)
        done_at = time.monotonic()
        assert "upgrade done" in server.log(), server.log()[-3000:]
        status, headers, body = read_response(viewer)
        answered = time.monotonic()
        poller.join(15)
        print(f"upgrade done in {took:.2f}s; the viewer's held reload for part 0 of segment {msn} was answered "
              f"{answered - started:.2f}s after it was sent, {(answered - seen.get('at', answered)) * 1000:+.0f} ms "
              f"from when a poller first saw the part")
        assert status == 200 and lists(body.decode(), msn, 0), body[-600:]
        assert answered - started < 3 * FRAGMENT_S, "answered at the RFC deadline, not when the part existed"
        assert "at" in seen and answered - seen["at"] < 0.5
        statuses: dict = {}
        for sock in held:
            status, _, data = read_response(sock)
            statuses[status] = statuses.get(status, 0) + 1
            assert status != 200 or lists(data.decode(), msn, 0), data[-400:]
        for sock in idle:       # the next poll on the same connection
            sock.sendall(f"GET {path}?hls_ctx=idle HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            status, _, _ = read_response(sock)
            statuses[f"idle {status}"] = statuses.get(f"idle {status}", 0) + 1
        # The sessions: the same ids and ages, counters that go on, the kicked one still gone.
        after, after_at = {c["id"]: c for c in api_clients(server)}, time.monotonic()
        assert set(before) <= set(after) and "kicked01" not in after, after
        for cid in before:
            # The same session, not one adopted anew: its age went on with the wall clock, its bytes add up.
            assert abs((after[cid]["alive"] - before[cid]["alive"]) - (after_at - before_at)) < 1.0, (cid, after)
            assert after[cid]["send_bytes"] >= before[cid]["send_bytes"]
        assert after["viewer01"]["send_bytes"] >= before["viewer01"]["send_bytes"] + len(body)
        status, _, data = get(base + "?hls_ctx=kicked01")
        assert status == 404 and b"EOF" in data
        watch.join(10)
        player.kill()
        stall = player.worst_gap()
        calm = [b - a for a, b in zip(player.arrivals, player.arrivals[1:]) if b < upgrade_at]
        held_moved = server.log().count("taken over: held hls request")
        exit_s = watch.gone_at - done_at if watch.gone_at is not None else None
        print(f"viewer01: alive {before['viewer01']['alive']} -> {after['viewer01']['alive']} s, sent "
              f"{before['viewer01']['send_bytes']} -> {after['viewer01']['send_bytes']} bytes; answers {statuses}; "
              f"{held_moved} held requests moved; old worker gone {exit_s or 0:.2f} s after the upgrade; "
              f"RTMP player of another stream: worst gap {stall * 1000:.0f} ms (bound {STALL_BOUND_S * 1000:.0f}; "
              f"{max(calm, default=0) * 1000:.0f} ms before the upgrade); "
              f"{re.findall(r'handover done: (.*)', server.log())}")
        assert statuses == {200: HELD, "idle 200": IDLE}, statuses
        assert held_moved == HELD + 1, "the old worker answered held requests"
        assert exit_s is not None and exit_s < 5.0 + 1, "the old worker outlived its drain bound"
        assert stall < STALL_BOUND_S
    finally:
        if watch is not None:
            watch.stop.set()
        for sock in socks:
            sock.close()
        if player is not None:
            player.kill()
        stop_proc(other)
        stop_proc(publisher)
        server.stop()
