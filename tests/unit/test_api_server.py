"""The HTTP API application in process: paths with and without slash, errors, paging, kick, auth, CORS, JSONP,
health and readiness, and a connection adopted from the HTTP server port."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from types import SimpleNamespace

import aiohttp

from nonstop.api.server import ApiServer, basic_auth_ok, is_api_path
from nonstop.config import load_text
from nonstop.master.sockets import HTTP as LISTENER_HTTP
from nonstop.master.sockets import bind_listener
from nonstop.server.worker import Worker

CONFIG = """
listen 1935;
http_api {{ enabled on; listen {api_port}; crossdomain {crossdomain}; auth {{ enabled {auth}; username admin; password s3cret; }} }}
http_server {{ enabled on; listen {http_port}; }}
vhost __defaultVhost__ {{ http_remux {{ enabled on; }} }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeConn:
    def __init__(self, cid, source, role="play"):
        self.cid, self.source, self.kind, self.role, self.publish_fmle = cid, source, "rtmp", role, True
        self.ip, self.closed, self.created_wall = "127.0.0.1", False, 0.0
        self.send_bytes = self.recv_bytes = 0
        self.session = SimpleNamespace(tc_url="rtmp://h/live", stream_name=source.stream)
        self.consumer = None
        self.kicked = None

    def kick(self, reason):
        self.kicked = reason
        self.closed = True

    def close(self, reason):
        self.closed = True


def run_with_api(test, *, auth="off", crossdomain="on", shared=False):
    """Start an ApiServer on a real socket, run `test(api, base_url)`, stop it."""
    api_port = free_port()
    http_port = api_port if shared else free_port()
    config = load_text(CONFIG.format(api_port=api_port, http_port=http_port, auth=auth, crossdomain=crossdomain))
    worker = Worker(config, server_id="vid-srv", service_id="svc")

    async def main():
        sock = bind_listener("127.0.0.1", api_port)
        api = ApiServer(worker)
        if shared:
            await worker.serve({LISTENER_HTTP: [sock]})
            await api.start([])
        else:
            await api.start([sock])
        try:
            async with aiohttp.ClientSession() as session:
                await test(worker, api, session, f"http://127.0.0.1:{api_port}")
        finally:
            await api.stop()
            await worker.stop()
    asyncio.run(main())


async def get_json(session, url, **kw):
    async with session.get(url, **kw) as r:
        assert r.status == 200, (url, r.status)
        return await r.json(content_type=None)


def add_stream(worker, name="test", players=0):
    source = worker.registry.fetch_or_create("__defaultVhost__", "live", name, 0.0)
    publisher = FakeConn(f"pub-{name}", source, role="publish")
    source.publisher = publisher
    worker.conns[publisher.cid] = publisher
    for i in range(players):
        conn = FakeConn(f"play-{name}-{i:02d}", source)
        worker.conns[conn.cid] = conn
    return source


def test_every_path_answers_with_and_without_trailing_slash():
    async def test(worker, api, session, base):
        source = add_stream(worker)
        for path in ("/api/v1/versions", "/api/v1/summaries", "/api/v1/vhosts", "/api/v1/streams",
                     "/api/v1/clients", f"/api/v1/streams/{source.id}", "/api/v1/clients/pub-test", "/api/v1",
                     "/api"):
            for url in (base + path, base + path + "/"):
                async with session.get(url, allow_redirects=False) as r:
                    assert r.status == 200, url
                    body = await r.json()
                    assert body["code"] == 0 and body["server"] == "vid-srv" and body["service"] == "svc"
                    assert isinstance(body["pid"], str)
    run_with_api(test)


def test_lists_and_single_items_use_srs_keys():
    async def test(worker, api, session, base):
        source = add_stream(worker, players=2)
        streams = await get_json(session, base + "/api/v1/streams/")
        assert [s["id"] for s in streams["streams"]] == [source.id]
        assert streams["streams"][0]["clients"] == 3
        one = await get_json(session, base + f"/api/v1/streams/{source.id}")
        assert one["stream"]["id"] == source.id and one["stream"]["publish"] == {"active": True, "cid": "pub-test"}
        clients = await get_json(session, base + "/api/v1/clients/")
        assert {c["type"] for c in clients["clients"]} == {"fmle-publish", "rtmp-play"}
        vhosts = await get_json(session, base + "/api/v1/vhosts/")
        vhost = vhosts["vhosts"][0]
        assert vhost["name"] == "__defaultVhost__" and vhost["clients"] == 3 and vhost["streams"] == 1
        single = await get_json(session, base + f"/api/v1/vhosts/{vhost['id']}")
        assert single["vhost"] == vhost
        versions = await get_json(session, base + "/api/v1/versions")
        assert set(versions["data"]) == {"major", "minor", "revision", "version"}
        summaries = await get_json(session, base + "/api/v1/summaries")
        self_info = summaries["data"]["self"]
        for key in ("version", "pid", "ppid", "argv", "cwd", "mem_kbyte", "mem_percent", "cpu_percent",
                    "srs_uptime"):
            assert key in self_info, key
        assert self_info["generation"] == 1 and summaries["data"]["ok"] is True
        assert summaries["data"]["system"]["cpus"] >= 1
    run_with_api(test)


def test_unknown_ids_are_srs_error_codes_with_http_200():
    async def test(worker, api, session, base):
        assert await get_json(session, base + "/api/v1/streams/nope") == {"code": 2048}
        assert await get_json(session, base + "/api/v1/clients/nope") == {"code": 2049}
        assert await get_json(session, base + "/api/v1/vhosts/nope") == {"code": 2014}
        async with session.delete(base + "/api/v1/clients/nope") as r:
            assert r.status == 200 and await r.json() == {"code": 2049}
        async with session.get(base + "/api/v1/nothing") as r:
            assert r.status == 404
        async with session.put(base + "/api/v1/streams/") as r:
            assert r.status == 405
    run_with_api(test)


def test_paging_with_start_and_count_defaults_to_10():
    async def test(worker, api, session, base):
        add_stream(worker, players=14)
        everyone = sorted(worker.conns)
        first = await get_json(session, base + "/api/v1/clients/")
        assert [c["id"] for c in first["clients"]] == everyone[:10]
        rest = await get_json(session, base + "/api/v1/clients/?start=10&count=3")
        assert [c["id"] for c in rest["clients"]] == everyone[10:13]
        empty = await get_json(session, base + "/api/v1/streams/?start=5")
        assert empty["streams"] == []
    run_with_api(test)


def test_delete_kicks_the_client():
    async def test(worker, api, session, base):
        add_stream(worker, players=1)
        async with session.delete(base + "/api/v1/clients/play-test-00/") as r:
            body = await r.json()
        assert r.status == 200 and body["code"] == 0 and body["server"] == "vid-srv"
        assert "kicked by the HTTP API" in worker.conns["play-test-00"].kicked
    run_with_api(test)


def test_jsonp_wraps_the_answer_and_refuses_a_script_as_callback():
    async def test(worker, api, session, base):
        async with session.get(base + "/api/v1/versions?callback=cb.done") as r:
            text = await r.text()
            assert r.headers["Content-Type"].startswith("text/javascript")
        assert text.startswith("cb.done(") and text.endswith(")")
        assert json.loads(text[len("cb.done("):-1])["code"] == 0
        async with session.get(base + "/api/v1/versions", params={"callback": "alert(1)//"}) as r:
            assert r.status == 400
    run_with_api(test)


def test_auth_guards_api_paths_only():
    def header(user, password):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    async def test(worker, api, session, base):
        async with session.get(base + "/api/v1/versions") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        async with session.get(base + "/api/v1/versions", headers=header("admin", "wrong")) as r:
            assert r.status == 401
        async with session.delete(base + "/api/v1/clients/x", headers=header("admin", "wrong")) as r:
            assert r.status == 401
        async with session.get(base + "/api/v1/versions", headers=header("admin", "s3cret")) as r:
            assert r.status == 200
        for path in ("/metrics", "/healthz", "/readyz"):
            async with session.get(base + path) as r:
                assert r.status == 200, path
    run_with_api(test, auth="on")


def test_basic_auth_parsing():
    token = base64.b64encode(b"admin:pa:ss").decode()
    assert basic_auth_ok(f"Basic {token}", "admin", "pa:ss")
    assert basic_auth_ok(f"basic {token}", "admin", "pa:ss")
    assert not basic_auth_ok(f"Bearer {token}", "admin", "pa:ss")
    assert not basic_auth_ok("Basic !!!", "admin", "pa:ss")
    assert not basic_auth_ok("Basic " + base64.b64encode(b"nocolon").decode(), "nocolon", "")
    assert not basic_auth_ok("", "admin", "")
    assert is_api_path("/api") and is_api_path("/api/v1/streams") and not is_api_path("/apis")
    assert not is_api_path("/metrics")


def test_cors_headers_with_an_origin_and_preflight_without_credentials():
    async def test(worker, api, session, base):
        async with session.options(base + "/api/v1/clients/abc") as r:
            assert r.status == 200
        async with session.get(base + "/api/v1/versions", headers={"Origin": "https://console"}) as r:
            assert r.headers["Access-Control-Allow-Origin"] == "*"
        async with session.get(base + "/api/v1/versions") as r:
            assert "Access-Control-Allow-Origin" not in r.headers
    run_with_api(test, auth="on")


def test_options_is_refused_when_crossdomain_is_off():
    async def test(worker, api, session, base):
        async with session.options(base + "/api/v1/versions") as r:
            assert r.status == 405
        async with session.get(base + "/api/v1/versions", headers={"Origin": "https://x"}) as r:
            assert "Access-Control-Allow-Origin" not in r.headers
    run_with_api(test, crossdomain="off")


def test_readyz_follows_ready_and_draining_and_healthz_stays_up():
    async def test(worker, api, session, base):
        async with session.get(base + "/readyz") as r:
            assert r.status == 200
        worker.ready = False
        async with session.get(base + "/readyz") as r:
            assert r.status == 503 and "not ready" in await r.text()
        worker.ready, worker.draining = True, True
        async with session.get(base + "/readyz") as r:
            assert r.status == 503 and "draining" in await r.text()
        async with session.get(base + "/healthz") as r:
            assert r.status == 200
    run_with_api(test)


def test_api_on_the_http_server_port_answers_through_adopted_connections():
    async def test(worker, api, session, base):
        assert worker.api_app_for(LISTENER_HTTP) is api
        body = await get_json(session, base + "/api/v1/versions")
        assert body["code"] == 0
        async with session.get(base + "/metrics") as r:
            assert r.status == 200 and "nonstop_streams" in await r.text()
            # The adopted connection is closed after the answer: the next request may be an FLV play.
            assert r.headers.get("Connection", "").lower() == "close"
        async with session.get(base + "/live/none.flv") as r:
            assert r.status == 404
    run_with_api(test, shared=True)


def test_stop_unregisters_from_the_http_port():
    async def test(worker, api, session, base):
        await api.stop()
        assert worker.api_app_for(LISTENER_HTTP) is None
    run_with_api(test, shared=True)


def test_pipelined_requests_on_the_shared_port_get_one_clean_answer_then_close():
    async def test(worker, api, session, base):
        port = int(base.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        request = b"GET /api/v1/versions HTTP/1.1\r\nHost: x\r\n\r\n"
        writer.write(request + request.replace(b"versions", b"summaries"))
        answer = await asyncio.wait_for(reader.read(), 5)     # to EOF: the server closes after one answer
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200") and answer.count(b"HTTP/1.1 ") == 1
        assert b'"version":"' in answer
    run_with_api(test, shared=True)


def test_a_new_api_server_for_the_same_worker_keeps_its_rates_and_totals():
    worker = Worker(load_text(CONFIG.format(api_port=1985, http_port=8080, auth="off", crossdomain="on")))
    assert ApiServer(worker).stats is ApiServer(worker).stats
    other = Worker(worker.config)
    assert ApiServer(other).stats is not ApiServer(worker).stats
