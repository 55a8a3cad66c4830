"""Coworker queries: all at once, each within coworker_timeout, the first hit wins, a node knows itself by its
server id (and never asks that address again), and a dead or broken coworker just counts as a miss."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from aiohttp.test_utils import TestServer

from nonstop.cluster.coworkers import Coworkers

HIT = {"code": 0, "server": "vid-other", "data": {"query": {}, "origin": {
    "ip": "10.0.0.1", "port": 1935, "vhost": "__defaultVhost__", "api": "10.0.0.1:1985",
    "routers": ["10.0.0.1:1985"], "http": "10.0.0.1:8080"}}}


def coworker(answer, delay: float = 0.0, status: int = 200):
    """An aiohttp app answering /api/v1/clusters after `delay`; records the queries it got."""
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append({"method": request.method, **request.query})
        await asyncio.sleep(delay)
        body = answer if isinstance(answer, str) else json.dumps(answer)
        return web.Response(text=body, status=status, content_type="application/json")
    app = web.Application()
    app.router.add_route("*", "/api/v1/clusters", handler)
    return app, seen


async def serve(*apps) -> list[TestServer]:
    servers = [TestServer(app, host="127.0.0.1") for app in apps]
    for server in servers:
        await server.start_server()
    return servers


def address(server: TestServer) -> str:
    return f"127.0.0.1:{server.port}"


def test_coworkers_are_asked_at_once_and_the_first_hit_wins():
    async def scenario():
        (slow, _), (miss, miss_seen), (hit, hit_seen) = coworker(HIT, delay=2.0), \
            coworker({"code": 0, "data": {"query": {}, "origin": None}}, delay=0.2), coworker(HIT, delay=0.3)
        servers = await serve(slow, miss, hit)
        cw = Coworkers("vid-me")
        started = time.monotonic()
        found = await cw.find([address(s) for s in servers], 1000, vhost="__defaultVhost__", ip="10.0.0.9",
                              app="live", stream="s")
        took = time.monotonic() - started
        print(f"hit after {took:.2f}s with coworkers answering in 2.0, 0.2 and 0.3 s")
        assert found.ip == "10.0.0.1" and found.port == 1935 and found.http == "10.0.0.1:8080"
        assert found.coworker == address(servers[2]) and took < 1.0
        assert hit_seen[0] == {"method": "POST", "vhost": "__defaultVhost__", "ip": "10.0.0.9", "app": "live",
                               "stream": "s", "coworker": address(servers[2])}
        await cw.close()
        for server in servers:
            await server.close()
    asyncio.run(scenario())


def test_a_node_recognises_its_own_answer_by_server_id_and_stops_asking_itself():
    async def scenario():
        (me, me_seen), = [coworker(dict(HIT, server="vid-me"))]
        servers = await serve(me)
        cw = Coworkers("vid-me")
        for _ in range(3):
            assert await cw.find([address(servers[0])], 1000, vhost="v", ip="", app="live", stream="s") is None
        assert len(me_seen) == 1 and cw.known_self == {address(servers[0])}
        await cw.close()
        await servers[0].close()
    asyncio.run(scenario())


def test_a_node_learns_it_is_listed_even_when_another_coworker_answers_first():
    async def scenario():
        (me, me_seen), (other, _) = coworker(dict(HIT, server="vid-me"), delay=0.3), coworker(HIT)
        servers = await serve(me, other)
        cw = Coworkers("vid-me")
        found = await cw.find([address(s) for s in servers], 1000, vhost="v", ip="", app="live", stream="s")
        assert found.coworker == address(servers[1]) and cw.known_self == set()
        deadline = time.monotonic() + 3
        while not cw.known_self and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert cw.known_self == {address(servers[0])}
        await cw.find([address(s) for s in servers], 1000, vhost="v", ip="", app="live", stream="s")
        assert len(me_seen) == 1
        await cw.close()
        for server in servers:
            await server.close()
    asyncio.run(scenario())


def test_dead_slow_and_broken_coworkers_are_misses_within_the_timeout():
    async def scenario():
        (slow, _), (broken, _), (error, _) = coworker(HIT, delay=5.0), coworker("not json"), \
            coworker(HIT, status=500)
        servers = await serve(slow, broken, error)
        dead = "127.0.0.1:1"        # nothing listens on port 1
        cw = Coworkers("vid-me")
        started = time.monotonic()
        found = await cw.find([address(s) for s in servers] + [dead], 300, vhost="v", ip="", app="live",
                              stream="s")
        took = time.monotonic() - started
        print(f"all misses after {took:.2f}s (coworker_timeout 300 ms)")
        assert found is None and took < 1.0
        await cw.close()
        for server in servers:
            await server.close()
    asyncio.run(scenario())
