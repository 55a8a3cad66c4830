"""The web console (/console/) and the player (/players/), in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.browser import Browser
from tests.e2e.upgrade_helpers import UpgradeServer
from tests.helpers import ROOT, free_port, publish_live, stop_proc, wait_for


@pytest.fixture(scope="module")
def chromium():
    with Browser() as b:
        yield b


@pytest.fixture
def browser(chromium):
    """The module's Chromium; the tabs a test opened are closed after it."""
    yield chromium
    chromium.close_pages()


def test_the_browser_harness_reports_console_errors(browser):
    """The harness itself: a page's console.error and an uncaught exception are collected, so a clean run of
    the console means something."""
    page = browser.new_page()
    page.goto("data:text/html,<script>console.error('boom'); setTimeout(() => { throw new Error('bang') })"
              "</script>")
    page.wait_for("true", 1)
    assert page.eval("1 + 2") == 3
    wait_for(lambda: len(page.errors) >= 2, 5, what="both errors")
    assert any("boom" in e for e in page.errors) and any("bang" in e for e in page.errors), page.errors


# ----- the server, a live stream, the artifacts -------------------------------------------------------------

ARTIFACTS = ROOT / "build" / "e2e-artifacts"


@pytest.fixture
def server():
    s = UpgradeServer().start()
    try:
        yield s
    finally:
        s.stop()
        if s.proc is not None and s.proc.returncode not in (0, None):
            print(s.log()[-3000:])


@pytest.fixture
def publisher(server):
    proc = publish_live(server.rtmp_url())
    try:
        wait_for(lambda: server_has_stream(server), 20, what="the stream to be published")
        yield proc
    finally:
        stop_proc(proc)


def api_json(server, path: str, method: str = "GET") -> dict:
    request = urllib.request.Request(server.api(path), method=method)
    with urllib.request.urlopen(request, timeout=3) as r:
        return json.load(r)


def server_has_stream(server, name: str = "livestream") -> bool:
    streams = api_json(server, "/api/v1/nonstop/summary")["data"]["streams"]
    return any(s["name"] == name and s["video"] for s in streams)


def shot(page, name: str) -> Path:
    path = page.screenshot(ARTIFACTS / f"{name}.png")
    print(f"screenshot: {path}")
    return path


def frames(page) -> dict:
    return page.eval("(() => { const q = document.getElementById('video').getVideoPlaybackQuality();"
                     " return {decoded: q.totalVideoFrames, dropped: q.droppedVideoFrames,"
                     " worst: window.nonstopPlayer.worstStallMs, state: window.nonstopPlayer.state,"
                     " error: window.nonstopPlayer.error, latency: window.nonstopPlayer.latency}; })()")


# ----- the player ----------------------------------------------------------------------------------------------

def test_player_decodes_a_live_stream_over_http_flv(browser, server, publisher):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.http_port}/players/?url=/live/livestream.flv")
    started = time.monotonic()
    # 100 frames of a 25 fps stream are 4 s of video: allow 3x and the start-up.
    page.wait_for("document.getElementById('video').getVideoPlaybackQuality().totalVideoFrames >= 100", 20,
                  what="100 decoded frames")
    figures = frames(page)
    print(f"decoded {figures['decoded']} frames in {time.monotonic() - started:.1f}s, dropped {figures['dropped']}, "
          f"latency {figures['latency']:.2f}s, worst stall {figures['worst']:.0f} ms")
    assert figures["state"] == "playing" and not figures["error"], figures
    page.wait_for("document.getElementById('decoded').textContent !== '0'", 2, what="the figures shown")
    shot(page, "player")
    assert page.errors == [], page.errors


# ----- the console ---------------------------------------------------------------------------------------------

