"""Harness for the cluster's end-to-end tests (no tests here): nonstop nodes each in its own network namespace
with its own IP, joined by a bridge, set up with `ip netns` and veth and torn down after; where namespaces
are not allowed, nodes on 127.0.0.x instead (said in the output). Plus RTMP players that keep their
connection and record every video message, for failover timings.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nonstop.protocol import flv, rtmp
from tests.helpers import ROOT, port_open, wait_for
from tests.rtmp_client import RtmpTestClient

NODES = ("a", "b", "e", "f")
NETNS_PORTS = (1935, 1985, 8080)          # inside a namespace every node has SRS's usual ports


def _run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check, timeout=20)


class Net:
    """Where nodes live: `netns` (a namespace and an IP each) or `loopback` (127.0.0.x, one namespace)."""

    def __init__(self, nodes: tuple[str, ...] = NODES):
        self.nodes = nodes              # names of at most 8 characters (interface names are 15 at most)
        self.mode = ""
        self.tag = os.urandom(2).hex()
        self.ips: dict[str, str] = {}
        self.namespaces: dict[str, str] = {}
        self.bridge = ""

    def setup(self) -> None:
        # NONSTOP_TEST_NETNS=off tries the fallback on a machine that has namespaces.
        if os.geteuid() == 0 and shutil.which("ip") and os.environ.get("NONSTOP_TEST_NETNS") != "off":
            try:
                self._setup_netns()
                self.mode = "netns"
                return
            except (subprocess.CalledProcessError, OSError) as e:
                print(f"network namespaces not available ({e}); falling back to 127.0.0.x")
                self.teardown()
        self.mode = "loopback"
        self.ips = {name: f"127.0.0.{10 + i}" for i, name in enumerate(self.nodes)}

    def _setup_netns(self) -> None:
        routes = _run("ip", "-4", "route").stdout
        while True:
            prefix = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
            if prefix + "." not in routes:
                break
        self.bridge = f"ncb{self.tag}"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{prefix}.1/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")
        for i, name in enumerate(self.nodes):
            ns, host_end, ns_end, ip = f"nc{self.tag}{name}", f"nc{self.tag}{name}h", f"nc{self.tag}{name}p", \
                f"{prefix}.{10 + i}"
            _run("ip", "netns", "add", ns)
            self.namespaces[name] = ns
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
            _run("ip", "link", "set", ns_end, "netns", ns)
            _run("ip", "link", "set", host_end, "master", self.bridge, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/24", "dev", ns_end)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", ns_end, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            self.ips[name] = ip

    def teardown(self) -> None:
        for name, ns in list(self.namespaces.items()):
            self.kill_all(name)
            _run("ip", "netns", "del", ns, check=False)     # removes its veth pair too
        self.namespaces.clear()
        if self.bridge:
            _run("ip", "link", "del", self.bridge, check=False)
            self.bridge = ""

    def command(self, name: str, argv: list[str]) -> list[str]:
        ns = self.namespaces.get(name)
        return ["ip", "netns", "exec", ns, *argv] if ns else argv

    def pids(self, name: str) -> list[int]:
        ns = self.namespaces.get(name)
        if not ns:
            return []
        return [int(p) for p in _run("ip", "netns", "pids", ns, check=False).stdout.split()]

    def kill_all(self, name: str) -> None:
        for pid in self.pids(name):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def peers(self, name: str, port: int) -> list[str]:
        """The remote IPs of the established TCP connections to `port` of node `name` (netns mode)."""
        argv = self.command(name, ["ss", "-Htn", "state", "established", f"( sport = :{port} )"])
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
        return [line.split()[-1].rsplit(":", 1)[0].strip("[]") for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="session")
def net():
    network = Net()
    network.setup()
    print(f"\ncluster tests: {network.mode} mode, nodes " + ", ".join(f"{n}={ip}" for n, ip in network.ips.items())
          + ("" if network.mode == "netns" else " (NO network namespaces: every node shares one namespace)"))
    try:
        yield network
    finally:
        network.teardown()


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


@dataclass
class Node:
    """A nonstop server (master and worker) on one node of the network."""
    net: Net
    name: str
    body: str = ""                  # the vhost's directives (cluster {...})
    proc: subprocess.Popen | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="nonstop-cluster-")))

    def __post_init__(self):
        self.ip = self.net.ips[self.name]
        if self.net.mode == "netns":
            self.rtmp_port, self.api_port, self.http_port = NETNS_PORTS
        else:
            self.rtmp_port, self.api_port, self.http_port = (_free_port(self.ip) for _ in range(3))

    @property
    def rtmp_addr(self) -> str:
        return f"{self.ip}:{self.rtmp_port}"

    @property
    def api_addr(self) -> str:
        return f"{self.ip}:{self.api_port}"

    def config_text(self) -> str:
        if self.net.mode == "netns":    # wildcard listens: origin.ip then comes from the coworker parameter
            listen, api, http = self.rtmp_port, self.api_port, self.http_port
        else:
            listen, api, http = self.rtmp_addr, self.api_addr, f"{self.ip}:{self.http_port}"
        return textwrap.dedent(f"""\
            listen {listen};
            max_connections 2000;
            daemon off;
            pid {self.workdir}/nonstop.pid;
            srs_log_tank console;
            http_api {{ enabled on; listen {api}; }}
            http_server {{ enabled on; listen {http}; }}
            vhost __defaultVhost__ {{
                http_remux {{ enabled on; mount [vhost]/[app]/[stream].flv; }}
                {self.body}
            }}
            """)

    def start(self) -> "Node":
        assert not self.net.pids(self.name), f"node {self.name} is still running from before"
        conf = self.workdir / "nonstop.conf"
        conf.write_text(self.config_text())
        self._log = open(self.workdir / "server.log", "ab")
        argv = self.net.command(self.name, [sys.executable, "-m", "nonstop.cli", "-c", str(conf)])
        self.proc = subprocess.Popen(argv, cwd=self.workdir, stdout=self._log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
        return self

    def wait_ready(self) -> "Node":
        wait_for(lambda: (port_open(self.rtmp_port, self.ip) and port_open(self.api_port, self.ip))
                 or self.proc.poll() is not None, 20, what=f"node {self.name} to listen")
        assert self.proc.poll() is None, f"node {self.name} exited: {self.log()[-3000:]}"
        return self

    def log(self) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def url(self, stream: str = "livestream", app: str = "live") -> str:
        return f"rtmp://{self.ip}:{self.rtmp_port}/{app}/{stream}"

    def flv_url(self, stream: str = "livestream", app: str = "live") -> str:
        return f"http://{self.ip}:{self.http_port}/{app}/{stream}.flv"

    def api(self, path: str, method: str = "GET") -> dict:
        request = urllib.request.Request(f"http://{self.api_addr}{path}", method=method)
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.loads(r.read())

    def clients(self) -> list[dict]:
        return self.api("/api/v1/clients/?count=10000")["clients"]

    def streams(self) -> list[dict]:
        return self.api("/api/v1/streams/?count=10000")["streams"]

    def kill(self) -> None:
        """SIGKILL, master and worker: what a crashed host looks like to the others."""
        if self.net.mode == "netns":
            self.net.kill_all(self.name)
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)    # a worker left behind
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()


def start_nodes(*nodes: Node) -> list[Node]:
    for node in nodes:
        node.start()
    for node in nodes:
        node.wait_ready()
    return list(nodes)


def stop_nodes(nodes) -> None:
    for node in nodes:
        node.stop()


def origin_body(*coworkers: Node) -> str:
    return f"cluster {{ mode local; origin_cluster on; coworkers {' '.join(c.api_addr for c in coworkers)}; }}"


def edge_body(*origins: Node, extra: str = "") -> str:
    return f"cluster {{ mode remote; origin {' '.join(o.rtmp_addr for o in origins)}; {extra} }}"


# ----- players that keep their connection ---------------------------------------------------------------

HEADER, KEY, INTER = "header", "key", "inter"


class Player:
    """An RTMP player that records (monotonic time, kind, timestamp) of every video message, and whether
    its connection ever closed. ffmpeg's own player ends its play on NetStream.Play.UnpublishNotify."""

    def __init__(self, node: Node, stream: str = "livestream"):
        self.node, self.stream = node, stream
        self.client = RtmpTestClient()
        self.videos: list[tuple[float, str, int]] = []
        self.statuses: list[str] = []
        self.closed = ""
        self.task: asyncio.Task | None = None

    async def start(self) -> "Player":
        await self.client.open(self.node.rtmp_port, host=self.node.ip)
        status = await self.client.play(self.stream)
        assert status.code == "NetStream.Play.Start", status
        self.task = asyncio.get_running_loop().create_task(self._read())
        return self

    def _record(self, events) -> None:
        now = time.monotonic()
        for event in events:
            if isinstance(event, rtmp.Media) and event.type_id == rtmp.MSG_VIDEO:
                kind = HEADER if flv.is_video_sequence_header(event.payload) else \
                    KEY if flv.is_video_keyframe(event.payload) else INTER
                self.videos.append((now, kind, event.timestamp))
            elif isinstance(event, rtmp.Status):
                self.statuses.append(event.code)

    async def _read(self) -> None:
        self._record(self.client.events)
        self.client.events.clear()
        try:
            while True:
                if not await self.client.read_once(3600):
                    self.closed = "server closed the connection"
                    return
                self._record(self.client.events)
                self.client.events.clear()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self.closed = f"{type(e).__name__}: {e}"

    def frames_after(self, t: float) -> list[tuple[float, str, int]]:
        return [v for v in self.videos if v[0] >= t]

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.client.close()


async def until(condition, timeout: float, what: str) -> float:
    """Poll (in the loop) until `condition()`; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)
    return time.monotonic() - started
