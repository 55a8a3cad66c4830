"""nonstop's own API paths (nonstop/api/nonstop.py): the pieces that need no server."""

from __future__ import annotations

import os
import time
from types import SimpleNamespace

from nonstop.api import nonstop as ns


def test_a_process_start_is_read_from_proc_and_an_unknown_pid_gives_none():
    started = ns.process_started_ms(os.getpid())
    now = time.time() * 1000
    assert started is not None and now - 3600_000 < started <= now + 1000
    assert ns.process_started_ms(2 ** 22 + 12345) is None


def test_a_streams_age_is_its_publishers_else_the_sources():
    source = SimpleNamespace(created_at=100.0)
    publisher = SimpleNamespace(created_wall=time.time() - 42)
    assert 41.5 < ns.stream_age(source, publisher, now=101.0) < 43
    assert ns.stream_age(source, None, now=107.5) == 7.5
    assert ns.stream_age(source, SimpleNamespace(kind="edge-pull"), now=103.0) == 3.0


def api_over(workers_info, generation=1):
    worker = SimpleNamespace(workers_info=workers_info, generation=generation)
    return ns.NonstopApi(SimpleNamespace(worker=worker))


def test_the_serving_generation_is_the_newest_serving_workers():
    assert api_over([]).serving_generation() == 1
    told = [{"pid": 1, "generation": 1, "state": "retiring"}, {"pid": 2, "generation": 2, "state": "serving"}]
    assert api_over(told, generation=1).serving_generation() == 2, "an old worker answers with the new one's"
    assert api_over([{"pid": 1, "generation": "x", "state": "serving"}], 3).serving_generation() == 3


def test_the_summary_lists_at_most_max_rows_clients():
    source = SimpleNamespace(vhost="__defaultVhost__", app="live", stream="s", id="sid")
    conns = [SimpleNamespace(cid=f"c{i:04d}", kind="http", role="play", source=source, ip="10.0.0.1", closed=False,
                             created_wall=time.time(), send_bytes=i, recv_bytes=0)
             for i in range(ns.MAX_ROWS + 50)]
    stats = SimpleNamespace(clients=lambda: conns, client_kbps=lambda conn, now: {"recv_30s": 0, "send_30s": 0})
    api = ns.NonstopApi(SimpleNamespace(worker=SimpleNamespace(), stats=stats))
    rows = api.clients(time.monotonic())
    assert len(rows) == ns.MAX_ROWS and rows[0]["id"] == "c0000" and rows[0]["type"] == "flv-play"
    assert rows[0]["stream"] == "/live/s"
