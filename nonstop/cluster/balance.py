"""OriginPool: which origin an edge tries next. Round robin, as SRS does, but with health: an origin that just
failed is skipped for a backoff that doubles from `retry_min` up to `retry_max`, and a success clears it.

SRS picks the next origin round robin on every connect attempt and retries every 3 s forever (srs-reference
§4); a dead origin is tried as often as a live one. Here one pool serves every stream of a vhost, so one
stream's failure spares the others the same dead origin. Times are `time.monotonic()` seconds in plain
attributes (architecture decision 6), so the pool snapshots to plain data.
"""

from __future__ import annotations

from nonstop.cluster.urls import DEFAULT_RTMP_PORT, split_host_port

SNAPSHOT_VERSION = 1


class Origin:
    """One upstream address and its health."""

    __slots__ = ("address", "host", "port", "failures", "down_until", "last_error")

    def __init__(self, address: str):
        self.address = address
        self.host, self.port = split_host_port(address, DEFAULT_RTMP_PORT)
        self.failures = 0           # consecutive failures since the last success
        self.down_until = 0.0       # monotonic: skipped until then
        self.last_error = ""

    def snapshot(self) -> dict:
        return {"address": self.address, "failures": self.failures, "down_until": self.down_until,
                "last_error": self.last_error}


class OriginPool:
    """The origins of one vhost's `cluster { origin ...; }`, in config order."""

    def __init__(self, addresses: list[str], retry_min_ms: int, retry_max_ms: int):
        if not addresses:
            raise ValueError("an edge needs at least one origin")
        self.origins = [Origin(a) for a in addresses]
        self.retry_min = retry_min_ms / 1000
        self.retry_max = max(retry_max_ms, retry_min_ms) / 1000
        self.cursor = 0             # the index the next round robin turn starts at

    def get(self, address: str) -> Origin | None:
        return next((o for o in self.origins if o.address == address), None)

    def pick(self, now: float, skip_until: dict[str, float] | None = None) -> tuple[Origin | None, float]:
        """The next origin due, in round robin order: (origin, 0.0). When none is due: (None, seconds until
        the first one is). `skip_until` adds a caller's own per-address holds (a stream an origin lacks)."""
        skip_until = skip_until or {}
        count = len(self.origins)
        soonest = None
        for step in range(count):
            index = (self.cursor + step) % count
            origin = self.origins[index]
            due = max(origin.down_until, skip_until.get(origin.address, 0.0))
            if due <= now:
                self.cursor = (index + 1) % count
                return origin, 0.0
            soonest = due if soonest is None else min(soonest, due)
        return None, soonest - now

    def backoff(self, failures: int) -> float:
        """The hold after the n-th consecutive failure: retry_min, doubling, at most retry_max."""
        return min(self.retry_min * (2 ** max(failures - 1, 0)), self.retry_max)

    def failed(self, origin: Origin, now: float, error: str = "") -> float:
        """Count a failure and hold the origin; returns the hold in seconds. Failures seen while the origin is
        already held (many streams losing it at once) count once, so the backoff grows per attempt, not per
        stream."""
        origin.last_error = error
        if origin.down_until > now:
            return origin.down_until - now
        origin.failures += 1
        hold = self.backoff(origin.failures)
        origin.down_until = now + hold
        return hold

    def succeeded(self, origin: Origin) -> None:
        origin.failures = 0
        origin.down_until = 0.0
        origin.last_error = ""

    def healthy(self, now: float) -> list[str]:
        return [o.address for o in self.origins if o.down_until <= now]

    def snapshot(self) -> dict:
        return {"version": SNAPSHOT_VERSION, "cursor": self.cursor, "retry_min": self.retry_min,
                "retry_max": self.retry_max, "origins": [o.snapshot() for o in self.origins]}

    @classmethod
    def restore(cls, snap: dict) -> "OriginPool":
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown OriginPool snapshot version {snap.get('version')!r}")
        pool = cls([o["address"] for o in snap["origins"]], int(snap["retry_min"] * 1000),
                   int(snap["retry_max"] * 1000))
        pool.cursor = snap["cursor"]
        for origin, data in zip(pool.origins, snap["origins"]):
            origin.failures, origin.down_until, origin.last_error = \
                data["failures"], data["down_until"], data["last_error"]
        return pool
