"""The cluster's wire formats, byte for byte against srs-reference.md (§3 redirect, §4 clusters answer), so
SRS edges can use nonstop origins and nonstop edges SRS origins."""

from __future__ import annotations

import asyncio
import json
import struct
from types import SimpleNamespace

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from nonstop.cluster.answer import add_clusters_routes, build_clusters_answer, dumps
from nonstop.cluster.balance import OriginPool
from nonstop.cluster.coworkers import parse_answer
from nonstop.cluster.edge import EdgeIngester
from nonstop.config import load_text
from nonstop.media.registry import SourceRegistry
from nonstop.protocol import rtmp

# srs-reference.md §4, verbatim.
REFERENCE_ANSWER = (
    '{"code":0,"data":{"query":{"ip":"127.0.0.1","vhost":"__defaultVhost__","app":"live","stream":"livestream"},'
    '"origin":{"ip":"127.0.0.1","port":19350,"vhost":"__defaultVhost__","api":"127.0.0.1:9090",'
    '"routers":["127.0.0.1:9090"]}}}')
QUERY = {"vhost": "__defaultVhost__", "ip": "127.0.0.1", "app": "live", "stream": "livestream",
         "coworker": "127.0.0.1:9090"}


def origin_worker(listen: str = "19350", api: str = "127.0.0.1:9090", cluster: str = "origin_cluster on;",
                  extra: str = "", env: dict | None = None, published: bool = True):
    config = load_text(f"""
        listen {listen};
        http_api {{ enabled on; listen {api}; }}
        {extra}
        vhost __defaultVhost__ {{ cluster {{ {cluster} }} }}
        """, env=env or {})
    worker = SimpleNamespace(config=config, registry=SourceRegistry(), server_id="vid-origin1",
                             service_id="svc1")
    source = worker.registry.fetch_or_create("__defaultVhost__", "live", "livestream", 0.0)
    if published:
        source.publisher = SimpleNamespace(cid="pub1")
    return worker


def data_json(answer: dict) -> str:
    return dumps({"code": answer["code"], "data": answer["data"]})


def test_clusters_answer_matches_srs_reference_byte_for_byte():
    answer = build_clusters_answer(origin_worker(), QUERY)
    assert data_json(answer) == REFERENCE_ANSWER
    # The extra keys SRS edges ignore: who answered (a node recognises itself by it).
    assert (answer["server"], answer["service"]) == ("vid-origin1", "svc1") and answer["pid"].isdigit()


def test_clusters_answer_has_null_origin_when_the_stream_is_not_published_here():
    answer = build_clusters_answer(origin_worker(published=False), QUERY)
    assert data_json(answer) == REFERENCE_ANSWER.split('"origin":')[0] + '"origin":null}}'


def test_an_edge_pulled_copy_is_not_an_origin_stream():
    worker = origin_worker(cluster="mode remote; origin 10.0.0.9;")
    assert build_clusters_answer(worker, QUERY)["data"]["origin"] is None
    worker = origin_worker()
    source = worker.registry.get("__defaultVhost__", "live", "livestream")
    source.publisher = EdgeIngester(source, worker.config.vhosts["__defaultVhost__"], OriginPool(["a"], 1, 1),
                                    app="live", stream="livestream", query="", host="", chunk_size=60000, now=0.0)
    assert build_clusters_answer(worker, QUERY)["data"]["origin"] is None


def test_origin_ip_is_the_first_listen_host_unless_wildcard_or_loopback():
    assert build_clusters_answer(origin_worker(listen="10.1.2.3:19350"), QUERY)["data"]["origin"]["ip"] == "10.1.2.3"
    for listen in ("19350", "0.0.0.0:19350", "127.0.0.1:19350", "[::]:19350", "[::1]:19350"):
        query = dict(QUERY, coworker="origin-a.example:1985")
        assert build_clusters_answer(origin_worker(listen=listen), query)["data"]["origin"]["ip"] == "origin-a.example"


def test_api_puts_the_service_ip_before_a_bare_port_and_keeps_a_given_host():
    origin = build_clusters_answer(origin_worker(api="1985"), dict(QUERY, coworker="10.0.0.7:1985"))["data"]["origin"]
    assert origin["api"] == "10.0.0.7:1985" and origin["routers"] == ["10.0.0.7:1985"]
    origin = build_clusters_answer(origin_worker(api="10.0.0.8:1985"), QUERY)["data"]["origin"]
    assert origin["api"] == "10.0.0.8:1985"


def test_advertise_names_this_node_for_kubernetes_statefulsets_and_comes_from_the_environment():
    name = "origin-1.origin.live.svc.cluster.local"
    answer = build_clusters_answer(origin_worker(cluster=f"origin_cluster on; advertise {name};"), QUERY)
    assert answer["data"]["origin"]["ip"] == name and answer["data"]["origin"]["api"] == f"{name}:9090"
    worker = origin_worker(env={"NONSTOP_VHOST_CLUSTER_ADVERTISE": name})
    assert build_clusters_answer(worker, QUERY)["data"]["origin"]["ip"] == name


