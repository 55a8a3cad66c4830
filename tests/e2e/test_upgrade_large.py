"""The figures run (`make test-long`): 500 of our players, 3 upgrades in a row. Prints what bench/RESULTS.md
records: connections lost, worst and median stall, handover time in total and per connection, and the peak
RSS of the master and the workers."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from tests.e2e.ops_helpers import process_alive
from tests.e2e.test_upgrade import STREAM, long_flv, metric  # noqa: F401  (long_flv is a fixture)
from tests.e2e.upgrade_helpers import UpgradeServer, finish_bench, start_bench
from tests.helpers import publish_file, stop_proc, wait_for

pytestmark = [pytest.mark.long, pytest.mark.timeout(300)]
PLAYERS = 500


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class RssWatch(threading.Thread):
    """Peak RSS of the master and of each worker, and of all of them together, sampled every 100 ms."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.server = server
        self.peak_master = self.peak_worker = self.peak_total = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.1):
            master = rss_kb(self.server.proc.pid)
            workers = [rss_kb(pid) for pid in self.server.worker_pids() if process_alive(pid)]
            self.peak_master = max(self.peak_master, master)
            self.peak_worker = max([self.peak_worker, *workers])
            self.peak_total = max(self.peak_total, master + sum(workers))


def test_figures_500_players_3_upgrades(long_flv):
    server = UpgradeServer(max_connections=3000, vhost_body=os.environ.get("UPGRADE_FIGURES_VHOST", "min_latency on;")).start()
    publisher = publish_file(server.rtmp_url(), long_flv, loop=False)
    bench = None
    watch = RssWatch(server)
    try:
        wait_for(lambda: f"publish {STREAM}," in server.log(), 15, what="publish")
        watch.start()
        bench = start_bench(server.rtmp_url(), players=PLAYERS, churn=100, duration=25)
        wait_for(lambda: server.log().count(f"play {STREAM}, start=") >= PLAYERS, 60, what="the players to play")
        upgrades = []
        for n in (1, 2, 3):
            deadline = time.monotonic() + 3
            wait_for(lambda: time.monotonic() >= deadline, 5, what="3 s of play between upgrades")
            took = server.upgrade(n)
            upgrades.append((took, server.summaries()["upgrade"]))
        report = finish_bench(bench, 120)
        watch.stop.set()
        metrics = server.metrics()
        pl, conns, churn = report["players"], report["connections"], report["churn"]
        count, total = metric(metrics, "nonstop_handover_seconds_count"), metric(metrics, "nonstop_handover_seconds_sum")
        print(f"\nplayers {pl['count']}, never played {pl['never_played']}, dropped {conns['dropped']}, "
              f"failed {conns['failed']}, playing at end {conns['playing_at_end']}")
        print(f"stall (largest gap between video frames per player): worst {pl['stalls']['max_gap_ms']} ms, "
              f"median {pl['stalls']['median_max_gap_ms']} ms; holes {pl['timestamps']['holes']}, "
              f"repeats {pl['timestamps']['repeats']}")
        print(f"messages skipped for slow players: {metric(metrics, 'nonstop_dropped_messages_total'):.0f}")
        print(f"churn {churn['ok']} ok of {churn['attempted']}, refused {churn['refused']}, reset {churn['reset']}, "
              f"unanswered {churn['unanswered']}")
        for n, (took, up) in enumerate(upgrades, 1):
            print(f"upgrade {n}: signal to done {took:.2f}s, handed over {up['handed_over']}, failed {up['failed']}, "
                  f"drained {up['drained']}, handover total {up['total_ms']} ms, worst stream {up['worst_ms']} ms")
        print(f"per connection (quiesce to acknowledgement): mean {total / count * 1000:.1f} ms over {count:.0f}")
        print("\n".join(line for line in metrics.splitlines() if line.startswith("nonstop_handover_seconds_bucket")))
        print(f"peak RSS: master {watch.peak_master / 1024:.1f} MiB, a worker {watch.peak_worker / 1024:.1f} MiB, "
              f"all together {watch.peak_total / 1024:.1f} MiB")
        assert conns["dropped"] == 0 and pl["never_played"] == 0 and churn["failed"] == 0
        assert pl["timestamps"]["holes"] == 0 and pl["timestamps"]["repeats"] == 0
        assert metric(metrics, "nonstop_dropped_messages_total") == 0, "no player was cut back"
        assert all(up["state"] == "done" for _, up in upgrades)
    finally:
        watch.stop.set()
        if bench is not None and bench.poll() is None:
            bench.kill()
        stop_proc(publisher)
        server.stop()
