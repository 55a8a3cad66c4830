"""The SRS console's needs in the API's pure parts (issue 11, items 5, 6, 8)."""

from __future__ import annotations

import os

from nonstop.api import views
from nonstop.api.disk import DiskRates, read_diskstats
from nonstop.cluster.answer import build_clusters_answer
from tests.unit.test_cluster_formats import QUERY, origin_worker

DISKSTATS = """\
   8       0 sda 100 0 2000 50 200 0 4000 80 0 500 130 0 0 0 0
   8       1 sda1 90 0 1800 40 190 0 3800 70 0 450 110 0 0 0 0
   7       0 loop0 5 0 10 1 0 0 0 0 0 3 1 0 0 0 0
"""


def test_disk_rates_count_whole_disks_once_and_report_a_busy_fraction(tmp_path):
    (tmp_path / "block").mkdir()
    for name in ("sda", "loop0"):
        (tmp_path / "block" / name).mkdir()
    stats = tmp_path / "diskstats"
    stats.write_text(DISKSTATS)
    assert read_diskstats(str(stats), str(tmp_path / "block")) == (2000, 4000, 500)   # sda only
    samples = iter([(2000, 4000, 500), (2000 + 2048 * 10, 4000 + 1024 * 10, 500 + 2500)])
    rates = DiskRates(lambda: next(samples))
    assert rates.sample(100.0) == {"disk_read_KBps": 0, "disk_write_KBps": 0, "disk_busy_percent": 0.0}
    assert rates.sample(100.5)["disk_read_KBps"] == 0, "too soon: the previous rates"
    assert rates.sample(110.0) == {"disk_read_KBps": 1024, "disk_write_KBps": 512, "disk_busy_percent": 0.25}
    assert DiskRates(lambda: None).sample(0.0)["disk_busy_percent"] == 0.0, "no /proc: zeros"


def test_raw_api_answers_as_srs_with_it_disabled():
    raw = views.raw_json(api_enabled=True, api_listen="0.0.0.0:1985", crossdomain=True, rpc="raw")
    assert raw == {"code": 0, "http_api": {"enabled": True, "listen": "0.0.0.0:1985", "crossdomain": True,
                                           "raw_api": {"enabled": False, "allow_reload": False,
                                                       "allow_query": False, "allow_update": False}}}
    for rpc in ("reload", "reload-fetch", ""):
        assert views.raw_json(api_enabled=True, api_listen="", crossdomain=True, rpc=rpc) == {"code": 1061}


def test_clusters_answer_names_the_masters_pid():
    worker = origin_worker()
    worker.master_pid = 4242
    assert build_clusters_answer(worker, QUERY)["pid"] == "4242"
    assert build_clusters_answer(origin_worker(), QUERY)["pid"] == str(os.getpid()), "single process: ours"
