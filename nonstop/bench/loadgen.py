"""Running a load: one process's share of the connections, and the schedule that several processes share.

The timeline of a run, in CLOCK_MONOTONIC seconds (one clock for every process on the machine):

    publishers start -> ramp_start: players and idle connections open at --ramp per second
                     -> window_start (after --warmup): counters are snapshot, churn starts
                     -> window_end (after --duration): counters are snapshot again, everything closes

The schedule is computed once by the parent and handed to each process, so the processes need no other
coordination: process `share` of `shares` takes every connection whose global index i has i % shares == share,
at the time global index i is due. Publishers are spread the same way by stream number, and a player's latency
is measured only when its stream's publisher runs in the same process (the send times are there), which with
one publisher means the players of process 0: a sample, not all players, documented in the README.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from nonstop.bench.churn import ChurnConnection, ConnectionPool, IdleConnection
from nonstop.bench.context import Context
from nonstop.bench.player import PLAYING, Viewer
from nonstop.bench.publisher import MediaFile, Publisher
from nonstop.bench.target import Target

# The parent starts the ramp this long after the publishers are ready, so every process has the schedule
# before its first connection is due.
START_DELAY_S = 0.3
# After publishing starts, players wait this long so that the server has a keyframe (a GOP) to give them.
PUBLISH_SETTLE_S = 1.0
# Timeouts and hang-ups are checked this often (one sweep for all connections, not a timer each).
SWEEP_S = 0.25
# The ramp starts every connection due within this slice together.
RAMP_SLICE_S = 0.005
# After the window, churn connections still waiting for their answer get up to this long.
CHURN_GRACE_S = 5.0


@dataclass
class Options:
    """Everything a run needs; plain data so that forked processes share it as is."""
    target: Target | None = None
    players: int = 0
    ramp: float = 200.0
    reconnect: bool = False
    reconnecting: int = 0
    hangup_every: float = 2.0
    publishers: int = 0
    file: str | None = None
    publish_target: Target | None = None
    idle: int = 0
    churn: float = 0.0
    churn_target: Target | None = None
    duration: float = 20.0
    warmup: float = 2.0
    procs: int = 1
    rcvlowat: int = 64 * 1024
    stall_threshold: float = 1.0
    hole_ms: float = 0.0
    connect_timeout: float = 10.0
    stream_kbps: float | None = None
    server_pids: list[int] = field(default_factory=list)
    json: bool = False

    @property
    def streams(self) -> int:
        return max(self.publishers, 1)


def make_schedule(opts: Options, start: float) -> dict:
    """The run's timeline from `start` (a time.monotonic() value)."""
    ramp_s = (opts.players + opts.idle) / opts.ramp if opts.ramp > 0 else 0.0
    window_start = start + ramp_s + opts.warmup
    return {"ramp_start": start, "window_start": window_start, "window_end": window_start + opts.duration}


async def sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


