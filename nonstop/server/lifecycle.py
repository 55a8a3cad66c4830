"""Serving: one serving process's life around its Worker: listeners by key, the HTTP API, readiness, reload,
and the fast and graceful quits. The master's worker and the `master_process off` single process both use it.

Graceful quit (srs-reference.md §1, with nonstop's Beyond items):
1. readiness turns false at once (`worker.ready`, `worker.draining`, read by /readyz and /metrics);
2. new connections are still accepted for `grace_start_wait` ms, while load balancers catch up;
3. the RTMP and HTTP-FLV listeners close, so new connects are refused; the HTTP API listener stays open until
   exit, so liveness probes pass and /metrics shows the drain;
4. the connections are waited for, logging `wait for N conns to quit` at growing intervals, for at most
   `grace_max_wait` ms (0: no bound). At the bound, publishers get `NetStream.Unpublish.Success`, RTMP players
   `NetStream.Play.UnpublishNotify`, and then every connection is closed;
5. after `grace_final_wait` ms the process exits 0.
A fast quit (at any time, also during a drain) closes everything at once.

An orphan (the master was killed: `orphaned()`) closes every listener at once, the API's included, so a new
master can bind the same ports; it drains for at most the bound it is given and exits, with no start or final
wait. A fast quit ends that drain too.

Listening sockets handed to `start()` and `update_listeners()` become this process's: it closes them (the owner,
the master or the single process, keeps its own copies).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

from nonstop.api.server import ApiServer
from nonstop.log import log
from nonstop.server.rtmp_conn import ROLE_PLAY, ROLE_PUBLISH, RtmpConnection
from nonstop.master.sockets import API, HTTP, RTMP, api_shares_http, kind_of

# How often the drain checks whether the connections are gone: bounds how late the process exits after the
# last client left (the final wait comes on top).
DRAIN_POLL_S = 0.05
# `wait for N conns to quit` is logged at once, then after 1 s, 2 s, 4 s... up to once a minute.
DRAIN_LOG_FIRST_S = 1.0
DRAIN_LOG_MAX_S = 60.0
# After the bound closed the connections, how long their last words (the status messages) may take to flush.
KICK_FLUSH_S = 2.0
# aiohttp may wait for API requests in flight; a quit does not wait longer than this for them.
API_STOP_TIMEOUT_S = 0.5

QUIT_FAST = "fast"
QUIT_GRACEFUL = "graceful"


class Serving:
    def __init__(self, worker, *, on_draining=None, on_listeners_closed=None):
        """`on_draining()` is called when readiness turns false; `on_listeners_closed(keys)` when the RTMP and
        HTTP-FLV listeners closed for the drain (the owner then closes its copies)."""
        self.worker = worker
        self.on_draining = on_draining
        self.on_listeners_closed = on_listeners_closed
        self.servers: dict[str, list[asyncio.AbstractServer]] = {}
        self.api_socks: dict[str, socket.socket] = {}
        self.api: ApiServer | None = None
        self.quitting: str | None = None
        self._task: asyncio.Task | None = None
        self._done: asyncio.Future | None = None
        # An upgrade's old worker: its listeners were let go of (duplicates kept here, by key, in case the
        # handover breaks and it must serve again); its drain skips the grace start and final waits.
        self._retired: dict[str, socket.socket] = {}
        self.retiring = False
        self.orphan = False             # the master is gone: see orphaned()
        self._shutting_down = False     # _shutdown() began: a drain task must not be cancelled any more
        worker.ready = False
        worker.draining = False

    @property
    def config(self):
        return self.worker.config

    # ----- listeners ---------------------------------------------------------------------------------------

    async def start(self, listeners: dict[str, socket.socket]) -> None:
        self._done = asyncio.get_running_loop().create_future()
        await self.update_listeners(listeners, [])
        self.worker.ready = True

    async def update_listeners(self, add: dict[str, socket.socket], remove: list[str]) -> None:
        """Stop serving the keys in `remove`, then serve the sockets in `add` (a key may be in both: a listener
        that changed kind keeps its socket, and the old server must let go of it first)."""
        gone_api = []
        for key in remove:
            for server in self.servers.pop(key, []):
                self._close_server(server)
            if key in self.api_socks:
                gone_api.append(self.api_socks.pop(key))
        for key, sock in add.items():
            sock.setblocking(False)
            kind = kind_of(key)
            if kind == API:
                self.api_socks[key] = sock
            elif kind in (RTMP, HTTP):
                before = len(self.worker.servers)
                await self.worker.serve({kind: [sock]})
                self.servers[key] = self.worker.servers[before:]
            else:
                log.warn("main", f"unknown listener kind {key!r}; closing it")
                sock.close()
        await self._sync_api()
        for sock in gone_api:
            sock.close()        # the API stopped serving it (and closed it) already; this is in case it did not

    def _close_server(self, server) -> None:
        server.close()
        if server in self.worker.servers:
            self.worker.servers.remove(server)

    def describe(self) -> str:
        return ", ".join([*self.servers, *self.api_socks]) or "none"

    # ----- the HTTP API ------------------------------------------------------------------------------------

    async def _sync_api(self) -> None:
        """Start, update or stop the API to match the config and the API listeners (the API takes the HTTP
        server port's non-FLV requests itself when the ports are equal: `apply_config`)."""
        if self.quitting is not None:
            return
        if not self.config.http_api.enabled:
            await self._stop_api()
            return
        if self.api is None:
            api = ApiServer(self.worker)
            try:
                await api.start(list(self.api_socks.values()))
            except Exception as e:  # the media must go on even if the API cannot start
                log.error("api", f"the HTTP API cannot start: {e!r}")
                return
            self.api = api
            return
        try:
            await self.api.set_sockets(list(self.api_socks.values()))
            self.api.apply_config()
        except Exception as e:
            log.error("api", f"the HTTP API cannot follow the reload: {e!r}")

    async def _stop_api(self) -> None:
        api, self.api = self.api, None
        if api is None:
            return
        try:
            await asyncio.wait_for(api.stop(), API_STOP_TIMEOUT_S)
        except Exception as e:  # including the timeout: the process is going away or the API is turned off
            log.warn("api", f"the HTTP API did not stop cleanly: {e!r}")

    # ----- reload ------------------------------------------------------------------------------------------

    async def reload(self, config, add: dict[str, socket.socket], remove: list[str]) -> None:
        """Apply a new config without dropping a connection: log settings, max_connections and vhost settings
        take effect for what comes next, and the listeners follow the owner's plan."""
        self.worker.apply_config(config)
        await self.update_listeners(add, remove)

    # ----- an upgrade's old worker ---------------------------------------------------------------------------

    async def retire(self) -> None:
        """Stop accepting on every listener, the API's included: the new worker serves the very same kernel
        sockets. Duplicates are kept, so `unretire()` can serve them again if the handover breaks."""
        kept: dict[str, socket.socket] = {}
        for key, servers in self.servers.items():
            for server in servers:
                for sock in server.sockets or ():
                    kept[key] = socket.socket(fileno=os.dup(sock.fileno()))
        for key, sock in self.api_socks.items():
            kept[key] = socket.socket(fileno=os.dup(sock.fileno()))
        for key in list(self.servers):
            for server in self.servers.pop(key):
                self._close_server(server)
        if self.api is not None:
            try:
                await self.api.set_sockets([])
            except Exception as e:
                log.warn("api", f"the HTTP API did not let go of its listeners: {e!r}")
        for sock in self.api_socks.values():
            sock.close()
        self.api_socks.clear()
        if self.orphan:     # the master died while the API let go: nothing will serve these again
            for sock in kept.values():
                sock.close()
            kept = {}
        self._retired = kept
        log.trace("main", f"stopped accepting on {', '.join(kept) or '(none)'}: the new worker serves them")

    async def unretire(self) -> None:
        """Serve the listeners again, after a broken handover (unless a quit began meanwhile: then close them)."""
        kept, self._retired = self._retired, {}
        if self.quitting is not None:
            for sock in kept.values():
                sock.close()
            return
        await self.update_listeners(kept, [])
        log.trace("main", f"serving again: {self.describe()}")

    def retire_done(self) -> None:
        """The handover is over: drain what is left here, bounded by grace_max_wait, then exit."""
        for sock in self._retired.values():
            sock.close()
        self._retired = {}
        self.retiring = True
        self.quit(graceful=True)

    # ----- quitting ----------------------------------------------------------------------------------------

    def quit(self, graceful: bool) -> None:
        """Start a quit. A second graceful quit is ignored; a fast one ends a drain at once."""
        if self.quitting == QUIT_FAST:
            return
        if graceful:
            if self.quitting == QUIT_GRACEFUL:
                log.trace("main", "graceful quit already in progress; ignored")
                return
            self.quitting = QUIT_GRACEFUL
            self.worker.ready = False
            self.worker.draining = True
            log.trace("main", "cleanup for quit signal fast=0, grace=1")
            if self.on_draining:
                self.on_draining()
            self._task = asyncio.get_running_loop().create_task(self._graceful())
            return
        self.quitting = QUIT_FAST
        self.worker.ready = False
        log.trace("main", "cleanup for quit signal fast=1, grace=0")
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._fast())

    def orphaned(self, max_wait_ms: int) -> None:
        """The master is gone. Let go of every listener at once (the API's too: a new master must be able to
        bind every port), drain for at most `max_wait_ms` (0: not at all), and exit. It takes over a graceful
        quit under way (whose start wait would hold the ports, and whose drain may be unbounded); a fast quit
        under way, or one begun later, wins."""
        if self.quitting == QUIT_FAST or self.orphan or self._shutting_down:
            return
        self.orphan = True
        self.worker.ready = False
        self.worker.draining = True
        if self.quitting is None and self.on_draining:
            self.on_draining()
        self.quitting = QUIT_GRACEFUL
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._orphan_drain(max_wait_ms))

    async def _orphan_drain(self, max_wait_ms: int) -> None:
        await self._close_every_listener()
        if max_wait_ms > 0:
            await self._wait_for_conns(max_wait_ms)
        elif self.worker.conns:
            self.close_for_quit("orphaned worker: no drain")
            await self._wait_closed(KICK_FLUSH_S)
        await self._shutdown()
        log.trace("main", "orphaned worker quit")
        self._finish(0)

    async def _close_every_listener(self) -> None:
        closed = [*self.servers, *self.api_socks, *self._retired]
        for servers in self.servers.values():
            for server in servers:
                self._close_server(server)
        self.servers.clear()
        if self.api is not None:
            try:
                await self.api.set_sockets([])
            except Exception as e:
                log.warn("api", f"the HTTP API did not let go of its listeners: {e!r}")
        for sock in [*self.api_socks.values(), *self._retired.values()]:
            sock.close()
        self.api_socks.clear()
        self._retired = {}
        log.trace("main", f"closed every listener ({', '.join(dict.fromkeys(closed)) or 'none'}); a new master "
                          f"can bind them")

    async def wait(self) -> int:
        """Until the quit is over; the exit code."""
        return await self._done

    async def _fast(self) -> None:
        await self._shutdown()
        log.trace("main", "fast quit done")
        self._finish(0)

    async def _graceful(self) -> None:
        config = self.config
        if config.grace_start_wait and not self.retiring:
            log.trace("main", f"still accepting for grace_start_wait={config.grace_start_wait} ms")
            await asyncio.sleep(config.grace_start_wait / 1000)
        if not self.retiring:       # an upgrade's old worker let go of every listener already (retire())
            self.close_media_listeners()
        await self._wait_for_conns(config.grace_max_wait)
        if config.grace_final_wait and not self.retiring:
            log.trace("main", f"sleep grace_final_wait={config.grace_final_wait} ms")
            await asyncio.sleep(config.grace_final_wait / 1000)
        await self._shutdown()
        log.trace("main", "nonstop gracefully quit")
        self._finish(0)

    def close_media_listeners(self) -> list[str]:
        """Close the RTMP and HTTP-FLV listeners, so new connects are refused. An HTTP port that also serves the
        API stays open: the API must answer until exit."""
        keep_http = api_shares_http(self.config) and self.api is not None
        closed = [key for key in self.servers if not (keep_http and kind_of(key) == HTTP)]
        for key in closed:
            for server in self.servers.pop(key):
                self._close_server(server)
        log.trace("main", f"closed the listeners {', '.join(closed) or '(none)'}; new connects are refused"
                          + (" (the HTTP port stays open for the API)" if keep_http else ""))
        if self.on_listeners_closed:
            self.on_listeners_closed(closed)
        return closed

    async def _wait_for_conns(self, max_wait_ms: int) -> None:
        started = time.monotonic()
        next_log, interval = started, DRAIN_LOG_FIRST_S
        while self.worker.conns:
            now = time.monotonic()
            if max_wait_ms and (now - started) * 1000 >= max_wait_ms:
                self.close_for_quit(f"graceful quit: grace_max_wait={max_wait_ms} ms reached")
                await self._wait_closed(KICK_FLUSH_S)
                return
            if now >= next_log:
                log.trace("main", f"wait for {len(self.worker.conns)} conns to quit")
                next_log, interval = now + interval, min(interval * 2, DRAIN_LOG_MAX_S)
            await asyncio.sleep(DRAIN_POLL_S)
        log.trace("main", f"every connection has quit, after {time.monotonic() - started:.2f}s")

    def close_for_quit(self, reason: str) -> None:
        """The drain's bound: publishers hear NetStream.Unpublish.Success, RTMP players
        NetStream.Play.UnpublishNotify (from their publisher leaving, or here if it had none), then EOF."""
        conns = list(self.worker.conns.values())
        log.warn("main", f"{reason}: closing {len(conns)} conns")
        notified = set()
        for conn in conns:
            if isinstance(conn, RtmpConnection) and conn.role == ROLE_PUBLISH and not conn.closed:
                notified.add(id(conn.source))
                conn.send_status("NetStream.Unpublish.Success", "Stream is now unpublished (server quit)")
                conn.close(reason)      # the source tells its RTMP players UnpublishNotify
        for conn in conns:
            if conn.closed:
                continue
            if getattr(conn, "role", "") == ROLE_PLAY and id(conn.source) not in notified:
                conn.on_source_unpublish()      # RTMP: UnpublishNotify; HTTP-FLV has no status messages
            conn.close(reason)

    async def _wait_closed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.worker.conns and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)

    async def _shutdown(self) -> None:
        self._shutting_down = True
        for servers in self.servers.values():
            for server in servers:
                self._close_server(server)
        self.servers.clear()
        await self.worker.stop()
        await self._stop_api()
        for sock in self.api_socks.values():
            sock.close()
        self.api_socks.clear()

    def _finish(self, code: int) -> None:
        if self._done is not None and not self._done.done():
            self._done.set_result(code)
