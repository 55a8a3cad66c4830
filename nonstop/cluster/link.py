"""UpstreamLink: keeps one upstream RTMP session alive for one stream of an edge, whatever the origins do.

It picks an origin (OriginPool: round robin with health), connects, lets the session run, and when it ends
counts the outcome and goes again: at once to the next healthy origin after a session that had worked, after
the origin's backoff after a failure, and straight to the target of an RTMP 302 redirect (`ex.redirect2`,
else `ex.redirect`, as SRS's edge does). EdgeIngester (pull) and EdgeForwarder (push) build on it.

The connect/retry *control* runs as one coroutine per link; it holds no protocol state. Everything a
handover would need is in plain attributes (`snapshot()`), and the session itself lives in the
UpstreamConnection protocol object.
"""

from __future__ import annotations

import asyncio
import time

from nonstop.cluster.balance import Origin, OriginPool
from nonstop.cluster.upstream import (
    ENDED, OUT_FAILED, OUT_NOT_FOUND, OUT_REDIRECT, OUT_STOPPED, OUT_TIMEOUT, UpstreamConnection,
)
from nonstop.cluster.urls import RtmpTarget, parse_rtmp_url, parse_tc_url, stream_with_query, tc_url_for
from nonstop.log import log
from nonstop.media.registry import new_id

# An origin cluster answers a play with at most one redirect, to the origin that has the stream; a chain
# longer than this is a loop between misconfigured nodes, and the link falls back to its own origins.
MAX_REDIRECT_HOPS = 3
# A control loop that failed unexpectedly waits this long before it goes on, so a bug cannot spin.
LOOP_ERROR_PAUSE_S = 1.0
SNAPSHOT_VERSION = 1


