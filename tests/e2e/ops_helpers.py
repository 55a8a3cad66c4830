"""Helpers for the operations tests: signals, the -s command, probes of listeners, the log and the HTTP API."""

from __future__ import annotations

import asyncio
import re
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nonstop.protocol import rtmp
from tests.helpers import Server, run_nonstop, wait_for
from tests.rtmp_client import RtmpTestClient


@dataclass
class OpsServer(Server):
    """A Server whose log can go to a file (srs_log_tank file), for the reopen test."""
    log_to_file: bool = False

    @property
    def file_log_path(self) -> Path:
        return self.workdir / "nonstop.log"

    @property
    def pid_path(self) -> Path:
        return self.workdir / "nonstop.pid"

    def config_text(self) -> str:
        text = super().config_text()
        if self.log_to_file:
            text = text.replace("srs_log_tank console;",
                                f"srs_log_tank file;\nsrs_log_file {self.file_log_path};")
        return text

    def all_logs(self) -> str:
        text = self.log()
        if self.log_to_file:
            for path in sorted(self.workdir.glob("nonstop.log*")):
                text += path.read_text(errors="replace")
        return text

    def ctl(self, verb: str):
        """`nonstop -s VERB -c CONF`."""
        return run_nonstop("-s", verb, "-c", str(self.conf_path))

    def worker_pids(self) -> list[int]:
        return [int(p) for p in re.findall(r"started worker pid=(\d+)", self.all_logs())]

    def wait_log(self, text: str, timeout: float = 10, count: int = 1) -> None:
        wait_for(lambda: self.all_logs().count(text) >= count, timeout, what=f"log line {text!r}")

    def api(self, path: str) -> str:
        return f"http://127.0.0.1:{self.api_port}{path}"


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, OSError):
        return None


def connect_refused(port: int) -> bool:
    """True when a TCP connect to the port is refused (nobody listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def rtmp_connect_ok(port: int, timeout: float = 5.0) -> bool:
    """A real RTMP handshake and `connect`, answered by the server."""
    async def attempt() -> bool:
        client = RtmpTestClient()
        try:
            client.reader, client.writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port),
                                                                  timeout)
            client.session.connect("live", f"rtmp://127.0.0.1:{port}/live")
            client._flush()
            event = await client.wait_for(lambda e: isinstance(e, (rtmp.Connected, rtmp.ConnectRejected)),
                                          timeout)
            return isinstance(event, rtmp.Connected)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            return False
        finally:
            await client.close()
    return asyncio.run(attempt())


def listening_inode(port: int) -> int | None:
    """The inode of the kernel socket listening on `port` (from /proc/net/tcp*), to tell sockets apart."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[9])
    return None


def measure(condition, timeout: float, interval: float = 0.01, what: str = "condition") -> float:
    """Seconds until `condition()` holds (polled every `interval`), failing after `timeout`."""
    started = time.monotonic()
    wait_for(condition, timeout, interval=interval, what=what)
    return time.monotonic() - started


def process_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def status_codes_until_eof(client: RtmpTestClient, timeout: float) -> tuple[list[str], float]:
    """Read a client's onStatus codes until the server closes the connection; (codes, monotonic time of EOF)."""
    codes: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for event in client.events:
            if isinstance(event, rtmp.Status):
                codes.append(event.code)
        client.events.clear()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise TimeoutError(f"no EOF within {timeout}s; codes so far {codes}")
        try:
            if not await client.read_once(remaining):
                return codes, time.monotonic()
        except (ConnectionError, OSError):
            return codes, time.monotonic()