def test_origin_says_where_its_http_flv_is_as_an_extra_key():
    worker = origin_worker(extra="http_server { enabled on; listen 8080; }")
    origin = build_clusters_answer(worker, dict(QUERY, coworker="10.0.0.7:1985"))["data"]["origin"]
    assert origin["http"] == "10.0.0.7:8080"
    assert list(origin)[:5] == ["ip", "port", "vhost", "api", "routers"]


def test_an_unknown_vhost_is_looked_up_in_the_default_vhost_as_srs_does():
    answer = build_clusters_answer(origin_worker(), dict(QUERY, vhost="some.host"))
    assert answer["data"]["query"]["vhost"] == "some.host" and answer["data"]["origin"]["vhost"] == "__defaultVhost__"


def test_the_srs_reference_answer_parses_to_a_hit():
    hit, server = parse_answer(REFERENCE_ANSWER, "127.0.0.1:9090")
    assert (hit.ip, hit.port, hit.vhost, hit.http, server) == ("127.0.0.1", 19350, "__defaultVhost__", "", "")
    assert parse_answer(REFERENCE_ANSWER.split('"origin":')[0] + '"origin":null}}', "c")[0] is None


def test_answers_that_srs_would_refuse_are_refused():
    for bad in ('{"code":1,"data":{}}', '[]', '{"code":0,"data":{"origin":{"ip":"a","port":"1935"}}}',
                '{"code":0,"data":{"origin":{"ip":"","port":1935}}}', 'nonsense'):
        try:
            parse_answer(bad, "c")
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad!r}")


def test_clusters_endpoint_answers_get_and_post_alike():
    async def scenario():
        app = web.Application()
        add_clusters_routes(app, origin_worker())
        async with TestClient(TestServer(app)) as client:
            got = await (await client.get("/api/v1/clusters", params=QUERY)).text()
            posted = await client.post("/api/v1/clusters/", params=QUERY)
            assert posted.headers["Content-Type"].startswith("application/json")
            assert await posted.text() == got
            assert data_json(json.loads(got)) == REFERENCE_ANSWER
    asyncio.run(scenario())


# ----- the RTMP 302 -----------------------------------------------------------------------------------


def amf_string(text: str) -> bytes:
    raw = text.encode()
    return b"\x02" + struct.pack(">H", len(raw)) + raw


def amf_key(text: str) -> bytes:
    return struct.pack(">H", len(text)) + text.encode()


def amf_number(value: float) -> bytes:
    return b"\x00" + struct.pack(">d", value)


def test_redirect_message_matches_srs_reference_byte_for_byte():
    tc_url, url = "rtmp://10.0.0.1:1935/live", "rtmp://10.0.0.1:1935/live/livestream?token=abc"
    payload = (amf_string("onStatus") + amf_number(0) + b"\x05" + b"\x03"
               + amf_key("level") + amf_string("error")
               + amf_key("code") + amf_string("NetConnection.Connect.Rejected")
               + amf_key("description") + amf_string("RTMP 302 Redirect")
               + amf_key("ex") + b"\x03" + amf_key("code") + amf_number(302)
               + amf_key("redirect") + amf_string(tc_url) + amf_key("redirect2") + amf_string(url)
               + b"\x00\x00\x09" + b"\x00\x00\x09")
    # One type 0 chunk on chunk stream 5, message type 20 (AMF0 command), message stream 0, time 0.
    expected = bytes([0x05]) + b"\x00\x00\x00" + len(payload).to_bytes(3, "big") + b"\x14" + b"\x00" * 4 + payload
    session = rtmp.RtmpSession(rtmp.SERVER)
    session.set_out_chunk_size(60000)
    session.data_to_send()
    session.send_redirect(1, tc_url, url)
    assert session.data_to_send() == expected


def test_a_client_follows_redirect2_else_redirect():
    def rejected(ex: dict):
        server = rtmp.RtmpSession(rtmp.SERVER)
        server.set_out_chunk_size(60000)
        server.data_to_send()
        server._send_command(rtmp.CSID_STREAM, 0, "onStatus", 0.0, None,
                             {"level": "error", "code": "NetConnection.Connect.Rejected",
                              "description": "RTMP 302 Redirect", "ex": ex})
        client = rtmp.RtmpSession.restore({**rtmp.RtmpSession(rtmp.CLIENT).snapshot(), "state": rtmp.CONNECTED,
                                           "handshake": None})
        client.reader.chunk_size = 60000
        return [e for e in client.receive_data(server.data_to_send()) if isinstance(e, rtmp.ConnectRejected)][0]
    assert rejected({"code": 302.0, "redirect": "rtmp://a/live", "redirect2": "rtmp://b/live/s"}).redirect \
        == "rtmp://b/live/s"
    assert rejected({"code": 302.0, "redirect": "rtmp://a/live"}).redirect == "rtmp://a/live"
