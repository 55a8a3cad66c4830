"""End to end: the HTTP API of a real server with a real ffmpeg publisher and real ffmpeg players (RTMP and
HTTP-FLV): SRS's JSON field by field (srs-reference.md §6), paging, error codes, a kick that really disconnects,
Basic auth, /metrics through prometheus_client's parser, and the API sharing the HTTP-FLV port."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nonstop import __version__
from tests.helpers import FFMPEG, FFPROBE, Server, publish_file, stop_proc, wait_for

pytestmark = pytest.mark.timeout(120)

SRS_STREAM_KEYS = ["id", "name", "vhost", "app", "tcUrl", "url", "live_ms", "clients", "frames", "send_bytes",
                   "recv_bytes", "kbps", "publish", "video", "audio"]
SRS_CLIENT_KEYS = ["id", "vhost", "stream", "ip", "pageUrl", "swfUrl", "tcUrl", "url", "name", "type", "publish",
                   "alive", "send_bytes", "recv_bytes", "kbps"]
SRS_VHOST_KEYS = ["id", "name", "enabled", "clients", "streams", "send_bytes", "recv_bytes", "kbps", "hls"]
SRS_SELF_KEYS = ["version", "pid", "ppid", "argv", "cwd", "mem_kbyte", "mem_percent", "cpu_percent", "srs_uptime"]
PAGE_URL = "http://example.com/player.html"


def http(url: str, method: str = "GET", headers: dict | None = None) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def api(port: int, path: str, method: str = "GET", headers: dict | None = None) -> dict:
    status, _, body = http(f"http://127.0.0.1:{port}{path}", method, headers)
    assert status == 200, (path, status, body)
    return json.loads(body)


def start_null_player(url: str, *extra: str) -> subprocess.Popen:
    """An ffmpeg player that reads the stream until the server ends it (no decoding, no output)."""
    return subprocess.Popen([FFMPEG, "-v", "error", *extra, "-i", url, "-c", "copy", "-f", "null", "-"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def probe_streams(path) -> tuple[dict, dict]:
    """ffprobe's view of a media file's video and audio streams."""
    out = subprocess.run([FFPROBE, "-v", "error", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, text=True, timeout=20, check=True)
    streams = {s["codec_type"]: s for s in json.loads(out.stdout)["streams"]}
    return streams["video"], streams["audio"]


def wait_published(port: int, stream: str = "livestream") -> dict:
    def live():
        streams = api(port, "/api/v1/streams/")["streams"]
        return next((s for s in streams if s["name"] == stream and s["publish"]["active"] and s["video"]), None)
    return wait_for(live, 20, interval=0.2, what=f"stream {stream} to be published")


def clients_by_type(port: int) -> dict:
    return {c["type"]: c for c in api(port, "/api/v1/clients/?count=100")["clients"]}


def metrics(port: int) -> dict:
    status, headers, body = http(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid")
            samples[sample.name + (f"{{{labels}}}" if labels else "")] = sample.value
    return samples


def test_api_json_with_a_real_publisher_and_players_then_a_kick_disconnects(test_flv):
    with Server() as server:
        port = server.api_port
        publisher = publish_file(server.rtmp_url(), test_flv)
        players = []
        try:
            wait_published(port)
            players.append(start_null_player(server.rtmp_url(), "-rtmp_pageurl", PAGE_URL))
            players.append(start_null_player(server.flv_url()))
            wait_for(lambda: len(clients_by_type(port)) == 3, 15, interval=0.2, what="three clients")
            # Rates need two samples (taken every 5 s): wait for the players' and the publisher's.
            wait_for(lambda: all(c["kbps"]["send_30s" if c["type"].endswith("play") else "recv_30s"] > 0
                                 for c in clients_by_type(port).values()), 15, interval=0.5, what="30 s rates")

            envelope = api(port, "/api/v1/versions")
            assert set(envelope) == {"code", "server", "service", "pid", "data"}
            # The envelope's pid names the service: the master's (or the single process's) pid.
            assert envelope["code"] == 0 and envelope["pid"] == str(server.proc.pid)
            assert envelope["server"].startswith("vid-")
            assert envelope["data"] == {"major": 0, "minor": 1, "revision": 0, "version": __version__}

            summaries = api(port, "/api/v1/summaries")["data"]
            assert list(summaries["self"])[:len(SRS_SELF_KEYS)] == SRS_SELF_KEYS
            # `self` is the serving process: the master's worker, or the single process.
            under_master = summaries["self"]["ppid"] == server.proc.pid
            assert under_master or summaries["self"]["pid"] == server.proc.pid
            assert summaries["self"]["mem_kbyte"] > 1000
            assert summaries["self"]["generation"] == 1 and summaries["ok"] is True
            assert 0 <= summaries["self"]["cpu_percent"] < 4 and summaries["now_ms"] > 1.6e12
            for key in ("cpu_percent", "mem_ram_kbyte", "load_1m", "srs_send_bytes", "conn_srs"):
                assert key in summaries["system"], key

            vhosts = api(port, "/api/v1/vhosts")["vhosts"]
            assert len(vhosts) == 1 and list(vhosts[0]) == SRS_VHOST_KEYS
            vhost = vhosts[0]
            assert vhost["name"] == "__defaultVhost__" and vhost["clients"] == 3 and vhost["streams"] == 1

            stream = api(port, "/api/v1/streams")["streams"][0]
            assert list(stream) == SRS_STREAM_KEYS
            assert stream == api(port, f"/api/v1/streams/{stream['id']}/")["stream"] | {
                "live_ms": stream["live_ms"], "send_bytes": stream["send_bytes"], "recv_bytes": stream["recv_bytes"],
                "frames": stream["frames"], "kbps": stream["kbps"]}
            assert stream["name"] == "livestream" and stream["app"] == "live" and stream["vhost"] == vhost["id"]
            assert stream["url"] == "/live/livestream"
            assert stream["tcUrl"] == f"rtmp://127.0.0.1:{server.rtmp_port}/live"
            assert abs(stream["live_ms"] - time.time() * 1000) < 60_000
            assert stream["clients"] == 3 and stream["frames"] > 25
            assert stream["send_bytes"] > 0 and stream["recv_bytes"] > 0
            assert stream["kbps"]["recv_30s"] > 0 and stream["kbps"]["send_30s"] > 0
            # Codec details as ffprobe reads them from the published file (SRS names "Constrained Baseline"
            # "Baseline", and writes level 13 as "1.3").
            video, audio = probe_streams(test_flv)
            assert list(stream["video"]) == ["codec", "profile", "level", "width", "height"]
            assert stream["video"]["codec"] == "H264" and stream["video"]["profile"] in video["profile"]
            assert stream["video"]["level"] == f"{video['level'] // 10}.{video['level'] % 10}"
            assert (stream["video"]["width"], stream["video"]["height"]) == (video["width"], video["height"])
            assert stream["audio"] == {"codec": "AAC", "sample_rate": int(audio["sample_rate"]),
                                       "channel": audio["channels"], "profile": audio["profile"]}

            clients = clients_by_type(port)
            assert set(clients) == {"fmle-publish", "rtmp-play", "flv-play"}
            assert stream["publish"] == {"active": True, "cid": clients["fmle-publish"]["id"]}
            for ctype, client in clients.items():
                assert list(client) == SRS_CLIENT_KEYS
                assert client["vhost"] == vhost["id"] and client["stream"] == stream["id"]
                assert client["ip"] == "127.0.0.1" and client["url"] == "/live/livestream"
                assert client["name"] == "livestream" and client["publish"] == (ctype == "fmle-publish")
                assert client["alive"] > 0 and client["send_bytes"] > 0 and client["recv_bytes"] > 0
                assert set(client["kbps"]) == {"recv_30s", "send_30s"}
            assert clients["fmle-publish"]["kbps"]["recv_30s"] > 0
            assert clients["rtmp-play"]["kbps"]["send_30s"] > 0
            assert clients["rtmp-play"]["pageUrl"] == PAGE_URL
            assert clients["rtmp-play"]["tcUrl"] == f"rtmp://127.0.0.1:{server.rtmp_port}/live"
            assert clients["flv-play"]["tcUrl"] == f"http://127.0.0.1:{server.http_port}/live"
            one = api(port, f"/api/v1/clients/{clients['flv-play']['id']}")["client"]
            assert one["id"] == clients["flv-play"]["id"] and one["type"] == "flv-play"

            ids = sorted(c["id"] for c in clients.values())
            assert [c["id"] for c in api(port, "/api/v1/clients/?count=1")["clients"]] == ids[:1]
            assert [c["id"] for c in api(port, "/api/v1/clients?start=1&count=2")["clients"]] == ids[1:]
            assert api(port, "/api/v1/clients/?start=3")["clients"] == []

            assert api(port, "/api/v1/streams/vid-nothing") == {"code": 2048}
            assert api(port, "/api/v1/clients/nothing") == {"code": 2049}
            assert api(port, "/api/v1/vhosts/nothing") == {"code": 2014}

            m = metrics(port)
            assert m["nonstop_streams"] == 1
            for ctype in ("rtmp-play", "flv-play", "fmle-publish"):
                assert m[f"nonstop_clients{{type={ctype}}}"] == 1
            assert m["nonstop_send_bytes_total"] > 0 and m["nonstop_receive_bytes_total"] > 0
            assert m["nonstop_connections_accepted_total"] >= 3
            assert m["nonstop_process_resident_memory_bytes{role=worker}"] > 0
            if under_master:
                assert m["nonstop_process_resident_memory_bytes{role=master}"] > 0
                assert "nonstop_process_cpu_seconds_total{role=master}" in m
            assert m["nonstop_draining"] == 0 and m["nonstop_ready"] == 1

            # Kick both players: ffmpeg sees its connection end and exits.
            for ctype, player in (("rtmp-play", players[0]), ("flv-play", players[1])):
                started = time.monotonic()
                body = api(port, f"/api/v1/clients/{clients[ctype]['id']}", method="DELETE")
                assert body["code"] == 0
                player.wait(timeout=10)
                print(f"{ctype} player exited {time.monotonic() - started:.2f}s after the kick")
                assert api(port, f"/api/v1/clients/{clients[ctype]['id']}") == {"code": 2049}
            assert set(clients_by_type(port)) == {"fmle-publish"}
            assert "kick: kicked by the HTTP API" in server.log()
            assert publisher.poll() is None, "the publisher goes on"
        finally:
            for player in players:
                stop_proc(player)
            stop_proc(publisher)


def test_api_auth_rejects_a_wrong_password_but_not_probes():
    env = {"NONSTOP_HTTP_API_AUTH_ENABLED": "on", "NONSTOP_HTTP_API_AUTH_USERNAME": "admin",
           "NONSTOP_HTTP_API_AUTH_PASSWORD": "s3cret"}
    with Server(env=env) as server:
        base = f"http://127.0.0.1:{server.api_port}"

        def basic(user: str, password: str) -> dict:
            return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

        status, headers, _ = http(base + "/api/v1/streams/", headers=basic("admin", "wrong"))
        assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
        status, _, _ = http(base + "/api/v1/clients/x", method="DELETE", headers=basic("admin", "wrong"))
        assert status == 401
        assert http(base + "/api/v1/versions")[0] == 401
        status, _, body = http(base + "/api/v1/versions", headers=basic("admin", "s3cret"))
        assert status == 200 and json.loads(body)["code"] == 0
        for path in ("/metrics", "/healthz", "/readyz"):
            assert http(base + path)[0] == 200, path
        assert "unauthorized" in server.log()


def test_api_and_http_flv_share_one_port(test_flv):
    server = Server()
    server.api_port = server.http_port
    with server:
        publisher = publish_file(server.rtmp_url(), test_flv)
        try:
            stream = wait_published(server.http_port)
            player = start_null_player(server.flv_url())
            try:
                wait_for(lambda: "flv-play" in clients_by_type(server.http_port), 15, interval=0.2,
                         what="the HTTP-FLV player on the shared port")
                assert api(server.http_port, f"/api/v1/streams/{stream['id']}")["stream"]["clients"] == 2
                assert metrics(server.http_port)["nonstop_clients{type=flv-play}"] == 1
                assert http(f"http://127.0.0.1:{server.http_port}/healthz")[0] == 200
                assert http(f"http://127.0.0.1:{server.http_port}/live/nobody.flv")[0] == 404
                assert player.poll() is None, "the FLV player keeps playing while the API answers"
            finally:
                stop_proc(player)
        finally:
            stop_proc(publisher)
