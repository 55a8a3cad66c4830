"""`nonstop bench` end to end against nonstop: players, reconnecting players, churn, latency, the JSON report."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

from tests.helpers import ROOT, Server

PLAYERS = 20
RECONNECTING = 2
CHURN_RATE = 20
WINDOW_S = 5
# The server sends more than the players count in the window (warm-up, churn, reconnects): measured 1.4x.
SENT_OVER_RECEIVED_MAX = 5


def sent_bytes(server: Server) -> int:
    """What the server says it sent to clients (its own count, not the bench's)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.api_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("nonstop_send_bytes_total "):
                return int(float(line.split()[1]))
    raise AssertionError("no nonstop_send_bytes_total in /metrics")


def test_bench_players_reconnecting_players_and_churn_against_nonstop(test_flv):
    with Server() as server:
        sent_before = sent_bytes(server)
        proc = subprocess.run(
            [sys.executable, "-m", "nonstop.cli", "bench", server.rtmp_url(), "--publishers", "1",
             "--file", str(test_flv), "--players", str(PLAYERS), "--reconnecting", str(RECONNECTING),
             "--churn", str(CHURN_RATE), "--duration", str(WINDOW_S), "--warmup", "1",
             "--server-pid", str(server.proc.pid), "--json"],
            capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        r = json.loads(proc.stdout)
        sent = sent_bytes(server) - sent_before

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
    cost = r["server"]
    assert len(cost["pids"]) >= 2  # master and worker
    assert cost["cpu_s_per_gb"] is not None
    # What the bench counted as received in the window against what the server counted as sent over the whole
    # run (warm-up, churn and reconnects included): the server sent at least that, and not wildly more.
    print(f"players received {pl['bytes']} bytes in the window; the server sent {sent} bytes over the run "
          f"({sent / pl['bytes']:.2f}x)")
    assert pl["bytes"] <= sent <= SENT_OVER_RECEIVED_MAX * pl["bytes"]
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
