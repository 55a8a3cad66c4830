"""/metrics: Prometheus text from a custom collector that reads the owning objects at scrape time.

No counter is incremented anywhere for metrics (architecture property 5): the worker, its connections, its
SourceRegistry and the consumers own their numbers, and `collect()` reads them when Prometheus scrapes. Totals
of things that are gone (closed connections, freed sources) are owned by the worker and the registry.

Carrying totals across workers: `worker_totals(worker)` adds `worker.carried_totals` (a dict with the same
keys, absent by default) to this worker's own numbers, so that after an upgrade the new worker can report the
service's totals by setting it to what the old worker had counted for what did not move with the handover.

Names are prefixed `nonstop_`, and SRS's exporter names (srs-reference.md §6) exist with that prefix:
`nonstop_streams`, `nonstop_clients`, `nonstop_clients_total`, `nonstop_send_bytes_total`,
`nonstop_receive_bytes_total`, `nonstop_cpu_percent`, `nonstop_memory`. `nonstop_stream_codecs` is ours.
"""

from __future__ import annotations

from nonstop import __version__
from nonstop.api import procstat
from nonstop.api.stats import CLIENT_TYPES, client_objects, client_type
from nonstop.master.upgrade import RESULTS, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, UnknownMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

# The keys of worker_totals(), which `worker.carried_totals` may also hold.
TOTAL_KEYS = ("accepted", "rejected", "send_bytes", "recv_bytes", "dropped", "sources_created", "sources_freed",
              "access_refused", "hook_calls", "hook_refused")
BYTES_PER_KB = 1024


def worker_totals(worker) -> dict[str, int]:
    """The service's running totals as this worker knows them, plus what earlier workers carried over."""
    send, recv = worker.totals()
    dropped = getattr(worker, "closed_dropped", 0)
    for conn in worker.conns.values():
        consumer = getattr(conn, "consumer", None)
        if consumer is not None:
            dropped += consumer.dropped
    own = {"accepted": worker.accepted_total, "rejected": worker.rejected_total, "send_bytes": send,
           "recv_bytes": recv, "dropped": dropped, "sources_created": worker.registry.created_total,
           "sources_freed": worker.registry.freed_total}
    access = getattr(worker, "access", None)
    if access is not None:
        own.update(access_refused=access.refused_total, hook_calls=access.hooks.calls_total,
                   hook_refused=access.hooks.refused_total)
    else:
        own.update(access_refused=0, hook_calls=0, hook_refused=0)
    carried = getattr(worker, "carried_totals", None) or {}
    return {key: value + int(carried.get(key, 0)) for key, value in own.items()}


