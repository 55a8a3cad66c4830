"""Process and system numbers read from Linux's /proc, for /api/v1/summaries and /metrics (stdlib only).

Each reader returns None (or an empty value) when its file is missing or unreadable, so the API degrades to
zeros on a system without /proc instead of failing. CPU use needs two samples: the meters here are fed once a
second by the API's tick, as SRS samples its `srs_update_proc_stat` every few seconds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# /proc/PID/stat fields after the `(comm)` field, 0-based: state is 0, ppid 1, utime 11, stime 12, starttime 19.
_PPID, _UTIME, _STIME, _STARTTIME = 1, 11, 12, 19


@dataclass(frozen=True)
class ProcSample:
    pid: int
    ppid: int
    cpu_seconds: float      # user + system
    rss_bytes: int
    start_ticks: int        # since boot; tells a reused pid apart


def read_proc(pid: int) -> ProcSample | None:
    """CPU time and resident memory of one process, or None when it does not exist (or is not readable)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        with open(f"/proc/{pid}/statm", "rb") as f:
            statm = f.read().split()
        # The command name may hold spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rindex(b")") + 2:].split()
        return ProcSample(pid=pid, ppid=int(fields[_PPID]),
                          cpu_seconds=(int(fields[_UTIME]) + int(fields[_STIME])) / CLK_TCK,
                          rss_bytes=int(statm[1]) * PAGE_SIZE, start_ticks=int(fields[_STARTTIME]))
    except (OSError, ValueError, IndexError):
        return None


def read_cmdline(pid: int | str = "self") -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]


def read_meminfo() -> dict[str, int]:
    """/proc/meminfo in kB: MemTotal, MemAvailable, SwapTotal, SwapFree, ..."""
    out: dict[str, int] = {}
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                name, _, rest = line.partition(":")
                parts = rest.split()
                if parts and parts[0].isdigit():
                    out[name] = int(parts[0])
    except OSError:
        pass
    return out


def read_system_cpu() -> tuple[int, int] | None:
    """(total, idle) jiffies of all CPUs since boot, from /proc/stat's first line; idle includes iowait."""
    try:
        with open("/proc/stat") as f:
            first = f.readline().split()
        values = [int(v) for v in first[1:]]
        # user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
        total = sum(values[:8])
        return total, values[3] + (values[4] if len(values) > 4 else 0)
    except (OSError, ValueError, IndexError):
        return None


def read_uptime() -> tuple[float, float]:
    """(uptime, idle) seconds of the system (SRS prints both, the latter as `ilde_time`)."""
    try:
        with open("/proc/uptime") as f:
            up, idle = f.read().split()[:2]
        return float(up), float(idle)
    except (OSError, ValueError):
        return 0.0, 0.0


def read_net_dev() -> list[tuple[str, int, int]]:
    """(interface, received bytes, sent bytes) for each network interface."""
    out = []
    try:
        with open("/proc/net/dev") as f:
            lines = f.readlines()[2:]
    except OSError:
        return out
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if len(fields) >= 9:
            out.append((name.strip(), int(fields[0]), int(fields[8])))
    return out


def read_sockstat() -> dict[str, int]:
    """Socket counts from /proc/net/sockstat: tcp_inuse, tcp_tw, udp_inuse (IPv4)."""
    out = {"tcp_inuse": 0, "tcp_tw": 0, "udp_inuse": 0}
    try:
        with open("/proc/net/sockstat") as f:
            for line in f:
                proto, _, rest = line.partition(":")
                parts = rest.split()
                pairs = dict(zip(parts[::2], parts[1::2]))
                if proto == "TCP":
                    out["tcp_inuse"] = int(pairs.get("inuse", 0))
                    out["tcp_tw"] = int(pairs.get("tw", 0))
                elif proto == "UDP":
                    out["udp_inuse"] = int(pairs.get("inuse", 0))
    except (OSError, ValueError):
        pass
    return out


def loadavg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return 0.0, 0.0, 0.0


class CpuMeter:
    """A process's CPU use between its last two samples, as a fraction of one core (0.153 is 15.3%, SRS's
    `cpu_percent` in /api/v1/summaries; /metrics multiplies by 100 as SRS's `srs_cpu_percent` does)."""

    __slots__ = ("last_at", "last_cpu", "fraction")

    def __init__(self):
        self.last_at: float | None = None
        self.last_cpu = 0.0
        self.fraction = 0.0

    def sample(self, now: float, cpu_seconds: float) -> None:
        if self.last_at is not None and now > self.last_at:
            self.fraction = max(0.0, (cpu_seconds - self.last_cpu) / (now - self.last_at))
        self.last_at, self.last_cpu = now, cpu_seconds


class SystemCpuMeter:
    """The whole system's CPU use between two samples of /proc/stat, as a fraction of all cores."""

    __slots__ = ("last", "fraction")

    def __init__(self):
        self.last: tuple[int, int] | None = None
        self.fraction = 0.0

    def sample(self, reading: tuple[int, int] | None) -> None:
        if reading is None:
            return
        if self.last is not None:
            total = reading[0] - self.last[0]
            idle = reading[1] - self.last[1]
            if total > 0:
                self.fraction = min(1.0, max(0.0, 1 - idle / total))
        self.last = reading


class ProcessWatch:
    """The processes /metrics reports: the master and its workers when this worker runs under a master, else
    this process alone (role `worker`).

    `master_pid` is given by whoever knows (the master tells its worker); otherwise a process started with
    `--worker` is a master's worker and its parent is the master. The master's workers are its children in
    /proc, so workers still draining after an upgrade are reported too. A process that no longer reads from
    /proc is simply not reported."""

    def __init__(self, master_pid: int | None = None):
        self.pid = os.getpid()
        self.master_pid = master_pid
        self.meters: dict[int, CpuMeter] = {}

    def service_pid(self) -> int:
        """The pid that names the service: the master's (it never changes), else this process's."""
        return self.master_pid or self.pid

    def processes(self) -> list[tuple[str, int]]:
        if not self.master_pid or self.master_pid == self.pid:
            return [("worker", self.pid)]
        workers = children(self.master_pid) or [self.pid]
        return [("master", self.master_pid)] + [("worker", pid) for pid in workers]

    def sample(self, now: float) -> None:
        seen = set()
        for _, pid in self.processes():
            reading = read_proc(pid)
            if reading is not None:
                seen.add(pid)
                self.meters.setdefault(pid, CpuMeter()).sample(now, reading.cpu_seconds)
        for pid in [p for p in self.meters if p not in seen]:
            del self.meters[pid]

    def cpu_fraction(self, pid: int) -> float:
        meter = self.meters.get(pid)
        return meter.fraction if meter is not None else 0.0


def children(pid: int) -> list[int]:
    """The child processes of `pid`, from /proc/PID/task/*/children (Linux 3.5+)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return sorted(set(out))
