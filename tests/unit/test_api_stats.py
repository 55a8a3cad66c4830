"""The API's derived numbers (30 s kbps, stream totals), /metrics' collector, and the /proc readers."""

from __future__ import annotations

import os
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from nonstop.api import procstat
from nonstop.api.metrics import make_registry, worker_totals
from nonstop.api.stats import ApiStats, Ledger, RateSampler
from nonstop.config import load_text
from nonstop.server.worker import Worker

CONFIG = """
listen 1935;
http_api { enabled on; listen 1985; }
vhost __defaultVhost__ { }
vhost other.com { }
"""


def make_worker() -> Worker:
    return Worker(load_text(CONFIG), server_id="vid-test", service_id="svc")


class FakeConn:
    """A client connection as the API reads it."""

    def __init__(self, cid, source, kind="rtmp", role="play", fmle=False):
        self.cid, self.source, self.kind, self.role, self.publish_fmle = cid, source, kind, role, fmle
        self.ip, self.closed, self.created_wall = "127.0.0.1", False, 0.0
        self.send_bytes = self.recv_bytes = 0
        self.session = SimpleNamespace(tc_url="rtmp://h/live", stream_name=source.stream if source else "")
        self.consumer = SimpleNamespace(dropped=0) if role == "play" else None
        self.kicked = None

    def kick(self, reason):
        self.kicked = reason


def add_conn(worker, conn):
    worker.conns[conn.cid] = conn
    return conn


def fetch(worker, stream, vhost="__defaultVhost__"):
    return worker.registry.fetch_or_create(vhost, "live", stream, 0.0)


# ----- rate samplers ------------------------------------------------------------------------------------------

def test_rate_is_zero_until_a_second_of_history():
    sampler = RateSampler()
    assert sampler.kbps(0.0, 0, 0) == {"recv_30s": 0, "send_30s": 0}
    sampler.sample(100.0, 0, 0)
    assert sampler.kbps(100.5, 1000, 1000) == {"recv_30s": 0, "send_30s": 0}


def test_rate_is_kbps_over_the_history_kept():
    sampler = RateSampler()
    sampler.sample(0.0, 0, 0)
    # 125,000 bytes a second are 1000 kbps.
    assert sampler.kbps(10.0, 1_250_000, 625_000) == {"send_30s": 1000, "recv_30s": 500}


def test_rate_window_slides_to_the_last_30_to_35_seconds():
    sampler = RateSampler()
    for t in range(0, 121):
        # 60 s at 1000 kbps, then 60 s idle
        total = min(t, 60) * 125_000
        sampler.sample(float(t), total, 0)
    assert sampler.kbps(120.0, 60 * 125_000, 0)["send_30s"] == 0
    t0 = sampler.points[0][0]
    assert 30 <= 120.0 - t0 < 35
    assert len(sampler.points) <= 8


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=20.0), min_size=1, max_size=200))
def test_rate_sampler_memory_stays_bounded(steps):
    sampler = RateSampler()
    now = 0.0
    for step in steps:
        now += step
        sampler.sample(now, int(now), int(now))
    assert len(sampler.points) <= 8


# ----- the ledger ---------------------------------------------------------------------------------------------

def test_a_stream_keeps_the_bytes_of_clients_that_left():
    ledger = Ledger()
    ledger.commit({"a": ("s1", 100, 10), "b": ("s1", 50, 5)}, {"s1"})
    # b left after the tick with 70 sent; it was last seen at 50.
    totals = ledger.totals({"a": ("s1", 200, 20)})
    assert (totals["s1"].clients, totals["s1"].send_bytes, totals["s1"].recv_bytes) == (1, 250, 25)
    ledger.commit({"a": ("s1", 200, 20)}, {"s1"})
    totals = ledger.totals({"a": ("s1", 300, 30)})
    assert (totals["s1"].clients, totals["s1"].send_bytes) == (1, 350)


def test_a_client_that_moves_leaves_its_old_bytes_behind():
    ledger = Ledger()
    ledger.commit({"a": ("s1", 100, 0)}, {"s1", "s2"})
    ledger.commit({"a": ("s2", 150, 0)}, {"s1", "s2"})
    totals = ledger.totals({"a": ("s2", 180, 0)})
    assert totals["s1"].send_bytes == 100 and totals["s1"].clients == 0
    assert totals["s2"].send_bytes == 30 + 50 and totals["s2"].clients == 1


