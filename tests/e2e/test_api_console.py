"""What SRS's web console sends, against a real server (issue 11, items 4, 5, 6, 8): the JSONP kick
(`GET /api/v1/clients/ID?callback=cb&method=DELETE`) with the same auth as a DELETE, `/api/v1/raw?rpc=raw`,
the disk keys of the summaries, and `/api/v1/clusters` naming the master's pid."""

from __future__ import annotations

import base64
import json
import re

import pytest

from tests.e2e.test_api import http, start_null_player
from tests.helpers import Server, publish_file, stop_proc, wait_for

pytestmark = pytest.mark.timeout(90)

AUTH_ENV = {"NONSTOP_HTTP_API_AUTH_ENABLED": "on", "NONSTOP_HTTP_API_AUTH_USERNAME": "admin",
            "NONSTOP_HTTP_API_AUTH_PASSWORD": "s3cret"}
GOOD = {"Authorization": "Basic " + base64.b64encode(b"admin:s3cret").decode()}
BAD = {"Authorization": "Basic " + base64.b64encode(b"admin:wrong").decode()}


def jsonp(server: Server, path: str, headers: dict | None = None) -> tuple[int, str, dict | None]:
    status, _, body = http(f"http://127.0.0.1:{server.api_port}{path}", headers=headers)
    text = body.decode()
    match = re.fullmatch(r"cb\((.*)\)", text, re.S)
    return status, text, json.loads(match.group(1)) if match else None


def get_json(server: Server, path: str, headers: dict | None = None) -> dict:
    status, _, body = http(f"http://127.0.0.1:{server.api_port}{path}", headers=headers)
    assert status == 200, (path, status, body)
    return json.loads(body)


def test_the_consoles_jsonp_kick_disconnects_with_the_auth_of_a_delete(test_flv):
    with Server(env=AUTH_ENV) as server:
        publisher = publish_file(server.rtmp_url("s"), test_flv)
        player = start_null_player(server.rtmp_url("s"))
        try:
            def player_id():
                clients = get_json(server, "/api/v1/clients/?count=100", GOOD)["clients"]
                return next((c["id"] for c in clients if c["type"] == "rtmp-play"), None)
            cid = wait_for(player_id, 20, interval=0.2, what="the player in /api/v1/clients")
            kick = f"/api/v1/clients/{cid}?callback=cb&method=DELETE&_=1700000000000"
            # No credentials, wrong ones: refused as a DELETE is, and the player plays on.
            assert jsonp(server, kick)[0] == 401
            assert jsonp(server, kick, BAD)[0] == 401
            # `method` without `callback` is no JSONP: a plain GET of the client.
            got = get_json(server, f"/api/v1/clients/{cid}?method=DELETE", GOOD)
            assert got["client"]["id"] == cid
            assert player.poll() is None
            status, text, answer = jsonp(server, kick, GOOD)
            assert status == 200 and answer is not None and answer["code"] == 0, text
            player.wait(10)
            print(f"player exited {player.returncode} after the JSONP kick")
            assert "kick: kicked by the HTTP API" in server.log()
            status, _, gone = jsonp(server, f"/api/v1/clients/{cid}?callback=cb", GOOD)
            assert gone == {"code": 2049}
        finally:
            if player.poll() is None:
                player.kill()
                player.wait(5)
            stop_proc(publisher)


def test_raw_summaries_and_clusters_as_the_console_reads_them():
    with Server() as server:
        status, text, raw = jsonp(server, "/api/v1/raw?rpc=raw&callback=cb")
        assert status == 200, text
        assert raw["code"] == 0 and raw["http_api"]["raw_api"] == {
            "enabled": False, "allow_reload": False, "allow_query": False, "allow_update": False}
        assert raw["http_api"]["enabled"] is True and raw["http_api"]["listen"].endswith(str(server.api_port))
        assert get_json(server, "/api/v1/raw?rpc=reload") == {"code": 1061}
        assert get_json(server, "/api/v1/raw") == {"code": 1061}

        summaries = get_json(server, "/api/v1/summaries")
        system = summaries["data"]["system"]
        for key in ("disk_read_KBps", "disk_write_KBps", "disk_busy_percent"):
            assert isinstance(system[key], (int, float)) and system[key] >= 0, key
        assert 0 <= system["disk_busy_percent"] <= 1

        index = get_json(server, "/api/v1/")
        assert "clusters" in index["urls"] and "raw" in index["urls"]
        clusters = get_json(server, "/api/v1/clusters?vhost=__defaultVhost__&app=live&stream=none")
        assert clusters["pid"] == summaries["pid"] == str(server.proc.pid), (clusters["pid"], server.proc.pid)
        assert clusters["data"]["origin"] is None
