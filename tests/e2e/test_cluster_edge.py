"""Edges, as real processes with real clients, each node in its own network namespace.

- Failover: origins A and B are coworkers, edge E knows both. ffmpeg publishes to A, 5 players play from E.
  A is killed with SIGKILL and ffmpeg starts publishing the same stream to B. The players stay connected and
  get frames again (goal 5 s), starting with a keyframe or sequence headers, on a timeline that goes on.
- Sharing: 100 players on E make exactly 1 upstream connection, as A's /api/v1/clients/ and its sockets show.
- Edge cleanup: after the players leave, E holds no source and no upstream connection.
- Edge push failover: ffmpeg publishes to E, which forwards to A. A is killed: the publisher stays connected,
  the stream goes on at B, and a player on B decodes it.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from tests.e2e.test_cluster_harness import (  # noqa: F401  (net is a fixture)
    HEADER, KEY, Node, Player, edge_body, net, origin_body, start_nodes, stop_nodes, until,
)
from tests.helpers import assert_frames_match_timestamps, play, publish_file, stop_proc, wait_for

pytestmark = pytest.mark.timeout(150)

# Goals; the tests allow 3x (the measured value is printed).
FAILOVER_GOAL_S = 5.0           # players get frames again, from B's publisher start
PUSH_FAILOVER_GOAL_S = 3.0      # the edge's stream is live at B after A died
CLEANUP_GOAL_S = 6.0            # linger 1 s + sweep 1 s + source freed after 3 s idle + sweep 1 s
PLAYERS_FAILOVER = 5
PLAYERS_SHARING = 100


def live_on(node: Node, name: str) -> bool:
    try:
        return any(s["name"] == name and s["publish"]["active"] for s in node.streams())
    except OSError:
        return False


def failover_gap(player: Player, after: float) -> tuple[float, float, tuple]:
    """(last message before, first message after) the longest silence since `after`, and that message."""
    times = [v for v in player.videos if v[0] >= after - 1.0]
    best = max(range(1, len(times)), key=lambda i: times[i][0] - times[i - 1][0])
    return times[best - 1][0], times[best][0], times[best]


def test_edge_players_stay_connected_while_the_origin_is_killed_and_the_stream_moves(net, test_flv):  # noqa: F811
    a, b = Node(net, "a"), Node(net, "b")
    a.body = b.body = origin_body(a, b)
    e = Node(net, "e", body=edge_body(a, b))
    nodes = start_nodes(a, b, e)
    publishers = [publish_file(a.url(), test_flv)]

    async def scenario():
        players = [await Player(e).start() for _ in range(PLAYERS_FAILOVER)]
        await until(lambda: all(len(p.videos) >= 50 for p in players), 20, "2 s of frames on every player")
        killed_at = time.monotonic()
        a.kill()
        publishers.append(publish_file(b.url(), test_flv))
        publish_at = time.monotonic()
        print(f"A killed; publishing to B {publish_at - killed_at:.2f}s later")
        await until(lambda: all(p.frames_after(publish_at + 0.5) and len(p.frames_after(publish_at)) >= 50
                                for p in players), 3 * FAILOVER_GOAL_S + 5, "frames again on every player")
        worst = 0.0
        for i, player in enumerate(players):
            last, resumed, first = failover_gap(player, killed_at)
            worst = max(worst, resumed - publish_at)
            print(f"player {i}: silent {resumed - last:.2f}s, frames again {resumed - publish_at:.2f}s after the "
                  f"publish to B started (goal {FAILOVER_GOAL_S}s), first message: {first[1]}")
            assert not player.closed, player.closed
            assert first[1] in (HEADER, KEY), "an inter frame without its keyframe after the failover"
            stamps = [v[2] for v in player.videos]
            assert stamps == sorted(stamps), "the timeline went backwards"
        print(f"worst: frames again {worst:.2f}s after the publish to B started")
        assert worst <= 3 * FAILOVER_GOAL_S
        for player in players:
            await player.close()

    try:
        wait_for(lambda: live_on(a, "livestream"), 15, what="the stream on A")
        asyncio.run(asyncio.wait_for(scenario(), 100))
        log = e.log()
        assert "edge change from 100 to state 101 (pull)." in log
        assert f"playing from {b.rtmp_addr}" in log
    finally:
        for publisher in publishers:
            stop_proc(publisher)
        stop_nodes(nodes)


def test_an_edge_publisher_stays_connected_when_its_origin_dies_and_the_stream_goes_on_at_b(net, test_flv):  # noqa
    a, b = Node(net, "a"), Node(net, "b")
    a.body = b.body = origin_body(a, b)
    e = Node(net, "e", body=edge_body(a, b))
    nodes = start_nodes(a, b, e)
    publisher = publish_file(e.url("pushed?token=push-1"), test_flv)
    try:
        wait_for(lambda: live_on(a, "pushed"), 15, what="the pushed stream on A")
        assert "query=token=push-1" in a.log()
        killed_at = time.monotonic()
        a.kill()
        wait_for(lambda: live_on(b, "pushed"), 3 * PUSH_FAILOVER_GOAL_S, interval=0.05, what="the stream at B")
        moved = time.monotonic() - killed_at
        print(f"edge push: live at B {moved:.2f}s after A was killed (goal {PUSH_FAILOVER_GOAL_S}s)")
        result = play(b.url("pushed"), 3)
        print(f"player on B: {len(result.video)} frames")
        assert result.returncode == 0, result.stderr[-2000:]
        assert_frames_match_timestamps(result)
        assert publisher.poll() is None, "the publisher was dropped"
        log = e.log()
        assert "edge change from 0 to state 200 (push)." in log
        assert f"publishing to {b.rtmp_addr}" in log
        assert "unpublish" not in log and "close ip=" not in log.split("edge push")[-1]
        assert "query=token=push-1" in b.log()
    finally:
        stop_proc(publisher)
        stop_nodes(nodes)


@pytest.fixture(scope="class")
def origin_and_edge(net, test_flv):  # noqa: F811
    a = Node(net, "a")
    e = Node(net, "e", body=edge_body(a, extra="linger 1000;"))
    nodes = start_nodes(a, e)
    publishers = [publish_file(a.url(name), test_flv) for name in ("shared", "cleanup")]
    try:
        wait_for(lambda: live_on(a, "shared") and live_on(a, "cleanup"), 15, what="the streams on A")
        yield SimpleNamespace(a=a, e=e, net=net)
    finally:
        for publisher in publishers:
            stop_proc(publisher)
        stop_nodes(nodes)


def upstream_clients(a: Node, name: str) -> list[dict]:
    return [c for c in a.clients() if c["type"] == "rtmp-play" and c["name"] == name]


class TestOneOriginOneEdge:
    """A and E (linger 1000 ms) are shared by these two tests, and stopped after them."""

    def test_a_hundred_players_on_the_edge_make_one_upstream_connection(self, origin_and_edge):
        a, e, network = origin_and_edge.a, origin_and_edge.e, origin_and_edge.net

        async def scenario():
            started = time.monotonic()
            players = await asyncio.gather(*(Player(e, "shared").start() for _ in range(PLAYERS_SHARING)))
            took = await until(lambda: all(p.videos for p in players), 30, "frames on every player")
            print(f"{PLAYERS_SHARING} players playing from E, all with frames {time.monotonic() - started:.2f}s "
                  f"after the first connect ({took:.2f}s after the last Play.Start)")
            clients = await asyncio.to_thread(upstream_clients, a, "shared")
            print(f"A's /api/v1/clients/ for the stream: {[(c['ip'], c['type']) for c in clients]}")
            assert len(clients) == 1
            if network.mode == "netns":
                assert clients[0]["ip"] == e.ip
                peers = await asyncio.to_thread(network.peers, "a", a.rtmp_port)
                print(f"A's established RTMP connections: {peers}")
                assert peers.count(e.ip) == 1
            for player in players:
                await player.close()

        asyncio.run(asyncio.wait_for(scenario(), 100))


    def test_after_the_players_leave_the_edge_holds_no_source_and_no_upstream(self, origin_and_edge):
        a, e, network = origin_and_edge.a, origin_and_edge.e, origin_and_edge.net

        async def scenario():
            players = [await Player(e, "cleanup").start() for _ in range(3)]
            flv = asyncio.create_task(asyncio.to_thread(play, e.flv_url("cleanup"), 2))
            await until(lambda: all(len(p.videos) >= 25 for p in players), 20, "frames on every player")
            assert_frames_match_timestamps(await flv)
            assert len(await asyncio.to_thread(upstream_clients, a, "cleanup")) == 1
            for player in players:
                await player.close()
            return time.monotonic()

        left_at = asyncio.run(asyncio.wait_for(scenario(), 60))

        def clean() -> bool:
            no_source = not any(s["name"] == "cleanup" for s in e.streams())
            no_upstream = not upstream_clients(a, "cleanup")
            no_socket = network.mode != "netns" or e.ip not in network.peers("a", a.rtmp_port)
            return no_source and no_upstream and no_socket
        # The sharing test's stream goes too (its players left before): the edge ends with nothing at all.
        wait_for(clean, 3 * CLEANUP_GOAL_S, interval=0.1, what="the edge to let go of the stream")
        took = time.monotonic() - left_at
        print(f"edge clean {took:.2f}s after the last player left (goal {CLEANUP_GOAL_S}s with linger 1000 ms)")
        wait_for(lambda: not e.streams() and not any(c["type"] == "rtmp-play" for c in a.clients()),
                 3 * CLEANUP_GOAL_S, interval=0.1, what="no source and no upstream at all")
        log = e.log()
        assert "edge change from 101 to 300 then 0 (init)." in log
        assert "free source __defaultVhost__/live/cleanup (idle)" in log
