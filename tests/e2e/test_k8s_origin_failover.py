"""Origin failover with the built manifests: origin pods nonstop-origin-0 and -1 (the StatefulSet's config and
env, their DNS names resolved as the headless Service would) and an edge pod (the edge Deployment's config),
each in its own network namespace. ffmpeg publishes to origin-0, players play from the edge; origin-0 is
SIGKILLed (a node lost), the publisher starts again at origin-1, and the edge's players get the stream again
on the same connection, starting with a keyframe or sequence headers, on a timeline that goes on.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import pytest

from tests.e2e.k8s_manifests import built, pod_spec
from tests.e2e.k8s_rollout import Kubelet, Pod, remove_hosts, write_hosts
from tests.e2e.test_cluster_harness import HEADER, KEY, Net, Player, until
from tests.helpers import publish_file, stop_proc

OVERLAY = "overlays/stable"
PLAYERS = 5
# What the edge had from origin-0 reaches its players up to mw_latency (350 ms, merged writes) after the kill.
IN_FLIGHT_S = 0.6
FAILOVER_GOAL_S = 5.0           # frames again on every edge player, from the publish to origin-1; asserted x3

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def failover_net():
    network = Net(("o0", "o1", "e1"))
    network.setup()
    print(f"\norigin failover: {network.mode} mode, " + ", ".join(f"{n}={ip}" for n, ip in network.ips.items())
          + ("" if network.mode == "netns" else " (NO network namespaces: pods share one, on 127.0.0.x)"))
    try:
        yield network
    finally:
        network.teardown()


def test_edge_players_keep_their_connection_while_an_origin_pod_is_killed_and_the_publisher_moves(
        failover_net, test_flv):
    net = failover_net
    docs = built(OVERLAY)
    origin_spec, edge_spec = pod_spec(docs, "StatefulSet", "nonstop-origin"), pod_spec(docs, "Deployment",
                                                                                       "nonstop-edge")
    origins = [Pod(net, f"o{i}", f"nonstop-origin-{i}", origin_spec, 1.0)
               for i in range(2)]
    edge = Pod(net, "e1", "nonstop-edge-0", edge_spec, 1.0)
    service_name = origin_spec.workload["spec"]["serviceName"]
    hosts = []
    if net.mode == "netns":
        hosts = write_hosts(net, {f"{o.name}.{service_name}": o.ip for o in origins})
    else:
        for o in origins:
            o.extra_env |= {"NONSTOP_VHOST_CLUSTER_ADVERTISE": o.ip, "NONSTOP_VHOST_CLUSTER_COWORKERS":
                            " ".join(f"{x.ip}:{x.ports['api']}" for x in origins)}
        edge.extra_env = {"NONSTOP_VHOST_CLUSTER_ORIGIN": " ".join(o.rtmp_addr for o in origins)}
    kubelet = Kubelet(net, None, 1.0)
    publishers = []
    try:
        for pod in (*origins, edge):
            kubelet.start(pod)
        for pod in (*origins, edge):
            kubelet.wait_ready(pod, 30)
        publishers.append(publish_file(origins[0].url(), test_flv))
        target = SimpleNamespace(ip=edge.ip, rtmp_port=edge.ports["rtmp"])

        async def scenario():
            players = [await Player(target).start() for _ in range(PLAYERS)]
            await until(lambda: all(len(p.videos) >= 50 for p in players), 30, "2 s of frames on every player")
            killed_at = time.monotonic()
            origins[0].kill()
            publishers.append(publish_file(origins[1].url(), test_flv))
            publish_at = time.monotonic()
            print(f"nonstop-origin-0 SIGKILLed; publishing to nonstop-origin-1 {publish_at - killed_at:.2f}s later")
            await until(lambda: all(len(p.frames_after(publish_at + 0.5)) >= 25 for p in players),
                        3 * FAILOVER_GOAL_S + 5, "frames again on every player")
            worst = 0.0
            for i, player in enumerate(players):
                # Data in flight from origin-0 arrives within IN_FLIGHT_S of the kill; the edge's retry and ffmpeg's
                # start take longer (about 1 s), so what comes after is the new upstream session.
                after = player.frames_after(killed_at + IN_FLIGHT_S)
                first = after[0]
                before = [v for v in player.videos if v[0] < first[0]]
                silent = first[0] - before[-1][0]
                resumed = first[0] - publish_at
                worst = max(worst, resumed)
                print(f"player {i}: silent {silent:.2f}s, frames again {resumed:.2f}s after the publish to "
                      f"nonstop-origin-1 (goal {FAILOVER_GOAL_S}s), first message {first[1]}")
                assert first[1] in (HEADER, KEY), "an inter frame without its keyframe after the failover"
                assert not player.closed, player.closed
                stamps = [v[2] for v in player.videos]
                assert stamps == sorted(stamps), "the timeline went backwards"
            print(f"worst: frames again {worst:.2f}s after the publish to nonstop-origin-1")
            assert worst <= 3 * FAILOVER_GOAL_S
            for player in players:
                await player.close()

        asyncio.run(asyncio.wait_for(scenario(), 110))
        log = edge.log()
        assert "edge change from 100 to state 101 (pull)." in log
        assert f"playing from nonstop-origin-1.{service_name}:1935" in log or net.mode != "netns", log[-3000:]
    finally:
        for publisher in publishers:
            stop_proc(publisher)
        for pod in (*origins, edge):
            pod.probing = False
            pod.cleanup()
        remove_hosts(hosts)
