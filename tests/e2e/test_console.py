"""The web console (/console/) and the player (/players/), in a real headless Chromium (tests/browser.py)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.browser import Browser
from tests.e2e.upgrade_helpers import UpgradeServer
from tests.helpers import ROOT, publish_live, stop_proc, wait_for


@pytest.fixture(scope="module")
def browser():
    with Browser() as b:
        yield b


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