class UpstreamLink:
    role = ""           # PULL or PUSH, set by the subclass

    def __init__(self, source, vhost, pool: OriginPool, *, app: str, stream: str, query: str, host: str,
                 chunk_size: int, now: float):
        self.cid = new_id()
        self.source = source
        self.vhost = vhost                   # the config.Vhost; its cluster {} holds the timings
        self.pool = pool
        self.app, self.stream, self.query, self.host = app, stream, query, host
        self.chunk_size = chunk_size
        self.absent_until: dict[str, float] = {}     # origins that lacked the stream, held retry_min
        self.redirect: str | None = None
        self.redirect_has_stream = True      # `redirect` is an ex.redirect2 URL, else an ex.redirect tcUrl
        self.redirect_from = ""              # the pool origin that sent the current redirect chain
        self.redirect_hops = 0
        self.upstream: UpstreamConnection | None = None
        self.upstream_origin: Origin | None = None   # the pool origin of the current upstream (None: redirect)
        self.attempts = 0
        self.sessions = 0                    # attempts that started playing or publishing
        self.created_at = now
        self.next_attempt_at = now
        self.stopped = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def settings(self):
        return self.vhost.cluster

    @property
    def key(self) -> str:
        return self.source.key

    # ----- life -------------------------------------------------------------------------------------------

    def start_loop(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop_link(self, reason: str) -> None:
        if self.stopped:
            return
        self.stopped = True
        if self.upstream is not None and self.upstream.phase != ENDED:
            self.upstream.stop(reason)
        self._wake.set()

    def loop_alive(self) -> bool:
        return self._task is not None and not self._task.done()

    async def wait_closed(self) -> None:
        if self._task is not None:
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # ----- the control loop -------------------------------------------------------------------------------

    async def _run(self) -> None:
        while not self.stopped:
            try:
                now = time.monotonic()
                target, origin, wait = self._choose(now)
                if target is None:
                    self.next_attempt_at = now + wait
                    await self._sleep(wait)
                    continue
                await self._attempt(target, origin)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # the loop must outlive any bug in one attempt
                log.error(self.cid, f"edge {self.role} {self.key}: control loop error: {e!r}")
                await self._sleep(LOOP_ERROR_PAUSE_S)

    async def _sleep(self, seconds: float) -> None:
        self._wake.clear()
        if self.stopped:
            return
        try:
            await asyncio.wait_for(self._wake.wait(), max(seconds, 0.0))
        except asyncio.TimeoutError:
            pass

    def _choose(self, now: float) -> tuple[RtmpTarget | None, Origin | None, float]:
        if self.redirect:
            url, self.redirect = self.redirect, None
            target = self.redirect_target(url, self.redirect_has_stream)
            if target is not None:
                return target, None, 0.0
            log.warn(self.cid, f"edge {self.role} {self.key}: cannot follow redirect {url!r}")
        origin, wait = self.pool.pick(now, self.absent_until)
        if origin is None:
            return None, None, wait
        return self.target_for(origin), origin, 0.0

    def target_for(self, origin: Origin) -> RtmpTarget:
        """What SRS's edge sends: tcUrl `rtmp://{vhost or origin}[:port]/app`, the stream with the client's
        query string (tokens) and `vhost=` where SRS adds it."""
        vhost = self.vhost.name
        return RtmpTarget(origin.host, origin.port, tc_url_for(origin.host, origin.port, vhost, self.app),
                          self.app, stream_with_query(self.host, vhost, self.stream, self.query))

    def redirect_target(self, url: str, has_stream: bool) -> RtmpTarget | None:
        """SRS's edge follows `ex.redirect2` (a stream URL), else `ex.redirect` (a tcUrl: the same stream on
        that server and app)."""
        if has_stream:
            return parse_rtmp_url(url)
        parsed = parse_tc_url(url)
        if parsed is None:
            return None
        host, port, app = parsed
        return RtmpTarget(host, port, url.partition("?")[0], app,
                          stream_with_query(self.host, self.vhost.name, self.stream, self.query))

    async def _attempt(self, target: RtmpTarget, origin: Origin | None) -> None:
        settings = self.settings
        self.attempts += 1
        up = UpstreamConnection(self, self.role, target, now=time.monotonic(),
                                connect_timeout_ms=settings.connect_timeout, chunk_size=self.chunk_size)
        self.upstream, self.upstream_origin = up, origin
        self._wake.clear()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.create_connection(lambda: up, target.host, target.port),
                                   settings.connect_timeout / 1000)
        except (OSError, asyncio.TimeoutError) as e:
            up.end(OUT_FAILED, f"connect failed: {e or 'timeout'}")
        while up.phase != ENDED:
            deadline = up.next_deadline(settings.recv_timeout)
            timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0) + 0.01
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            up.check(time.monotonic(), settings.recv_timeout)
        self._account(up, origin)

    def _account(self, up: UpstreamConnection, origin: Origin | None) -> None:
        """Count how the session ended against the origin it went to, and pick the next move."""
        now = time.monotonic()
        outcome, where = up.outcome, up.address
        if outcome == OUT_STOPPED:
            return
        if outcome == OUT_REDIRECT:
            if origin is not None:
                self.redirect_from, self.redirect_hops = origin.address, 0
            self.redirect_hops += 1
            if self.redirect_hops > MAX_REDIRECT_HOPS:
                log.warn(self.cid, f"edge {self.role} {self.key}: more than {MAX_REDIRECT_HOPS} redirects from "
                                   f"{self.redirect_from}, ignoring {up.detail}")
                self._hold_absent(self.redirect_from, now)
                self.redirect_hops = 0
                return
            self.redirect, self.redirect_has_stream = up.detail, up.redirect_has_stream
            log.trace(self.cid, f"edge {self.role} {self.key}: {where} redirects to {up.detail}")
            return
        if origin is None:
            # A redirect target that did not work: hold the origin that sent us there, so a stale answer
            # does not bounce the link at full speed, and go back to round robin.
            log.warn(self.cid, f"edge {self.role} {self.key}: redirect target {where} {outcome}: {up.detail}")
            if outcome != OUT_TIMEOUT or not up.started_at:
                self._hold_absent(self.redirect_from, now)
            self.redirect_hops = 0
            return
        self.redirect_hops = 0
        if outcome in (OUT_NOT_FOUND, OUT_TIMEOUT):
            # The origin is alive; it lacks the stream (or its publisher went quiet). Not a health failure.
            self._hold_absent(origin.address, now)
            log.trace(self.cid, f"edge {self.role} {self.key}: {where} {outcome}: {up.detail}; next try there in "
                                f"{self.pool.retry_min:.1f}s")
            return
        hold = self.pool.failed(origin, now, up.detail)
        log.warn(self.cid, f"edge {self.role} {self.key}: {where} {outcome}: {up.detail}; skipped for {hold:.1f}s"
                           f", healthy origins: {self.pool.healthy(now) or 'none'}")

    def _hold_absent(self, address: str, now: float) -> None:
        if address:
            self.absent_until[address] = now + self.pool.retry_min

    # ----- the upstream's reports (UpstreamConnection calls these) -----------------------------------------

    def on_upstream_started(self, up: UpstreamConnection) -> None:
        self.sessions += 1
        if self.upstream_origin is not None:
            self.pool.succeeded(self.upstream_origin)
            self.absent_until.pop(self.upstream_origin.address, None)
        elif self.redirect_from:
            self.absent_until.pop(self.redirect_from, None)
        self.started(up)

    def on_upstream_ended(self, up: UpstreamConnection) -> None:
        self.ended(up)
        self._wake.set()

    def on_upstream_media(self, up: UpstreamConnection, event) -> None:
        pass

    def on_upstream_status(self, up: UpstreamConnection, status) -> None:
        pass

    def on_upstream_writable(self, up: UpstreamConnection) -> None:
        pass

    # ----- for subclasses -----------------------------------------------------------------------------------

    def started(self, up: UpstreamConnection) -> None:
        pass

    def ended(self, up: UpstreamConnection) -> None:
        pass

    def check(self, now: float) -> None:
        """The worker's sweep: deadlines are plain values, checked here as well as by the control loop."""
        if self.upstream is not None and self.upstream.phase != ENDED:
            self.upstream.check(now, self.settings.recv_timeout)

    # ----- handover -----------------------------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Plain data about the link; the pool is shared by the vhost's links and snapshotted apart."""
        up = self.upstream
        return {"version": SNAPSHOT_VERSION, "role": self.role, "cid": self.cid, "source_key": self.key,
                "vhost": self.vhost.name, "app": self.app, "stream": self.stream, "query": self.query,
                "host": self.host, "chunk_size": self.chunk_size, "absent_until": dict(self.absent_until),
                "redirect": self.redirect, "redirect_has_stream": self.redirect_has_stream,
                "redirect_from": self.redirect_from,
                "redirect_hops": self.redirect_hops, "attempts": self.attempts, "sessions": self.sessions,
                "created_at": self.created_at, "next_attempt_at": self.next_attempt_at,
                "upstream_origin": self.upstream_origin.address if self.upstream_origin else None,
                "upstream": up.snapshot() if up is not None and up.phase != ENDED else None}

    def restore_state(self, snap: dict) -> None:
        """Take back the control state of `snapshot()` (the upstream connection is adopted separately)."""
        if snap.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown UpstreamLink snapshot version {snap.get('version')!r}")
        self.cid = snap["cid"]
        self.absent_until = dict(snap["absent_until"])
        self.redirect, self.redirect_from = snap["redirect"], snap["redirect_from"]
        self.redirect_has_stream = snap["redirect_has_stream"]
        self.redirect_hops, self.attempts, self.sessions = snap["redirect_hops"], snap["attempts"], snap["sessions"]
        self.created_at, self.next_attempt_at = snap["created_at"], snap["next_attempt_at"]
        if snap["upstream_origin"]:
            self.upstream_origin = self.pool.get(snap["upstream_origin"])
