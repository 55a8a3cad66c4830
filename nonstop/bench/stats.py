"""The load generator's accounting: per-player frame statistics, a latency histogram, percentiles.

Everything here is plain data and cheap per call: `FrameStats.on_video` runs for every video message of every
player (60,000 times a second at 2,000 players of a 30 fps stream).
"""

from __future__ import annotations

import math

# Latency histogram: 0.1 ms buckets up to 10 s; rarer, larger values are kept exactly. Mergeable across
# processes by adding counts, so the percentiles of a multi-process run are exact to the bucket.
LATENCY_BUCKET_S = 0.0001
LATENCY_BUCKETS = 100_000


def percentile(values, q: float) -> float | None:
    """The q-th percentile (0..100) of `values`, nearest-rank on the sorted list; None when empty."""
    data = sorted(values)
    if not data:
        return None
    rank = max(1, math.ceil(q / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


def summary(values, scale: float = 1.0, digits: int = 1) -> dict:
    """{'count', 'min', 'p50', 'p99', 'max'} of values times scale (None entries when empty)."""
    data = sorted(values)
    if not data:
        return {"count": 0, "min": None, "p50": None, "p99": None, "max": None}

    def r(v):
        return round(v * scale, digits)
    return {"count": len(data), "min": r(data[0]), "p50": r(percentile(data, 50)),
            "p99": r(percentile(data, 99)), "max": r(data[-1])}


class FrameStats:
    """What one player saw of the video, across its connections.

    - stalls: the wall-clock gap between consecutive video frames; the largest one, and how many exceeded the
      threshold. Gaps are counted while `measuring`, including one that began before the window, and a player
      that receives nothing until the window ends has that silence counted by `finish`.
    - holes and repeats: a timestamp step larger than `hole_ms` is a hole; a step of zero or backwards is a
      repeat. A new connection starts a new timeline (it gets the GOP again), so `new_connection` forgets the
      previous timestamp.
    """

    __slots__ = ("stall_s", "hole_ms", "measuring", "last_at", "prev_ts", "max_gap", "stalls", "holes",
                 "repeats", "frames")

    def __init__(self, stall_s: float, hole_ms: float):
        self.stall_s = stall_s
        self.hole_ms = hole_ms
        self.measuring = False
        self.last_at: float | None = None  # wall clock (monotonic) of the last video frame
        self.prev_ts: int | None = None    # its stream timestamp, on the current connection
        self.max_gap = 0.0
        self.stalls = 0
        self.holes = 0
        self.repeats = 0
        self.frames = 0

    def on_video(self, timestamp: int, now: float) -> None:
        if self.measuring:
            last = self.last_at
            if last is not None:
                gap = now - last
                if gap > self.max_gap:
                    self.max_gap = gap
                if gap > self.stall_s:
                    self.stalls += 1
            prev = self.prev_ts
            if prev is not None:
                step = timestamp - prev
                if step <= 0:
                    self.repeats += 1
                elif step > self.hole_ms:
                    self.holes += 1
            self.frames += 1
        self.last_at = now
        self.prev_ts = timestamp

    def new_connection(self) -> None:
        self.prev_ts = None

    def start(self, now: float) -> None:
        """The window opens. A player that never had a frame is silent from here on."""
        self.measuring = True
        if self.last_at is None:
            self.last_at = now

    def finish(self, now: float) -> None:
        """The window closes: the silence since the last frame counts as a gap too."""
        if self.measuring and self.last_at is not None:
            gap = now - self.last_at
            if gap > self.max_gap:
                self.max_gap = gap
            if gap > self.stall_s:
                self.stalls += 1
        self.measuring = False


class LatencyHistogram:
    """Publisher-to-player latencies in seconds, in fixed buckets, mergeable across processes."""

    __slots__ = ("counts", "overflow", "count")

    def __init__(self):
        self.counts = [0] * LATENCY_BUCKETS
        self.overflow: list[float] = []
        self.count = 0

    def add(self, seconds: float) -> None:
        index = int(seconds / LATENCY_BUCKET_S)
        if index < 0:
            index = 0  # clocks are one CLOCK_MONOTONIC, so this is only rounding
        if index < LATENCY_BUCKETS:
            self.counts[index] += 1
        else:
            self.overflow.append(seconds)
        self.count += 1

    def to_dict(self) -> dict:
        """Plain data: only the non-empty buckets."""
        return {"buckets": {str(i): c for i, c in enumerate(self.counts) if c}, "overflow": list(self.overflow)}

    def merge_dict(self, d: dict) -> None:
        for index, count in d["buckets"].items():
            self.counts[int(index)] += count
            self.count += count
        self.overflow.extend(d["overflow"])
        self.count += len(d["overflow"])

    def percentile(self, q: float) -> float | None:
        """The q-th percentile in seconds (the bucket's upper edge), None when empty."""
        if not self.count:
            return None
        rank = max(1, math.ceil(q / 100 * self.count))
        seen = 0
        for index, count in enumerate(self.counts):
            if count:
                seen += count
                if seen >= rank:
                    return (index + 1) * LATENCY_BUCKET_S
        return percentile(self.overflow, 100 * (rank - seen) / len(self.overflow))

    def max(self) -> float | None:
        if self.overflow:
            return max(self.overflow)
        for index in range(LATENCY_BUCKETS - 1, -1, -1):
            if self.counts[index]:
                return (index + 1) * LATENCY_BUCKET_S
        return None
