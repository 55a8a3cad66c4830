"""Glass-to-glass latency of LL-HLS with hls.js, measured on the frames themselves.

The publisher is a live ffmpeg: a lavfi test pattern paced in real time (`-re`), into which the wall clock is drawn
as a 24-bit barcode (the ms of the epoch, modulo 2^24) at the moment the frame leaves the source, before x264
(`-preset ultrafast -tune zerolatency`, no B-frames) encodes it; then FLV over RTMP to nonstop. In headless
Chromium, hls.js plays the LL-HLS playlist in `lowLatencyMode`; for every frame the compositor presents
(`requestVideoFrameCallback`), the page reads the barcode back from the frame (a canvas) and subtracts it from the
wall-clock time at which Chromium expects to display that frame. Both clocks are this machine's.

So the figure covers encoding, FLV muxing, RTMP, nonstop's segmenter (a part is served when its last frame is
followed by the next part's first), HTTP delivery (blocking playlist reloads, part requests), hls.js's hold-back
from the live edge, MSE, decoding and compositing. It leaves out what no software test can see: a camera's
exposure and capture, and a display's scan-out. hls.js's own view (`playingDate`, from EXT-X-PROGRAM-DATE-TIME,
which nonstop stamps with the wall clock at which a segment's first frame arrived) is reported beside it; it
leaves out the encoder and the RTMP hop.

Used by tests/e2e/test_hls.py (one short run in `make test`) and bench/ll_latency.py (the published figure).
"""

from __future__ import annotations

import http.server
import statistics
import subprocess
import threading
import time
from pathlib import Path

from tests.browser import Browser
from tests.helpers import FFMPEG

HLSJS = Path(__file__).resolve().parents[1] / "build" / "npm" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
FPS = 25
BITS = 24
MODULO = 1 << BITS
BLOCK_W, BLOCK_H, PER_ROW = 26, 20, 12     # two rows of 12 blocks at the top of a 320x240 frame


def clock_filter() -> str:
    """The video filter that draws the wall clock into each frame, then gives the frames back their own
    timeline. `setpts` with RTCTIME puts the wall clock (ms, modulo 2^24) in the timestamp, where the drawbox
    filters' timeline expressions read it bit by bit; the last `setpts` restores N / 25 s."""
    boxes = [f"drawbox=x=0:y=0:w={PER_ROW * BLOCK_W}:h={2 * BLOCK_H}:color=black:t=fill"]
    for k in range(BITS):
        x, y = (k % PER_ROW) * BLOCK_W, (k // PER_ROW) * BLOCK_H
        boxes.append(f"drawbox=x={x}:y={y}:w={BLOCK_W}:h={BLOCK_H}:color=white:t=fill"
                     f":enable='bitand(floor(t*1000+0.5),{1 << k})'")
    return (f"settb=1/1000,setpts='floor(mod(RTCTIME/1000,{MODULO}))/1000/TB',"
            + ",".join(boxes) + f",setpts=N/({FPS}*TB)")


def publish_clock(url: str, gop_s: int = 2) -> subprocess.Popen:
    """A live H.264/AAC publisher whose frames carry the wall clock at which they were made."""
    args = [FFMPEG, "-v", "error", "-re", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}",
            "-re", "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-vf", clock_filter(),
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(FPS * gop_s), "-bf", "0",
            "-pix_fmt", "yuv420p", "-c:a", "aac", "-b:a", "64k", "-f", "flv", url]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