def start_flv_player(url: str) -> subprocess.Popen:
    """An ffmpeg HTTP-FLV player that reads until the server closes (copy to null: no CPU for decoding)."""
    return subprocess.Popen(["ffmpeg", "-v", "error", "-i", url, "-c", "copy", "-f", "null", "-"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def open_console(browser, server, view: str, path: str = "/console/"):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.http_port}{path}#{view}")
    page.wait_for("window.nonstopConsole && window.nonstopConsole.polls > 0", 10, what="the first summary")
    return page


def test_console_loads_clean_at_slash_and_lists_a_live_stream_and_its_players(browser, server, publisher):
    player = start_flv_player(server.flv_url())
    try:
        wait_for(lambda: api_json(server, "/api/v1/nonstop/summary")["data"]["streams"][0]["players"] >= 1, 15,
                 what="the FLV player to play")
        started = time.monotonic()
        page = open_console(browser, server, "streams", path="/")
        row = '[data-stream="/live/livestream"]'
        page.wait_for(f"(() => {{ const r = document.querySelector('{row}');"
                      f" return r && Number(r.querySelector('.players').textContent) >= 1; }})()", 10,
                      what="the stream row with its player")
        listed = time.monotonic() - started
        print(f"the console listed the stream and its player {listed:.2f}s after opening (bound 5 s)")
        assert listed < 5.0
        assert "H264 320x240" in page.eval(f"document.querySelector('{row}').textContent")
        href = page.eval(f"document.querySelector('{row} a.preview').getAttribute('href')")
        assert href == "/players/?url=%2Flive%2Flivestream.flv", href
        shot(page, "console-streams")
        page.eval("location.hash = '#overview'")
        page.wait_for("document.getElementById('ov-streams')?.textContent === '1'", 5, what="the overview")
        page.wait_for("window.nonstopConsole.polls >= 3", 10, what="two more polls for the charts")
        assert page.eval("document.querySelectorAll('.chart polyline').length") == 5
        shot(page, "console-overview")
        assert page.errors == [], page.errors
    finally:
        stop_proc(player)


def test_a_kick_from_the_console_disconnects_the_client(browser, server, publisher):
    player = start_flv_player(server.flv_url())
    try:
        def flv_client():
            clients = api_json(server, "/api/v1/nonstop/summary")["data"]["clients"]
            return next((c["id"] for c in clients if c["type"] == "flv-play"), None)
        cid = wait_for(flv_client, 15, what="the FLV player in the client list")
        page = open_console(browser, server, "clients")
        button = f'button.kick[data-id="{cid}"]'
        page.wait_for(f"!!document.querySelector('{button}')", 5, what="the client's kick button")
        started = time.monotonic()
        page.click(button)
        wait_for(lambda: player.poll() is not None, 5, what="the kicked ffmpeg player to end")
        gone = time.monotonic() - started
        print(f"the kicked player's ffmpeg ended {gone:.2f}s after the click (bound 5 s)")
        assert flv_client() is None
        page.wait_for(f"!document.querySelector('[data-client=\"{cid}\"]')", 5, what="the row to go")
        # The Streams view kicks a stream's publisher.
        page.eval("location.hash = '#streams'")
        page.wait_for("!!document.querySelector('button.kick-publisher')", 5, what="the kick-publisher button")
        page.click("button.kick-publisher")
        wait_for(lambda: publisher.poll() is not None, 5, what="the kicked ffmpeg publisher to end")
        assert "kick: kicked by the HTTP API" in server.log()
        assert page.errors == [], page.errors
    finally:
        stop_proc(player)


def test_the_upgrades_view_shows_a_sigusr2_upgrade(browser, server, publisher):
    page = open_console(browser, server, "upgrades")
    assert page.eval("document.getElementById('do-upgrade')") is None     # no auth, no write buttons
    server.upgrade(1)
    page.wait_for("!!document.querySelector('tr.history[data-kind=upgrade][data-state=done]')", 10,
                  what="the upgrade's outcome in the history")
    page.wait_for("document.getElementById('up-generation').textContent === '2'", 5, what="generation 2")
    text = page.eval("document.querySelector('tr.history[data-kind=upgrade]').textContent")
    print(f"history row: {text}")
    shot(page, "console-upgrades")
    assert page.errors == [], page.errors


def test_the_player_keeps_playing_through_an_upgrade(browser, server, publisher):
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.http_port}/players/?url=/live/livestream.flv")
    page.wait_for("window.nonstopPlayer.decoded >= 50", 20, what="50 decoded frames")
    before = frames(page)
    server.upgrade(1)
    # Two more seconds of video after the upgrade ended (50 frames at 25 fps): the stall, if any, is behind us.
    page.wait_for(f"window.nonstopPlayer.decoded >= {before['decoded'] + 50}", 15, what="50 frames after the upgrade")
    after = frames(page)
    print(f"through the upgrade: decoded {before['decoded']} -> {after['decoded']}, dropped {after['dropped']}, "
          f"worst stall {after['worst']:.0f} ms (bound 1000 ms)")
    assert after["worst"] < 1000, after
    assert after["state"] == "playing" and not after["error"], after
    assert page.errors == [], page.errors


