"""The chaos harness: the real server (master + worker) under real and hostile load while an operator upgrades,
kills, stalls and reloads it; every client runs in its own process (tests/e2e/chaos_clients.py, ffmpeg).

A run (`Chaos(plan, workdir).run()`) does, with `min_latency on` in the vhost:
1. warm-up: one ffmpeg publisher (a live test pattern at `video_kbps`, -re, restarted by a supervisor whenever
   it exits), the players that never read (RTMP and HTTP-FLV, a 1 KiB receive buffer; first, so that the
   kernel's buffers toward them are full by the first upgrade), the long-lived readers (RTMP and HTTP-FLV, every
   timestamp reported); the RSS baseline (master + workers) once they all play;
2. load: the churn process (short-lived players 0.1-1.5 s at `churn_rate`/s and probes that hang up at their
   first video frame at `probe_rate`/s, RTMP and HTTP-FLV alternately) and the idle clients (`connect`, then
   `idle_messages` messages of `idle_partial_bytes` left one chunk short);
3. the operator, `cycles` times (or until `soak_s` has passed): `upgrades` SIGUSR2 upgrades in a row, each
   waiting until the previous ended (the master's `upgrade done|rolled_back|failed|refused` line; one that does
   not end within `upgrade_timeout_s` is a failure and the run goes on) with `between_s` of play after each;
   `kill -9` of the current worker; a SIGSTOP of `stop_s` of the current worker; a reload (SIGHUP);
4. the end: churn and hostile clients stop; every old worker must exit, and the RSS must come back within
   `rss_margin_mb` of the baseline (both waited for, bounded).
Every wait is bounded; a wait that fails stops the operator and the run is judged on what happened until then.

What a `kill -9` of a worker means for its clients (decided here; the issue is silent): the kernel closes every
socket the worker held, so its publisher and every player on it are disconnected; no server design can keep a
TCP connection whose only owner was SIGKILLed (the master holds the listeners, not the connections). So from the
SIGKILL until every long-lived reader has its first frame again (the *kill window*) the harness allows exactly
this: the publisher is restarted, each reader reconnects (plus HTTP 404s while no publisher is back), churn
attempts that overlap the window may fail; the never-readers and idle clients are opened again afterwards. The
master must start a new worker within 20 s and every reader must play again within `recover_timeout_s`; each
reader's time to its first frame again is printed. A disconnect of anything anywhere else fails the run.

The SIGSTOP window (from SIGSTOP to SIGCONT) is excluded from the gap bound: the gap that overlaps it is
expected to be about `stop_s`, and it is printed on its own. Nothing else is excluded: a publisher or reader
disconnected by the stall, a lost or repeated frame, a gap after SIGCONT all fail the run.

The pass criteria (`Result.failures` lists every one that failed, each naming the reader, phase and times):
- no long-lived reader disconnected (outside the kill window), none loses or repeats a frame (video steps of
  exactly one frame interval, audio steps within 1.5 AAC frames, on every connection);
- the worst gap between two video frames at a reader is under `gap_bound_s` outside the excluded windows;
- no churn attempt refused, reset, rejected (an HTTP 404 too), dropped or unanswered, outside the kill window;
- RSS of master + workers back within `rss_margin_mb` of the baseline; every old worker has exited;
- no upgrade refused, rolled back or failed; no traceback in the server's log; the publisher never dropped
  outside the kill window.
"""

from __future__ import annotations

import bisect
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.ops_helpers import process_alive
from tests.e2e.upgrade_helpers import UpgradeServer
from tests.helpers import FFMPEG, ROOT, stop_proc, wait_for

FPS = 25
FRAME_MS = 1000 // FPS                  # the publisher's video timestamps step by exactly this
AUDIO_FRAME_MS = 1024 / 44100 * 1000    # AAC at 44.1 kHz: 23.2 ms, written as 23 or 24
STREAM = "__defaultVhost__/live/livestream"
MB = 1024 * 1024