class NonstopCollector(Collector):
    """Everything /metrics shows, read from the worker (and /proc for the processes) at scrape time."""

    def __init__(self, worker, processes: procstat.ProcessWatch):
        self.worker = worker
        self.processes = processes

    def collect(self):
        worker = self.worker
        totals = worker_totals(worker)
        sources = worker.registry.sources.values()

        info = GaugeMetricFamily("nonstop_build_info", "The version, server id, service id and pid (value 1).",
                                 labels=["version", "server", "service", "pid"])
        info.add_metric([__version__, worker.server_id, worker.service_id, str(self.processes.service_pid())], 1)
        yield info

        yield GaugeMetricFamily("nonstop_streams", "Streams with a publisher now (SRS's srs_streams).",
                                value=sum(1 for s in sources if s.publisher is not None))
        yield GaugeMetricFamily("nonstop_sources", "Sources in memory: live, waiting for a publisher, or idle "
                                                   "until freed.", value=len(worker.registry.sources))
        codecs = GaugeMetricFamily("nonstop_stream_codecs", "Streams with a publisher now, by media and codec "
                                   "as the API names it (H264, HEVC, AV1, VP9, AAC, Opus, ...).",
                                   labels=["media", "codec"])
        by_codec: dict[tuple[str, str], int] = {}
        for s in sources:
            if s.publisher is not None:
                for media, codec in (("video", s.info.video_codec), ("audio", s.info.audio_codec)):
                    if codec:
                        by_codec[(media, codec)] = by_codec.get((media, codec), 0) + 1
        for (media, codec), n in sorted(by_codec.items()):
            codecs.add_metric([media, codec], n)
        yield codecs
        by_type = dict.fromkeys(CLIENT_TYPES, 0)
        for conn in client_objects(worker):
            ctype = client_type(conn)
            if ctype is not None:
                by_type[ctype] += 1
        clients = GaugeMetricFamily("nonstop_clients", "Clients publishing or playing now, by type.",
                                    labels=["type"])
        for ctype, n in by_type.items():
            clients.add_metric([ctype], n)
        yield clients
        yield GaugeMetricFamily("nonstop_connections", "Open TCP connections on the RTMP and HTTP-FLV ports.",
                                value=len(worker.conns))

        yield CounterMetricFamily("nonstop_connections_accepted", "Connections accepted.",
                                  value=totals["accepted"])
        yield CounterMetricFamily("nonstop_connections_rejected", "Connections refused at accept "
                                                                  "(max_connections).", value=totals["rejected"])
        # SRS's srs_clients_total, untyped: a counter family would be named nonstop_clients, the gauge above.
        yield UnknownMetricFamily("nonstop_clients_total", "Connections ever accepted (SRS's srs_clients_total; "
                                                           "the same as nonstop_connections_accepted_total).",
                                  value=totals["accepted"])
        yield CounterMetricFamily("nonstop_send_bytes", "Bytes sent to clients.", value=totals["send_bytes"])
        yield CounterMetricFamily("nonstop_receive_bytes", "Bytes received from clients.",
                                  value=totals["recv_bytes"])
        yield CounterMetricFamily("nonstop_dropped_messages", "Messages skipped for players too slow to keep up.",
                                  value=totals["dropped"])
        yield CounterMetricFamily("nonstop_sources_created", "Sources created.", value=totals["sources_created"])
        yield CounterMetricFamily("nonstop_sources_freed", "Idle sources freed.", value=totals["sources_freed"])
        yield CounterMetricFamily("nonstop_access_refused", "Publishes and plays refused by security, refer, a "
                                  "signed URL or an http hook.", value=totals["access_refused"])
        yield CounterMetricFamily("nonstop_http_hook_calls", "http_hooks calls made.", value=totals["hook_calls"])
        yield CounterMetricFamily("nonstop_http_hook_refusals", "http_hooks calls that refused or failed (an "
                                  "answer other than 0, an error, or no answer within the timeout).",
                                  value=totals["hook_refused"])
        access = getattr(worker, "access", None)
        yield GaugeMetricFamily("nonstop_http_hook_in_flight", "http_hooks calls waiting for their answer now.",
                                value=access.hooks.in_flight if access is not None else 0)
        yield GaugeMetricFamily("nonstop_http_hook_worst_seconds", "The slowest http_hooks call this worker made.",
                                value=access.hooks.worst_ms / 1000 if access is not None else 0)
        hls = [s.hls for s in sources if getattr(s, "hls", None) is not None and s.hls.playlist is not None]
        yield GaugeMetricFamily("nonstop_hls_streams", "Streams with an HLS playlist in memory.", value=len(hls))
        yield GaugeMetricFamily("nonstop_hls_memory_bytes", "Bytes of HLS segments in memory (listed, kept after "
                                                            "the window, and open).",
                                value=sum(seg.memory_bytes() for seg in hls))
        sessions = getattr(worker, "hls_sessions", None)
        yield CounterMetricFamily("nonstop_hls_sessions", "HLS viewer sessions (hls_ctx) started in this worker.",
                                  value=sessions.total if sessions is not None else 0)

        yield GaugeMetricFamily("nonstop_draining", "1 while a graceful quit drains the connections.",
                                value=1 if getattr(worker, "draining", False) else 0)
        yield GaugeMetricFamily("nonstop_ready", "1 when new connections are welcome (/readyz answers 200).",
                                value=1 if is_ready(worker) else 0)
        yield GaugeMetricFamily("nonstop_generation", "The worker generation serving (1, then +1 per upgrade).",
                                value=getattr(worker, "generation", 1))
        yield from upgrade_metrics(getattr(worker, "upgrade_info", None))
        yield from self._processes()

    def _processes(self):
        labels = ["role", "pid"]
        rss = GaugeMetricFamily("nonstop_process_resident_memory_bytes", "Resident memory.", labels=labels)
        cpu = CounterMetricFamily("nonstop_process_cpu_seconds", "User and system CPU time.", labels=labels)
        percent = GaugeMetricFamily("nonstop_cpu_percent", "CPU use over the last second, in % of one core "
                                                           "(SRS's srs_cpu_percent).", labels=labels)
        memory = GaugeMetricFamily("nonstop_memory", "Resident memory in kilobytes (SRS's srs_memory).",
                                   labels=labels)
        for role, pid in self.processes.processes():
            sample = procstat.read_proc(pid)
            if sample is None:
                continue
            key = [role, str(pid)]
            rss.add_metric(key, sample.rss_bytes)
            cpu.add_metric(key, sample.cpu_seconds)
            percent.add_metric(key, round(self.processes.cpu_fraction(pid) * 100, 2))
            memory.add_metric(key, sample.rss_bytes // BYTES_PER_KB)
        yield from (rss, cpu, percent, memory)


def upgrade_metrics(info: dict | None):
    """nonstop_upgrades_total{result} and the nonstop_handover_seconds histogram, as the master counts them (it
    owns them: nonstop/master/upgrade.py) and tells its workers."""
    info = info or {}
    results = info.get("results") or {}
    upgrades = CounterMetricFamily("nonstop_upgrades", "Upgrades by result: done, failed (the config check), "
                                                       "rolled_back (the new worker failed).", labels=["result"])
    for result in RESULTS:
        upgrades.add_metric([result], int(results.get(result, 0)))
    yield upgrades
    hist = Histogram.from_dict(info.get("histogram"))
    yield HistogramMetricFamily("nonstop_handover_seconds", "Per connection: from its quiesce to the new worker's "
                                                            "acknowledgement.",
                                buckets=hist.cumulative(), sum_value=hist.sum)


def is_ready(worker) -> bool:
    """Ready for new connections: the worker says so (default yes) and no graceful quit has begun."""
    return bool(getattr(worker, "ready", True)) and not getattr(worker, "draining", False)


def make_registry(worker, processes: procstat.ProcessWatch) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NonstopCollector(worker, processes))
    return registry