def test_the_console_polls_one_summary_not_a_request_per_row(browser, server, publisher):
    players = [start_flv_player(server.flv_url()) for _ in range(3)]
    try:
        wait_for(lambda: api_json(server, "/api/v1/nonstop/summary")["data"]["totals"]["clients"] >= 4, 15,
                 what="three players")
        page = open_console(browser, server, "clients")
        page.wait_for("window.nonstopConsole.polls >= 3", 10, what="three polls")
        for view in ("streams", "upgrades", "cluster", "overview"):
            page.eval(f"location.hash = '#{view}'")
        page.wait_for("window.nonstopConsole.polls >= 4", 10, what="a fourth poll")
        api_calls = page.eval("performance.getEntriesByType('resource').map(e => new URL(e.name).pathname)"
                              ".filter(p => p.startsWith('/api/'))")
        polls = page.eval("window.nonstopConsole.polls")
        print(f"{polls} polls, API requests: {sorted(set(api_calls))} x{len(api_calls)}")
        assert set(api_calls) == {"/api/v1/nonstop/summary"}
        assert len(api_calls) <= polls + 1
        assert page.errors == [], page.errors
    finally:
        for player in players:
            stop_proc(player)


AUTH = {"NONSTOP_HTTP_API_AUTH_ENABLED": "on", "NONSTOP_HTTP_API_AUTH_USERNAME": "admin",
        "NONSTOP_HTTP_API_AUTH_PASSWORD": "s3cret"}


def test_with_auth_the_console_asks_to_sign_in_and_its_upgrade_button_upgrades(browser):
    """The console on the HTTP port reads the API on its own port with the API's Basic auth (a cross-origin
    request with Authorization: the API's CORS must allow it), and shows the write buttons only then."""
    with UpgradeServer(env=AUTH) as server:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{server.http_port}/console/#upgrades")
        page.wait_for("!document.getElementById('login').classList.contains('hidden')", 10, what="the sign-in form")
        page.eval("document.getElementById('login-user').value = 'admin';"
                  "document.getElementById('login-pass').value = 's3cret';"
                  "document.getElementById('login').requestSubmit()")
        page.wait_for("window.nonstopConsole.polls > 0 && !!document.getElementById('do-upgrade')", 10,
                      what="the upgrade button after signing in")
        page.click("#do-upgrade")
        page.wait_for("!!document.querySelector('tr.history[data-kind=upgrade][data-state=done]')", 30,
                      what="the upgrade asked from the page to be done")
        assert "asked for an upgrade: signal SIGUSR2 to the master" in server.log()
        # The 401 of the first poll is the browser's only complaint (a failed resource load, logged by Chromium).
        assert [e for e in page.errors if "401" not in e] == [], page.errors
        shot(page, "console-upgrades-auth")


