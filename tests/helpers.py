"""Test harness: the real server as a subprocess, real ffmpeg/ffprobe clients, and condition waits.

Every wait is bounded and polls a condition; nothing sleeps blindly.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FFMPEG = "ffmpeg"
FFPROBE = "ffprobe"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, interval: float = 0.05, what: str = "condition"):
    """Poll `condition()` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def nonstop_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "nonstop.cli", *args]


def run_nonstop(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(nonstop_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=ROOT)


@dataclass
class Server:
    """A nonstop process on free ports, with its config written to a temp dir."""
    extra_global: str = ""
    vhost_body: str = ""
    env: dict = field(default_factory=dict)
    args: tuple = ()
    max_connections: int = 1000
    rtmp_port: int = field(default_factory=free_port)
    http_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nonstop-test-")))
    proc: subprocess.Popen | None = None

    @property
    def conf_path(self) -> Path:
        return self.workdir / "nonstop.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "server.log"

    def config_text(self) -> str:
        return textwrap.dedent(f"""\
            listen {self.rtmp_port};
            max_connections {self.max_connections};
            daemon off;
            pid {self.workdir}/nonstop.pid;
            srs_log_tank console;
            {self.extra_global}
            http_api {{ enabled on; listen 127.0.0.1:{self.api_port}; }}
            http_server {{ enabled on; listen 127.0.0.1:{self.http_port}; }}
            vhost __defaultVhost__ {{
                http_remux {{ enabled on; mount [vhost]/[app]/[stream].flv; }}
                {self.vhost_body}
            }}
            """)

    def start(self, wait: bool = True) -> "Server":
        self.conf_path.write_text(self.config_text())
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(nonstop_cmd("-c", str(self.conf_path), *self.args), cwd=self.workdir,
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **self.env})
        if wait:
            wait_for(lambda: port_open(self.rtmp_port) or self.proc.poll() is not None, 15,
                     what="the server to listen")
            assert self.proc.poll() is None, f"server exited: {self.log()}"
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def rtmp_url(self, stream: str = "livestream", app: str = "live") -> str:
        return f"rtmp://127.0.0.1:{self.rtmp_port}/{app}/{stream}"

    def flv_url(self, stream: str = "livestream", app: str = "live") -> str:
        return f"http://127.0.0.1:{self.http_port}/{app}/{stream}.flv"

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 10) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ----- media -----------------------------------------------------------------------------------------------

def make_test_flv(path: Path, seconds: int = 12, size: str = "320x240", rate: int = 25, gop: int = 25) -> Path:
    """A small pre-encoded H.264/AAC FLV, for `-c copy` publishing that costs the encoder nothing."""
    if path.exists():
        return path
    subprocess.run([FFMPEG, "-v", "error", "-y",
                    "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}",
                    "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-profile:v", "high",
                    "-pix_fmt", "yuv420p", "-g", str(gop), "-bf", "0",
                    "-c:a", "aac", "-b:a", "64k", "-ac", "2", "-f", "flv", str(path)],
                   check=True, timeout=120)
    return path


def publish_file(url: str, flv_path: Path, loop: bool = True, extra: tuple = ()) -> subprocess.Popen:
    args = [FFMPEG, "-v", "error", "-re"]
    if loop:
        args += ["-stream_loop", "-1"]
    args += ["-i", str(flv_path), "-c", "copy", *extra, "-f", "flv", url]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def publish_live(url: str, size: str = "320x240", rate: int = 25) -> subprocess.Popen:
    """A live lavfi source encoded on the fly (H.264/AAC)."""
    args = [FFMPEG, "-v", "error", "-re", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={rate}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(rate), "-bf", "0",
            "-c:a", "aac", "-b:a", "64k", "-f", "flv", url]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def stop_proc(proc: subprocess.Popen, timeout: float = 5, sig: int = signal.SIGINT) -> None:
    """Ask a process to end with `sig`; kill it if it has not within `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class PlayResult:
    returncode: int
    stderr: str
    video: list = field(default_factory=list)   # [(pts_seconds, size)] of decoded video frames
    audio: list = field(default_factory=list)

    def video_pts(self) -> list[float]:
        return [pts for pts, _ in self.video]


def start_player(url: str, seconds: float, decode: bool = True) -> subprocess.Popen:
    """ffmpeg plays `url` for `seconds` of media and prints one line per frame (framecrc, in ms)."""
    args = [FFMPEG, "-v", "error", "-i", url, "-t", str(seconds)]
    if not decode:
        args += ["-c", "copy"]
    args += ["-f", "framecrc", "-"]
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish_player(proc: subprocess.Popen, timeout: float) -> PlayResult:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        err += "\n[test harness: player timed out]"
    return parse_framecrc(proc.returncode, out, err)


def play(url: str, seconds: float, timeout: float | None = None, decode: bool = True) -> PlayResult:
    return finish_player(start_player(url, seconds, decode), timeout or seconds + 20)


def parse_framecrc(returncode: int, out: str, err: str) -> PlayResult:
    """framecrc lines: `stream, dts, pts, duration, size, crc` in each stream's time base (#tb lines)."""
    result = PlayResult(returncode, err)
    timebase: dict[int, float] = {}
    for line in out.splitlines():
        if line.startswith("#tb"):
            idx, _, frac = line[4:].partition(":")
            num, _, den = frac.strip().partition("/")
            timebase[int(idx)] = int(num) / int(den)
            continue
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5:
            continue
        stream = int(parts[0])
        pts = int(parts[2]) * timebase.get(stream, 1 / 1000)
        (result.video if stream == 0 else result.audio).append((pts, int(parts[4])))
    return result


def ffprobe_json(url: str, timeout: float = 20) -> dict:
    proc = subprocess.run([FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", url],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"ffprobe failed: {proc.stderr}"
    return json.loads(proc.stdout)


def assert_frames_match_timestamps(result: PlayResult, tolerance: float = 0.05, min_frames: int = 10) -> None:
    """The number of decoded video frames matches what the timestamps span says, within `tolerance`."""
    pts = sorted(result.video_pts())
    assert len(pts) >= min_frames, f"only {len(pts)} video frames; stderr: {result.stderr[-2000:]}"
    steps = sorted(b - a for a, b in zip(pts, pts[1:]))
    frame_time = steps[len(steps) // 2]
    assert frame_time > 0, "video timestamps do not advance"
    expected = round((pts[-1] - pts[0]) / frame_time) + 1
    assert abs(len(pts) - expected) <= max(1, tolerance * expected), \
        f"{len(pts)} frames but the timestamps span {expected} frames"
