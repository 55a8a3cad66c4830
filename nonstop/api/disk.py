"""Disk throughput and busy time from /proc/diskstats, for the disk keys of /api/v1/summaries (SRS's
`disk_read_KBps`, `disk_write_KBps`, `disk_busy_percent`; the SRS console shows NaN without them).

Rates need two samples. They are taken when summaries are asked for, so the rates cover the time since the
previous answer (at least MIN_INTERVAL_S, else the previous rates are repeated); the first answer reports 0.
Only whole disks count (those in /sys/block that are not virtual: loop, ram, zram, dm), not their partitions,
so no byte is counted twice. On a system without /proc the keys are 0.
"""

from __future__ import annotations

import os

DISKSTATS = "/proc/diskstats"
SYS_BLOCK = "/sys/block"
SECTOR_BYTES = 512                  # /proc/diskstats counts 512-byte sectors whatever the device's own size
MIN_INTERVAL_S = 1.0
VIRTUAL_PREFIXES = ("loop", "ram", "zram", "dm-", "md", "sr", "fd")


def read_diskstats(path: str = DISKSTATS, sys_block: str = SYS_BLOCK) -> tuple[int, int, int] | None:
    """(sectors read, sectors written, ms spent doing I/O, the busiest disk's) summed over whole disks."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
        disks = set(os.listdir(sys_block))
    except OSError:
        return None
    read = written = busy_ms = 0
    for line in lines:
        fields = line.split()
        if len(fields) < 13:
            continue
        name = fields[2]
        if name not in disks or name.startswith(VIRTUAL_PREFIXES):
            continue
        read += int(fields[5])
        written += int(fields[9])
        busy_ms = max(busy_ms, int(fields[12]))
    return read, written, busy_ms


class DiskRates:
    """The last sample and the rates between the last two."""

    def __init__(self, reader=read_diskstats):
        self.reader = reader
        self.last: tuple[float, tuple[int, int, int]] | None = None
        self.rates = {"disk_read_KBps": 0, "disk_write_KBps": 0, "disk_busy_percent": 0.0}

    def sample(self, now: float) -> dict:
        if self.last is not None and now - self.last[0] < MIN_INTERVAL_S:
            return dict(self.rates)
        stats = self.reader()
        if stats is None:
            return dict(self.rates)
        if self.last is not None:
            elapsed = now - self.last[0]
            before = self.last[1]
            delta = [max(0, a - b) for a, b in zip(stats, before)]
            self.rates = {
                "disk_read_KBps": int(delta[0] * SECTOR_BYTES / 1024 / elapsed),
                "disk_write_KBps": int(delta[1] * SECTOR_BYTES / 1024 / elapsed),
                # A fraction, as SRS prints its percentages (0.153 is 15.3%).
                "disk_busy_percent": round(min(1.0, delta[2] / 1000 / elapsed), 4),
            }
        self.last = (now, stats)
        return dict(self.rates)