def test_the_write_endpoints_need_auth_on_and_the_summary_is_behind_auth():
    with UpgradeServer() as server:
        for what in ("reload", "upgrade"):
            request = urllib.request.Request(server.api(f"/api/v1/nonstop/{what}"), method="POST")
            try:
                urllib.request.urlopen(request, timeout=3)
                raise AssertionError("a write without auth was taken")
            except urllib.error.HTTPError as e:
                assert e.code == 403, e.code
        assert "upgrade:" not in server.log() and "reload config" not in server.log()
        workers = api_json(server, "/api/v1/nonstop/workers")
        assert [w["generation"] for w in workers["workers"]] == [1]
        assert {p["role"] for p in workers["processes"]} == {"master", "worker"}
        assert api_json(server, "/api/v1/nonstop/upgrades")["last"]["state"] == "idle"
    with UpgradeServer(env=AUTH) as server:
        try:
            urllib.request.urlopen(server.api("/api/v1/nonstop/summary"), timeout=3)
            raise AssertionError("the summary answered without credentials")
        except urllib.error.HTTPError as e:
            assert e.code == 401
        # The console on the HTTP port sends Authorization cross-origin: the preflight must name it (the Fetch
        # standard's `*` does not cover Authorization; Chromium only warns, other browsers refuse).
        preflight = urllib.request.Request(server.api("/api/v1/nonstop/summary"), method="OPTIONS", headers={
            "Origin": f"http://127.0.0.1:{server.http_port}", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        with urllib.request.urlopen(preflight, timeout=3) as r:
            allowed = [h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")]
        assert "authorization" in allowed, allowed


def test_the_summary_counts_from_the_master_start_and_the_publish_across_an_upgrade(server, publisher):
    """Uptime is the master's (its /proc start time survives its execve), a stream's age the publisher's (its
    connection's start crosses the handover), and the upgrade lands in the history with the new worker list."""
    before = api_json(server, "/api/v1/nonstop/summary")["data"]
    wait_for(lambda: api_json(server, "/api/v1/nonstop/summary")["data"]["master"]["uptime_s"] >= 2, 10,
             what="two seconds of uptime")
    server.upgrade(1)
    after = wait_for(lambda: (lambda d: d if d["generation"] == 2 and d["streams"] else None)(
        api_json(server, "/api/v1/nonstop/summary")["data"]), 10, what="generation 2 with the stream")
    elapsed_s = (after["now_ms"] - before["now_ms"]) / 1000
    print(f"uptime {before['master']['uptime_s']} -> {after['master']['uptime_s']} s, stream age "
          f"{before['streams'][0]['age_s']} -> {after['streams'][0]['age_s']} s over {elapsed_s:.1f} s")
    assert after["master"]["pid"] == before["master"]["pid"]
    assert after["master"]["started_ms"] == before["master"]["started_ms"]
    assert after["master"]["uptime_s"] >= before["master"]["uptime_s"] + int(elapsed_s) - 1
    assert after["streams"][0]["age_s"] >= before["streams"][0]["age_s"] + elapsed_s - 1
    assert after["worker"]["pid"] != before["worker"]["pid"]
    history = after["upgrades"]["history"]
    assert [(e["kind"], e["state"]) for e in history] == [("upgrade", "done")] and history[0]["handed_over"] >= 1
    wait_for(lambda: [w["generation"] for w in api_json(server, "/api/v1/nonstop/workers")["workers"]] == [2], 10,
             what="the old worker to leave the worker list")


def test_on_a_shared_port_the_console_reads_the_api_from_its_own_origin(browser):
    server = UpgradeServer()
    server.api_port = server.http_port
    with server:
        page = open_console(browser, server, "overview", path="/console/")
        assert page.eval("document.querySelector('meta[name=nonstop-api]').content") == ""
        assert page.eval("document.getElementById('ov-generation').textContent") == "1"
        assert page.errors == [], page.errors


def test_the_cluster_view_shows_an_edges_origins_and_their_health(browser):
    dead = free_port()          # nothing listens: the edge's pull fails and marks the origin down
    edge = UpgradeServer(vhost_body=f"cluster {{ mode remote; origin 127.0.0.1:{dead}; }}")
    with edge:
        player = start_flv_player(edge.flv_url())
        try:
            def origin():
                cluster = api_json(edge, "/api/v1/nonstop/summary")["data"]["cluster"]
                return cluster and cluster[0]["origins"][0]["health"] == "down" and cluster[0]
            found = wait_for(origin, 15, what="the dead origin marked down")
            assert found["mode"] == "edge" and found["origins"][0]["failures"] >= 1, found
            page = open_console(browser, edge, "cluster")
            page.wait_for("!!document.querySelector('.health-down')", 5, what="the origin's health")
            assert f"127.0.0.1:{dead}" in page.eval("document.getElementById('view').textContent")
            shot(page, "console-cluster")
            assert page.errors == [], page.errors
        finally:
            stop_proc(player)


def test_a_stream_an_edge_pulls_is_marked_edge_and_a_published_one_publisher(server, publisher):
    edge = UpgradeServer(vhost_body=f"cluster {{ mode remote; origin 127.0.0.1:{server.rtmp_port}; }}")
    with edge:
        player = start_flv_player(edge.flv_url())
        try:
            def edge_stream():
                streams = api_json(edge, "/api/v1/nonstop/summary")["data"]["streams"]
                return streams and streams[0]["video"] and streams[0]
            found = wait_for(edge_stream, 15, what="the edge's pulled stream")
            assert found["origin"] == "edge" and found["publisher"] is None, found
            wait_for(lambda: edge_stream()["players"] == 1, 5, what="the edge's player counted")
            origin_stream = api_json(server, "/api/v1/nonstop/summary")["data"]["streams"][0]
            assert origin_stream["origin"] == "publisher" and origin_stream["publisher_ip"] == "127.0.0.1"
        finally:
            stop_proc(player)


def test_the_upgrades_view_shows_an_old_worker_draining_then_gone(browser):
    """A refused handover (an unknown schema) leaves the publisher on the old worker: the view lists it as
    retiring next to the new one, with the upgrade's figures, and drops it once it exited."""
    server = UpgradeServer(extra_global="grace_max_wait 30000;", env={"NONSTOP_TEST_HANDOVER_SCHEMA": "99"})
    with server:
        publisher = publish_live(server.rtmp_url())
        try:
            wait_for(lambda: server_has_stream(server), 20, what="the stream to be published")
            old = server.live_worker_pids()
            page = open_console(browser, server, "upgrades")
            server.upgrade(1)
            page.wait_for(f"!!document.querySelector('[data-worker=\"{old[0]}\"] .state-retiring')", 10,
                          what="the old worker listed as retiring")
            assert page.eval("document.querySelectorAll('[data-worker]').length") == 2
            assert page.eval("document.getElementById('up-moved').textContent") == "0"
            # The console's keep-alive connection was the old worker's: it is closed, the polls go to the new one.
            page.wait_for("window.nonstopConsole.data.worker.generation === 2", 5, what="a poll answered by generation 2")
            assert page.eval("document.getElementById('up-generation').textContent") == "2"
            shot(page, "console-upgrades-draining")
            stop_proc(publisher)
            page.wait_for(f"!document.querySelector('[data-worker=\"{old[0]}\"]')", 15,
                          what="the drained old worker to leave the list")
            assert page.errors == [], page.errors
        finally:
            stop_proc(publisher)


def test_the_player_picks_hls_js_for_an_m3u8_url(browser, server):
    """HLS is another room's work: the player must hand `.m3u8` URLs to hls.js (shipped, and supported by this
    browser's Media Source Extensions) and FLV ones to mpegts.js."""
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{server.http_port}/players/?url=/live/livestream.m3u8")
    page.wait_for("window.nonstopPlayer.kind === 'hls'", 5, what="the HLS engine")
    assert page.eval("typeof Hls === 'function' && Hls.isSupported() && typeof mpegts === 'object'")
    assert page.eval("Hls.version") == "1.7.4" and page.eval("mpegts.version") == "1.8.2"


def test_a_hostile_stream_name_shows_as_text_not_markup(browser, server):
    """Names come from publishers: the console writes them as text (textContent), never as HTML."""
    name = '<b>bold<i>"it\'&amp;'     # markup, quotes and an entity (ffmpeg's URL parsing stops at a space)
    proc = publish_live(server.rtmp_url(name))
    try:
        wait_for(lambda: server_has_stream(server, name), 20, what="the hostile stream to be published")
        page = open_console(browser, server, "streams")
        page.wait_for("document.querySelectorAll('[data-stream]').length === 1", 5, what="the stream row")
        assert page.eval("document.querySelector('[data-stream] td').textContent") == f"/live/{name}"
        assert page.eval("document.querySelectorAll('#view b, #view i').length") == 0
        page.eval("location.hash = '#clients'")
        page.wait_for("document.querySelectorAll('[data-client]').length === 1", 5, what="the client row")
        assert page.eval("document.querySelectorAll('#view b, #view i').length") == 0
        assert name in page.eval("document.getElementById('view').textContent")
        assert page.errors == [], page.errors
    finally:
        stop_proc(proc)
