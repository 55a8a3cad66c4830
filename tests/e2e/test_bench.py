"""`nonstop bench` end to end against nonstop: players, reconnecting players, churn, latency, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import ROOT, Server

PLAYERS = 20
RECONNECTING = 2
CHURN_RATE = 20
WINDOW_S = 5


def test_bench_players_reconnecting_players_and_churn_against_nonstop(test_flv):
    with Server() as server:
        proc = subprocess.run(
            [sys.executable, "-m", "nonstop.cli", "bench", server.rtmp_url(), "--publishers", "1",
             "--file", str(test_flv), "--players", str(PLAYERS), "--reconnecting", str(RECONNECTING),
             "--churn", str(CHURN_RATE), "--duration", str(WINDOW_S), "--warmup", "1",
             "--server-pid", str(server.proc.pid), "--json"],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout)

    # Everyone connected and is still playing; the reconnecting players hung up and came back.
    conn = r["connections"]
    assert conn["failed"] == 0, conn
    assert conn["dropped"] == 0
    # A reconnecting player may be between two connections when the window ends (it hangs up every 2 s).
    assert conn["playing_at_end"] >= PLAYERS - RECONNECTING
    assert conn["hangups"] >= RECONNECTING
    assert r["reconnects"]["count"] >= RECONNECTING
    assert r["reconnects"]["gap_ms"]["max"] < 1000
    pl = r["players"]
    assert pl["count"] == PLAYERS and pl["never_played"] == 0
    # Every player near the stream's rate (a reconnecting player gets the GOP again, so it may get more).
    stream = r["stream"]["kbps"]
    assert stream and abs(stream - r["stream"]["file_kbps"]) < 0.2 * r["stream"]["file_kbps"]
    assert pl["starved"] == 0
    assert pl["rate_ratio_min"] >= 0.9
    assert pl["rate_kbps"]["median"] < 1.2 * stream
    assert pl["stalls"]["count"] == 0
    assert pl["timestamps"]["holes"] == 0 and pl["timestamps"]["repeats"] == 0
    # Latency measured: the test file repeats some frames (ambiguous keys), the rest are timed.
    lat = r["latency_ms"]
    assert lat["samples"] > PLAYERS * WINDOW_S * 5
    assert 0 < lat["p50"] <= lat["p99"] < 2000
    # Churn: every connection answered.
    churn = r["churn"]
    assert churn["attempted"] == CHURN_RATE * WINDOW_S
    assert churn["ok"] == churn["attempted"] and churn["failed"] == 0
    # The server's cost was sampled from /proc.
    server = r["server"]
    assert len(server["pids"]) >= 2  # master and worker
    assert server["bytes_delivered"] == pl["bytes"] > 0
    assert server["cpu_s_per_gb"] is not None
    assert r["publishers"]["ok"] == 1


def test_bench_http_flv_players_against_nonstop(test_flv):
    with Server() as server:
        proc = subprocess.run(
            [sys.executable, "-m", "nonstop.cli", "bench", server.flv_url(), "--publish-url", server.rtmp_url(),
             "--publishers", "1", "--file", str(test_flv), "--players", "5", "--duration", "3", "--warmup", "1",
             "--json"],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout)
    assert r["protocol"] == "http-flv"
    assert r["connections"]["failed"] == 0 and r["connections"]["playing_at_end"] == 5
    assert r["players"]["starved"] == 0 and r["players"]["stalls"]["count"] == 0
    assert r["latency_ms"]["samples"] > 0
