"""HLS figures: the segmenter's CPU cost per stream-hour, and the CPU cost of serving HLS viewers from memory
against nginx serving the same segments from disk (hls_path), in the same run.

Usage: .venv/bin/python bench/hls_bench.py [--viewers 1000] [--seconds 20] [--out bench/out/hls]

1. Segmenter: a 2 Mb/s H.264/AAC FLV (60 s, made once with ffmpeg) is fed tag by tag through one Segmenter
   (hls_fragment 2, hls_window 60) in this process; CPU seconds per media second, times 3600.
2. Serving: nonstop publishes the same file in a loop with `hls { hls_fragment 2; hls_path DIR; }`; nginx serves
   DIR on another port. N viewers (asyncio, keep-alive, one connection each) poll the playlist every second and
   fetch each new segment, first from nonstop, then from nginx, for the same number of seconds each. The
   server's CPU (utime + stime of its processes, from /proc) is divided by the bytes the viewers received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nonstop.config.schema import Hls  # noqa: E402
from nonstop.media.hls import HlsIndex, Segmenter, settings_from_config  # noqa: E402
from nonstop.protocol import flv  # noqa: E402
from tests.helpers import Server, free_port, publish_file, stop_proc, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def make_media(path: Path, seconds: int = 60) -> Path:
    if not path.exists():
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=size=1280x720:rate=25",
                        "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-t", str(seconds),
                        "-vf", "noise=alls=12:allf=t", "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "2M",
                        "-maxrate", "2M", "-bufsize", "2M", "-g", "50", "-bf", "0", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-b:a", "128k", "-f", "flv", str(path)], check=True, timeout=600)
    return path


def segmenter_cost(media: Path) -> dict:
    tags = [t for t in flv.read_file_tags(media.read_bytes()) if t.tag_type in (flv.TAG_AUDIO, flv.TAG_VIDEO)]
    media_s = (tags[-1].timestamp - tags[0].timestamp) / 1000
    size = sum(len(t.payload) for t in tags)
    best = None
    for _ in range(3):
        seg = Segmenter(settings_from_config(Hls(enabled=True, hls_fragment=2, hls_window=60)), "v", "live", "s",
                        HlsIndex())
        started = time.process_time()
        for t in tags:
            seg.on_media(t.tag_type, t.timestamp, t.payload)
        spent = time.process_time() - started
        best = spent if best is None else min(best, spent)
    return {"media_s": media_s, "bitrate_kbps": round(size * 8 / media_s / 1000), "cpu_s": round(best, 4),
            "cpu_s_per_stream_hour": round(best / media_s * 3600, 2),
            "cpu_share_of_one_core": round(best / media_s, 5)}


def cpu_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


def tree(pid: int) -> list[int]:
    out = [pid]
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        out += tree(int(child))
    return out


async def viewer(port: int, path: str, until: float, counts: dict) -> None:
    """One player: a keep-alive connection; the playlist every second; each new segment once."""
    reader = writer = None
    seen: set[str] = set()
    base = path.rsplit("/", 1)[0]

    async def get(p: str) -> tuple[int, bytes]:
        nonlocal reader, writer
        for _ in range(3):
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET {p} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split()[1])
                length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
                body = await reader.readexactly(length)
                if re.search(rb"(?i)connection: *close", head):
                    writer.close()
                    writer = None
                return status, body
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()
                writer = None
        return 0, b""

    first = True
    while time.monotonic() < until:
        status, body = await get(path)
        if status == 200:
            counts["bytes"] += len(body)
            uris = [line for line in body.decode().splitlines() if line and not line.startswith("#")]
            if first:      # a player starts near the live edge: the last 3 segments
                seen.update(uris[:-3])
                first = False
            for uri in uris:
                if uri not in seen:
                    seen.add(uri)
                    s, data = await get(uri if uri.startswith("/") else f"{base}/{uri}")
                    if s == 200:
                        counts["bytes"] += len(data)
                        counts["segments"] += 1
                    else:
                        counts["errors"] += 1
        else:
            counts["errors"] += 1
        await asyncio.sleep(1.0)
    if writer is not None:
        writer.close()


async def load(port: int, path: str, viewers: int, seconds: float) -> dict:
    counts = {"bytes": 0, "segments": 0, "errors": 0}
    until = time.monotonic() + seconds
    await asyncio.gather(*(viewer(port, path, until, counts) for _ in range(viewers)))
    return counts


def measure(port: int, path: str, pids: list[int], viewers: int, seconds: float) -> dict:
    cpu0 = cpu_of(pids)
    started = time.monotonic()
    counts = asyncio.run(load(port, path, viewers, seconds))
    wall = time.monotonic() - started
    cpu = cpu_of(pids) - cpu0
    gb = counts["bytes"] / 1e9
    return {**counts, "wall_s": round(wall, 1), "cpu_s": round(cpu, 2), "gb": round(gb, 3),
            "cpu_s_per_gb": round(cpu / gb, 3) if gb else None}


NGINX_CONF = """daemon off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/error.log;
events {{ worker_connections 4096; }}
http {{ access_log off; sendfile on; keepalive_requests 100000; keepalive_timeout 75;
  types {{ application/vnd.apple.mpegurl m3u8; video/mp2t ts; }}
  server {{ listen 127.0.0.1:{port}; root {root};
    location ~ \\.m3u8$ {{ add_header Cache-Control max-age=1; add_header Access-Control-Allow-Origin *; }}
    location ~ \\.ts$ {{ add_header Cache-Control max-age=86400; add_header Access-Control-Allow-Origin *; }} }} }}