PAGE = """<!doctype html><html><body><script src="/hls.js"></script><script>
const v = document.createElement('video'); v.muted = true; document.body.appendChild(v);
const canvas = document.createElement('canvas'); canvas.width = %(row)d; canvas.height = %(rows)d;
const g = canvas.getContext('2d', {willReadFrequently: true});
const st = window.st = {errors: [], waiting: 0, frames: []};
const hls = window.hls = new Hls(%(config)s);
hls.on(Hls.Events.ERROR, (e, d) => st.errors.push(d.type + ':' + d.details + ':' + d.fatal));
hls.on(Hls.Events.MANIFEST_PARSED, () => v.play().catch(e => st.errors.push('play:' + e)));
v.addEventListener('waiting', () => { if (st.frames.length) st.waiting++; });
hls.loadSource('%(m3u8)s'); hls.attachMedia(v);
const onFrame = (now, meta) => {
  g.drawImage(v, 0, 0);
  const px = g.getImageData(0, 0, %(row)d, %(rows)d).data;
  let stamp = 0;
  for (let k = 0; k < %(bits)d; k++) {
    const x = (k %% %(per_row)d) * %(bw)d + %(bw)d / 2, y = Math.floor(k / %(per_row)d) * %(bh)d + %(bh)d / 2;
    if (px[(y * %(row)d + x) * 4] > 128) stamp |= 1 << k;
  }
  const shown = Date.now() + (meta.expectedDisplayTime - performance.now());
  st.frames.push([performance.now() / 1000, meta.mediaTime, meta.presentedFrames,
                  ((Math.round(shown) %% %(modulo)d) - stamp + %(modulo)d) %% %(modulo)d,
                  hls.playingDate ? Date.now() - hls.playingDate.getTime() : null]);
  v.requestVideoFrameCallback(onFrame);
};
v.requestVideoFrameCallback(onFrame);
window.quality = () => { const q = v.getVideoPlaybackQuality();
  return {wall: performance.now() / 1000, t: v.currentTime, decoded: q.totalVideoFrames, dropped: q.droppedVideoFrames,
          presented: st.frames.length, errors: st.errors, waiting: st.waiting, latency: hls.latency,
          target: hls.targetLatency}; };
</script></body></html>"""


class _PageServer:
    """Serves the page and hls.js to Chromium from a thread."""

    def __init__(self, page: bytes, script: bytes):
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = script if self.path == "/hls.js" else page
                self.send_response(200)
                self.send_header("Content-Type", "text/javascript" if self.path == "/hls.js" else "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def measure(m3u8: str, seconds: float, settle_s: float = 1.0, start_timeout: float = 30.0,
            config: str = "{lowLatencyMode: true}") -> dict:
    """Play `m3u8` with hls.js (`config`: its settings, as JavaScript); after `settle_s` s of playback, watch
    `seconds` s. Returns the glass-to-glass figures (ms) of the frames presented in the window and what the window
    saw."""
    page = (PAGE % {"config": config, "m3u8": m3u8, "row": PER_ROW * BLOCK_W,
                    "rows": 2 * BLOCK_H, "bits": BITS, "per_row": PER_ROW, "bw": BLOCK_W, "bh": BLOCK_H,
                    "modulo": MODULO}).encode()
    server = _PageServer(page, HLSJS.read_bytes())
    try:
        with Browser(width=640, height=480) as browser:
            tab = browser.new_page()
            tab.goto(server.url)
            tab.wait_for("st.frames.length > 0", start_timeout, what="hls.js to present a frame")
            started = tab.eval("performance.now() / 1000")
            tab.wait_for(f"performance.now() / 1000 >= {started + settle_s}", settle_s + 10, what="the settle time")
            first = tab.eval("quality()")
            tab.wait_for(f"performance.now() / 1000 >= {first['wall'] + seconds}", seconds + 10,
                         what="the measurement window")
            last = tab.eval("quality()")
            frames = tab.eval(f"st.frames.filter(f => f[0] >= {first['wall']} && f[0] <= {last['wall']})")
            errors = list(tab.errors)
    finally:
        server.close()
    glass = [f[3] for f in frames]
    pdt = [f[4] for f in frames if f[4] is not None]
    wall = last["wall"] - first["wall"]
    return {"wall_s": wall, "played_s": last["t"] - first["t"], "decoded": last["decoded"] - first["decoded"],
            "presented": len(frames), "dropped": last["dropped"] - first["dropped"],
            "errors": last["errors"], "page_errors": errors, "waiting": last["waiting"] - first["waiting"],
            "glass_ms": _summary(glass), "hlsjs_playing_date_ms": _summary(pdt),
            "hlsjs_latency_s": last["latency"], "hlsjs_target_latency_s": last["target"],
            "media_steps": sorted({round(b[1] - a[1], 3) for a, b in zip(frames, frames[1:])})}


def _summary(values: list) -> dict:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    return {"n": len(values), "min": ordered[0], "median": statistics.median(ordered), "max": ordered[-1],
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]}


def wait_playlist(get, url: str, timeout: float = 30.0) -> None:
    """Until the playlist lists a part (`get(url)` -> (status, body))."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = get(url)
        if status == 200 and b"#EXT-X-PART:" in body:
            return
        time.sleep(0.1)
    raise AssertionError(f"no LL-HLS playlist at {url} after {timeout}s")
