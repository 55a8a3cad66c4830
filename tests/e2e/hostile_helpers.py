"""Clients written for hostile tests: a blocking raw RTMP client over the sans-IO client session (it can stop
reading whenever the test says), a fast synthetic publisher in a thread, and the kernel's view of a socket."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time

from nonstop.protocol import rtmp
from tests.rtmp_client import AVC_HEADER, RtmpTestClient

# The smallest receive buffer Linux allows (it doubles the value and keeps a floor of about 2 KB): a client
# with it and no reads stops the server's writes after a few KB.
TINY_RCVBUF = 1024


class RawRtmp:
    """One RTMP client on a blocking socket. Every call reads until the answer it waits for, then stops: after
    `play()` the socket is read no more unless the test asks."""

    def __init__(self, port: int, rcvbuf: int | None = None, timeout: float = 10):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)   # before connect: sets the window
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.port = port
        self.session = rtmp.RtmpSession(rtmp.CLIENT)
        self.stream_id = 0

    @property
    def local_port(self) -> int:
        return self.sock.getsockname()[1]

    def _pump(self, predicate):
        """Send what is queued, then read until an event matches; None when the server closed first."""
        while True:
            out = self.session.data_to_send()
            if out:
                self.sock.sendall(out)
            data = self.sock.recv(65536)
            if not data:
                return None
            for event in self.session.receive_data(data):
                if predicate(event):
                    out = self.session.data_to_send()
                    if out:
                        self.sock.sendall(out)
                    return event

    def connect(self, app: str = "live", tc_url: str | None = None):
        """Connected or ConnectRejected (or None when the server closed without an answer)."""
        self.session.connect(app, tc_url or f"rtmp://127.0.0.1:{self.port}/{app}")
        return self._pump(lambda e: isinstance(e, (rtmp.Connected, rtmp.ConnectRejected)))

    def create_stream(self) -> int:
        self.session.create_stream()
        self.stream_id = self._pump(lambda e: isinstance(e, rtmp.StreamCreated)).stream_id
        return self.stream_id

    def play(self, name: str):
        """The first status after `play` (Play.Reset/Start, or an error such as Play.StreamNotFound)."""
        self.create_stream()
        self.session.play(self.stream_id, name)
        return self._pump(lambda e: isinstance(e, rtmp.Status) and e.code != "NetStream.Play.Reset")

    def publish(self, name: str):
        self.session.release_stream(name)
        self.create_stream()
        self.session.publish(self.stream_id, name)
        return self._pump(lambda e: isinstance(e, rtmp.Status))

    def close(self) -> None:
        self.sock.close()


def read_until_closed(sock: socket.socket, timeout: float) -> str:
    """Read and drop everything until the server's RST ("reset") or FIN ("eof"); "open" if still open."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return "eof"
        except ConnectionResetError:
            return "reset"
        except socket.timeout:
            continue
    return "open"


def raw_flv_player(port: int, path: str, rcvbuf: int | None = TINY_RCVBUF) -> socket.socket:
    """An HTTP-FLV GET on a raw socket, which the test then never reads."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return sock


def server_socket_state(server_port: int, client_port: int) -> tuple[str, int] | None:
    """The server side of one loopback connection as the kernel sees it: (state, Send-Q bytes), or None when
    the kernel holds no such socket any more."""
    out = subprocess.run(["ss", "-Htn", "state", "all", f"( sport = :{server_port} and dport = :{client_port} )"],
                         capture_output=True, text=True, timeout=5, check=True).stdout.split()
    if not out:
        return None
    return out[0], int(out[2])


class FastPublisher:
    """Publishes synthetic H.264 frames (`frame_bytes` each, 100 a second, a keyframe every 25) from a thread:
    at the default 32 KB, 3.2 MB/s, so a player that never reads is 1 MB behind within a second."""

    def __init__(self, port: int, stream: str = "fast", app: str = "live", frame_bytes: int = 32 * 1024):
        self.port, self.stream, self.app, self.frame_bytes = port, stream, app, frame_bytes
        self._stop = threading.Event()
        self._started = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def start(self) -> "FastPublisher":
        self._thread.start()
        if not self._started.wait(15):
            raise AssertionError(f"the fast publisher did not start: {self.error!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as e:  # reported by start() or the test
            self.error = e
            self._started.set()

    async def _run(self) -> None:
        client = await RtmpTestClient().open(self.port, app=self.app)
        status = await client.publish(self.stream)
        assert status.code == "NetStream.Publish.Start", status
        client.send_media(9, 0, AVC_HEADER)
        self._started.set()
        ts = 0
        frame = 0
        while not self._stop.is_set():
            head = bytes([0x17 if frame % 25 == 0 else 0x27, 0x01, 0, 0, 0])
            client.send_media(9, ts, head + bytes(self.frame_bytes))
            await client.writer.drain()
            frame += 1
            ts += 10
            await asyncio.sleep(0.01)
        client.writer.close()


def http_exchange(port: int, request: bytes, until: bytes | None = None, timeout: float = 5) -> bytes:
    """Send a raw request; read until the server closes, or until `until` appears after the head."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except (socket.timeout, ConnectionResetError):
                break
            if not chunk:
                break
            data += chunk
            head, sep, body = data.partition(b"\r\n\r\n")
            if until is not None and sep and until in body:
                break
        return data
