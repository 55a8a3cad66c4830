"""What one client can make the worker hold or spend (issue 10, items 3, 4, 7 and 8), against the real server.

Hostile clients are raw sockets written here, outside the server's code: they do the simple handshake by hand
and then send what the issue's attacker sent. Healthy clients are ffmpeg (publisher) and a player over nonstop's
client session that records when each video frame arrives.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from nonstop.protocol import amf0, rtmp
from nonstop.protocol.chunk import encode_message
from tests.e2e.ops_helpers import OpsServer, http_status
from tests.helpers import ROOT, publish_file, stop_proc, wait_for
from tests.rtmp_client import AVC_HEADER, RtmpTestClient

pytestmark = pytest.mark.timeout(180)


# ----- raw-socket clients -------------------------------------------------------------------------------------

def raw_handshake(port: int, timeout: float = 5.0) -> socket.socket:
    """TCP connect and the simple RTMP handshake, by hand: C0C1, read S0S1S2, C2 = S1."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(b"\x03" + bytes(8) + os.urandom(1528))
    got = b""
    while len(got) < 1 + 2 * 1536:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("closed during the handshake")
        got += data
    sock.sendall(got[1:1 + 1536])
    return sock


def connect_message(port: int) -> bytes:
    obj = {"app": "live", "tcUrl": f"rtmp://127.0.0.1:{port}/live", "flashVer": "FMLE/3.0"}
    return encode_message(3, 20, 0, 0, amf0.encode("connect", 1.0, obj), 128)


