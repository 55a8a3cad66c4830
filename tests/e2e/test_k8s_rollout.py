"""A rolling update of the edge Deployment, played on this machine from the built manifests (k8s_rollout.py).

Origins nonstop-origin-0 and -1 (StatefulSet pods) run as coworkers; ffmpeg publishes to -0. Two edge pods of
the old ReplicaSet serve, behind HAProxy playing the LoadBalancer Service, one ffmpeg player and 50 players of
`nonstop bench --reconnect`; a prober opens new connections through the Service all along, each one an RTMP
connect and play to the first video frame. Then the Deployment controller replaces both edges, pod by pod.

Required: every new connection through the Service plays; the players on an old pod keep playing until its
drain ends (grace_start_wait + grace_max_wait after its preStop); the bench players then reconnect to a new pod
(gaps measured); no liveness failure; no pod SIGKILLed. `make test` runs it with every duration scaled by 0.1;
`make test-long` runs it at full length.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest

from nonstop.protocol import rtmp
from tests.e2e.k8s_manifests import built, find, pod_spec
from tests.e2e.k8s_rollout import (
    ENDPOINT_PROPAGATION_S, Kubelet, Pod, Service, remove_hosts, write_hosts,
)
from tests.e2e.test_cluster_harness import Net
from tests.helpers import ROOT, publish_file, stop_proc, wait_for
from tests.rtmp_client import RtmpTestClient

OVERLAY = "overlays/stable"
NODES = ("o0", "o1", "p1", "p2", "p3", "p4")
BENCH_PLAYERS = 50
# Goals; asserted with 3x (the measured values are printed).
RECONNECT_GAP_GOAL_S = 1.5      # a bench player's last frame on the old pod to its first on a new one
KEEP_MARGIN_S = 0.5             # players must stay until this close to the drain bound (polling, clocks)
PROBE_INTERVAL_S = 0.1


@pytest.fixture(scope="module")
def pod_net():
    network = Net(NODES)
    network.setup()
    print(f"\nrollout simulation: {network.mode} mode, " + ", ".join(f"{n}={ip}" for n, ip in network.ips.items())
          + ("" if network.mode == "netns" else " (NO network namespaces: pods share one, on 127.0.0.x)"))
    try:
        yield network
    finally:
        network.teardown()


class Prober:
    """New connections through the Service, one after another: RTMP connect, play, first video frame."""

    def __init__(self, port: int):
        self.port = port
        self.ok = 0
        self.failures: list[str] = []
        self.worst = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _attempt(self) -> None:
        client = RtmpTestClient()
        started = time.monotonic()
        try:
            await asyncio.wait_for(client.open(self.port), 5)
            await asyncio.wait_for(client.play("livestream"), 5)
            await client.wait_for(lambda e: isinstance(e, rtmp.Media) and e.type_id == rtmp.MSG_VIDEO, 5)
            self.ok += 1
            self.worst = max(self.worst, time.monotonic() - started)
        except Exception as e:      # noqa: BLE001  (every failure counts, whatever its kind)
            self.failures.append(f"{time.strftime('%H:%M:%S')} {type(e).__name__}: {e}")
        finally:
            await client.close()

    async def _run(self) -> None:
        while not self.stop.is_set():
            await self._attempt()
            await asyncio.sleep(PROBE_INTERVAL_S)


class PlayerWatch:
    """The sessions through the Service to the old pods, every 0.1 s: (time, pod name, sessions)."""

    def __init__(self, pods: list[Pod], service: Service):
        self.pods, self.service = pods, service
        self.samples: list[tuple[float, str, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            sessions = self.service.sessions()
            now = time.monotonic()
            self.samples += [(now, pod.name, sessions[pod.name]) for pod in self.pods]
            time.sleep(0.1)

    def between(self, pod: Pod, start: float, end: float) -> list[int]:
        return [n for t, name, n in self.samples if name == pod.name and start <= t <= end]


def ffmpeg_player(url: str) -> tuple[subprocess.Popen, list[float]]:
    """ffmpeg playing through the Service; the arrival times of its video frames (framecrc lines)."""
    proc = subprocess.Popen(["ffmpeg", "-v", "error", "-i", url, "-map", "0:v", "-c", "copy", "-flush_packets", "1",
                             "-f", "framecrc", "-"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    times: list[float] = []

    def read():
        for line in proc.stdout:
            if line and not line.startswith("#"):
                times.append(time.monotonic())
    threading.Thread(target=read, daemon=True).start()
    return proc, times


def run_rollout(net: Net, test_flv, scale: float) -> dict:
    docs = built(OVERLAY)
    origin_spec = pod_spec(docs, "StatefulSet", "nonstop-origin")
    edge_spec = pod_spec(docs, "Deployment", "nonstop-edge")
    edges = find(docs, "Deployment", "nonstop-edge")
    assert edges["spec"]["replicas"] == 2
    origins = [Pod(net, f"o{i}", f"nonstop-origin-{i}", origin_spec, scale)
               for i in range(2)]
    old = [Pod(net, f"p{i + 1}", f"nonstop-edge-old-{i + 1}", edge_spec, scale) for i in range(2)]
    new = [Pod(net, f"p{i + 3}", f"nonstop-edge-new-{i + 1}", edge_spec, scale) for i in range(2)]
    service_name = origin_spec.workload["spec"]["serviceName"]
    dns = {f"{o.name}.{service_name}": o.ip for o in origins}
    hosts = []
    if net.mode == "netns":
        hosts = write_hosts(net, dns)
    else:
        print("no network namespaces: origins, coworkers and advertise given as environment overrides")
        for o in origins:
            o.extra_env |= {"NONSTOP_VHOST_CLUSTER_ADVERTISE": o.ip, "NONSTOP_VHOST_CLUSTER_COWORKERS":
                           " ".join(f"{x.ip}:{x.ports['api']}" for x in origins)}
        for e in old + new:
            e.extra_env = {"NONSTOP_VHOST_CLUSTER_ORIGIN": " ".join(o.rtmp_addr for o in origins)}
    readiness = edge_spec.probe("readinessProbe")
    service = Service(old + new, readiness.get("periodSeconds", 10) * scale, readiness.get("timeoutSeconds", 1))
    origin_kubelet, kubelet = Kubelet(net, None, scale), Kubelet(net, service, scale)
    publisher = player = bench = None
    prober = watch = None
    try:
        for o in origins:
            origin_kubelet.start(o)
        for o in origins:
            origin_kubelet.wait_ready(o, 30)
        publisher = publish_file(origins[0].url(), test_flv)
        for e in old:
            kubelet.start(e)
        for e in old:
            kubelet.wait_ready(e, 30)
        wait_for(lambda: service.up() == {e.name for e in old}, 10,
                 what=f"the Service's endpoints: {service.command('show stat')}")

        player, frames = ffmpeg_player(service.url())
        wait_for(lambda: len(frames) >= 25 or player.poll() is not None, 30, what="the ffmpeg player's frames")
        assert player.poll() is None, player.stderr.read()
        player_pod = wait_for(lambda: next((e for e in old if service.sessions()[e.name] == 1), None), 10,
                              what="the ffmpeg player's pod")
        print(f"the ffmpeg player plays from {player_pod.name}")

        rollout_s = 2 * (5 + edges["spec"].get("minReadySeconds", 0) * scale) + edge_spec.grace_period * scale
        duration = round(rollout_s + 10)
        bench = subprocess.Popen([sys.executable, "-m", "nonstop.cli", "bench", service.url(),
                                  "--players", str(BENCH_PLAYERS), "--reconnect", "--json", "--warmup", "1",
                                  "--duration", str(duration), "--stall-threshold", "1", "--rcvlowat", "0"],
                                 cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: sum(service.sessions().values()) >= BENCH_PLAYERS + 1 or bench.poll() is not None, 30,
                 what="the bench players on the old pods")
        counts = service.sessions()
        print(f"sessions through the Service before the rollout: {counts}; players by the pods' API: "
              f"{ {e.name: e.players() for e in old} }")
        prober, watch = Prober(service.port), PlayerWatch(old, service)
        prober.thread.start()
        watch.thread.start()
        wait_for(lambda: prober.ok >= 3 or prober.failures, 20, what="the prober's first plays")

        rollout_started = time.monotonic()
        kubelet.rolling_update(old, new, edges)
        kubelet.join(edge_spec.grace_period * scale + 30)
        rollout_s = time.monotonic() - rollout_started
        wait_for(lambda: sum(service.sessions()[e.name] for e in new) >= BENCH_PLAYERS,
                 3 * RECONNECT_GAP_GOAL_S + 10, what="the bench players on the new pods")
        api_vs_service = {e.name: (e.players(), service.sessions()[e.name]) for e in new}
        print(f"players on the new pods, by their API and by the Service's sessions: {api_vs_service}")
        time.sleep(3 * PROBE_INTERVAL_S)        # a few more probes on the new pods alone
        prober.stop.set()
        watch.stop.set()
        prober.thread.join(15)
        watch.thread.join(5)
        out, err = bench.communicate(timeout=duration + 60)
        assert bench.returncode == 0, err[-3000:]
        report = json.loads(out)

        grace = edge_spec.grace_settings_ms()
        drain_s = (grace["grace_start_wait"] + grace["grace_max_wait"]) / 1000 * scale
        kept = {}
        for e in old:
            bound = e.grace_sent_at + drain_s
            seen = watch.between(e, e.deleted_at, bound - KEEP_MARGIN_S)
            kept[e.name] = (counts[e.name], min(seen, default=None), len(seen))
        player_end = player.poll()
        player_ended_at = frames[-1] if frames else None
        figures = {
            "mode": net.mode, "scale": scale, "rollout_s": round(rollout_s, 2),
            "grace_period_s": edge_spec.grace_period * scale, "drain_bound_s": round(drain_s, 2),
            "pods": {e.name: {"exit": e.proc.returncode, "killed": e.killed,
                              "terminated_s": round(e.exited_at - e.deleted_at, 2),
                              "liveness_failures": e.liveness_failures} for e in old + new if e.exited_at},
            "new_pod_liveness_failures": sum(e.liveness_failures for e in new),
            "probes": {"ok": prober.ok, "failed": len(prober.failures), "worst_s": round(prober.worst, 2)},
            "bench": {"attempts": report["connections"]["attempts"], "failed": report["connections"]["failed"],
                      "failed_by_kind": report["connections"]["failed_by_kind"],
                      "never_played": report["players"]["never_played"],
                      "dropped": report["connections"]["dropped"], "reconnects": report["reconnects"]["count"],
                      "gap_ms": report["reconnects"]["gap_ms"],
                      "max_stall_ms": report["players"]["stalls"]["max_gap_ms"],
                      "playing_at_end": report["connections"]["playing_at_end"]},
            "kept_until_drain_end": {k: {"before": v[0], "min_before_bound": v[1], "samples": v[2]}
                                     for k, v in kept.items()},
            "ffmpeg_player": {"pod": player_pod.name, "exit": player_end,
                              "last_frame_vs_drain_bound_s": None if player_ended_at is None else
                              round(player_ended_at - (player_pod.grace_sent_at + drain_s), 2)},
            "endpoint_propagation_s": ENDPOINT_PROPAGATION_S * scale,
        }
        print(json.dumps(figures, indent=1))
        print("kubelet events:", "\n".join(f"  {t - rollout_started:7.2f}s {w}" for t, w in kubelet.events))
        print("probe failures:", prober.failures[:20])

        assert not prober.failures, prober.failures[:20]
        assert prober.ok >= 10
        assert report["connections"]["failed"] == 0, report["connections"]
        assert report["players"]["never_played"] == 0
        assert report["reconnects"]["count"] >= BENCH_PLAYERS, "every bench player was on an old pod"
        assert report["connections"]["playing_at_end"] == BENCH_PLAYERS
        assert report["reconnects"]["gap_ms"]["max"] <= 3 * RECONNECT_GAP_GOAL_S * 1000
        for e in old:
            assert not e.killed and e.proc.returncode == 0, f"{e.name}: {e.log()[-3000:]}"
            assert "gracefully quit" in e.log()
            before, least, samples = kept[e.name]
            assert samples >= 3 and least >= before, f"{e.name}: players left before the drain ended {kept}"
        for e in old + new:
            assert e.liveness_failures == 0, e.name
        # ffmpeg played from its old pod until the drain ended there (then it stops: it does not reconnect)
        assert player_ended_at is not None and player_ended_at >= player_pod.grace_sent_at + drain_s - 1.0
        return figures
    finally:
        for proc in (prober, watch):
            if proc is not None:
                proc.stop.set()
        for proc in (bench, player, publisher):
            if proc is not None:
                stop_proc(proc)
        service.stop()
        for pod in origins + old + new:
            pod.probing = False
            pod.cleanup()
        remove_hosts(hosts)


def results_section(figures: dict, label: str) -> str:
    b, p = figures["bench"], figures["probes"]
    pods = "; ".join(f"{k} exit {v['exit']} after {v['terminated_s']} s" + (" (SIGKILL)" if v["killed"] else "")
                     for k, v in figures["pods"].items())
    return (f"- {label} (scale {figures['scale']}, {figures['mode']} mode): rollout {figures['rollout_s']} s; "
            f"new connections through the Service {p['ok']} played, {p['failed']} failed (slowest to first frame "
            f"{p['worst_s']} s); bench {BENCH_PLAYERS} players: {b['failed']} failed plays of {b['attempts']}, "
            f"{b['reconnects']} reconnects, gap p50 {b['gap_ms']['p50']} ms / max {b['gap_ms']['max']} ms, "
            f"largest stall {b['max_stall_ms']} ms, {b['playing_at_end']} playing at the end; "
            f"ffmpeg player's last frame {figures['ffmpeg_player']['last_frame_vs_drain_bound_s']} s from its pod's "
            f"drain bound; {pods}; "
            f"SIGKILLs {sum(v['killed'] for v in figures['pods'].values())}.")


@pytest.mark.timeout(240)
def test_a_rolling_update_of_the_edges_loses_no_play_and_kills_no_pod_scaled(pod_net, test_flv):
    figures = run_rollout(pod_net, test_flv, scale=0.1)
    print(results_section(figures, "scaled"))


@pytest.mark.long
@pytest.mark.timeout(900)
def test_a_rolling_update_of_the_edges_loses_no_play_and_kills_no_pod_full_length(pod_net, test_flv):
    figures = run_rollout(pod_net, test_flv, scale=1.0)
    print(results_section(figures, "full length"))