"""


def serving_cost(media: Path, viewers: int, seconds: float) -> dict:
    work = Path(tempfile.mkdtemp(prefix="hls-bench-"))
    work.chmod(0o755)       # nginx's workers run as nobody
    hls_dir = work / "html"
    hls_dir.mkdir()
    server = Server(vhost_body=f"hls {{ enabled on; hls_fragment 2; hls_window 20; hls_path {hls_dir}; "
                               f"hls_ctx off; }}", max_connections=viewers + 100).start()
    nginx = None
    pub = publish_file(server.rtmp_url(), media)
    try:
        wait_for(lambda: (hls_dir / "live" / "livestream.m3u8").exists(), 30, what="the first segments")
        time.sleep(6)
        path = "/live/livestream.m3u8"
        pids = tree(server.proc.pid)[1:]
        # nonstop also ingests, segments and writes hls_path while it serves: its CPU with no viewer, over the
        # same time, is taken off, so both servers are charged for serving only.
        cpu0 = cpu_of(pids)
        time.sleep(seconds)
        baseline = cpu_of(pids) - cpu0
        ours = measure(server.http_port, path, pids, viewers, seconds)
        ours["cpu_s_without_viewers"] = round(baseline, 2)
        ours["serving_cpu_s"] = round(ours["cpu_s"] - baseline, 2)
        ours["cpu_s_per_gb"] = round(ours["serving_cpu_s"] / ours["gb"], 3) if ours["gb"] else None
        nginx_port = free_port()
        (work / "nginx.conf").write_text(NGINX_CONF.format(dir=work, port=nginx_port, root=hls_dir))
        nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(work / "nginx.conf"),
                                  "-p", str(work)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)
        theirs = measure(nginx_port, path, tree(nginx.pid), viewers, seconds)
    finally:
        stop_proc(pub)
        if nginx is not None:
            nginx.terminate()
            nginx.wait(10)
        server.stop()
    return {"viewers": viewers, "seconds": seconds, "nonstop": ours, "nginx": theirs,
            "ratio": round(ours["cpu_s_per_gb"] / theirs["cpu_s_per_gb"], 2)
            if ours["cpu_s_per_gb"] and theirs["cpu_s_per_gb"] else None}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--viewers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out" / "hls"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    media = make_media(out / "2mbps-60s.flv")
    result = {"segmenter": segmenter_cost(media)}
    print(json.dumps(result, indent=1), flush=True)
    result["serving"] = serving_cost(media, args.viewers, args.seconds)
    print(json.dumps(result, indent=1))
    (out / "result.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
