"""End to end HLS: ffmpeg publishes over RTMP; ffprobe and ffmpeg play the m3u8 from memory and decode every frame;
headers, viewers in the API, hls_path on disk, republish rules."""

from __future__ import annotations

import http.client
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import glass
from tests.e2e.upgrade_helpers import TimedPlayer, UpgradeServer
from tests.helpers import (FFMPEG, FFPROBE, Server, assert_frames_match_timestamps, make_test_flv, parse_framecrc,
                           publish_file, stop_proc, wait_for)

pytestmark = pytest.mark.timeout(150)

HLS_BODY = "hls { enabled on; hls_fragment 1; hls_window 6; hls_dispose 30; }"


def get(url: str, timeout: float = 5):
    """(status, headers, body) of a GET, 4xx/5xx included."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def m3u8_url(server: Server, stream: str = "livestream", app: str = "live") -> str:
    return f"http://127.0.0.1:{server.http_port}/{app}/{stream}.m3u8"


def media_playlist(server: Server, stream: str = "livestream", ctx: str = "t1") -> str | None:
    status, _, body = get(m3u8_url(server, stream) + f"?hls_ctx={ctx}")
    return body.decode() if status == 200 else None


def segments_of(playlist: str) -> list[tuple[int, str, float]]:
    """[(media sequence, uri, duration)] of a media playlist."""
    seq = int(re.search(r"#EXT-X-MEDIA-SEQUENCE:(\d+)", playlist).group(1))
    out, duration = [], None
    for line in playlist.splitlines():
        if line.startswith("#EXTINF:"):
            duration = float(line[8:].split(",")[0])
        elif line and not line.startswith("#"):
            out.append((seq, line, duration))
            seq += 1
    return out


def wait_segments(server: Server, n: int, stream: str = "livestream", timeout: float = 30) -> str:
    found = {}

    def enough():
        text = media_playlist(server, stream)
        found["text"] = text
        return text is not None and len(segments_of(text)) >= n
    wait_for(enough, timeout, interval=0.2, what=f"{n} HLS segments of {stream}")
    return found["text"]


FMP4_BODY = "hls { enabled on; hls_fragment 1; hls_window 6; hls_dispose 30; hls_use_fmp4 on; }"
LL_BODY = ("hls { enabled on; hls_fragment 2; hls_window 12; hls_dispose 30; hls_use_fmp4 on; "
           "hls_part 0.5; }")


# LL-HLS played by a player without LL support (ffmpeg) is make test-long; hls.js plays it in make test (glass).
@pytest.mark.parametrize("body", [HLS_BODY, FMP4_BODY, pytest.param(LL_BODY, marks=pytest.mark.long)],
                         ids=["ts", "fmp4", "ll-hls"])
def test_ffmpeg_plays_the_m3u8_from_memory_and_decodes_every_frame(test_flv, body):
    with Server(vhost_body=body) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        try:
            wait_segments(server, 3)
            proc = subprocess.run([FFMPEG, "-v", "error", "-i", m3u8_url(server), "-t", "3", "-f", "framecrc", "-"],
                                  capture_output=True, text=True, timeout=60)
            result = parse_framecrc(proc.returncode, proc.stdout, proc.stderr)
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert not proc.stderr.strip(), proc.stderr[-2000:]     # no decode error, no timestamp warning
            assert_frames_match_timestamps(result, min_frames=60)
            assert result.audio, "no audio decoded"
            print(f"decoded {len(result.video)} video and {len(result.audio)} audio frames over HLS")
        finally:
            stop_proc(pub)


def test_playlist_and_segment_headers_and_the_srs_hls_ctx_dance(test_flv):
    with Server(vhost_body=HLS_BODY) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        try:
            wait_segments(server, 2)
            # No hls_ctx: a one-variant master playlist pointing at the same URL with a session id (as SRS).
            status, headers, body = get(m3u8_url(server) + "?token=abc")
            assert status == 200 and headers["Content-Type"] == "application/vnd.apple.mpegurl"
            variant = body.decode().splitlines()[-1]
            m = re.fullmatch(r"/live/livestream\.m3u8\?hls_ctx=([0-9a-f]{8})&token=abc", variant)
            assert m, body
            ctx = m.group(1)
            status, headers, body = get(f"http://127.0.0.1:{server.http_port}{variant}")
            assert status == 200 and headers["Cache-Control"] == "max-age=1"
            assert headers["Access-Control-Allow-Origin"] == "*"
            text = body.decode()
            assert "#EXT-X-TARGETDURATION:" in text and "#EXT-X-DISCONTINUITY" not in text
            first = segments_of(text)[0]
            assert first[1] == f"livestream-{first[0]}.ts?hls_ctx={ctx}"
            status, headers, data = get(f"http://127.0.0.1:{server.http_port}/live/{first[1]}")
            assert status == 200 and headers["Content-Type"] == "video/mp2t"
            assert headers["Cache-Control"] == "max-age=86400" and int(headers["Content-Length"]) == len(data)
            assert data[0] == 0x47 and len(data) % 188 == 0
            # The viewer is a client in the API, with the bytes it got.
            with urllib.request.urlopen(f"http://127.0.0.1:{server.api_port}/api/v1/clients", timeout=5) as r:
                clients = json.load(r)["clients"]
            mine = [c for c in clients if c["id"] == ctx]
            assert mine and mine[0]["type"] == "hls-play" and mine[0]["send_bytes"] >= len(data)
            with urllib.request.urlopen(f"http://127.0.0.1:{server.api_port}/metrics", timeout=5) as r:
                # this viewer and the one that waited for the segments (hls_ctx=t1)
                metrics = r.read().decode()
            assert 'nonstop_clients{type="hls-play"} 2.0' in metrics
            assert "nonstop_hls_streams 1.0" in metrics and "nonstop_hls_sessions_total 2.0" in metrics
            memory = float(re.search(r"^nonstop_hls_memory_bytes (\S+)$", metrics, re.M).group(1))
            assert memory >= len(data)
            # Unknown paths: 404, and FLV still plays at its mount.
            assert get(f"http://127.0.0.1:{server.http_port}/live/livestream-999999.ts")[0] == 404
            assert get(f"http://127.0.0.1:{server.http_port}/live/nosuch.m3u8")[0] == 404
        finally:
            stop_proc(pub)


def test_one_keep_alive_connection_serves_many_requests(test_flv):
    with Server(vhost_body=HLS_BODY) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        try:
            wait_segments(server, 2)
            conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=5)
            for _ in range(5):
                conn.request("GET", "/live/livestream.m3u8?hls_ctx=keep")
                r = conn.getresponse()
                body = r.read()
                assert r.status == 200 and r.getheader("Connection") == "keep-alive"
                uri = segments_of(body.decode())[-1][1]
                conn.request("GET", "/live/" + uri)
                r = conn.getresponse()
                assert r.status == 200 and len(r.read()) > 1000
            conn.close()
        finally:
            stop_proc(pub)


def test_hls_path_writes_the_playlist_and_segments_to_disk_and_cleans_up(test_flv, tmp_path):
    body = f"hls {{ enabled on; hls_fragment 1; hls_window 3; hls_path {tmp_path}; }}"
    with Server(vhost_body=body) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        try:
            m3u8 = tmp_path / "live" / "livestream.m3u8"
            wait_for(lambda: m3u8.exists() and segments_of(m3u8.read_text())[-1][0] >= 7, 40,
                     what="8 segments written")
            text = m3u8.read_text()
            listed = {uri for _, uri, _ in segments_of(text)}
            on_disk = {p.name for p in (tmp_path / "live").glob("*.ts")}
            assert listed <= on_disk
            # hls_cleanup: only the window and the two kept after it stay on disk
            assert len(on_disk) <= len(listed) + 3, (sorted(on_disk), sorted(listed))
        finally:
            stop_proc(pub)


def test_republish_within_the_window_continues_and_later_starts_a_discontinuity(test_flv):
    with Server(vhost_body=HLS_BODY) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        wait_segments(server, 2)
        stop_proc(pub)
        before = segments_of(media_playlist(server))
        pub = publish_file(server.rtmp_url(), test_flv)     # at once: within the 5 s republish window
        try:
            wait_for(lambda: segments_of(media_playlist(server))[-1][0] >= before[-1][0] + 2, 30,
                     what="segments after the republish")
            text = media_playlist(server)
            assert "#EXT-X-DISCONTINUITY" not in text
            assert segments_of(text)[0][0] >= before[0][0]
        finally:
            stop_proc(pub)
        last = segments_of(media_playlist(server))[-1][0]
        time.sleep(6)     # past the republish window (5 s), within hls_dispose: the playlist is still there
        assert media_playlist(server) is not None
        pub = publish_file(server.rtmp_url(), test_flv)
        try:
            wait_for(lambda: segments_of(media_playlist(server))[-1][0] >= last + 1, 30, what="a new segment")
            text = media_playlist(server)
            lines = text.splitlines()
            i = lines.index("#EXT-X-DISCONTINUITY")
            assert segments_of("\n".join(lines[:i] + lines[i + 1:]))  # still a valid playlist
            assert [s for s in segments_of(text) if s[0] == last + 1], text
        finally:
            stop_proc(pub)


# ----- continuity across upgrades ----------------------------------------------------------------------------------

class PlaylistPoller(threading.Thread):
    """A player's view of HLS: polls the playlist on a keep-alive connection every `interval` s and fetches every
    new segment, following redirects and reconnecting when the server closes an idle keep-alive connection (what
    every HTTP client does for an idempotent request). Records every status, sequence number and segment."""

    def __init__(self, port: int, path: str, interval: float = 0.2):
        super().__init__(daemon=True)
        self.port, self.path, self.interval = port, path, interval
        self.stop = threading.Event()
        self.statuses: list[tuple[str, int]] = []
        self.sequences: list[int] = []          # EXT-X-MEDIA-SEQUENCE of each playlist
        self.discontinuities = 0
        self.segments: dict[int, bytes] = {}
        self.reconnects = 0
        self.conn = None

    def get(self, path: str) -> tuple[int, bytes]:
        for _ in range(5):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                body = r.read()
            except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
                self.conn.close()
                self.conn = None
                self.reconnects += 1
                continue
            if r.getheader("Connection", "").lower() == "close":
                self.conn.close()
                self.conn = None
            if r.status == 302:
                self.statuses.append((path, 302))
                path = r.getheader("Location")
                continue
            self.statuses.append((path, r.status))
            return r.status, body
        raise AssertionError(f"no answer for {path}")

    def run(self) -> None:
        while not self.stop.is_set():
            status, body = self.get(self.path)
            if status == 200:
                text = body.decode()
                self.discontinuities += text.count("#EXT-X-DISCONTINUITY")
                listed = segments_of(text)
                self.sequences.append(listed[0][0])
                for seq, uri, _ in listed:
                    if seq not in self.segments:
                        status, data = self.get(self.path.rsplit("/", 1)[0] + "/" + uri)
                        if status == 200:
                            self.segments[seq] = data
            self.stop.wait(self.interval)


@pytest.fixture(scope="module")
def long_flv(media_dir):
    return make_test_flv(media_dir / "upgrade-40s.flv", seconds=40)


def assert_one_unbroken_playlist(poller: "PlaylistPoller", result, tmp_path) -> None:
    """What a playlist poller and an ffmpeg HLS player saw through upgrades: media sequence numbers that only grow,
    no discontinuity, every segment, no 404, and the segments joined are one clean TS stream."""
    bad = [(p, s) for p, s in poller.statuses if s not in (200, 302)]
    print(f"poller: {len(poller.statuses)} requests, {poller.reconnects} reconnects, "
          f"{sum(1 for _, s in poller.statuses if s == 302)} redirects, segments {min(poller.segments)}.."
          f"{max(poller.segments)}; ffmpeg decoded {len(result.video)} video frames")
    assert not bad, bad[:10]
    assert poller.sequences == sorted(poller.sequences), poller.sequences
    assert poller.discontinuities == 0
    seqs = sorted(poller.segments)
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a segment is missing"
    # The segments, joined, are one clean TS stream: continuity counters and timestamps run on across the
    # upgrades, so ffmpeg decodes it with no error and one frame per timestamp step.
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(poller.segments[s] for s in seqs))
    proc = subprocess.run([FFMPEG, "-v", "error", "-i", str(joined), "-f", "framecrc", "-"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr[-2000:]
    joined_result = parse_framecrc(proc.returncode, proc.stdout, proc.stderr)
    assert_frames_match_timestamps(joined_result, tolerance=0.0, min_frames=25 * len(seqs) // 2)
    assert result.returncode == 0, result.stderr[-2000:]
    assert_frames_match_timestamps(result, tolerance=0.0, min_frames=200)


@pytest.mark.long   # make test runs the same checks beside hls.js (test_hls_upgrade.py)
def test_three_upgrades_keep_one_unbroken_playlist_with_every_segment_and_no_404(long_flv, tmp_path):
    server = UpgradeServer(vhost_body=HLS_BODY).start()
    publisher = publish_file(server.rtmp_url(), long_flv, loop=False)
    poller = None
    try:
        wait_segments(server, 2)
        poller = PlaylistPoller(server.http_port, "/live/livestream.m3u8?hls_ctx=upgrade")
        poller.start()
        player = TimedPlayer(m3u8_url(server) + "?hls_ctx=ffmpeg", 20).start()
        for n in (1, 2, 3):
            seen = len(poller.segments)
            wait_for(lambda: len(poller.segments) >= seen + 2, 20, what="2 new segments between upgrades")
            took = server.upgrade(n)
            assert server.log().count("upgrade done") == n, server.log()[-4000:]
            print(f"upgrade {n} done in {took:.2f}s")
        seen = len(poller.segments)
        wait_for(lambda: len(poller.segments) >= seen + 3, 20, what="3 segments after the last upgrade")
        poller.stop.set()
        poller.join(10)
        assert_one_unbroken_playlist(poller, player.finish(40), tmp_path)
    finally:
        if poller is not None:
            poller.stop.set()
        stop_proc(publisher)
        server.stop()


def _seconds(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


@pytest.mark.skipif(not shutil.which("gst-launch-1.0"), reason="GStreamer is not installed")
def test_gstreamer_hlsdemux_decodes_video_and_audio_without_a_gap(test_flv, tmp_path):
    """GStreamer's hlsdemux, tsdemux, openh264 and faad decode the stream for 8 s; the decoded video frames (shrunk
    and written to streamable Matroska, so their timestamps can be read exactly afterwards) follow each other with
    no gap or repeat."""
    out_mkv = tmp_path / "gst.mkv"
    with Server(vhost_body=HLS_BODY) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        gst = None
        try:
            wait_segments(server, 3)
            gst = subprocess.Popen(
                ["gst-launch-1.0", "souphttpsrc", f"location={m3u8_url(server)}", "!", "hlsdemux", "!",
                 "tsdemux", "name=d",
                 "d.", "!", "queue", "!", "h264parse", "!", "openh264dec", "!", "videoconvert", "!", "videoscale",
                 "!", "video/x-raw,width=32,height=24", "!", "matroskamux", "streamable=true", "!", "filesink",
                 f"location={out_mkv}",
                 "d.", "!", "queue", "!", "aacparse", "!", "faad", "!", "fakesink", "sync=true"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                out, err = gst.communicate(timeout=8)   # a live stream never ends: play 8 s, then stop
            except subprocess.TimeoutExpired:
                gst.kill()
                out, err = gst.communicate()
        finally:
            if gst is not None and gst.poll() is None:
                gst.kill()
            stop_proc(pub)
    errors = [line for line in (out + err).splitlines() if "ERROR" in line]
    assert not errors, errors[:5]
    probe = subprocess.run([FFPROBE, "-v", "quiet", "-print_format", "json", "-show_entries", "packet=pts_time",
                            str(out_mkv)], capture_output=True, text=True, timeout=30)
    video = [float(p["pts_time"]) for p in json.loads(probe.stdout)["packets"]]
    steps = sorted({round(b - a, 3) for a, b in zip(video, video[1:])})
    print(f"GStreamer decoded {len(video)} video frames; steps between them {steps}")
    assert len(video) >= 75, err[-2000:]
    assert steps == [0.04], "a video frame was skipped or repeated"


# ----- hls.js in headless Chromium -----------------------------------------------------------------------------------

HLSJS = Path(__file__).resolve().parents[2] / "build" / "npm" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

# The page plays the stream with hls.js and posts what the video element says twice, 6 s apart.
HLSJS_PAGE = """<!doctype html><html><body><script src="/hls.min.js"></script><script>
const v = document.createElement('video'); v.muted = true; document.body.appendChild(v);
const errors = [];
const report = (label) => {
  const q = v.getVideoPlaybackQuality();
  fetch('/report', {method: 'POST', body: JSON.stringify({label, wall: performance.now() / 1000, t: v.currentTime,
    frames: q.totalVideoFrames, dropped: q.droppedVideoFrames, errors, supported: Hls.isSupported(),
    latency: hls.latency ?? null,
    behind_wall: hls.playingDate ? (Date.now() - hls.playingDate.getTime()) / 1000 : null})});
};
const hls = new Hls(CONFIG);
hls.on(Hls.Events.ERROR, (e, d) => errors.push(d.type + ':' + d.details + ':' + d.fatal));
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(e => errors.push('play:' + e)));
hls.loadSource('M3U8'); hls.attachMedia(v);
setTimeout(() => report('first'), 3000);
setTimeout(() => report('last'), 9000);
</script></body></html>"""


# hls.js's settings for the glass-to-glass test: lowLatencyMode, with catch-up (maxLiveSyncPlaybackRate).
LL_PLAYER_CONFIG = "{lowLatencyMode: true, maxLiveSyncPlaybackRate: 1.5}"
# The bound for glass-to-glass latency with hls.js in lowLatencyMode and 0.5 s parts.
LL_LATENCY_BOUND_S = 3.0
FPS_LIVE = glass.FPS


@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (make test-deps installs it)")
# TS runs in make test through test_hls_upgrade.py (hls.js on the player page, three upgrades, real time, every frame).
@pytest.mark.long
@pytest.mark.parametrize("body", [HLS_BODY, FMP4_BODY], ids=["ts", "fmp4"])
def test_hlsjs_in_headless_chromium_plays_in_real_time_without_errors(test_flv, tmp_path, body):
    """hls.js on TS and fMP4 segments; LL-HLS has its own test below (a live publisher, the latency measured)."""
    assert HLSJS.exists(), f"{HLSJS} is missing: `make test-deps` installs hls.js from npm"
    reports: list[dict] = []
    script = HLSJS.read_bytes()
    with Server(vhost_body=body) as server:
        page = HLSJS_PAGE.replace("M3U8", m3u8_url(server)).replace("CONFIG", "{}").encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = script if self.path == "/hls.min.js" else page
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                reports.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        pub = publish_file(server.rtmp_url(), test_flv)
        browser = None
        try:
            wait_segments(server, 3)
            browser = subprocess.Popen([CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu",
                                        "--autoplay-policy=no-user-gesture-required",
                                        f"--user-data-dir={tmp_path / 'profile'}",
                                        f"http://127.0.0.1:{httpd.server_address[1]}/"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_for(lambda: len(reports) >= 2, 40, what="hls.js to report twice")
        finally:
            if browser is not None:
                browser.kill()
                browser.wait(10)
            httpd.shutdown()
            stop_proc(pub)
    first, last = sorted(reports, key=lambda r: r["wall"])
    played = last["t"] - first["t"]
    wall = last["wall"] - first["wall"]
    frames = last["frames"] - first["frames"]
    print(f"hls.js: {played:.2f} s of media in {wall:.2f} s, {frames} frames decoded, {last['dropped']} dropped, "
          f"errors {last['errors']}, latency to the live edge {last['latency']} s, behind the wall clock "
          f"(EXT-X-PROGRAM-DATE-TIME) {last['behind_wall']} s")
    assert last["supported"] and not last["errors"]
    assert abs(played - wall) < 0.5, "playback did not keep up with real time (a stall or a jump)"
    assert frames >= 25 * wall * 0.9


@pytest.mark.skipif(not CHROMIUM, reason="Chromium is not installed (make test-deps installs it)")
def test_hlsjs_low_latency_mode_plays_every_frame_in_real_time_under_3_s_glass_to_glass():
    """The issue's bound: hls.js in lowLatencyMode, 0.5 s parts, glass-to-glass under 3 s. A live publisher draws
    the wall clock into each frame before x264 encodes it; the page reads it back from every frame Chromium presents
    (tests/glass.py says what the figure covers). Over 8 s of playback: no hls.js error, no stall (`waiting`),
    media time keeps up with the wall clock, every frame decoded, and every presented frame under the bound."""
    assert glass.HLSJS.exists(), f"{glass.HLSJS} is missing: `make test-deps` installs hls.js from npm"
    with Server(vhost_body=LL_BODY) as server:
        pub = glass.publish_clock(server.rtmp_url())
        try:
            wait_for(lambda: b"#EXT-X-PART:" in get(m3u8_url(server) + "?hls_ctx=w")[2], 30, interval=0.1,
                     what="an LL-HLS playlist with a part")
            # As a low-latency live player is set up: hls.js may play up to 1.5x to reach its
            # target latency after its start, which it never makes up by default (settle_s leaves it the time to
            # catch up before the window that checks real time). bench/ll_latency.py measures
            # both settings (bench/RESULTS.md); with the defaults the figure is near the bound on a loaded machine.
            result = glass.measure(m3u8_url(server), seconds=8, settle_s=3.0, config=LL_PLAYER_CONFIG)
        finally:
            stop_proc(pub)
    g, pdt = result["glass_ms"], result["hlsjs_playing_date_ms"]
    print(f"hls.js lowLatencyMode, 0.5 s parts: {result['played_s']:.2f} s of media in {result['wall_s']:.2f} s, "
          f"{result['decoded']} frames decoded, {result['presented']} presented, {result['dropped']} dropped, "
          f"{result['waiting']} stalls, errors {result['errors']}; glass-to-glass (frame stamp to display) median "
          f"{g.get('median')} ms, max {g.get('max')} ms over {g['n']} frames; hls.js playingDate (PDT) median "
          f"{pdt.get('median')} ms; hls.js latency {result['hlsjs_latency_s']} s (target "
          f"{result['hlsjs_target_latency_s']} s)")
    assert not result["errors"] and not result["page_errors"], (result["errors"], result["page_errors"])
    assert result["waiting"] == 0, "playback stalled"
    assert abs(result["played_s"] - result["wall_s"]) < 0.5, "playback did not keep up with real time"
    assert result["decoded"] >= FPS_LIVE * result["wall_s"] * 0.9, "frames were not decoded"
    assert g["n"] >= FPS_LIVE * result["wall_s"] * 0.5, "too few frames presented to measure"
    assert g["max"] < LL_LATENCY_BOUND_S * 1000, g


def test_hls_keys_ffmpeg_decrypts_with_the_served_key_and_decodes_every_frame(test_flv):
    body = "hls { enabled on; hls_fragment 1; hls_window 6; hls_keys on; hls_fragments_per_key 2; }"
    with Server(vhost_body=body) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        try:
            text = wait_segments(server, 3)
            assert "#EXT-X-KEY:METHOD=AES-128,URI=" in text
            key_uri = re.search(r'URI="([^"]+)"', text).group(1)
            status, headers, key = get(f"http://127.0.0.1:{server.http_port}/live/{key_uri}")
            assert status == 200 and len(key) == 16 and headers["Content-Type"] == "application/octet-stream"
            status, _, data = get(f"http://127.0.0.1:{server.http_port}/live/{segments_of(text)[0][1]}")
            assert status == 200 and len(data) % 16 == 0 and data[:1] != b"\x47"   # not clear TS
            proc = subprocess.run([FFMPEG, "-v", "error", "-i", m3u8_url(server), "-t", "3", "-f", "framecrc", "-"],
                                  capture_output=True, text=True, timeout=60)
            result = parse_framecrc(proc.returncode, proc.stdout, proc.stderr)
            assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr[-2000:]
            assert_frames_match_timestamps(result, min_frames=60)
            print(f"decrypted and decoded {len(result.video)} video frames")
        finally:
            stop_proc(pub)



def test_ll_hls_blocking_reload_answers_when_the_next_part_exists(test_flv):
    with Server(vhost_body=LL_BODY) as server:
        pub = publish_file(server.rtmp_url(), test_flv)
        try:
            text = wait_segments(server, 2)
            assert "#EXT-X-PRELOAD-HINT:TYPE=PART" in text
            msn = segments_of(text)[-1][0] + 1
            parts = len(re.findall(r"#EXT-X-PART:.*\n(?!#EXTINF)", text.split("#EXTINF")[-1]))
            # the playlist that holds one part more than now is answered the moment that part is cut
            started = time.monotonic()
            status, _, body = get(m3u8_url(server) + f"?hls_ctx=b&_HLS_msn={msn}&_HLS_part={parts + 1}", timeout=10)
            waited = time.monotonic() - started
            print(f"blocking reload for part {parts + 1} of segment {msn} answered after {waited * 1000:.0f} ms")
            assert status == 200 and waited < 3 * 0.5 + 0.5, waited
            assert f"-{msn}.{parts + 1}.m4s" in body.decode() or segments_of(body.decode())[-1][0] >= msn
            # the hinted part itself is held the same way, then served
            hint = re.search(r'PRELOAD-HINT:TYPE=PART,URI="([^"]+)"', body.decode()).group(1)
            status, headers, data = get(f"http://127.0.0.1:{server.http_port}/live/{hint.split('?')[0]}", timeout=10)
            assert status == 200 and data[4:8] == b"moof" and headers["Content-Type"] == "video/mp4"
            # too far ahead: refused at once, not held
            started = time.monotonic()
            status, _, _ = get(m3u8_url(server) + f"?hls_ctx=b&_HLS_msn={msn + 1000}", timeout=5)
            refused = time.monotonic() - started
            print(f"_HLS_msn far ahead refused with {status} after {refused * 1000:.0f} ms")
            assert status == 400 and refused < 0.5, refused
        finally:
            stop_proc(pub)