def read_until_closed(sock: socket.socket, timeout: float) -> bool:
    """True once the server closed the connection (EOF or reset) within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if not sock.recv(65536):
                return True
        except socket.timeout:
            continue
        except OSError:
            return True
    return False


# Runs one attack in a process of its own: argv = function name, port, seconds; prints the connections made.
ATTACKER = """
import sys, threading
from tests.e2e import test_bounds
stop = threading.Event()
threading.Timer(float(sys.argv[3]), stop.set).start()
print(getattr(test_bounds, sys.argv[1])(int(sys.argv[2]), stop))
"""


def one_byte_chunks_attack(port: int, stop: threading.Event) -> int:
    """The issue's attacker: Set Chunk Size 1, then a 16 MB message in 1-byte chunks, as fast as the socket takes
    them; again on a new connection whenever the server hangs up. Returns the connections it made."""
    header = bytes([0x03]) + (0).to_bytes(3, "big") + (0xFFFFFF).to_bytes(3, "big") + bytes([20]) + bytes(4)
    burst = (b"\xc3x") * 32768     # type 3 header + 1 payload byte, 64 KiB at a time
    made = 0
    while not stop.is_set():
        try:
            sock = raw_handshake(port)
            made += 1
            sock.sendall(encode_message(2, 1, 0, 0, struct.pack(">I", 1), 128) + header + b"x")
            while not stop.is_set():
                sock.sendall(burst)
        except OSError:
            continue
    return made


def tiny_messages_attack(port: int, stop: threading.Event) -> int:
    """Chunk size left at 128, but every 1-byte type 3 header completes a zero-length message: the most messages
    per byte a peer can send. Reconnects whenever the server hangs up."""
    header = bytes([0x04]) + bytes(3) + bytes(3) + bytes([3]) + bytes(4)   # type 0, csid 4, length 0, Ack
    burst = b"\xc4" * 65536
    made = 0
    while not stop.is_set():
        try:
            sock = raw_handshake(port)
            made += 1
            sock.sendall(header)
            while not stop.is_set():
                sock.sendall(burst)
        except OSError:
            continue
    return made


# ----- a player that records when frames arrive -----------------------------------------------------------------

class TimedPlayer(threading.Thread):
    def __init__(self, port: int, name: str = "livestream"):
        super().__init__(daemon=True)
        self.port, self.name = port, name
        self.arrivals: list[float] = []
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._play())
        except BaseException as e:     # reported by the test
            self.error = e

    async def _play(self) -> None:
        client = await RtmpTestClient().open(self.port)
        try:
            await client.play(self.name)
            while not self.stop.is_set():
                try:
                    if not await client.read_once(0.5):
                        raise ConnectionError("the server closed the player")
                except asyncio.TimeoutError:
                    continue
                now = time.monotonic()
                for event in client.events:
                    if isinstance(event, rtmp.Media) and event.type_id == rtmp.MSG_VIDEO:
                        self.arrivals.append(now)
                client.events.clear()
        finally:
            await client.close()

    def frames_after(self, t: float) -> int:
        return sum(1 for a in self.arrivals if a > t)

    def worst_gap(self, start: float, end: float) -> float:
        times = [a for a in self.arrivals if start <= a <= end]
        return max((b - a for a, b in zip(times, times[1:])), default=float("inf"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def worker_pid(server: OpsServer) -> int:
    return wait_for(lambda: (server.worker_pids() or [None])[-1], 10, what="the worker's pid")


def healthz_delay(server: OpsServer) -> float:
    started = time.monotonic()
    assert http_status(server.api("/healthz"), timeout=30) == 200
    return time.monotonic() - started


# ----- item 7: hostile bytes cannot hold the loop ----------------------------------------------------------------

# A healthy player sees a frame every 40 ms (min_latency on); /healthz answers in a few ms. Bounds with >= 3x
# margin over what a loaded 2-core machine shows without an attack.
MAX_PLAYER_GAP_S = 1.0
MAX_HEALTHZ_S = 1.0
ATTACK_S = 6.0


def test_hostile_chunking_cannot_delay_a_player_or_healthz(test_flv):
    with OpsServer(vhost_body="min_latency on;") as server:
        pid = worker_pid(server)
        publisher = publish_file(server.rtmp_url(), test_flv)
        player = TimedPlayer(server.rtmp_port)
        try:
            wait_for(lambda: server.log().count("publish __defaultVhost__/live/livestream") >= 1, 15,
                     what="the publisher")
            player.start()
            wait_for(lambda: len(player.arrivals) >= 25 or player.error, 15, what="the player's first second")
            assert player.error is None, player.error
            calm = time.monotonic()
            calm_delays = []
            while time.monotonic() - calm < 3.0:
                calm_delays.append(healthz_delay(server))
                time.sleep(0.1)
            calm_gap = player.worst_gap(calm, time.monotonic())
            print(f"without an attack: worst /healthz {max(calm_delays) * 1000:.0f} ms, worst player gap "
                  f"{calm_gap * 1000:.0f} ms")
            # The attackers run in processes of their own, so they do not take the GIL from this test's player.
            cpu_before = cpu_seconds(pid)
            attackers = [subprocess.Popen([sys.executable, "-c", ATTACKER, name, str(server.rtmp_port),
                                           str(ATTACK_S)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
                         for name in ("one_byte_chunks_attack", "tiny_messages_attack")]
            started = time.monotonic()
            delays = []
            while time.monotonic() - started < ATTACK_S:
                delays.append(healthz_delay(server))
                time.sleep(0.1)
            ended = time.monotonic()
            results = [int(p.communicate(timeout=30)[0] or 0) for p in attackers]
            cpu = cpu_seconds(pid) - cpu_before
            gap = player.worst_gap(started, ended)
            print(f"{ATTACK_S:.0f} s under two hostile connections ({sum(results)} connects): worker CPU {cpu:.1f} s, "
                  f"worst /healthz {max(delays) * 1000:.0f} ms, worst player gap {gap * 1000:.0f} ms")
            assert player.error is None, player.error
            assert max(delays) < MAX_HEALTHZ_S
            assert gap < MAX_PLAYER_GAP_S
            log = server.log()
            assert "Set Chunk Size 1 outside 128" in log
            assert "bytes sent before publishing or playing" in log
            assert "Traceback" not in log
        finally:
            player.stop.set()
            player.join(5)
            stop_proc(publisher)


# ----- item 4: connected idle clients are timed out ------------------------------------------------------------

def test_a_connected_client_that_never_publishes_or_plays_is_closed_after_identify_timeout():
    timeout_ms = 1500
    with OpsServer(extra_global=f"identify_timeout {timeout_ms};", max_connections=6) as server:
        idle = []
        for _ in range(5):
            sock = raw_handshake(server.rtmp_port)
            sock.sendall(connect_message(server.rtmp_port))
            idle.append(sock)
        started = time.monotonic()
        # The slots are full: with max_connections 6, only one more connection fits.
        closed = [read_until_closed(sock, 20) for sock in idle]
        elapsed = time.monotonic() - started
        print(f"5 connected idle clients closed after {elapsed:.2f}s (identify_timeout {timeout_ms} ms, sweep 1 s)")
        assert all(closed), "every idle client is closed"
        assert elapsed >= timeout_ms / 1000 - 0.2, "not before identify_timeout"
        assert elapsed <= 3 * (timeout_ms / 1000 + 1.0)
        server.wait_log("neither published nor played within identify_timeout 1500 ms", count=5)
        # Their slots are free again: a viewer gets in.
        client = asyncio.run(_connect_ok(server.rtmp_port))
        assert client


async def _connect_ok(port: int) -> bool:
    client = await RtmpTestClient().open(port)
    try:
        return True
    finally:
        await client.close()


# ----- item 8: a stall of the worker does not drop publishers whose data is waiting -----------------------------

STALL_S = 6.0


def test_a_six_second_stall_of_the_worker_keeps_publisher_and_player(test_flv):
    with OpsServer(vhost_body="publish { normal_timeout 3000; }") as server:
        pid = worker_pid(server)
        publisher = publish_file(server.rtmp_url(), test_flv)
        player = TimedPlayer(server.rtmp_port)
        try:
            wait_for(lambda: "publish __defaultVhost__/live/livestream" in server.log(), 15, what="the publisher")
            player.start()
            wait_for(lambda: len(player.arrivals) >= 25 or player.error, 15, what="the player's first second")
            os.kill(pid, signal.SIGSTOP)
            time.sleep(STALL_S)     # the stall itself is what is tested
            resumed = time.monotonic()
            os.kill(pid, signal.SIGCONT)
            wait_for(lambda: player.frames_after(resumed + 2.0) >= 25 or player.error, 20,
                     what="frames 2 s after the stall")
            print(f"after a {STALL_S:.0f} s SIGSTOP: {player.frames_after(resumed)} frames since SIGCONT")
            assert player.error is None, player.error
            assert publisher.poll() is None, publisher.stderr.read().decode(errors="replace")[-2000:]
            log = server.log()
            assert "publisher idle" not in log and "publisher sent no media" not in log, log[-3000:]
            assert "the worker did not run for" in log
        finally:
            os.kill(pid, signal.SIGCONT)
            player.stop.set()
            player.join(5)
            stop_proc(publisher)


# ----- measured figures for the README ---------------------------------------------------------------------------

IDLE_CONNS = 200


def test_memory_of_unidentified_connections_and_of_one_big_frame_publisher():
    """Prints the README's figures: RSS per connected, unidentified connection, and what one publisher of 2400
    inter frames of 256 KB after one keyframe makes the worker hold (issue: 46 MB -> 667 MB)."""
    with OpsServer(max_connections=IDLE_CONNS + 10) as server:
        pid = worker_pid(server)
        wait_for(lambda: http_status(server.api("/healthz")) == 200, 10, what="the API")
        time.sleep(1.0)     # let the worker settle after its start (imports, first ticks): a stable baseline
        base = rss_kb(pid)
        socks = []
        for _ in range(IDLE_CONNS):
            sock = raw_handshake(server.rtmp_port)
            sock.sendall(connect_message(server.rtmp_port))
            socks.append(sock)
        for sock in socks:      # each got its connect answer: the server holds its whole state
            sock.settimeout(5)
            assert sock.recv(65536)
        per_conn = (rss_kb(pid) - base) * 1024 / IDLE_CONNS
        print(f"RSS per connected, unidentified connection: {per_conn / 1024:.1f} KiB ({IDLE_CONNS} connections)")
        # The same connections, each leaving the largest message it may send one chunk short (the idle
        # clients held two 16 MB ones): partials at their cap.
        held = bytes([0x08]) + bytes(3) + (rtmp.MAX_MESSAGE_UNPUBLISHED).to_bytes(3, "big") + bytes([20]) + \
            bytes(4) + b"x" * 128 + (b"\xc8" + b"x" * 128) * (rtmp.MAX_MESSAGE_UNPUBLISHED // 128 - 2)
        before_partials = rss_kb(pid)
        for sock in socks:
            sock.sendall(held)
        wait_for(lambda: _unidentified_recv(server.api_port) >= IDLE_CONNS * len(held), 20, interval=0.2,
                 what="the partial messages to be read")
        with_partials = (rss_kb(pid) - base) * 1024 / IDLE_CONNS
        print(f"RSS per unidentified connection holding {len(held)} bytes of partial message: "
              f"{with_partials / 1024:.1f} KiB (+{(rss_kb(pid) - before_partials) * 1024 / IDLE_CONNS / 1024:.1f} KiB)")
        assert with_partials < 200 * 1024, "the bound by construction is about 140 KiB (README: Operations)"
        for sock in socks:
            sock.close()

        before = rss_kb(pid)
        grown = asyncio.run(_big_frames(server.rtmp_port, server.api_port, pid))
        print(f"one publisher, keyframe + 2400 x 256 KB inter frames: worker RSS {before / 1024:.0f} MB -> "
              f"peak {grown / 1024:.0f} MB (+{(grown - before) / 1024:.0f} MB)")
        # The bound: 2 x gop_cache_max_bytes (64 MiB) of log, 32 MiB of partials, allocator slack.
        assert grown - before < 200 * 1024


async def _big_frames(port: int, api_port: int, pid: int) -> int:
    client = await RtmpTestClient().open(port)
    peak = 0
    try:
        status = await client.publish("big")
        assert status.code == "NetStream.Publish.Start", status
        client.session.set_out_chunk_size(60000)
        client._flush()
        client.send_media(rtmp.MSG_VIDEO, 0, AVC_HEADER)
        client.send_media(rtmp.MSG_VIDEO, 0, bytes([0x17, 0x01, 0, 0, 0]) + b"k" * (256 * 1024))
        frame = bytes([0x27, 0x01, 0, 0, 0]) + b"p" * (256 * 1024)
        for i in range(2400):
            client.send_media(rtmp.MSG_VIDEO, 40 * (i + 1), frame)
            if i % 50 == 0:
                await client.drain()
                peak = max(peak, rss_kb(pid))
        await client.drain()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _frames(api_port, "big") < 2401:   # the worker read it all
            peak = max(peak, rss_kb(pid))
            await asyncio.sleep(0.2)
        assert _frames(api_port, "big") >= 2401
        return max(peak, rss_kb(pid))
    finally:
        await client.close()


def _unidentified_recv(api_port: int) -> int:
    """Bytes received from all clients (after their handshakes), from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/metrics", timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("nonstop_receive_bytes_total "):
                return int(float(line.split()[1]))
    raise AssertionError("no nonstop_receive_bytes_total")


def _frames(api_port: int, name: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{api_port}/api/v1/streams/", timeout=5) as r:
        streams = json.loads(r.read())["streams"]
    return next((s["frames"] for s in streams if s["name"] == name), 0)

