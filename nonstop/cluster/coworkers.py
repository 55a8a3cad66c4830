"""Coworkers: an origin asks the other origins of its cluster which of them has a stream.

SRS asks each coworker in turn, `POST http://{coworker}/api/v1/clusters?vhost=&ip=&app=&stream=&coworker=`,
with a 30 s timeout, and asks itself too when it is listed (issue #1608); users report 10 s to 1 min start
times. Here every coworker is asked at once, each within `coworker_timeout`, and the first hit wins. A node
recognises its own answer by its server id (an extra key in the answer, see answer.py), not by address,
because one origin may be listed under several names; that address is then never asked again.
An unreachable coworker counts as "does not have it": a dead origin must not stop the cluster serving.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from nonstop.log import log

CLUSTERS_PATH = "/api/v1/clusters"
# An answer larger than this is not a clusters answer (SRS's is ~250 bytes).
MAX_ANSWER_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Hit:
    """A coworker that has the stream, and where players should go."""
    coworker: str        # the `coworkers` entry that answered
    ip: str              # origin.ip
    port: int            # origin.port: its RTMP port
    vhost: str
    http: str            # origin.http (nonstop's extra key): its HTTP-FLV host:port, "" from SRS
    server: str          # the answer's server id, "" from SRS


def parse_answer(text: str, coworker: str) -> tuple[Hit | None, str]:
    """(a hit or None, the answering server's id) from a clusters answer. Raises ValueError when it is not
    one: SRS's discover_co_workers requires code 0, data.origin.ip (a string) and port (an integer)."""
    answer = json.loads(text)
    if not isinstance(answer, dict) or answer.get("code") != 0 or not isinstance(answer.get("data"), dict):
        raise ValueError(f"not a clusters answer: {text[:200]!r}")
    server = answer.get("server") if isinstance(answer.get("server"), str) else ""
    origin = answer["data"].get("origin")
    if origin is None:
        return None, server
    if not isinstance(origin, dict):
        raise ValueError(f"data.origin is not an object: {text[:200]!r}")
    ip, port = origin.get("ip"), origin.get("port")
    if not isinstance(ip, str) or not ip or isinstance(port, bool) or not isinstance(port, int) or port <= 0:
        raise ValueError(f"data.origin has no usable ip and port: {text[:200]!r}")
    http = origin.get("http") if isinstance(origin.get("http"), str) else ""
    vhost = origin.get("vhost") if isinstance(origin.get("vhost"), str) else ""
    return Hit(coworker, ip, port, vhost, http, server), server


class Coworkers:
    """The queries of one worker. `find()` runs in the worker's loop; one HTTP client session is shared."""

    def __init__(self, server_id: str):
        self.server_id = server_id
        self.known_self: set[str] = set()       # coworker entries that turned out to be this server
        self.queries = 0
        self.hits = 0
        self._http: aiohttp.ClientSession | None = None
        # Questions still out when another coworker already answered: left to finish (each is bounded by the
        # coworker timeout) so that an entry naming this server is learnt even when another answer came first.
        self._leftovers: set[asyncio.Task] = set()

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None or self._http.closed:
            # No connection reuse: a coworker's answer is small and rare, and a kept-alive socket to a
            # coworker that was replaced (a pod restarted under the same name) would answer for the old one.
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True),
                                               skip_auto_headers=("User-Agent",))
        return self._http

    async def close(self) -> None:
        for task in list(self._leftovers):
            task.cancel()
        self._leftovers.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def find(self, coworkers: list[str], timeout_ms: int, *, vhost: str, ip: str, app: str,
                   stream: str, auth: aiohttp.BasicAuth | None = None) -> Hit | None:
        """Ask every coworker but this server at once; the first that has the stream, or None. `auth`: the
        credentials to send (this node's own `http_api.auth`: a cluster's nodes share them)."""
        targets = [c for c in coworkers if c not in self.known_self]
        if not targets:
            return None
        self.queries += 1
        tasks = [asyncio.ensure_future(self._ask(c, timeout_ms, vhost=vhost, ip=ip, app=app, stream=stream,
                                                 auth=auth))
                 for c in targets]
        try:
            for next_done in asyncio.as_completed(tasks):
                hit = await next_done
                if hit is not None:
                    self.hits += 1
                    return hit
            return None
        except asyncio.CancelledError:
            for task in tasks:
                task.cancel()
            raise
        finally:
            for task in tasks:
                if not task.done():
                    self._leftovers.add(task)
                    task.add_done_callback(self._leftovers.discard)

    async def _ask(self, coworker: str, timeout_ms: int, *, vhost: str, ip: str, app: str, stream: str,
                   auth: aiohttp.BasicAuth | None) -> Hit | None:
        params = {"vhost": vhost, "ip": ip, "app": app, "stream": stream, "coworker": coworker}
        url = f"http://{coworker}{CLUSTERS_PATH}"
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
            async with self._session().post(url, params=params, timeout=timeout, auth=auth) as response:
                if response.status != 200:
                    raise ValueError(f"HTTP {response.status}")
                body = await response.content.read(MAX_ANSWER_BYTES + 1)
                if len(body) > MAX_ANSWER_BYTES:
                    raise ValueError(f"answer larger than {MAX_ANSWER_BYTES} bytes")
                hit, server = parse_answer(body.decode("utf-8", "replace"), coworker)
        except asyncio.CancelledError:
            raise
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
            log.warn("cluster", f"coworker {coworker}: no answer for {vhost}/{app}/{stream}: "
                                f"{type(e).__name__} {e}".rstrip())
            return None
        if server and server == self.server_id:
            self.known_self.add(coworker)
            log.trace("cluster", f"coworker {coworker} is this server (server id {server}); not asked again")
            return None
        if hit is not None:
            log.trace("cluster", f"coworker {coworker} has {vhost}/{app}/{stream} at {hit.ip}:{hit.port}")
        return hit
