"""The HTTP API (/api/v1/*, /metrics, /healthz, /readyz), served by the worker with aiohttp.

Interface used by the worker and the master:
- `ApiServer(worker)`; `await api.start(sockets)` serves on already-bound listening sockets (never
  `create_server(host, port)`, architecture decision 8); `await api.set_sockets(sockets)` swaps them on reload;
- `api.adopt(transport, data)` takes a connection that arrived on the HTTP server port when the API shares it,
  with the bytes already read;
- `api.apply_config()` re-reads whether the API shares the HTTP server port (after a reload);
- `await api.stop()`;
- `api.app` is the aiohttp Application; other rooms' routes (the cluster's `/api/v1/clusters`, registered in
  `_make_app`) get the same auth and CORS.

SRS's paths and JSON (srs-reference.md §6, see views.py); a path answers with and without its trailing slash
(SRS redirects with a 302). `/api/` paths take SRS-compatible HTTP Basic auth when `http_api.auth` is enabled;
/metrics, /healthz and /readyz never do, because probes and scrapers carry no credentials. CORS follows
`http_api.crossdomain`, as SRS's CORS mux does: headers when the request has an Origin, OPTIONS answered 200
(405 when crossdomain is off), before auth, since browsers send preflights without credentials.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import re
import sys
import time
import weakref

from aiohttp import web
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from nonstop import __version__
from nonstop.api import disk, procstat, views
from nonstop.api.conns import KEEPALIVE_TIMEOUT_S, ApiConnections, aiohttp_logger
from nonstop.api.metrics import is_ready, make_registry, worker_totals
from nonstop.api.nonstop import add_nonstop_routes
from nonstop.api.stats import SAMPLE_STEP_S, ApiStats, client_type
from nonstop.cluster.answer import add_clusters_routes
from nonstop.log import log, quote
from nonstop.master.sockets import HTTP as LISTENER_HTTP
from nonstop.master.sockets import LISTEN_BACKLOG, api_shares_http

# The stats tick: CPU meters every tick, the clients' kbps samples and stream totals every SAMPLE_STEP_S.
TICK_S = 1.0
# A fast quit exits within 1 s: requests in flight get half of it (API answers take milliseconds).
SHUTDOWN_TIMEOUT_S = 0.5
# No API request has a body worth more than this (DELETE has none).
MAX_BODY_BYTES = 64 * 1024
# A JSONP callback is a JavaScript name path; anything else would be script injection.
JSONP_CALLBACK = re.compile(r"[A-Za-z_$][\w$]*(\.[A-Za-z_$][\w$]*)*")
AUTH_REALM = 'Basic realm="nonstop"'
# SRS's CORS mux answers with these when the request has an Origin.
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    # `*` does not cover Authorization (Fetch standard): the console on the HTTP port sends it cross-origin.
    "Access-Control-Allow-Headers": "*, Authorization",
    "Access-Control-Allow-Methods": "*",
    "Access-Control-Expose-Headers": "*",
    "Access-Control-Allow-Credentials": "false",
    "Access-Control-Request-Private-Network": "true",
}
V1_URLS = {
    "versions": "the version of nonstop",
    "summaries": "the summary (pid, argv, cwd, cpu, mem) of nonstop",
    "vhosts": "all vhosts or one vhost",
    "streams": "all streams or one stream, ?start=&count= (default 10)",
    "clients": "all clients or one client, ?start=&count= (default 10); DELETE kicks one",
    "raw": "the raw API (config over HTTP): disabled in nonstop, ?rpc=raw says so",
    "clusters": "the origin cluster's question: does this origin publish ?vhost=&app=&stream=",
    "nonstop": "nonstop's own: summary (the console's one poll), workers, upgrades; POST reload, upgrade",
}


def jsonp_method(request: web.Request) -> str:
    """The method a JSONP request stands for: SRS takes `?method=` (GET, PUT, POST, DELETE) when `callback`
    is there, because a <script> tag can only GET. The auth middleware has already run for the request, so
    a JSONP DELETE passes the same checks as a real one."""
    if not request.query.get("callback"):
        return request.method
    return request.query.get("method", "").upper() or request.method


def is_api_path(path: str) -> bool:
    """The paths behind auth, as SRS's auth mux decides (`/api/...`)."""
    return path == "/api" or path.startswith("/api/")


