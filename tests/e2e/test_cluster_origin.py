"""An origin cluster and an edge, as real processes with real clients, each node in its own network
namespace: origins A and B are coworkers (each lists both, itself included), edge E knows only B.

- Redirect: ffmpeg publishes to A; ffmpeg plays from E over RTMP and HTTP-FLV and decodes frames; the logs
  show B redirecting to A, and B recognising itself in its coworker list by its server id.
- Formats: `/api/v1/clusters` and the RTMP 302 field by field against srs-reference.md; a second publish on B
  of a stream live on A is refused; HTTP-FLV on B gets a 302 to A, an absent stream StreamNotFound / 404.
- Tokens: a player's query string arrives at the origin, through the edge and the redirect.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import time
import urllib.parse
from types import SimpleNamespace

import pytest

from nonstop.protocol import rtmp
from tests.e2e.test_cluster_harness import Node, net, origin_body, edge_body, start_nodes, stop_nodes  # noqa: F401
from tests.helpers import (
    assert_frames_match_timestamps, parse_framecrc, play, publish_file, start_player, stop_proc, wait_for,
)
from tests.rtmp_client import RtmpTestClient

pytestmark = pytest.mark.timeout(120)

# Goals; the tests allow 3x (the measured value is printed).
PLAY_START_GOAL_S = 3.0          # from an edge, through a redirect: coworker query + two connects + GOP


def published(node: Node, name: str) -> bool:
    return any(s["name"] == name and s["publish"]["active"] for s in node.streams())


@pytest.fixture(scope="module")
def cluster(net, test_flv):  # noqa: F811
    a, b = Node(net, "a"), Node(net, "b")
    a.body = b.body = origin_body(a, b)
    e = Node(net, "e", body=edge_body(b))
    nodes = start_nodes(a, b, e)
    publisher = publish_file(a.url("livestream"), test_flv)
    try:
        wait_for(lambda: published(a, "livestream"), 15, what="the stream on A")
        yield SimpleNamespace(a=a, b=b, e=e, net=net)
    finally:
        stop_proc(publisher)
        stop_nodes(nodes)


def timed_play(url: str, seconds: float):
    """ffmpeg plays and decodes `seconds` of media; returns the result and the time to its first frame."""
    started = time.monotonic()
    proc = start_player(url, seconds)
    lines, first = [], float("inf")
    for line in proc.stdout:            # bounded by ffmpeg's -t and the test's timeout
        if first == float("inf") and line.strip() and not line.startswith("#"):
            first = time.monotonic() - started
        lines.append(line)
    err = proc.stderr.read()
    proc.wait(20)
    return parse_framecrc(proc.returncode, "".join(lines), err), first


def test_edge_knowing_only_b_plays_a_stream_published_on_a_through_b_redirect(cluster):
    a, b, e = cluster.a, cluster.b, cluster.e
    result, startup = timed_play(e.url("livestream"), 3)
    print(f"RTMP play from E via B's redirect to A: {len(result.video)} frames, first frame after {startup:.2f}s "
          f"(goal {PLAY_START_GOAL_S}s)")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_frames_match_timestamps(result)
    assert startup <= 3 * PLAY_START_GOAL_S
    result, startup = timed_play(e.flv_url("livestream"), 3)
    print(f"HTTP-FLV play from E (joins the same pull): {len(result.video)} frames, first frame after "
          f"{startup:.2f}s")
    assert result.returncode == 0, result.stderr[-2000:]
    assert_frames_match_timestamps(result)
    b_log, e_log = b.log(), e.log()
    assert re.search(rf"rtmp: redirect in cluster, from=\S+, target={re.escape(a.rtmp_addr)}, coworker="
                     rf"{re.escape(a.api_addr)}, rurl=rtmp://{re.escape(a.rtmp_addr)}/live/livestream", b_log), b_log
    assert f"coworker {b.api_addr} is this server" in b_log
    assert "edge change from 100 to state 101 (pull)." in e_log
    assert f"redirects to rtmp://{a.rtmp_addr}/live/livestream" in e_log
    assert f"playing from {a.rtmp_addr}" in e_log


def clusters_query(node: Node, coworker: Node, stream: str = "livestream") -> str:
    return "/api/v1/clusters?" + urllib.parse.urlencode(
        {"vhost": "__defaultVhost__", "ip": node.ip, "app": "live", "stream": stream, "coworker": coworker.api_addr})


def test_clusters_answer_and_redirect_match_srs_reference_field_by_field(cluster):
    a, b = cluster.a, cluster.b
    got = a.api(clusters_query(a, a))
    assert a.api(clusters_query(a, a), method="POST") == got
    assert list(got)[:2] == ["code", "data"] and got["code"] == 0
    assert list(got["data"]) == ["query", "origin"]
    assert list(got["data"]["query"].items()) == [("ip", a.ip), ("vhost", "__defaultVhost__"), ("app", "live"),
                                                  ("stream", "livestream")]
    origin = got["data"]["origin"]
    assert list(origin)[:5] == ["ip", "port", "vhost", "api", "routers"]
    assert (origin["ip"], origin["port"], origin["vhost"], origin["api"], origin["routers"]) == \
        (a.ip, a.rtmp_port, "__defaultVhost__", a.api_addr, [a.api_addr])
    assert type(origin["port"]) is int
    assert b.api(clusters_query(b, b))["data"]["origin"] is None
    print(f"clusters answer from A: {got}")

    async def rtmp_checks():
        client = await RtmpTestClient().open(b.rtmp_port, host=b.ip)
        await client.create_stream()
        client.session.play(client.stream_id, "livestream?token=abc")
        client._flush()
        rejected = await client.wait_for(lambda ev: isinstance(ev, rtmp.ConnectRejected))
        info = rejected.info
        assert list(info) == ["level", "code", "description", "ex"]
        assert (info["level"], info["code"], info["description"]) == \
            ("error", "NetConnection.Connect.Rejected", "RTMP 302 Redirect")
        assert list(info["ex"].items()) == [("code", 302.0), ("redirect", f"rtmp://{a.rtmp_addr}/live"),
                                            ("redirect2", f"rtmp://{a.rtmp_addr}/live/livestream?token=abc")]
        await client.close()
        # A second publish of the live stream, on B, is refused: SRS accepts both.
        client = await RtmpTestClient().open(b.rtmp_port, host=b.ip)
        status = await client.publish("livestream")
        assert (status.level, status.code) == ("error", "NetStream.Publish.BadName")
        await client.close()
        # A stream no origin has: StreamNotFound, then the connection closes.
        client = await RtmpTestClient().open(b.rtmp_port, host=b.ip)
        await client.create_stream()
        client.session.play(client.stream_id, "nobody-publishes-this")
        client._flush()
        status = await client.wait_for(lambda ev: isinstance(ev, rtmp.Status))
        assert status.code == "NetStream.Play.StreamNotFound"
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            await client.wait_for(lambda ev: False, timeout=5)
        print(f"StreamNotFound connection closed after {time.monotonic() - started:.2f}s")
        await client.close()
    asyncio.run(asyncio.wait_for(rtmp_checks(), 30))

    def flv_get(node: Node, path: str):
        conn = http.client.HTTPConnection(node.ip, node.http_port, timeout=10)
        conn.request("GET", path)
        response = conn.getresponse()
        conn.close()
        return response.status, response.getheader("Location")
    assert flv_get(b, "/live/livestream.flv?token=x") == \
        (302, f"http://{a.ip}:{a.http_port}/live/livestream.flv?token=x")
    assert flv_get(b, "/live/nobody-publishes-this.flv")[0] == 404


def test_a_players_token_arrives_at_the_origin_through_edge_and_redirect(cluster, test_flv):
    a, e = cluster.a, cluster.e
    publishers = [publish_file(a.url(name), test_flv) for name in ("tok-rtmp", "tok-flv")]
    try:
        wait_for(lambda: published(a, "tok-rtmp") and published(a, "tok-flv"), 15, what="the token streams on A")
        assert play(e.url("tok-rtmp?token=secret-rtmp-1"), 1).video
        assert play(e.flv_url("tok-flv") + "?token=secret-flv-2", 1).video
    finally:
        for publisher in publishers:
            stop_proc(publisher)
    a_log = a.log()
    for stream, token in (("tok-rtmp", "secret-rtmp-1"), ("tok-flv", "secret-flv-2")):
        line = next((ln for ln in a_log.splitlines() if f"play __defaultVhost__/live/{stream}," in ln
                     and f"query=token={token}" in ln), None)
        assert line, f"no play of {stream} with its token on A:\n{a_log[-3000:]}"
        cid = re.search(r"\]\[(\w+)\] play", line).group(1)
        connect = next(ln for ln in a_log.splitlines() if f"[{cid}] connect ip=" in ln)
        if cluster.net.mode == "netns":
            assert f"connect ip={e.ip}," in connect      # the edge's own upstream connection carried it
        print(f"A: {line.split('] ', 1)[1]}")
