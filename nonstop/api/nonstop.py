"""nonstop's own API paths, for what SRS's API has no place for: the console's compact summary, the worker
list and the upgrade history. All under /api/v1/nonstop/, so behind the API's auth like every /api/ path.

- `GET /api/v1/nonstop/summary`: everything the console's views show, in one answer (the console polls it
  alone, once every couple of seconds): version, the master's uptime, the generation, totals and bitrates,
  CPU and memory per process, the streams, the clients (at most MAX_ROWS of each, with the full counts), the
  upgrade under way with the history of upgrades and reloads, the workers, the cluster, and whether this API
  takes writes.
- `GET /api/v1/nonstop/workers`: the master's workers (pid, generation, state, start) with CPU and memory.
- `GET /api/v1/nonstop/upgrades`: the last upgrade (or the one under way) and the history, oldest first.
- `POST /api/v1/nonstop/reload`, `POST /api/v1/nonstop/upgrade`: signal the master (SIGHUP, SIGUSR2), as an
  operator's `kill` would. Only with `http_api.auth` enabled: a write needs a password (403 otherwise).

The history is the master's (master/upgrade.py, bounded by HISTORY_MAX), told to every worker with each
upgrade step, reload and worker change (master/upgrading.py `_push_upgrade`).
"""

from __future__ import annotations

import os
import signal
import time

from aiohttp import web

from nonstop import __version__
from nonstop.api import procstat, views
from nonstop.api.metrics import worker_totals
from nonstop.api.stats import client_type
from nonstop.log import log

# The summary lists at most this many streams and clients (the counts are always whole): the console is a
# page to look at, and the poll must stay small for a server with thousands of players.
MAX_ROWS = 200
EDGE_KINDS = ("edge-pull",)