def test_a_freed_stream_is_forgotten_and_its_totals_returned():
    ledger = Ledger()
    ledger.commit({"a": ("s1", 100, 7)}, {"s1"})
    ledger.commit({}, {"s1"})
    retired = ledger.commit({}, set())
    assert retired == {"s1": [100, 7]}
    assert ledger.departed == {} and ledger.members == {}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from(["s1", "s2"]),
                                   st.integers(0, 1000)), max_size=4), max_size=30))
def test_stream_totals_never_decrease(ticks):
    """Whatever clients do (come, move, go), a stream's bytes never go down, so its kbps is never negative."""
    ledger = Ledger()
    counters: dict[str, int] = {}
    previous = {"s1": 0, "s2": 0}
    for tick in ticks:
        live = {}
        for cid, group, more in tick:
            counters[cid] = counters.get(cid, 0) + more
            live[cid] = (group, counters[cid], 0)
        for stage in (ledger.totals(live), None):
            if stage is None:
                ledger.commit(live, {"s1", "s2"})
                stage = ledger.totals(live)
            for group in previous:
                now = stage[group].send_bytes if group in stage else 0
                assert now >= previous[group]
                previous[group] = now


# ----- ApiStats over a worker ---------------------------------------------------------------------------------

def test_api_stats_counts_clients_per_stream_and_vhost():
    worker = make_worker()
    s1, s2 = fetch(worker, "a"), fetch(worker, "b", vhost="other.com")
    pub = add_conn(worker, FakeConn("p1", s1, role="publish", fmle=True))
    s1.publisher = pub
    add_conn(worker, FakeConn("c1", s1))
    add_conn(worker, FakeConn("c2", s2, kind="http"))
    add_conn(worker, FakeConn("idle", None, role=""))
    stats = ApiStats(worker)
    assert [c.cid for c in stats.clients()] == ["c1", "c2", "p1"]
    assert stats.find_client("idle") is None and stats.find_client("c1") is not None
    streams = stats.stream_totals()
    assert streams[s1.id].clients == 2 and streams[s2.id].clients == 1
    vhosts = stats.vhost_totals(streams)
    assert (vhosts["__defaultVhost__"].clients, vhosts["__defaultVhost__"].streams) == (2, 1)
    assert (vhosts["other.com"].clients, vhosts["other.com"].streams) == (1, 1)


def test_api_stats_kbps_after_ticks_and_vhost_keeps_bytes_of_freed_streams():
    worker = make_worker()
    source = fetch(worker, "a")
    conn = add_conn(worker, FakeConn("c1", source))
    stats = ApiStats(worker)
    stats.tick(0.0)
    conn.send_bytes = 1_250_000
    stats.tick(10.0)
    assert stats.client_kbps(conn, 10.0)["send_30s"] == 1000
    totals = stats.stream_totals()
    assert stats.stream_kbps(source.id, totals[source.id], 10.0)["send_30s"] == 1000
    # The client leaves, the source is freed: the vhost still counts its bytes.
    del worker.conns["c1"]
    stats.tick(11.0)
    worker.registry.remove(source)
    stats.tick(12.0)
    stats.tick(13.0)
    assert source.id not in stats.stream_rates and "c1" not in stats.client_rates
    vhosts = stats.vhost_totals(stats.stream_totals())
    assert vhosts["__defaultVhost__"].send_bytes == 1_250_000
    assert vhosts["__defaultVhost__"].clients == 0 and vhosts["__defaultVhost__"].streams == 0
    assert stats.stream_vhost == {}


# ----- /metrics ------------------------------------------------------------------------------------------------

def scrape(worker) -> dict:
    text = generate_latest(make_registry(worker, procstat.ProcessWatch())).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f",{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid")
            samples[key] = sample.value
    return samples