class ProcessRun:
    """One process's share of a run: its publishers, players, idle and churn connections."""

    def __init__(self, opts: Options, share: int = 0, shares: int = 1, media: MediaFile | None = None):
        self.opts = opts
        self.share = share
        self.shares = shares
        self.media = media
        self.ctx: Context | None = None
        self.publishers: list[Publisher] = []
        self.viewers: list[Viewer] = []
        self.idle: ConnectionPool | None = None
        self.churn: ConnectionPool | None = None
        self.playing_at_end = 0
        self.idle_open_at_end = 0

    def _mine(self, index: int) -> bool:
        return index % self.shares == self.share

    async def prepare(self) -> dict:
        """Start this process's publishers; returns their state once each is publishing or failed."""
        opts = self.opts
        self.ctx = Context(opts, asyncio.get_running_loop())
        if opts.publishers:
            self.publishers = [Publisher(self.ctx, self.media, opts.publish_target.for_stream(s, opts.publishers), s)
                               for s in range(opts.publishers) if self._mine(s)]
            await asyncio.gather(*(p.open(opts.connect_timeout) for p in self.publishers))
            if self.publishers:
                await asyncio.sleep(PUBLISH_SETTLE_S)
        return {"publishers": len(self.publishers), "errors": [p.error for p in self.publishers if p.error]}

    async def run(self, schedule: dict) -> dict:
        opts, ctx = self.opts, self.ctx
        ws, we = schedule["window_start"], schedule["window_end"]
        due = self._ramp_plan(schedule["ramp_start"])
        if opts.idle:
            self.idle = ConnectionPool(ctx, opts.churn_target, IdleConnection)
        if opts.churn:
            self.churn = ConnectionPool(ctx, opts.churn_target, ChurnConnection)
            count = int(opts.churn * opts.duration)
            due += [(ws + k / opts.churn, self.churn.open) for k in range(count) if self._mine(k)]
        due.sort(key=lambda item: item[0])
        sweeper = ctx.loop.create_task(self._sweep())
        ramp = ctx.loop.create_task(self._ramp(due))
        await sleep_until(ws)
        self._window_start(time.monotonic())
        await sleep_until(we)
        self._window_end(time.monotonic())
        ramp.cancel()
        ctx.stopping = True
        if self.churn is not None:
            deadline = time.monotonic() + min(CHURN_GRACE_S, opts.connect_timeout)
            while self.churn.pending and time.monotonic() < deadline:
                await asyncio.sleep(SWEEP_S)
        sweeper.cancel()
        self._close_all()
        await asyncio.sleep(0.2)  # let the closes go out before the loop stops
        return self._result()

    def _ramp_plan(self, start: float) -> list:
        """(due time, start function) of this process's players and idle connections."""
        opts, ctx = self.opts, self.ctx
        streams = opts.streams
        first_reconnecting = opts.players - opts.reconnecting
        due = []
        for i in range(opts.players):
            if not self._mine(i):
                continue
            stream = i % streams
            target = opts.target.for_stream(stream, streams if opts.publishers else 1)
            viewer = Viewer(ctx, i, target, stream, reconnect=opts.reconnect,
                            hangup_every=opts.hangup_every if i >= first_reconnecting else None)
            self.viewers.append(viewer)
            due.append((start + i / opts.ramp, viewer.start))
        for j in range(opts.idle):
            index = opts.players + j
            if self._mine(index):
                due.append((start + index / opts.ramp, lambda: self.idle.open()))
        return due

    async def _ramp(self, due: list) -> None:
        for t, start in due:
            if t > time.monotonic() + RAMP_SLICE_S:
                await sleep_until(t)
            start()

    async def _sweep(self) -> None:
        timeout = self.opts.connect_timeout
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic()
            for viewer in self.viewers:
                if viewer.conn is not None:
                    viewer.conn.check_timeout(now, timeout)
            for pool in (self.idle, self.churn):
                if pool is not None:
                    pool.check_timeouts(now, timeout)

    def _window_start(self, now: float) -> None:
        self.ctx.measuring = True
        for viewer in self.viewers:
            viewer.bytes_at_start = viewer.bytes
            viewer.stats.start(now)
        for publisher in self.publishers:
            publisher.bytes_at_start = publisher.payload_bytes

    def _window_end(self, now: float) -> None:
        self.ctx.measuring = False
        self.playing_at_end = 0
        for viewer in self.viewers:
            viewer.bytes_at_end = viewer.bytes
            viewer.stats.finish(now)
            if viewer.conn is not None and viewer.conn.state == PLAYING:
                self.playing_at_end += 1
        for publisher in self.publishers:
            publisher.bytes_at_end = publisher.payload_bytes
        self.idle_open_at_end = len(self.idle.open_conns) - self.idle.dropped if self.idle is not None else 0

    def close(self) -> None:
        """Stop at once (a failed start): close whatever was opened."""
        if self.ctx is not None:
            self.ctx.stopping = True
            self._close_all()

    def _close_all(self) -> None:
        for viewer in self.viewers:
            if viewer.conn is not None:
                viewer.conn.close()
        for pool in (self.idle, self.churn):
            if pool is not None:
                pool.close()
        for publisher in self.publishers:
            publisher.close()

    def _result(self) -> dict:
        ctx = self.ctx
        return {
            "share": self.share,
            "players": [v.result() for v in self.viewers],
            "playing_at_end": self.playing_at_end,
            "connections": {"attempts": ctx.attempts, "ok": ctx.ok, "failed": dict(ctx.failed),
                            "dropped": ctx.dropped, "hangups": ctx.hangups},
            "latency": ctx.latency.to_dict(),
            "latency_unmatched": ctx.latency_unmatched,
            "latency_players": sum(1 for v in self.viewers if v.latency_base is not None),
            "publishers": [p.result() for p in self.publishers],
            "churn": self.churn.result() if self.churn is not None else None,
            "idle": dict(self.idle.result(), open_at_end=self.idle_open_at_end) if self.idle is not None else None,
        }
