"""CPU time and memory of a process tree, read from /proc: how the benchmark measures a server (and itself).

A server is a process tree: nginx's master and worker, nonstop's master and workers. Its CPU is the sum over
the live tree of utime + stime, plus cutime + cstime (the time of children that exited and were reaped, so a
worker replaced during the window is not lost). Memory is the sum of VmRSS (shared pages count once per
process, as `ps` shows them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
# /proc/PID/stat fields after the ")" that closes comm, counted from 0 at state (field 3 of proc(5)).
_PPID = 1
_UTIME = 11
_STIME = 12
_CUTIME = 13
_CSTIME = 14
_RSS_PAGES = 21


@dataclass
class TreeSample:
    pids: list[int]
    utime: float   # seconds
    stime: float
    rss_kb: int

    @property
    def cpu(self) -> float:
        return self.utime + self.stime


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:].decode().split()


def tree_pids(root: int) -> list[int]:
    """`root` and all its descendants that are alive now (one scan of /proc)."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[_PPID]), []).append(int(name))
    if _stat_fields(root) is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return sorted(out)


def sample_tree(roots: list[int]) -> TreeSample:
    """CPU seconds and RSS of the process trees under `roots`."""
    pids: list[int] = []
    for root in roots:
        pids.extend(p for p in tree_pids(root) if p not in pids)
    utime = stime = 0.0
    rss = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        utime += (int(fields[_UTIME]) + int(fields[_CUTIME])) / CLOCK_TICKS
        stime += (int(fields[_STIME]) + int(fields[_CSTIME])) / CLOCK_TICKS
        rss += int(fields[_RSS_PAGES]) * PAGE_KB
    return TreeSample(pids, utime, stime, rss)


def per_process_cpu(roots: list[int]) -> dict[int, float]:
    """CPU seconds of each process of the trees (for the load generator's own processes)."""
    out = {}
    for root in roots:
        for pid in tree_pids(root):
            fields = _stat_fields(pid)
            if fields is not None:
                out[pid] = (int(fields[_UTIME]) + int(fields[_STIME])) / CLOCK_TICKS
    return out