def test_metrics_read_the_owning_objects_at_scrape_time():
    worker = make_worker()
    source = fetch(worker, "a")
    pub = add_conn(worker, FakeConn("p1", source, role="publish"))
    source.publisher = pub
    player = add_conn(worker, FakeConn("c1", source))
    player.consumer.dropped = 7
    add_conn(worker, FakeConn("c2", source, kind="http"))
    worker.accepted_total, worker.rejected_total = 5, 2
    worker.closed_send_bytes, worker.closed_dropped = 1000, 3
    player.send_bytes = 500
    m = scrape(worker)
    assert m["nonstop_streams"] == 1 and m["nonstop_sources"] == 1
    assert m["nonstop_clients,type=rtmp-play"] == 1 and m["nonstop_clients,type=flv-play"] == 1
    assert m["nonstop_clients,type=flash-publish"] == 1 and m["nonstop_clients,type=fmle-publish"] == 0
    assert m["nonstop_connections"] == 3
    assert m["nonstop_connections_accepted_total"] == 5 and m["nonstop_connections_rejected_total"] == 2
    assert m["nonstop_clients_total"] == 5
    assert m["nonstop_send_bytes_total"] == 1500
    assert m["nonstop_dropped_messages_total"] == 10
    assert m["nonstop_sources_created_total"] == 1 and m["nonstop_sources_freed_total"] == 0
    assert m["nonstop_draining"] == 0 and m["nonstop_ready"] == 1
    assert m["nonstop_process_resident_memory_bytes,role=worker"] > 0
    assert "nonstop_memory,role=worker" in m and "nonstop_cpu_percent,role=worker" in m
    worker.draining = True
    m = scrape(worker)
    assert m["nonstop_draining"] == 1 and m["nonstop_ready"] == 0


def test_totals_carry_what_earlier_workers_counted():
    worker = make_worker()
    worker.accepted_total = 2
    worker.carried_totals = {"accepted": 40, "send_bytes": 1000, "sources_created": 3}
    totals = worker_totals(worker)
    assert totals["accepted"] == 42 and totals["send_bytes"] == 1000 and totals["sources_created"] == 3
    assert scrape(worker)["nonstop_connections_accepted_total"] == 42


def test_access_and_hook_counters_are_in_metrics_and_carried_over():
    worker = make_worker()
    worker.access.refused_total = 3
    worker.access.hooks.calls_total, worker.access.hooks.refused_total = 10, 4
    worker.access.hooks.in_flight, worker.access.hooks.worst_ms = 2, 1500.0
    worker.carried_totals = {"access_refused": 1, "hook_calls": 5}
    m = scrape(worker)
    assert m["nonstop_access_refused_total"] == 4
    assert m["nonstop_http_hook_calls_total"] == 15 and m["nonstop_http_hook_refusals_total"] == 4
    assert m["nonstop_http_hook_in_flight"] == 2 and m["nonstop_http_hook_worst_seconds"] == 1.5
    assert worker_totals(worker)["hook_calls"] == 15


# ----- /proc ----------------------------------------------------------------------------------------------------

def test_proc_readers_see_this_process():
    me = procstat.read_proc(os.getpid())
    assert me is not None and me.ppid == os.getppid() and me.rss_bytes > 0 and me.cpu_seconds >= 0
    assert procstat.read_proc(2 ** 22 + 12345) is None
    assert procstat.read_meminfo()["MemTotal"] > 0
    total, idle = procstat.read_system_cpu()
    assert total >= idle > 0
    assert procstat.read_cmdline()
    assert set(procstat.read_sockstat()) == {"tcp_inuse", "tcp_tw", "udp_inuse"}


def test_cpu_meter_is_a_fraction_of_one_core():
    meter = procstat.CpuMeter()
    meter.sample(10.0, 5.0)
    assert meter.fraction == 0.0
    meter.sample(12.0, 5.5)
    assert meter.fraction == 0.25


def test_system_cpu_meter_is_busy_over_total():
    meter = procstat.SystemCpuMeter()
    meter.sample((1000, 800))
    meter.sample((1100, 875))
    assert meter.fraction == 0.25


def test_process_watch_reports_master_and_its_children_as_workers():
    alone = procstat.ProcessWatch()
    assert alone.processes() == [("worker", os.getpid())] and alone.service_pid() == os.getpid()
    # Under a "master" (our parent, here pytest's parent), every child of it counts as a worker.
    watch = procstat.ProcessWatch(master_pid=os.getppid())
    procs = watch.processes()
    assert procs[0] == ("master", os.getppid()) and ("worker", os.getpid()) in procs
    assert watch.service_pid() == os.getppid()
