"""Helpers for the upgrade tests: a master-mode server, players that time each frame's arrival, and the API."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
import urllib.request
from dataclasses import dataclass, field

from tests.e2e.ops_helpers import OpsServer, http_status, process_alive
from tests.helpers import FFMPEG, PlayResult, nonstop_cmd, parse_framecrc, wait_for


class UpgradeServer(OpsServer):
    def summaries(self) -> dict:
        with urllib.request.urlopen(self.api("/api/v1/summaries"), timeout=3) as r:
            return json.load(r)["data"]

    def metrics(self) -> str:
        with urllib.request.urlopen(self.api("/metrics"), timeout=3) as r:
            return r.read().decode()

    def upgrade(self, count: int) -> float:
        """SIGUSR2 with `nonstop -s upgrade`; wait until the `count`th upgrade ended; seconds it took."""
        started = time.monotonic()
        result = self.ctl("upgrade")
        assert result.returncode == 0, result.stderr
        wait_for(lambda: len(re.findall(r"upgrade (done|rolled_back|failed)", self.log())) >= count, 40,
                 what=f"upgrade #{count} to end")
        return time.monotonic() - started

    def master_pid_in_file(self) -> int:
        return int(self.pid_path.read_text().strip())

    def live_worker_pids(self) -> list[int]:
        return [pid for pid in self.worker_pids() if process_alive(pid)]


@dataclass
class TimedPlayer:
    """An ffmpeg player whose framecrc lines are timed as they arrive (-flush_packets 1), so the wall-clock gap
    between consecutive video frames is known."""
    url: str
    seconds: float
    proc: subprocess.Popen | None = None
    arrivals: list = field(default_factory=list)    # (monotonic, line) of video frames
    lines: list = field(default_factory=list)
    _thread: threading.Thread | None = None

    def start(self) -> "TimedPlayer":
        args = [FFMPEG, "-v", "error", "-i", self.url, "-t", str(self.seconds), "-flush_packets", "1",
                "-f", "framecrc", "-"]
        # stdin is a pipe for quit(): ffmpeg reads its keys there.
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)
            if line.startswith("0,"):
                self.arrivals.append(time.monotonic())

    def playing(self) -> bool:
        return len(self.arrivals) >= 5

    def quit(self) -> None:
        """End the play now, as a viewer does, before its `seconds`: ffmpeg's `q` key, a clean end (exit 0, the
        output closed), so finish() judges what was played up to here."""
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.stdin.write("q")
                self.proc.stdin.flush()
            except OSError:
                pass    # it ended meanwhile: finish() tells how

    def kill(self) -> None:
        """For a test's cleanup: end the player if it still runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def finish(self, timeout: float) -> PlayResult:
        try:
            err = self.proc.stderr.read() if self.proc.wait(timeout) is not None else ""
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            err = "[test harness: player timed out]"
        self._thread.join(5)
        return parse_framecrc(self.proc.returncode, "".join(self.lines), err)

    def worst_gap(self) -> float:
        return max((b - a for a, b in zip(self.arrivals, self.arrivals[1:])), default=0.0)

    def median_gap(self) -> float:
        gaps = sorted(b - a for a, b in zip(self.arrivals, self.arrivals[1:]))
        return gaps[len(gaps) // 2] if gaps else 0.0


def play_on_then_quit(players: list[TimedPlayer], seconds: float, fps: int = 25) -> None:
    """Wait (bounded) until every player has played `seconds` more of video from now, then quit them all: what
    a test shows after its last operation, without playing out the rest of the players' `seconds`."""
    counts = [len(p.arrivals) for p in players]
    wait_for(lambda: all(len(p.arrivals) >= n + seconds * fps for p, n in zip(players, counts)), seconds + 10,
             what=f"{seconds} s more of play at every player")
    for p in players:
        p.quit()


def assert_every_frame_once(result: PlayResult, frame_s: float = 0.04, what: str = "player") -> None:
    """No decode error, no disconnect, and the video timestamps run on with no hole and no repeat."""
    assert result.returncode == 0, f"{what}: exit {result.returncode}: {result.stderr[-1000:]}"
    assert result.stderr.strip() == "", f"{what}: decode errors: {result.stderr[-1000:]}"
    pts = result.video_pts()
    assert len(pts) > 10, f"{what}: only {len(pts)} frames"
    assert pts == sorted(pts) and len(set(pts)) == len(pts), f"{what}: a frame repeated or out of order"
    steps = [b - a for a, b in zip(pts, pts[1:])]
    assert max(steps) <= frame_s * 1.05, f"{what}: a hole in the video timeline: {max(steps):.3f}s"


def start_bench(url: str, players: int, churn: float, duration: float, hole_ms: float = 60) -> subprocess.Popen:
    args = nonstop_cmd("bench", url, "--players", str(players), "--churn", str(churn), "--duration", str(duration),
                       "--warmup", "1", "--hole-ms", str(hole_ms), "--stall-threshold", "0.5",
                       "--rcvlowat", "0", "--json")
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def finish_bench(proc: subprocess.Popen, timeout: float) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"bench failed: {err[-2000:]}"
    return json.loads(out)


class ReadyzWatch(threading.Thread):
    """GET /readyz every 50 ms (a fresh connection each time, as a probe does), counting the answers by status
    (None: nothing answered)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url = url
        self.codes: dict = {}
        self.stop = threading.Event()

    def start(self) -> "ReadyzWatch":
        super().start()
        return self

    def run(self) -> None:
        while not self.stop.wait(0.05):
            code = http_status(self.url)
            self.codes[code] = self.codes.get(code, 0) + 1