@dataclass
class ChaosPlan:
    rtmp_readers: int = 2
    flv_readers: int = 2
    churn_rate: float = 40.0
    probe_rate: float = 20.0
    churn_min_s: float = 0.1
    churn_max_s: float = 1.5
    churn_timeout_s: float = 10.0       # a probe with no first frame by then is unanswered
    never_readers: str = "rtmp,flv"
    idle_clients: int = 8
    idle_messages: int = 2
    # Within the server's pre-identify caps, so they are held and move at each handover; the soak sends 16 MiB
    # ones, which the caps refuse at once.
    idle_partial_bytes: int = 12 * 1024
    video_kbps: int = 2000
    upgrades: int = 5
    between_s: float = 2.0              # of play between two operator actions
    stop_s: float = 6.0
    cycles: int = 1
    soak_s: float = 0.0                 # > 0: repeat the cycle until this much time has passed
    gap_bound_s: float = 0.4
    rss_margin_mb: float = 20.0
    old_worker_exit_s: float = 30.0     # after the end, how long old workers may take to exit
    rss_settle_s: float = 20.0          # after the end, how long the RSS may take to come back
    upgrade_timeout_s: float = 40.0
    recover_timeout_s: float = 30.0     # after kill -9 / SIGCONT: every reader plays again within this
    extra_global: str = ""


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class ServerLog:
    """The server's log, read incrementally (a soak writes tens of MB: the waits must not reread it all). Only
    the lines of the master and of the workers' lifecycle are kept; tracebacks are counted."""

    KEEP = re.compile(r"\]\[(main|worker|handover)\] |Traceback")

    def __init__(self, path: Path):
        self.path = path
        self.offset = 0
        self.rest = b""
        self.kept: list[str] = []
        self.lock = threading.Lock()

    def lines(self) -> list[str]:
        with self.lock:
            try:
                with open(self.path, "rb") as f:
                    f.seek(self.offset)
                    data = f.read()
            except OSError:
                return self.kept
            self.offset += len(data)
            data = self.rest + data
            cut = data.rfind(b"\n") + 1
            self.rest = data[cut:]
            for line in data[:cut].decode(errors="replace").splitlines():
                if self.KEEP.search(line):
                    self.kept.append(line)
            return self.kept

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines())

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines() if re.search(pattern, line)]

    def worker_pids(self) -> list[int]:
        """Every worker the master started, in order."""
        return [int(m.group(1)) for m in map(re.compile(r"started worker pid=(\d+)").search, self.lines()) if m]


class ClientProc:
    """A client subprocess whose stdout lines are parsed as they come (kept in memory and in a log file)."""

    def __init__(self, name: str, args: list[str], workdir: Path):
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        self.lines: list[list[str]] = []
        self.cpu_s = 0.0        # CPU seconds it used, read when it is stopped
        self.video_times: list[float] = []      # arrival of each video frame, for the waits (in order)
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._err,
                                     text=True, bufsize=1, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with open(self.out_path, "w") as out:
            for line in self.proc.stdout:
                out.write(line)
                words = line.split()
                if words:
                    self.lines.append(words)
                    if words[0] == "v":
                        self.video_times.append(float(words[1]))

    def events(self, kind: str) -> list[list[str]]:
        return [w for w in list(self.lines) if w[0] == kind]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.cpu_s = cpu_seconds(self.proc.pid)
            stop_proc(self.proc, sig=signal.SIGTERM)
        self._thread.join(5)
        self._err.close()

    def stderr_tail(self, n: int = 1500) -> str:
        try:
            return self.err_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def client_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tests.e2e.chaos_clients", *args]


class Reader(ClientProc):
    def frames_after(self, t: float) -> int:
        times = self.video_times
        return len(times) - bisect.bisect_right(times, t)

    def first_frame_after(self, t: float) -> float | None:
        times = self.video_times
        i = bisect.bisect_right(times, t)
        return times[i] if i < len(times) else None


def publisher_cmd(url: str, kbps: int) -> list[str]:
    """ffmpeg encoding a live test pattern in real time (-re), H.264 (1 s GOP, no B-frames) and AAC. The noise
    filter makes the picture cost `kbps`, so that a player that never reads fills the kernel's buffers (up to
    4 MiB on loopback) within seconds and the server's own buffer then grows, as with a real stream."""
    return [FFMPEG, "-v", "error", "-re", "-f", "lavfi", "-i", f"testsrc=size=320x240:rate={FPS}",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=44100", "-vf", "noise=alls=20:allf=t",
            "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", str(FPS), "-bf", "0",
            "-b:v", f"{kbps}k", "-maxrate", f"{kbps}k", "-bufsize", f"{kbps // 4}k",
            "-c:a", "aac", "-b:a", "64k", "-f", "flv", url]


