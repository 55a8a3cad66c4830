"""A worker's side of an upgrade, without processes: an HTTP-FLV play that arrives while the handover is under
way waits for its stream, and /metrics shows the master's upgrade counters."""

from __future__ import annotations

import time

from prometheus_client.exposition import generate_latest

from nonstop.api import procstat
from nonstop.api.metrics import make_registry
from nonstop.config import load_text
from nonstop.master import upgrade as up
from nonstop.server.http_conn import HttpConnection
from nonstop.server.worker import Worker

CONFIG = """
listen 1935;
http_server { enabled on; listen 8080; }
vhost __defaultVhost__ { http_remux { enabled on; mount [vhost]/[app]/[stream].flv; } }
"""


class FakeTransport:
    def __init__(self):
        self.data = b""
        self.closed = False

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 50000) if name == "peername" else default

    def write(self, data):
        self.data += data

    def writelines(self, chunks):
        for chunk in chunks:
            self.data += chunk

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def get_write_buffer_size(self):
        return 0

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


def flv_get(worker, stream: str) -> tuple[HttpConnection, FakeTransport]:
    conn, transport = HttpConnection(worker), FakeTransport()
    conn.connection_made(transport)
    conn.data_received(f"GET /live/{stream}.flv HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return conn, transport


def test_an_flv_play_during_a_takeover_waits_for_its_stream_instead_of_a_404():
    worker = Worker(load_text(CONFIG))
    worker.taking_over = True
    waiting, waiting_out = flv_get(worker, "moving")
    absent, absent_out = flv_get(worker, "absent")
    assert waiting_out.data == b"" and absent_out.data == b"", "no answer while the handover goes on"
    vhost = worker.config.vhost_for(None)
    source = worker.fetch_source(vhost, "live", "moving", time.monotonic())
    source.publisher = object()           # the stream arrived with its publisher
    worker.retry_waiting_flv(source.key)
    assert waiting_out.data.startswith(b"HTTP/1.1 200 OK") and waiting.role == "play"
    assert absent_out.data == b"", "a play of another stream still waits"
    worker.taking_over = False
    worker.retry_waiting_flv()            # the handover is over: what did not come is not found
    assert absent_out.data.startswith(b"HTTP/1.1 404")


def test_without_a_takeover_an_flv_play_of_a_missing_stream_is_404_at_once():
    worker = Worker(load_text(CONFIG))
    _, out = flv_get(worker, "absent")
    assert out.data.startswith(b"HTTP/1.1 404")


def test_metrics_show_the_upgrades_by_result_and_the_handover_histogram():
    worker = Worker(load_text(CONFIG))
    u = up.Upgrade()
    u.begin(1)
    u.handover_stats({"handed_over": 2}, [0.003, 0.2])
    u.finish(up.DONE, 2)
    worker.upgrade_info = u.to_dict()
    worker.generation = 2
    text = generate_latest(make_registry(worker, procstat.ProcessWatch(None))).decode()
    assert 'nonstop_upgrades_total{result="done"} 1.0' in text
    assert 'nonstop_upgrades_total{result="rolled_back"} 0.0' in text
    assert 'nonstop_handover_seconds_bucket{le="0.005"} 1.0' in text
    assert 'nonstop_handover_seconds_bucket{le="+Inf"} 2.0' in text
    assert "nonstop_handover_seconds_count 2.0" in text
    assert "nonstop_generation 2.0" in text
