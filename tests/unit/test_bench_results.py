"""bench/report.py: a run's JSON becomes RESULTS.md tables, nonstop's cost as a fraction of nginx-rtmp's."""

from __future__ import annotations

import importlib.util
import json

from tests.helpers import ROOT


def _report_module():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _point(server: str, label: str, cpu_per_gb: float, starved: int = 0, players: int = 1000,
           publishers_ok: bool = True) -> dict:
    return {
        "scenario": "fanout", "server_name": server, "label": label,
        "config": {"players": players, "idle": 0, "publishers": 1},
        "connections": {"ok": players, "failed": 0, "failed_by_kind": {}},
        "players": {"count": players, "starved": starved, "rate_ratio_min": 0.99,
                    "stalls": {"max_gap_ms": 400.0}},
        "publishers": {"count": 1, "ok": 1 if publishers_ok else 0,
                       "errors": [] if publishers_ok else ["reset: connection lost"]},
        "server": {"cpu_s_per_gb": cpu_per_gb, "cpu_pct_of_core": 5.0, "rss_kb_baseline": 60_000,
                   "rss_kb_end": 60_000 + 4 * (players + 1)},
        "bench": {"cpu_pct_of_core": 10.0},
        "latency_ms": {"p50": 200.0, "p99": 400.0, "max": 450.0, "samples": 100},
    }


def test_fanout_table_gives_the_ratio_to_nginx_rtmp_and_flags_a_lost_publisher(tmp_path):
    report = _report_module()
    points = [_point("nonstop", "rtmp-1000", 0.25), _point("nginx-rtmp", "rtmp-1000", 0.5),
              _point("nonstop", "flv-1000", 0.3), _point("nms", "rtmp-1000", 1.0, starved=3, publishers_ok=False)]
    rows = report.media_table(points, "fanout")
    assert len(rows) == 2 + 4
    nonstop_rtmp, nonstop_flv, nginx, nms = rows[2:]
    assert nonstop_rtmp.startswith("| nonstop | rtmp | 1000 |") and "| **0.25** | 0.50 |" in nonstop_rtmp
    assert nonstop_flv.startswith("| nonstop | flv |") and "| 0.60 |" in nonstop_flv
    assert "| 1.00 |" in nginx
    assert "| 3 ⚠ 1 publisher(s) lost" in nms and "| 2.00 |" in nms
    assert "| 4.0 |" in nonstop_rtmp  # KB per connection: 4 KB over players and the publisher


def test_results_md_keeps_hand_written_text_around_the_generated_block(tmp_path, monkeypatch):
    report = _report_module()
    run = tmp_path / "run-x"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({
        "started": "20260101T000000Z", "finished": "20260101T001000Z", "command": "bench/run --quick",
        "machine": {"cpus": 2, "cpu": "cpu", "kernel": "6", "loadavg_at_start": [0.1, 0.2, 0.3]},
        "versions": {"nonstop": "abc", "python": "3.11", "nginx": "nginx/1.22", "libnginx-mod-rtmp": "1.2.2",
                     "node": "v20", "node-media-server": "4.4.3"},
        "window_s": 20, "note": "", "files": {"main": "a.flv", "ingest": None}}))
    (run / "fanout_nonstop_rtmp-100.json").write_text(json.dumps(_point("nonstop", "rtmp-100", 0.4, players=100)))
    results = tmp_path / "RESULTS.md"
    results.write_text(f"# Results\n\nintro\n\n{report.BEGIN}\nold\n{report.END}\n\n## Profile\n\nkept\n")
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "plots", lambda points: {})
    assert report.main([str(run)]) == 0
    text = results.read_text()
    assert text.startswith("# Results\n\nintro\n\n") and text.endswith("## Profile\n\nkept\n")
    assert "old" not in text
    assert "`bench/run --quick`" in text and "| nonstop | rtmp | 100 |" in text