class Publisher:
    """ffmpeg publishing a live test pattern with -re; a supervisor restarts it at once whenever it exits, and
    every exit is recorded (time, exit code, stderr) for the harness to judge."""

    def __init__(self, url: str, kbps: int):
        self.url = url
        self.kbps = kbps
        self.exits: list[tuple[float, int, str]] = []
        self.starts: list[float] = []
        self.stopping = False
        self.proc = self._start()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _start(self) -> subprocess.Popen:
        self.starts.append(time.monotonic())
        return subprocess.Popen(publisher_cmd(self.url, self.kbps), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def _watch(self) -> None:
        while not self.stopping:
            code = self.proc.poll()
            if code is not None and not self.stopping:
                err = self.proc.stderr.read().decode(errors="replace")[-500:]
                self.exits.append((time.monotonic(), code, err))
                self.proc = self._start()
            time.sleep(0.02)

    def stop(self) -> None:
        self.stopping = True
        self._thread.join(2)
        if self.proc.poll() is None:
            stop_proc(self.proc, sig=signal.SIGTERM)


@dataclass
class Window:
    kind: str           # "kill" or "sigstop"
    start: float
    end: float


@dataclass
class Result:
    failures: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)       # the figures, for people

    def report(self) -> str:
        text = "\n".join(self.lines)
        if self.failures:
            text += f"\n\nFAILED criteria ({len(self.failures)}):\n" + "\n".join(f"  - {f}" for f in self.failures)
        else:
            text += "\n\nevery criterion held"
        return text