def basic_auth_ok(header: str, username: str, password: str) -> bool:
    """An `Authorization: Basic base64(user:password)` header matches (compared in constant time)."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return False
    try:
        plain = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return False
    user, sep, secret = plain.partition(":")
    if not sep:
        return False
    user_ok = hmac.compare_digest(user.encode(), username.encode())
    secret_ok = hmac.compare_digest(secret.encode(), password.encode())
    return user_ok and secret_ok


def master_pid_of(worker) -> int | None:
    """The master's pid when this worker runs under one: told by the master, or our parent when we were
    started as `--worker`."""
    pid = getattr(worker, "master_pid", None)
    if pid:
        return int(pid)
    if "--worker" in sys.argv[1:]:
        return os.getppid()
    return None


# A reload may replace the ApiServer (a moved listener); the worker's rates and stream totals outlive it.
_STATS_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stats_of(worker) -> ApiStats:
    stats = _STATS_OF.get(worker)
    if stats is None:
        stats = _STATS_OF[worker] = ApiStats(worker)
    return stats


class ApiServer:
    def __init__(self, worker):
        self.worker = worker
        self.stats = stats_of(worker)
        self.processes = procstat.ProcessWatch(master_pid_of(worker))
        self.system_cpu = procstat.SystemCpuMeter()
        self.disk = disk.DiskRates()
        self.registry = make_registry(worker, self.processes)
        self.app = self._make_app()
        self.runner: web.AppRunner | None = None
        # Every API connection goes through self.conns (api/conns.py: counted, bounded in number and time);
        # so the listeners are served with its protocol factory rather than aiohttp's SockSite.
        self.conns = ApiConnections(worker)
        self._sites: dict[int, asyncio.AbstractServer] = {}
        self._own_ports: set[int] = set()      # the ports of our own listeners; others' are adopted connections
        self._tick_task: asyncio.Task | None = None
        self._next_stats = 0.0

    # ----- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, sockets) -> None:
        """Serve on these already-bound listening sockets (none when the API shares the HTTP server port)."""
        if self.runner is None:
            self.runner = web.AppRunner(self.app, handle_signals=False, access_log=None, logger=aiohttp_logger(),
                                        keepalive_timeout=KEEPALIVE_TIMEOUT_S, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await self.runner.setup()
        await self.set_sockets(sockets)
        self.apply_config()
        if self._tick_task is None:
            self.tick(time.monotonic())
            self._tick_task = asyncio.get_running_loop().create_task(self._tick())

    async def set_sockets(self, sockets) -> None:
        """Serve exactly these listening sockets: new ones are started, missing ones stopped (and closed)."""
        wanted = {sock.fileno(): sock for sock in sockets}
        for fd, site in list(self._sites.items()):
            if fd not in wanted:
                site.close()
                del self._sites[fd]
        loop = asyncio.get_running_loop()
        for fd, sock in wanted.items():
            if fd not in self._sites:
                self._sites[fd] = await loop.create_server(self._new_connection, sock=sock, backlog=LISTEN_BACKLOG)
        self._own_ports = {sock.getsockname()[1] for sock in wanted.values()}

    def apply_config(self) -> None:
        """Take non-FLV requests of the HTTP server port when the API shares it (equal ports)."""
        shared = api_shares_http(self.worker.config)
        if shared:
            self.worker.set_api_app(LISTENER_HTTP, self)
        elif self.worker.api_app_for(LISTENER_HTTP) is self:
            self.worker.set_api_app(LISTENER_HTTP, None)

    def adopt(self, transport, data: bytes) -> None:
        """Serve a connection accepted by the HTTP server, whose request (in `data`) is for the API.

        The already-read bytes go to a fresh aiohttp request handler and the transport switches to it. Its
        responses close the connection: a following request on it could be for HTTP-FLV, which only the HTTP
        server's own connections serve."""
        if self.runner is None or self.runner.server is None or transport.is_closing():
            transport.close()
            return
        conn = self._new_connection()
        transport.set_protocol(conn)
        conn.connection_made(transport)
        if data and conn.admitted:
            conn.data_received(data)

    def _new_connection(self):
        """A protocol for one API connection: aiohttp's request handler, inside the connection's bounds."""
        return self.conns.wrap(self.runner.server())

    async def stop(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            self._tick_task = None
        if self.worker.api_app_for(LISTENER_HTTP) is self:
            self.worker.set_api_app(LISTENER_HTTP, None)
        if self.runner is not None:
            runner, self.runner = self.runner, None
            for site in self._sites.values():
                site.close()
            self._sites.clear()
            await runner.cleanup()

    # ----- the tick ----------------------------------------------------------------------------------------

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self.tick(time.monotonic())
            except Exception as e:  # the stats must never take the API down: log and go on
                log.error("api", f"api tick failed: {e!r}")

    def tick(self, now: float) -> None:
        self.conns.sweep(now)      # first: a failing stats sample must not spare a slowloris connection
        self.processes.master_pid = master_pid_of(self.worker)
        if now >= self._next_stats:
            self._next_stats = now + SAMPLE_STEP_S - TICK_S / 2
            self.stats.tick(now)
        self.processes.sample(now)
        self.system_cpu.sample(procstat.read_system_cpu())

    # ----- the application ---------------------------------------------------------------------------------

    def _make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._conn_middleware, self._cors_middleware, self._auth_middleware],
                              client_max_size=MAX_BODY_BYTES)
        add = app.router
        for path in ("/api", "/api/"):
            add.add_get(path, self.api_root)
        for path in ("/api/v1", "/api/v1/"):
            add.add_get(path, self.v1_root)
        for name, handler in (("versions", self.versions), ("summaries", self.summaries)):
            for path in (f"/api/v1/{name}", f"/api/v1/{name}/"):
                add.add_get(path, handler)
        for name, many, one in (("vhosts", self.vhosts, self.vhost), ("streams", self.streams, self.stream),
                                ("clients", self.clients, self.client)):
            for path in (f"/api/v1/{name}", f"/api/v1/{name}/"):
                add.add_get(path, many)
            for path in (f"/api/v1/{name}/{{id}}", f"/api/v1/{name}/{{id}}/"):
                add.add_get(path, one)
        for path in ("/api/v1/clients/{id}", "/api/v1/clients/{id}/"):
            add.add_delete(path, self.kick_client)
        for path in ("/api/v1/raw", "/api/v1/raw/"):
            add.add_get(path, self.raw)
        add.add_get("/metrics", self.metrics)
        add.add_get("/healthz", self.healthz)
        add.add_get("/readyz", self.readyz)
        add_clusters_routes(app, self.worker)   # /api/v1/clusters, GET and POST (nonstop/cluster/answer.py)
        add_nonstop_routes(app, self)           # /api/v1/nonstop/*: the console's summary, workers, upgrades
        return app

    @web.middleware
    async def _conn_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        """Tell the connection's bounds (api/conns.py) when a request starts and when its answer is ready."""
        self.conns.request_started(request.transport, time.monotonic())
        try:
            return await handler(request)
        finally:
            self.conns.request_done(request.transport, time.monotonic())

    @web.middleware
    async def _cors_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        crossdomain = self.worker.config.http_api.crossdomain
        if request.method == "OPTIONS":
            response = web.Response(status=200 if crossdomain else 405)
        else:
            try:
                response = await handler(request)
            except web.HTTPException as e:
                response = web.Response(status=e.status, reason=e.reason, text=e.text, headers=e.headers)
            except Exception as e:
                log.error("api", f"{quote(request.method)} {quote(request.path)} failed: {e!r}")
                response = web.Response(status=500, text="500 Internal Server Error\n")
        if crossdomain and request.headers.get("Origin"):
            response.headers.update(CORS_HEADERS)
        if self._adopted(request):
            response.force_close()
        return response

    def _adopted(self, request: web.Request) -> bool:
        """Whether the request came on a connection adopted from the HTTP server port."""
        transport = request.transport
        sockname = transport.get_extra_info("sockname") if transport is not None else None
        return bool(sockname) and sockname[1] not in self._own_ports

    @web.middleware
    async def _auth_middleware(self, request: web.Request, handler) -> web.StreamResponse:
        auth = self.worker.config.http_api.auth
        if auth.enabled and is_api_path(request.path) and \
                not basic_auth_ok(request.headers.get("Authorization", ""), auth.username, auth.password):
            log.warn("api", f"{request.remote} {quote(request.method)} {quote(request.path)}: unauthorized")
            return web.Response(status=401, text="401 Unauthorized\n", headers={"WWW-Authenticate": AUTH_REALM})
        return await handler(request)

    # ----- answers -------------------------------------------------------------------------------------------

    def ident(self) -> views.Ident:
        return views.Ident(self.worker.server_id, self.worker.service_id, self.processes.service_pid())

    @staticmethod
    def reply(request: web.Request, body: dict) -> web.Response:
        """JSON, or JSONP with `?callback=NAME` as SRS supports it."""
        text = json.dumps(body, separators=(",", ":"))
        callback = request.query.get("callback")
        if callback:
            if not JSONP_CALLBACK.fullmatch(callback):
                return web.Response(status=400, text="400 Bad Request: invalid callback\n")
            return web.Response(text=f"{callback}({text})", content_type="text/javascript")
        return web.Response(text=text, content_type="application/json")

    async def api_root(self, request: web.Request) -> web.Response:
        return self.reply(request, views.envelope(self.ident(), urls={"v1": "the api version 1.0"}))

    async def v1_root(self, request: web.Request) -> web.Response:
        return self.reply(request, views.envelope(self.ident(), urls=V1_URLS))

    async def versions(self, request: web.Request) -> web.Response:
        return self.reply(request, views.envelope(self.ident(), data=views.version_data(__version__)))

    async def summaries(self, request: web.Request) -> web.Response:
        return self.reply(request, views.envelope(self.ident(), data=self.summaries_data()))

    async def vhosts(self, request: web.Request) -> web.Response:
        return self.reply(request, views.envelope(self.ident(), vhosts=self.vhosts_json()))

    async def vhost(self, request: web.Request) -> web.Response:
        wanted = request.match_info["id"]
        for item in self.vhosts_json():
            if item["id"] == wanted or item["name"] == wanted:
                return self.reply(request, views.envelope(self.ident(), vhost=item))
        return self.reply(request, views.error(views.ERROR_RTMP_VHOST_NOT_FOUND))

    async def streams(self, request: web.Request) -> web.Response:
        sources = sorted(self.worker.registry.sources.values(), key=lambda s: s.id)
        totals = self.stats.stream_totals()
        items = [self.stream_json(s, totals) for s in views.page(sources, request.query)]
        return self.reply(request, views.envelope(self.ident(), streams=items))

    async def stream(self, request: web.Request) -> web.Response:
        source = self.worker.registry.by_id(request.match_info["id"])
        if source is None:
            return self.reply(request, views.error(views.ERROR_RTMP_STREAM_NOT_FOUND))
        item = self.stream_json(source, self.stats.stream_totals())
        return self.reply(request, views.envelope(self.ident(), stream=item))

    async def clients(self, request: web.Request) -> web.Response:
        items = [self.client_json(c) for c in views.page(self.stats.clients(), request.query)]
        return self.reply(request, views.envelope(self.ident(), clients=items))

    async def client(self, request: web.Request) -> web.Response:
        if jsonp_method(request) == "DELETE":
            return await self.kick_client(request)      # the SRS console's kick
        conn = self.stats.find_client(request.match_info["id"])
        if conn is None:
            return self.reply(request, views.error(views.ERROR_RTMP_CLIENT_NOT_FOUND))
        return self.reply(request, views.envelope(self.ident(), client=self.client_json(conn)))

    async def kick_client(self, request: web.Request) -> web.Response:
        conn = self.stats.find_client(request.match_info["id"])
        if conn is None:
            return self.reply(request, views.error(views.ERROR_RTMP_CLIENT_NOT_FOUND))
        conn.kick(f"kicked by the HTTP API (request from {request.remote})")
        return self.reply(request, views.envelope(self.ident()))

    async def raw(self, request: web.Request) -> web.Response:
        api = self.worker.config.http_api
        return self.reply(request, views.raw_json(api_enabled=api.enabled, api_listen=str(api.listen),
                                                  crossdomain=api.crossdomain, rpc=request.query.get("rpc", "")))

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    async def healthz(self, request: web.Request) -> web.Response:
        """Alive while the process serves, a graceful drain included."""
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if is_ready(self.worker):
            return web.Response(text="ready\n")
        state = "draining" if getattr(self.worker, "draining", False) else "not ready"
        return web.Response(status=503, text=f"{state}\n")

    # ----- JSON from the live objects ----------------------------------------------------------------------

    def vhosts_json(self) -> list[dict]:
        now = time.monotonic()
        totals = self.stats.vhost_totals(self.stats.stream_totals())
        config_vhosts = self.worker.config.vhosts
        names = list(config_vhosts) + [n for n in totals if n not in config_vhosts]
        out = []
        for name in names:
            cfg = config_vhosts.get(name)
            out.append(views.vhost_json(name, enabled=cfg.enabled if cfg is not None else True,
                                        server_id=self.worker.server_id, totals=totals.get(name),
                                        kbps=self.stats.vhost_kbps(name, totals.get(name), now)))
        return out

    def stream_json(self, source, totals: dict) -> dict:
        mine = totals.get(source.id)
        return views.stream_json(source, server_id=self.worker.server_id, now_ms=int(time.time() * 1000),
                                 totals=mine, kbps=self.stats.stream_kbps(source.id, mine, time.monotonic()))

    def client_json(self, conn) -> dict:
        return views.client_json(conn, client_type(conn), server_id=self.worker.server_id, now_wall=time.time(),
                                 kbps=self.stats.client_kbps(conn, time.monotonic()))

    def summaries_data(self) -> dict:
        worker = self.worker
        me = procstat.read_proc(os.getpid())
        meminfo = procstat.read_meminfo()
        mem_total_kb = meminfo.get("MemTotal", 0)
        rss_kb = me.rss_bytes // 1024 if me is not None else 0
        cmdline = procstat.read_cmdline() or sys.argv
        started = getattr(worker, "service_started_at", None) or worker.started_at
        self_info = {
            "version": __version__, "pid": os.getpid(), "ppid": os.getppid(), "argv": " ".join(cmdline),
            "cwd": os.getcwd(), "mem_kbyte": rss_kb,
            "mem_percent": round(rss_kb / mem_total_kb, 4) if mem_total_kb else 0,
            "cpu_percent": round(self.processes.cpu_fraction(os.getpid()), 4),
            "srs_uptime": int(time.time() - started), "generation": getattr(worker, "generation", 1),
        }
        swap_total = meminfo.get("SwapTotal", 0)
        uptime, idle = procstat.read_uptime()
        load1, load5, load15 = procstat.loadavg()
        net = procstat.read_net_dev()
        socks = procstat.read_sockstat()
        totals = worker_totals(worker)
        now_ms = int(time.time() * 1000)
        system = {
            "cpu_percent": round(self.system_cpu.fraction, 4),
            **self.disk.sample(time.monotonic()),
            "mem_ram_kbyte": mem_total_kb,
            "mem_ram_percent": round(1 - meminfo.get("MemAvailable", 0) / mem_total_kb, 4) if mem_total_kb else 0,
            "mem_swap_kbyte": swap_total,
            "mem_swap_percent": round(1 - meminfo.get("SwapFree", 0) / swap_total, 4) if swap_total else 0,
            "cpus": os.sysconf("SC_NPROCESSORS_CONF"), "cpus_online": os.sysconf("SC_NPROCESSORS_ONLN"),
            "uptime": uptime, "ilde_time": idle,        # sic: SRS's key
            "load_1m": load1, "load_5m": load5, "load_15m": load15,
            # Like SRS, loopback counts as intranet; unlike SRS, every other interface counts as internet.
            "net_sample_time": now_ms,
            "net_recv_bytes": sum(r for name, r, _ in net if name != "lo"),
            "net_send_bytes": sum(s for name, _, s in net if name != "lo"),
            "net_recvi_bytes": sum(r for name, r, _ in net if name == "lo"),
            "net_sendi_bytes": sum(s for name, _, s in net if name == "lo"),
            "srs_sample_time": now_ms, "srs_recv_bytes": totals["recv_bytes"], "srs_send_bytes": totals["send_bytes"],
            "conn_sys": socks["tcp_inuse"] + socks["tcp_tw"], "conn_sys_et": socks["tcp_inuse"],
            "conn_sys_tw": socks["tcp_tw"], "conn_sys_udp": socks["udp_inuse"], "conn_srs": len(worker.conns),
        }
        ok = me is not None and bool(meminfo) and self.system_cpu.last is not None
        return views.summaries_data(ok=ok, now_ms=now_ms, self_info=self_info, system=system,
                                    upgrade=getattr(worker, "upgrade_info", None))
