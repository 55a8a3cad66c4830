// The player page: plays /APP/STREAM.flv with mpegts.js or /APP/STREAM.m3u8 with hls.js (both shipped under
// /console/vendor/), and shows the latency (what is buffered ahead of the playhead), decoded and dropped
// frames (getVideoPlaybackQuality) and the worst stall: the longest time the decoded-frame count stood still
// while playing (polled every POLL_MS). window.nonstopPlayer exposes the same figures (the browser tests read them).

const $ = (id) => document.getElementById(id);
const video = $("video");
const POLL_MS = 50;

const stats = {
  kind: "", url: "", state: "idle", error: "",
  decoded: 0, dropped: 0, latency: 0, worstStallMs: 0, stallsOver1s: 0,
  lastFrames: 0, lastAdvance: 0, currentStallMs: 0,
};
window.nonstopPlayer = stats;
let engine = null;

function kindOf(url, wanted) {
  if (wanted && wanted !== "auto") return wanted;
  return /\.m3u8(\?|$)/.test(url) ? "hls" : "flv";
}

function absolute(url) {
  return new URL(url, location.href).href;
}

function stop() {
  if (engine) { engine.destroy(); engine = null; }
}

function play(url, wanted) {
  stop();
  Object.assign(stats, { url: absolute(url), kind: kindOf(url, wanted), state: "loading", error: "",
                         worstStallMs: 0, stallsOver1s: 0, lastFrames: 0, lastAdvance: 0, currentStallMs: 0 });
  video.muted = true;
  if (stats.kind === "hls") {
    if (window.Hls && Hls.isSupported()) {
      const hls = new Hls({ lowLatencyMode: true, liveSyncDurationCount: 2 });
      hls.on(Hls.Events.ERROR, (_, data) => { if (data.fatal) fail(`hls.js: ${data.type} ${data.details}`); });
      hls.loadSource(stats.url);
      hls.attachMedia(video);
      engine = { destroy: () => hls.destroy() };
    } else if (video.canPlayType("application/vnd.apple.mpegurl")) {
      video.src = stats.url;
      engine = { destroy: () => { video.removeAttribute("src"); video.load(); } };
    } else {
      return fail("this browser plays no HLS");
    }
  } else {
    if (!window.mpegts || !mpegts.isSupported()) return fail("this browser has no Media Source Extensions");
    const player = mpegts.createPlayer({ type: "flv", isLive: true, url: stats.url },
      { enableStashBuffer: false, liveBufferLatencyChasing: true, liveBufferLatencyMaxLatency: 3,
        liveBufferLatencyMinRemain: 0.5 });
    player.on(mpegts.Events.ERROR, (type, detail, info) => fail(`mpegts.js: ${type} ${detail} ${info?.msg ?? ""}`));
    player.attachMediaElement(video);
    player.load();
    engine = { destroy: () => { player.pause(); player.unload(); player.detachMediaElement(); player.destroy(); } };
  }
  const p = video.play();
  if (p) p.catch(() => {});   // autoplay waits for data; a muted video may play
  $("how").textContent = `${stats.kind === "hls" ? "HLS" : "HTTP-FLV"}: ${stats.url}`;
}

function fail(message) {
  stats.state = "error";
  stats.error = message;
  console.warn(message);
}

function tick() {
  const now = performance.now();
  const q = video.getVideoPlaybackQuality ? video.getVideoPlaybackQuality() : null;
  if (q) { stats.decoded = q.totalVideoFrames; stats.dropped = q.droppedVideoFrames; }
  const b = video.buffered;
  stats.latency = b.length ? Math.max(0, b.end(b.length - 1) - video.currentTime) : 0;
  // A stall is the time between two polls that saw the decoded-frame count go up, counted from the first
  // decoded frame on (the start-up is not a stall) and measured to POLL_MS: a smooth stream shows 50 to 100 ms.
  if (stats.decoded > stats.lastFrames) {
    if (stats.lastAdvance) {
      stats.state = "playing";
      stats.worstStallMs = Math.max(stats.worstStallMs, now - stats.lastAdvance);
    }
    stats.lastFrames = stats.decoded;
    stats.lastAdvance = now;
    stats.currentStallMs = 0;
  } else if (stats.lastAdvance && !video.paused) {
    stats.currentStallMs = now - stats.lastAdvance;
    if (stats.currentStallMs > stats.worstStallMs) stats.worstStallMs = stats.currentStallMs;
    if (stats.currentStallMs > 1000 && stats.state !== "stalled") { stats.state = "stalled"; stats.stallsOver1s++; }
  }
  render();
}

function render() {
  $("state").textContent = stats.error ? `${stats.state}: ${stats.error}` : stats.state;
  $("resolution").textContent = video.videoWidth ? `${video.videoWidth}x${video.videoHeight}` : "-";
  $("latency").textContent = stats.url ? `${stats.latency.toFixed(2)} s` : "-";
  $("decoded").textContent = String(stats.decoded);
  $("dropped").textContent = String(stats.dropped);
  $("stall").textContent = stats.lastAdvance ? `${Math.max(0, stats.worstStallMs).toFixed(0)} ms` : "-";
}

$("open").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const url = $("url").value.trim();
  history.replaceState(null, "", `?url=${encodeURIComponent(url)}&kind=${$("kind").value}`);
  play(url, $("kind").value);
});

const params = new URLSearchParams(location.search);
const start = params.get("url") || (params.get("stream")
  ? `/${params.get("app") || "live"}/${params.get("stream")}.${params.get("kind") === "hls" ? "m3u8" : "flv"}` : "");
if (params.get("kind")) $("kind").value = params.get("kind");
if (start) { $("url").value = start; play(start, $("kind").value); }
setInterval(tick, POLL_MS);