class Chaos:
    def __init__(self, plan: ChaosPlan, workdir: Path):
        self.plan = plan
        self.workdir = workdir
        self.server = UpgradeServer(vhost_body="min_latency on;", max_connections=3000,
                                    extra_global=plan.extra_global, workdir=workdir)
        self.log = ServerLog(self.server.log_path)
        self.publisher: Publisher | None = None
        self.readers: list[Reader] = []
        self.churn: ClientProc | None = None
        self.hostile: dict[str, ClientProc] = {}    # the current process of each role
        self.hostiles: list[ClientProc] = []
        self.hostile_notes: list[str] = []
        self.phases: list[tuple[str, float]] = []
        self.windows: list[Window] = []
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.upgrades: list[tuple[int, str, float]] = []      # (n, the master's line, seconds)
        self.kills: list[dict] = []
        self.stops: list[dict] = []
        self.reloads: list[float] = []
        self.baseline_kb = 0
        self.final_kb = 0
        self.rss_peak_kb = 0
        self.t0 = time.monotonic()
        self.t_measure = 0.0       # gaps are judged from here (the end of the warm-up)
        self.t_end = 0.0
        self._rss_stop = threading.Event()
        self.server_cpu: dict[int, float] = {}

    # ----- helpers ---------------------------------------------------------------------------------------
    def rel(self, t: float) -> str:
        return f"+{t - self.t0:.2f}s"

    def mark(self, name: str) -> None:
        self.phases.append((name, time.monotonic()))

    def phase_at(self, t: float) -> str:
        name = "warm-up"
        for phase, start in self.phases:
            if start <= t:
                name = phase
            else:
                break
        return name

    def window_of(self, t0: float, t1: float) -> Window | None:
        """The excluded window that [t0, t1] overlaps, if any."""
        return next((w for w in self.windows if t0 <= w.end and t1 >= w.start), None)

    def worker_pids(self) -> list[int]:
        return self.log.worker_pids()

    def current_worker(self) -> int:
        alive = [pid for pid in self.worker_pids() if process_alive(pid)]
        assert alive, (f"no live worker (master pid {self.server.proc.pid} "
                       f"{'alive' if self.server.proc.poll() is None else 'exited'}, workers started "
                       f"{self.worker_pids()}): nothing serves the listeners")
        return alive[-1]

    def total_rss_kb(self) -> int:
        pids = [self.server.proc.pid] + [pid for pid in self.worker_pids() if process_alive(pid)]
        return sum(rss_kb(pid) for pid in pids)

    def _watch_rss(self) -> None:
        while not self._rss_stop.wait(0.5):
            self.rss_peak_kb = max(self.rss_peak_kb, self.total_rss_kb())
            for pid in [self.server.proc.pid] + self.worker_pids():
                cpu = cpu_seconds(pid)
                if cpu:
                    self.server_cpu[pid] = cpu    # a worker's last reading before it exits

    def play_for(self, seconds: float) -> None:
        """Wait (bounded) until the readers have received `seconds` of video from now."""
        t = time.monotonic()
        need = int(seconds * FPS)
        wait_for(lambda: max(r.frames_after(t) for r in self.readers) >= need, seconds * 3 + 10,
                 what=f"{seconds}s of video at the readers in phase {self.phases[-1][0]!r}")

    def wait_every_reader_plays_after(self, t: float, what: str) -> float:
        """Wait until every reader has 3 frames after `t`; the time of the last reader's first such frame."""
        try:
            wait_for(lambda: all(r.frames_after(t) >= 3 for r in self.readers), self.plan.recover_timeout_s,
                     what=what)
        except AssertionError:
            stuck = [r.name for r in self.readers if r.frames_after(t) < 3]
            raise AssertionError(f"{what}: readers {stuck} got no video within {self.plan.recover_timeout_s}s "
                                 f"(publisher restarts {len(self.publisher.starts) - 1}, live workers "
                                 f"{[p for p in self.worker_pids() if process_alive(p)]})") from None
        return max(r.first_frame_after(t) for r in self.readers)

    # ----- the run -----------------------------------------------------------------------------------------
    def run(self) -> Result:
        try:
            self._start()
            self._operate()
        except AssertionError as e:
            self.failures.append(f"the run stopped in phase {self.phases[-1][0] if self.phases else 'start'!r}: {e}")
        finally:
            try:
                self._finish()
            except AssertionError as e:
                self.failures.append(f"the end of the run: {e}")
            self.t_end = min(self.t_end, time.monotonic())
        return self.analyze()

    def _start(self) -> None:
        plan, server = self.plan, self.server
        server.start()
        self.t0 = time.monotonic()
        self.publisher = Publisher(server.rtmp_url(), plan.video_kbps)
        wait_for(lambda: f"publish {STREAM}," in server.log(), 20, what="the publisher to publish")
        self.start_hostile("never-readers")     # first: their buffers need time to fill
        self.readers = [Reader(f"reader-rtmp-{i}", client_cmd("reader", server.rtmp_url()), self.workdir)
                        for i in range(plan.rtmp_readers)]
        self.readers += [Reader(f"reader-flv-{i}", client_cmd("reader", server.flv_url()), self.workdir)
                         for i in range(plan.flv_readers)]
        wait_for(lambda: all(r.frames_after(0) >= 2 * FPS for r in self.readers), 30,
                 what="every long-lived reader to play 2 s")
        self.baseline_kb = self.total_rss_kb()
        self.rss_peak_kb = self.baseline_kb
        threading.Thread(target=self._watch_rss, daemon=True).start()
        self.mark("load starts")
        self.t_measure = time.monotonic()
        self.churn = ClientProc("churn", client_cmd(
            "churn", server.rtmp_url(), server.flv_url(), "--rate", str(plan.churn_rate),
            "--probe-rate", str(plan.probe_rate), "--min", str(plan.churn_min_s), "--max", str(plan.churn_max_s),
            "--timeout", str(plan.churn_timeout_s)), self.workdir)
        self.start_hostile("idle")

    def start_hostile(self, role: str) -> None:
        """The never-readers, or the idle clients, in a new process (after a kill -9 their connections are gone:
        they come back; the previous process's record is kept)."""
        plan, server = self.plan, self.server
        if self.hostile.get(role) is not None:
            self.stop_hostile(role)
        n = sum(1 for h in self.hostiles if h.name.startswith(role))
        h = ClientProc(f"{role}-{n}", client_cmd(
            "hostile", server.rtmp_url(), server.flv_url(),
            "--never-readers", plan.never_readers if role == "never-readers" else "",
            "--idle", str(plan.idle_clients if role == "idle" else 0), "--messages", str(plan.idle_messages),
            "--partial-bytes", str(plan.idle_partial_bytes)), self.workdir)
        self.hostile[role] = h
        self.hostiles.append(h)
        wait_for(lambda: h.events("ready") or h.proc.poll() is not None, 60, what=f"the {role} clients to connect")
        assert h.events("ready"), f"the {role} clients failed: {h.stderr_tail()}"

    def stop_hostile(self, role: str) -> None:
        h = self.hostile.pop(role)
        h.stop()
        closed = [(int(w[2]), float(w[1])) for w in h.events("idle") if w[3] == "closed"]
        ready = {int(w[2]): float(w[1]) for w in h.events("idle") if w[3] == "ready"}
        refused = [int(w[2]) for w in h.events("idle") if w[3] == "refused"]
        if refused:
            self.hostile_notes.append(f"{h.name}: {len(refused)} idle clients refused at once by the server's "
                                      f"caps on what an unidentified client may hold")
        states = [(w[2], w[3], self.rel(float(w[1]))) for w in h.events("nrstate")]
        if ready:
            closes = ", ".join(f"#{i} after {t - ready.get(i, t):.1f}s" for i, t in closed)
            self.hostile_notes.append(f"{h.name}: {len(ready)} idle clients, {len(closed)} closed on the server's side "
                                      f"({closes})")
        else:
            self.hostile_notes.append(f"{h.name}: never-readers' TCP state changes {states}")

    def _operate(self) -> None:
        plan = self.plan
        cycle = 0
        while True:
            cycle += 1
            prefix = f"c{cycle} " if plan.soak_s or plan.cycles > 1 else ""
            self.mark(prefix + "churn")
            self.play_for(plan.between_s)
            for _ in range(plan.upgrades):
                self.mark(f"{prefix}upgrade {len(self.upgrades) + 1}")
                self.upgrade()
                self.play_for(plan.between_s)
            self.mark(prefix + "kill -9")
            self.kill_worker()
            self.mark(prefix + "hostile clients back")      # their connections died with the worker
            for role in list(self.hostile):
                self.start_hostile(role)
            self.mark(prefix + "after kill -9")
            self.play_for(plan.between_s)
            self.mark(prefix + "SIGSTOP")
            self.stop_worker()
            self.mark(prefix + "after SIGCONT")
            self.play_for(plan.between_s)
            self.mark(prefix + "reload")
            self.reload()
            self.play_for(plan.between_s)
            if plan.soak_s:
                if time.monotonic() - self.t0 >= plan.soak_s:
                    return
            elif cycle >= plan.cycles:
                return

    def upgrade(self) -> None:
        n = len(self.upgrades) + 1
        ended = r"upgrade (done|rolled_back|failed)"
        before = len(self.log.matching(ended))
        refused = self.log.count("upgrade refused")
        started = time.monotonic()
        self.server.signal(signal.SIGUSR2)
        try:
            wait_for(lambda: len(self.log.matching(ended)) > before or self.log.count("upgrade refused") > refused,
                     self.plan.upgrade_timeout_s, what=f"upgrade {n} to end")
        except AssertionError:
            # Not fatal: the run goes on, so that what follows (the kill -9 above all) is seen too.
            line = f"did not end within {self.plan.upgrade_timeout_s:g}s"
            self.upgrades.append((n, line, time.monotonic() - started))
            self.failures.append(f"upgrade {n} at {self.rel(started)} {line}")
            return
        took = time.monotonic() - started
        if self.log.count("upgrade refused") > refused:
            line = self.log.matching("upgrade refused")[-1]
        else:
            line = self.log.matching(ended)[-1]
        line = line.split("] ", 3)[-1] if "] " in line else line
        self.upgrades.append((n, line, took))
        if "upgrade done" not in line:
            self.failures.append(f"upgrade {n} at {self.rel(started)} did not succeed: {line}")

    def kill_worker(self) -> None:
        pid = self.current_worker()
        known = set(self.worker_pids())
        t = time.monotonic()
        window = Window("kill", t, t + self.plan.recover_timeout_s)
        self.windows.append(window)
        os.kill(pid, signal.SIGKILL)
        try:
            wait_for(lambda: any(p not in known and process_alive(p) for p in self.worker_pids()), 20,
                     what=f"the master to start a worker after kill -9 of pid {pid}")
        except AssertionError:
            window.end = float("inf")       # what follows is this failure's consequence: it is the one reported
            raise AssertionError(f"no new worker 20 s after kill -9 of worker pid {pid}; live workers "
                                 f"{[p for p in self.worker_pids() if process_alive(p)]}") from None
        new = next(p for p in self.worker_pids() if p not in known)
        try:
            window.end = self.wait_every_reader_plays_after(t, f"the readers after kill -9 of worker pid {pid}")
        except AssertionError:
            window.end = float("inf")
            raise
        self.kills.append({"pid": pid, "new": new, "at": t, "recovered_s": window.end - t,
                           "first_frames": {r.name: r.first_frame_after(t) - t for r in self.readers}})

    def stop_worker(self) -> None:
        pid = self.current_worker()
        t = time.monotonic()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(self.plan.stop_s)    # the stall itself is the experiment: not a wait for a condition
        finally:
            os.kill(pid, signal.SIGCONT)
        t_cont = time.monotonic()
        self.windows.append(Window("sigstop", t, t_cont))
        back = self.wait_every_reader_plays_after(t_cont, f"the readers after SIGCONT of worker pid {pid}")
        self.stops.append({"pid": pid, "at": t, "cont": t_cont, "back_s": back - t_cont})

    def reload(self) -> None:
        before = self.log.count("reload config success")
        t = time.monotonic()
        self.server.signal(signal.SIGHUP)
        wait_for(lambda: self.log.count("reload config success") > before, 15, what="the reload to succeed")
        self.reloads.append(time.monotonic() - t)

    def _finish(self) -> None:
        plan = self.plan
        self.mark("end")
        self.t_end = time.monotonic() + 3600     # judged until the readers stop; set again below
        if self.churn is not None:
            self.churn.stop()
        for r in self.readers:
            r.cpu_s = cpu_seconds(r.proc.pid)
        for role in list(self.hostile):
            self.stop_hostile(role)
        if self.server.proc is None or self.server.proc.poll() is not None:
            self.failures.append(f"the master exited ({self.server.proc.returncode if self.server.proc else None})")
            self.t_end = time.monotonic()
            return
        # Old workers: every one but the newest must exit.
        try:
            current = self.current_worker()
        except AssertionError as e:
            self.failures.append(str(e))
            self.t_end = time.monotonic()
            return
        old = [p for p in self.worker_pids() if p != current]
        try:
            wait_for(lambda: not any(process_alive(p) for p in old), plan.old_worker_exit_s,
                     what="every old worker to exit")
        except AssertionError:
            alive = [p for p in old if process_alive(p)]
            self.failures.append(f"old workers {alive} still alive {plan.old_worker_exit_s:.0f}s after the end "
                                 f"(current worker {current})")
        started = time.monotonic()
        bound = self.baseline_kb + plan.rss_margin_mb * 1024
        try:
            wait_for(lambda: self.total_rss_kb() <= bound, plan.rss_settle_s, interval=0.5,
                     what="the RSS to come back")
        except AssertionError:
            pass
        self.final_kb = self.total_rss_kb()
        self.rss_settle = time.monotonic() - started
        self._rss_stop.set()
        self.t_end = time.monotonic()

    def close(self) -> None:
        """End every process of the run, whatever state it is in (for a fixture's finalizer)."""
        self._rss_stop.set()
        for pid in self.worker_pids() if self.server.proc is not None else []:
            try:
                os.kill(pid, signal.SIGCONT)        # a worker left stopped would never quit
            except OSError:
                pass
        for c in [self.churn, *self.hostiles, *self.readers]:
            if c is not None:
                c.stop()
        if self.publisher is not None:
            self.publisher.stop()
        self.server.stop(timeout=15)
        for pid in self.worker_pids():
            if process_alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)    # a worker orphaned by a failed run
                except OSError:
                    pass

    # ----- judging -----------------------------------------------------------------------------------------
    def analyze(self) -> Result:
        res = Result(failures=list(self.failures))
        plan = self.plan
        out = res.lines
        out.append(f"chaos run: {plan.rtmp_readers} RTMP + {plan.flv_readers} HTTP-FLV long-lived readers, churn "
                   f"{plan.churn_rate:g}/s ({plan.churn_min_s}-{plan.churn_max_s} s) + probes {plan.probe_rate:g}/s, "
                   f"never-readers [{plan.never_readers}], {plan.idle_clients} idle clients x {plan.idle_messages} "
                   f"x {plan.idle_partial_bytes // 1024} KiB partial; {len(self.upgrades)} upgrades, "
                   f"{len(self.kills)} kill -9, {len(self.stops)} SIGSTOP of {plan.stop_s:g}s, "
                   f"{len(self.reloads)} reloads; {self.t_end - self.t0:.1f}s")
        self._judge_readers(res)
        self._judge_churn(res)
        self._judge_operator(res)
        self._judge_server(res)
        return res

    def _judge_readers(self, res: Result) -> None:
        out = res.lines
        worst_by_phase: dict[str, tuple[float, str, float]] = {}
        excluded: list[str] = []
        out.append("long-lived readers:")
        for r in self.readers:
            frames = audio = 0
            conns = 0
            holes: list[str] = []
            prev_v = prev_a = None
            last_arrival = None
            ends: list[tuple[float, str]] = []
            for w in list(r.lines):
                kind, t = w[0], float(w[1])
                if kind == "conn":
                    conns += 1
                    prev_v = prev_a = None      # a new connection is a new timeline (it gets the GOP again)
                elif kind == "end":
                    ends.append((t, w[2]))
                elif kind == "v":
                    ts = int(w[2])
                    frames += 1
                    if prev_v is not None and ts - prev_v != FRAME_MS and t >= self.t_measure:
                        what = ("a repeated or earlier frame" if ts <= prev_v else
                                f"lost {round((ts - prev_v) / FRAME_MS) - 1} frame(s)" if ts - prev_v > FRAME_MS else
                                "a step shorter than a frame")
                        holes.append(f"video timestamp {prev_v} -> {ts} ms ({what}) at {self.rel(t)} "
                                     f"in phase {self.phase_at(t)!r}")
                    prev_v = ts
                    if last_arrival is not None and t >= self.t_measure and last_arrival <= self.t_end:
                        gap = t - last_arrival
                        window = self.window_of(last_arrival, t)
                        if window is not None:
                            excluded.append(f"{r.name} {window.kind}: {gap * 1000:.0f} ms")
                        else:
                            phase = self.phase_at(t)
                            if gap > worst_by_phase.get(phase, (0.0,))[0]:
                                worst_by_phase[phase] = (gap, r.name, last_arrival)
                    last_arrival = t
                elif kind == "a":
                    ts = int(w[2])
                    audio += 1
                    if prev_a is not None and not 0 < ts - prev_a <= 1.5 * AUDIO_FRAME_MS and t >= self.t_measure:
                        holes.append(f"audio timestamp {prev_a} -> {ts} ms at {self.rel(t)} in phase "
                                     f"{self.phase_at(t)!r}")
                    prev_a = ts
            out.append(f"  {r.name}: {frames} video + {audio} audio frames over {conns} connection(s), "
                       f"{len(holes)} timestamp faults, disconnects "
                       f"{[(self.rel(t), why) for t, why in ends if t <= self.t_end]}")
            cut = [f"{why} at {self.rel(t)} in phase {self.phase_at(t)!r}" for t, why in ends
                   if t <= self.t_end and getattr(self.window_of(t, t), "kind", None) != "kill"]
            if cut:
                res.failures.append(f"{r.name} disconnected {len(cut)} time(s) outside the kill windows: "
                                    + "; ".join(cut[:3]) + ("; ..." if len(cut) > 3 else ""))
            if holes:
                res.failures.append(f"{r.name}: {len(holes)} lost or repeated frames; first: " + "; ".join(holes[:3]))
            if r.proc.poll() is not None and r.proc.returncode not in (0, -signal.SIGTERM):
                res.failures.append(f"{r.name} exited {r.proc.returncode}: {r.stderr_tail(500)}")
        out.append("worst gap between video frames, by phase (any reader):")
        for phase, _ in self.phases:
            if phase in worst_by_phase:
                gap, name, at = worst_by_phase[phase]
                out.append(f"  {phase:>20}: {gap * 1000:6.0f} ms ({name} at {self.rel(at)})")
                if gap >= self.plan.gap_bound_s:
                    res.failures.append(f"gap of {gap * 1000:.0f} ms >= {self.plan.gap_bound_s * 1000:.0f} ms at "
                                        f"{name} from {self.rel(at)} to {self.rel(at + gap)} in phase {phase!r}")
        out.append(f"  excluded (kill -9 and SIGSTOP windows): {excluded}")

    def _judge_churn(self, res: Result) -> None:
        if self.churn is None:
            return
        by_kind: Counter = Counter()
        by_phase: dict[str, Counter] = defaultdict(Counter)
        in_window: Counter = Counter()
        bad: list[str] = []
        for w in self.churn.events("c"):
            start, end, role, proto, outcome, detail = float(w[1]), float(w[2]), w[3], w[4], w[5], w[6]
            by_kind[(role, proto, outcome)] += 1
            if outcome in ("ok", "early"):
                continue
            window = self.window_of(start, end)
            if window is not None and window.kind == "kill":
                in_window[(role, proto, outcome)] += 1
                continue
            by_phase[self.phase_at(start)][f"{role}/{proto}/{outcome}"] += 1
            if len(bad) < 5:
                bad.append(f"{role} {proto} {outcome} ({detail}) started {self.rel(start)} ended {self.rel(end)}")
        total = sum(by_kind.values())
        out = res.lines
        out.append(f"churn: {total} attempts; " + ", ".join(f"{r}/{p}/{o} {n}" for (r, p, o), n in
                                                             sorted(by_kind.items())))
        out.append(f"  failures inside the kill -9 windows (allowed): {dict(in_window)}")
        for phase, counts in by_phase.items():
            out.append(f"  failures in phase {phase!r}: {dict(counts)}")
        failed = sum(sum(c.values()) for c in by_phase.values())
        if failed:
            res.failures.append(f"{failed} churn attempts failed outside the kill windows: "
                                f"{ {p: dict(c) for p, c in by_phase.items()} }; first: " + "; ".join(bad))
        played = sum(n for (r, _, o), n in by_kind.items() if o == "ok")
        if played < 0.5 * total:
            res.failures.append(f"only {played} of {total} churn attempts played")

    def _judge_operator(self, res: Result) -> None:
        out = res.lines
        for n, line, took in self.upgrades:
            out.append(f"upgrade {n}: {took:.2f}s: {line}")
        for k in self.kills:
            out.append(f"kill -9 of worker {k['pid']} at {self.rel(k['at'])}: new worker {k['new']}, every reader "
                       f"back after {k['recovered_s']:.2f}s (" + ", ".join(f"{n} {s:.2f}s" for n, s in
                                                                           k['first_frames'].items()) + ")")
        for s in self.stops:
            out.append(f"SIGSTOP of worker {s['pid']} for {s['cont'] - s['at']:.2f}s: every reader had video again "
                       f"{s['back_s'] * 1000:.0f} ms after SIGCONT")
        out.append(f"reloads: {[round(x, 2) for x in self.reloads]} s")
        exits = self.publisher.exits if self.publisher else []
        cut = []
        for t, code, err in exits:
            allowed = getattr(self.window_of(t, t), "kind", None) == "kill"
            last = " / ".join(err.strip().splitlines()[-1:])[:160]
            out.append(f"publisher exited {code} at {self.rel(t)} in phase {self.phase_at(t)!r} "
                       f"({'kill window' if allowed else 'FAULT'}): {last}")
            if not allowed:
                cut.append(f"at {self.rel(t)} in phase {self.phase_at(t)!r} (ffmpeg exit {code}: {last})")
        if cut:
            res.failures.append(f"the publisher was disconnected {len(cut)} time(s) outside the kill windows: "
                                + "; ".join(cut[:3]) + ("; ..." if len(cut) > 3 else ""))
        for note in self.hostile_notes:
            out.append(f"hostile {note}")

    def _judge_server(self, res: Result) -> None:
        out = res.lines
        plan = self.plan
        end = (f"end {self.final_kb / 1024:.1f} MB ({(self.final_kb - self.baseline_kb) / 1024:+.1f} MB)"
               if self.final_kb else "end not measured (the run ended early)")
        out.append(f"RSS master + workers: baseline {self.baseline_kb / 1024:.1f} MB, peak "
                   f"{self.rss_peak_kb / 1024:.1f} MB, {end}")
        if self.final_kb and self.final_kb > self.baseline_kb + plan.rss_margin_mb * 1024:
            res.failures.append(f"RSS at the end {self.final_kb / 1024:.1f} MB is more than {plan.rss_margin_mb:g} "
                                f"MB over the baseline {self.baseline_kb / 1024:.1f} MB (waited "
                                f"{plan.rss_settle_s:g}s for it to come back)")
        clients = [c for c in [self.churn, *self.hostiles, *self.readers] if c is not None]
        out.append(f"CPU seconds: server (master + every worker) {sum(self.server_cpu.values()):.1f}, clients "
                   + ", ".join(f"{c.name} {c.cpu_s:.1f}" for c in clients))
        log = self.server.log()
        counts = {key: log.count(key) for key in ("Traceback", "handed over without its source",
                                                  "order handover failed", "slow player", "exited unexpectedly")}
        out.append(f"server log: {counts}; workers started {len(self.worker_pids())}")
        if counts["Traceback"]:
            first = log[log.index("Traceback"):][:800]
            res.failures.append(f"{counts['Traceback']} traceback(s) in the server log; the first:\n{first}")
        if counts["handed over without its source"]:
            res.failures.append(f"{counts['handed over without its source']} connections closed 'handed over "
                                f"without its source'")

    def logs_for_failure(self, lines: int = 120) -> str:
        """The tails of the logs (kept in the run's directory), for a failed test's output."""
        parts = [f"logs in {self.workdir}", "--- server log (tail) ---",
                 "\n".join(self.server.log().splitlines()[-lines:])]
        for c in [self.churn, *self.hostiles, *self.readers]:
            if c is not None and c.stderr_tail().strip():
                parts += [f"--- {c.name} stderr ---", c.stderr_tail()]
        return "\n".join(parts)