def process_started_ms(pid: int) -> int | None:
    """When a process started (ms, wall clock), from /proc: starttime survives execve, so for the master it is
    the start of the service, not of its last upgrade."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, IndexError, ValueError, StopIteration):
        return None
    ticks = int(fields[19])         # field 22 of stat, counted after the command's closing parenthesis
    return int((btime + ticks / os.sysconf("SC_CLK_TCK")) * 1000)


def stream_age(source, publisher, now: float) -> float:
    """Seconds since the publisher connected (its connection's wall clock start crosses a handover, so the age
    runs on across an upgrade), else since this worker made the source."""
    started = getattr(publisher, "created_wall", None)
    if isinstance(started, (int, float)):
        return time.time() - started
    return now - getattr(source, "created_at", now)


class NonstopApi:
    """The handlers, over one ApiServer (its worker, stats and process watch)."""

    def __init__(self, api):
        self.api = api

    @property
    def worker(self):
        return self.api.worker

    def writable(self) -> bool:
        return bool(self.worker.config.http_api.auth.enabled)

    # ----- pieces ------------------------------------------------------------------------------------------

    def processes(self) -> list[dict]:
        known = {w.get("pid"): w for w in getattr(self.worker, "workers_info", None) or []}
        out = []
        for role, pid in self.api.processes.processes():
            reading = procstat.read_proc(pid)
            info = known.get(pid, {})
            out.append({"role": role, "pid": pid, "cpu": round(self.api.processes.cpu_fraction(pid), 4),
                        "rss_kbyte": reading.rss_bytes // 1024 if reading is not None else 0,
                        "generation": info.get("generation", self.worker.generation if pid == os.getpid() else None),
                        "state": info.get("state", "serving" if pid == os.getpid() else ""),
                        "self": pid == os.getpid()})
        return out

    def workers(self) -> list[dict]:
        told = getattr(self.worker, "workers_info", None) or []
        if told:
            return [dict(w) for w in told]
        return [{"pid": os.getpid(), "generation": self.worker.generation, "state": "serving",
                 "started_ms": int(self.worker.started_at * 1000)}]

    def serving_generation(self) -> int:
        """The generation that serves: the newest serving worker's as the master told, else this worker's (an
        old worker still draining answers with the new one's, like the master would)."""
        told = [w.get("generation") for w in getattr(self.worker, "workers_info", None) or []
                if w.get("state") == "serving" and isinstance(w.get("generation"), int)]
        return max(told, default=self.worker.generation)

    def upgrades(self) -> dict:
        info = getattr(self.worker, "upgrade_info", None) or {}
        return {"last": views.upgrade_json(info), "history": list(info.get("history") or []),
                "results": dict(info.get("results") or {})}

    def streams(self, now_ms: int, now: float) -> list[dict]:
        stats = self.api.stats
        totals = stats.stream_totals()
        out = []
        for source in sorted(self.worker.registry.sources.values(), key=lambda s: s.id)[:MAX_ROWS]:
            mine = totals.get(source.id)
            publisher = source.publisher
            kind = getattr(publisher, "kind", "") if publisher is not None else ""
            out.append({
                "id": source.id, "vhost": source.vhost, "app": source.app, "name": source.stream,
                "url": views.stream_url(source.vhost, source.app, source.stream),
                "video": views.video_json(source.info), "audio": views.audio_json(source.info),
                "kbps": stats.stream_kbps(source.id, mine, now),
                "players": max(0, (mine.clients if mine else 0) - (1 if publisher is not None and kind not in EDGE_KINDS
                                                                   else 0)),
                "age_s": round(max(0.0, stream_age(source, publisher, now)), 1),
                "origin": "none" if publisher is None else ("edge" if kind in EDGE_KINDS else "publisher"),
                "publisher": getattr(publisher, "cid", None) if kind not in EDGE_KINDS else None,
                "publisher_ip": getattr(publisher, "ip", "") if kind not in EDGE_KINDS else "",
                "frames": source.frames,
            })
        return out

    def clients(self, now: float) -> list[dict]:
        stats = self.api.stats
        wall = time.time()
        out = []
        for conn in stats.clients()[:MAX_ROWS]:
            source = conn.source
            out.append({"id": conn.cid, "type": client_type(conn), "ip": conn.ip,
                        "stream": views.stream_url(source.vhost, source.app, source.stream), "stream_id": source.id,
                        "age_s": round(max(0.0, wall - conn.created_wall), 1),
                        "send_bytes": conn.send_bytes, "recv_bytes": conn.recv_bytes,
                        "kbps": stats.client_kbps(conn, now)})
        return out

    def cluster(self) -> list[dict]:
        now = time.monotonic()
        pools = getattr(self.worker.cluster, "pools", {}) or {}
        out = []
        for name, vhost in self.worker.config.vhosts.items():
            c = getattr(vhost, "cluster", None)
            if c is None or (c.mode != "remote" and not c.origin_cluster and not c.coworkers):
                continue
            pool = next((p for key, p in pools.items() if key[0] == name), None)
            origins = []
            if c.mode == "remote":
                live = {o.address: o for o in pool.origins} if pool is not None else {}
                for address in c.origin:
                    o = live.get(address)
                    down = o is not None and o.down_until > now
                    origins.append({"address": address, "health": "down" if down else "up" if o else "unused",
                                    "failures": o.failures if o else 0, "last_error": o.last_error if o else "",
                                    "retry_in_s": round(o.down_until - now, 1) if down else 0})
            out.append({"vhost": name, "mode": "edge" if c.mode == "remote" else "origin", "origins": origins,
                        "origin_cluster": c.origin_cluster, "coworkers": list(c.coworkers)})
        return out

    def summary(self) -> dict:
        worker = self.worker
        now, now_ms = time.monotonic(), int(time.time() * 1000)
        master_pid = self.api.processes.master_pid or os.getpid()
        started_ms = process_started_ms(master_pid) or int(worker.started_at * 1000)
        totals = worker_totals(worker)
        stats = self.api.stats
        vhost_totals = stats.vhost_totals(stats.stream_totals())
        kbps = {"recv_30s": 0, "send_30s": 0}
        for name, t in vhost_totals.items():
            for key, value in stats.vhost_kbps(name, t, now).items():
                kbps[key] += value
        clients = stats.clients()
        return {
            "version": __version__, "now_ms": now_ms, "writable": self.writable(),
            "master": {"pid": master_pid, "started_ms": started_ms, "uptime_s": max(0, (now_ms - started_ms) // 1000)},
            "worker": {"pid": os.getpid(), "generation": worker.generation},
            "generation": self.serving_generation(),
            "totals": {"connections": len(worker.conns), "streams": len(worker.registry.sources),
                       "clients": len(clients),
                       "publishers": sum(1 for c in clients if client_type(c).endswith("-publish")),
                       "recv_bytes": totals["recv_bytes"], "send_bytes": totals["send_bytes"], "kbps": kbps},
            "processes": self.processes(), "workers": self.workers(), "upgrades": self.upgrades(),
            "streams": self.streams(now_ms, now), "clients": self.clients(now), "cluster": self.cluster(),
        }

    # ----- handlers ----------------------------------------------------------------------------------------

    async def get_summary(self, request: web.Request) -> web.Response:
        response = self.api.reply(request, views.envelope(self.api.ident(), data=self.summary()))
        if getattr(self.worker, "draining", False):
            # A console's keep-alive connection stays with the worker that accepted it; once that worker
            # drains (an upgrade's old worker), close it, so the next poll reaches the worker that serves now.
            response.force_close()
        return response

    async def get_workers(self, request: web.Request) -> web.Response:
        return self.api.reply(request, views.envelope(self.api.ident(), workers=self.workers(),
                                                      processes=self.processes()))

    async def get_upgrades(self, request: web.Request) -> web.Response:
        return self.api.reply(request, views.envelope(self.api.ident(), **self.upgrades()))

    def _signal_master(self, request: web.Request, sig: signal.Signals, what: str) -> web.Response:
        if not self.writable():
            return web.json_response({"code": 403, "error": f"{what} needs http_api.auth enabled"}, status=403)
        pid = self.api.processes.master_pid
        if not pid or pid == os.getpid():
            return web.json_response({"code": 409, "error": f"no master to {what} (a lone worker)"}, status=409)
        log.trace("api", f"{request.remote} asked for a{'n' if what[0] in 'aeiou' else ''} {what}: "
                         f"signal {sig.name} to the master pid={pid}")
        os.kill(pid, sig)
        return self.api.reply(request, views.envelope(self.api.ident(), signal=sig.name))

    async def post_reload(self, request: web.Request) -> web.Response:
        return self._signal_master(request, signal.SIGHUP, "reload")

    async def post_upgrade(self, request: web.Request) -> web.Response:
        return self._signal_master(request, signal.SIGUSR2, "upgrade")


def add_nonstop_routes(app: web.Application, api) -> None:
    handlers = NonstopApi(api)
    for name, handler in (("summary", handlers.get_summary), ("workers", handlers.get_workers),
                          ("upgrades", handlers.get_upgrades)):
        for path in (f"/api/v1/nonstop/{name}", f"/api/v1/nonstop/{name}/"):
            app.router.add_get(path, handler)
    for name, handler in (("reload", handlers.post_reload), ("upgrade", handlers.post_upgrade)):
        app.router.add_post(f"/api/v1/nonstop/{name}", handler)
