"""Real Worker objects in one asyncio loop, real TCP clients on loopback, and the real handover code between
them over a real UNIX socketpair. Used by test_handover_transfer.py and test_handover_stateful.py.

`Stepper` is the handover's test seam (transfer.py `step`): the handover task stops at each phase until the
test lets it go on, so client actions can be interleaved with every step of it.
"""

from __future__ import annotations

import asyncio
import inspect
import socket

from nonstop.config import load_text
from nonstop.handover import transfer
from nonstop.protocol import rtmp
from nonstop.server.worker import Worker
from tests.rtmp_client import AVC_HEADER, AVC_INTER, AVC_KEYFRAME, RtmpTestClient

CONFIG = """
listen 1935;
max_connections 1000;
http_server { enabled on; listen 8080; }
vhost __defaultVhost__ {
    http_remux { enabled on; mount [vhost]/[app]/[stream].flv; }
    # The state machine's publishers send media only when a rule says so: no idle timeout within a run.
    publish { normal_timeout 600000; firstpkt_timeout 600000; }
}
"""
TIMEOUT_S = 10.0


def listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    sock.setblocking(False)
    return sock


class ServedWorker:
    """A Worker serving RTMP and HTTP on its own loopback ports."""

    def __init__(self, config_text: str = CONFIG):
        self.worker = Worker(load_text(config_text))
        self.rtmp = listening_socket()
        self.http = listening_socket()
        self.rtmp_port = self.rtmp.getsockname()[1]
        self.http_port = self.http.getsockname()[1]
        self.freed_pinned: list[str] = []
        registry = self.worker.registry
        remove = registry.remove

        def checked_remove(source):     # the invariant "no pinned source is freed", watched at its one door
            if source in getattr(registry, "pinned", ()):
                self.freed_pinned.append(source.key)
            remove(source)
        registry.remove = checked_remove

    async def start(self) -> "ServedWorker":
        await self.worker.serve({"rtmp": [self.rtmp], "http": [self.http]})
        return self

    async def stop(self) -> None:
        await self.worker.stop()

    def conn_of(self, client_port: int):
        """The registered, open connection whose peer is this client port, or None."""
        for conn in self.worker.conns.values():
            if conn.closed or conn.transport is None:
                continue
            peer = conn.transport.get_extra_info("peername")
            if peer and peer[1] == client_port:
                return conn
        return None


class Stepper:
    """transfer.py's `step` seam: the handover stops at each phase until `advance()` lets it go on."""

    def __init__(self):
        self.phase: tuple[str, str] | None = None
        self.phases: list[tuple[str, str]] = []
        self._reached = asyncio.Event()
        self._go = asyncio.Event()

    async def __call__(self, phase: str, key: str) -> None:
        self.phase = (phase, key)
        self.phases.append(self.phase)
        self._reached.set()
        await self._go.wait()
        self._go.clear()

    async def wait_reached(self, task: asyncio.Task) -> bool:
        """Until the handover stops at a phase (True) or ends (False)."""
        reached = asyncio.ensure_future(self._reached.wait())
        done, _ = await asyncio.wait([reached, task], timeout=TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        if reached not in done:
            reached.cancel()
        if not done:
            raise TimeoutError(f"the handover is stuck after {self.phase}")
        if reached in done:
            self._reached.clear()
            return True
        return False

    def advance(self) -> None:
        self._go.set()


class Handover:
    """One handover from `old` to `new`, stepped (with a Stepper) or run through."""

    def __init__(self, old: ServedWorker, new: ServedWorker, stepper: Stepper | None = None,
                 totals=None):
        self.old, self.new = old, new
        self.stepper = stepper
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        new.worker.taking_over = True
        # Only what the code under test supports (so these tests also run, and fail, on the code before the
        # fixes: c3acb38 had neither seam).
        params = inspect.signature(transfer.hand_over_on).parameters
        kwargs = {k: v for k, v in (("step", stepper), ("totals", totals)) if k in params}
        if "step" not in params:
            self.stepper = None
        self.send_task = asyncio.ensure_future(transfer.hand_over_on(old.worker, ours, **kwargs))
        self.recv_task = asyncio.ensure_future(self._receive(theirs))

    async def _receive(self, sock):
        try:
            return await transfer.take_over_on(self.new.worker, sock)
        finally:
            self.new.worker.taking_over = False
            self.new.worker.retry_waiting_flv()

    @property
    def done(self) -> bool:
        return self.send_task.done()

    async def step(self) -> bool:
        """Let the handover go on to its next phase; False once it has ended."""
        if self.send_task.done():
            return False
        if self.stepper is not None and self.stepper.phase is not None:
            self.stepper.advance()
        if self.stepper is None:
            await self.finish()
            return False
        return await self.stepper.wait_reached(self.send_task)

    async def finish(self):
        while self.stepper is not None and not self.send_task.done():
            await self.step()
        sent = await asyncio.wait_for(self.send_task, TIMEOUT_S)
        received = await asyncio.wait_for(self.recv_task, TIMEOUT_S)
        return sent, received


class Client:
    """An RTMP test client that reads all the time in the background (a healthy viewer), and remembers if
    the server closed it."""

    def __init__(self, role: str, stream: str):
        self.role, self.stream = role, stream
        self.rtmp = RtmpTestClient()
        self.port = 0
        self.left = False            # the test closed it
        self.kicked = False          # the test had the server close it
        self.server_closed = False   # it saw EOF or an error it did not cause
        self.media = 0
        self.reader: asyncio.Task | None = None
        self.next_ts = 0

    async def open(self, port: int) -> "Client":
        await self.rtmp.open(port)
        self.port = self.rtmp.writer.get_extra_info("sockname")[1]
        if self.role == "publish":
            status = await self.rtmp.publish(self.stream)
            assert status.code == "NetStream.Publish.Start", status
            self.rtmp.send_media(rtmp.MSG_VIDEO, 0, AVC_HEADER)
            self.send_frame(key=True)
        else:
            await self.rtmp.play(self.stream)
        self.reader = asyncio.ensure_future(self._read())
        return self

    def send_frame(self, key: bool = False) -> None:
        self.rtmp.send_media(rtmp.MSG_VIDEO, self.next_ts, AVC_KEYFRAME if key else AVC_INTER)
        self.next_ts += 40

    async def _read(self) -> None:
        try:
            while True:
                data = await self.rtmp.reader.read(65536)
                if not data:
                    break
                events = self.rtmp.session.receive_data(data)
                self.media += sum(1 for e in events if isinstance(e, rtmp.Media))
                self.rtmp._flush()
        except (OSError, asyncio.CancelledError):
            pass
        except Exception:
            pass
        if not self.left:
            self.server_closed = True

    async def leave(self) -> None:
        self.left = True
        if self.reader is not None:
            self.reader.cancel()
        self.rtmp.writer.transport.abort() if self.role == "probe" else self.rtmp.writer.close()

    @property
    def live(self) -> bool:
        return not self.left and not self.kicked and not self.server_closed


async def wait_until(predicate, timeout: float = TIMEOUT_S, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)
