"""A worker process's side of the master, in this process: a WorkerProcess on real listening sockets with the
master's end of a real control channel in the test's hands. When the master is gone (its end closes), the worker
lets go of every port at once, drains bounded and ends; SIGTERM ends it in any state; a failed reopen is logged."""

from __future__ import annotations

import asyncio
import errno
import io
import os
import signal
import socket
import time

import pytest

from nonstop.config import load_text
from nonstop.log import log
from nonstop.master.channel import Channel, socketpair
from nonstop.server import worker_main
from nonstop.master.sockets import bind_listener
from nonstop.server.worker_main import WorkerProcess

pytestmark = pytest.mark.timeout(30)

MARGIN = 3
# Closing the listeners is a few system calls once the loop sees the channel's EOF.
LET_GO_GOAL_S = 0.1
FAST_QUIT_GOAL_S = 1.0


def config_text(extra: str = "") -> str:
    return f"""
listen 1935;
daemon off;
srs_log_tank console;
{extra}
http_api {{ enabled on; listen 127.0.0.1:1985; }}
http_server {{ enabled on; listen 127.0.0.1:8080; }}
vhost __defaultVhost__ {{ http_remux {{ enabled on; mount [vhost]/[app]/[stream].flv; }} }}
"""


@pytest.fixture
def logged(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)
    monkeypatch.setattr(log, "path", None)
    monkeypatch.setattr(worker_main, "configure_logging", lambda config: None)
    return stream


def refused(port: int) -> bool:
    """A blocking connect: the kernel answers it from the backlog (or refuses it) without the worker's loop."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == errno.ECONNREFUSED


class Running:
    """A WorkerProcess serving on three fresh ports (RTMP, HTTP, API); `master` is the master's channel end."""

    def __init__(self, extra: str = ""):
        self.master_sock, theirs = socketpair()
        self.master = Channel(self.master_sock)
        self.process = WorkerProcess(load_text(config_text(extra)), Channel(theirs))
        self.ports = {}
        self.listeners = {}
        for kind in ("rtmp", "http", "api"):
            sock = bind_listener("127.0.0.1", 0)
            port = sock.getsockname()[1]
            self.ports[kind] = port
            self.listeners[f"{kind} 127.0.0.1:{port}"] = sock
        self.task: asyncio.Task | None = None

    async def start(self) -> "Running":
        self.task = asyncio.get_running_loop().create_task(self.process.run(self.listeners))
        await self.reports("ready")
        return self

    async def reports(self, op: str, timeout: float = 5.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            for message, fds in self.master.receive() or []:
                for fd in fds:
                    os.close(fd)
                seen.append(message)
                if message["op"] == op:
                    return seen
            await asyncio.sleep(0.005)
        raise AssertionError(f"no {op} report within {timeout}s; got {seen}")

    async def until(self, condition, timeout: float, what: str) -> float:
        started = time.monotonic()
        while not condition():
            if time.monotonic() - started > timeout:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            await asyncio.sleep(0.002)
        return time.monotonic() - started

    def all_refused(self) -> bool:
        return all(refused(port) for port in self.ports.values())


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 20))


def test_the_orphan_bound_is_grace_max_wait_or_the_documented_default():
    assert worker_main.orphan_drain_ms(load_text(config_text("grace_max_wait 2500;"))) == 2500
    assert worker_main.orphan_drain_ms(load_text(config_text())) == worker_main.ORPHAN_DRAIN_MAX_S * 1000


def test_an_orphan_lets_go_of_every_port_at_once_and_ends(logged):
    async def scenario():
        w = await Running().start()
        assert not any(refused(port) for port in w.ports.values())
        w.master.close()            # the master died
        took = await w.until(w.all_refused, LET_GO_GOAL_S * MARGIN + 1, "every port to be refused")
        print(f"orphan: every port (RTMP, HTTP, API) refused {took * 1000:.1f} ms after the master's end closed")
        assert took <= LET_GO_GOAL_S * MARGIN
        assert await asyncio.wait_for(w.task, 5) == 0
    run(scenario())
    text = logged.getvalue()
    assert "is gone (control channel closed): closing every listener, draining for at most 10000 ms" in text
    assert "orphaned worker quit" in text


def test_an_orphan_takes_over_a_graceful_quit_that_still_accepts(logged):
    async def scenario():
        w = await Running("grace_start_wait 20000; grace_final_wait 20000;").start()
        w.master.send("quit", graceful=True)
        await w.reports("draining")
        assert not w.all_refused(), "the graceful quit still accepts for grace_start_wait"
        w.master.close()
        await w.until(w.all_refused, LET_GO_GOAL_S * MARGIN + 1, "every port to be refused")
        started = time.monotonic()
        assert await asyncio.wait_for(w.task, 5) == 0
        return time.monotonic() - started
    took = run(scenario())
    print(f"an orphan in a graceful quit's start wait (20 s) ended {took:.3f}s after letting go of its ports")
    assert took < 1.0, "no start or final wait for an orphan"


def test_an_orphan_drains_a_connection_for_its_bound_then_closes_it(monkeypatch, logged):
    monkeypatch.setattr(worker_main, "ORPHAN_DRAIN_MAX_S", 0.3)     # grace_max_wait 0: the default bound

    async def scenario():
        w = await Running().start()
        reader, writer = await asyncio.open_connection("127.0.0.1", w.ports["rtmp"])
        await w.until(lambda: len(w.process.worker.conns) == 1, 5, "the connection to be accepted")
        w.master.close()
        started = time.monotonic()
        await w.until(w.all_refused, 1, "every port to be refused")
        assert await reader.read() == b"", "the server closed it"
        closed_after = time.monotonic() - started
        assert await asyncio.wait_for(w.task, 5) == 0
        writer.close()
        return closed_after
    took = run(scenario())
    print(f"an orphan with an idle connection closed it {took:.3f}s after the master's end closed (bound 0.3 s)")
    assert 0.25 <= took <= 0.3 * MARGIN
    assert "grace_max_wait=300 ms reached" in logged.getvalue()


def test_sigterm_is_a_fast_quit_in_any_state(logged):
    async def scenario():
        w = await Running("grace_max_wait 60000;").start()
        reader, writer = await asyncio.open_connection("127.0.0.1", w.ports["rtmp"])
        await w.until(lambda: len(w.process.worker.conns) == 1, 5, "the connection to be accepted")
        w.master.close()            # an orphan in a 60 s drain, with a connection
        await w.until(w.all_refused, 1, "every port to be refused")
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(w.task, FAST_QUIT_GOAL_S * MARGIN) == 0
        took = time.monotonic() - started
        assert await reader.read() == b""
        writer.close()
        return took
    took = run(scenario())
    print(f"SIGTERM to an orphan in a 60 s drain: ended in {took:.3f}s (goal {FAST_QUIT_GOAL_S}s)")
    assert took <= FAST_QUIT_GOAL_S * MARGIN
    assert "sig=15, worker fast quit" in logged.getvalue()


def test_a_reopen_that_fails_is_logged_and_the_worker_serves_on(tmp_path, logged):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")

    async def scenario():
        w = await Running().start()
        log.path = str(blocker / "nonstop.log")
        w.master.send("reopen")
        await w.until(lambda: "cannot reopen the log file" in logged.getvalue(), 5, "the worker's error line")
        assert not any(refused(port) for port in w.ports.values()) and not w.task.done()
        log.path = None
        w.master.send("quit", graceful=False)
        assert await asyncio.wait_for(w.task, 5) == 0
    run(scenario())
    text = logged.getvalue()
    assert "[Error]" in text and "still writing to the old one" in text and "order reopen failed" not in text


def test_a_reload_whose_log_file_cannot_be_opened_still_follows_the_masters_plan(monkeypatch, logged):
    calls = []

    def configure(config):
        calls.append(config)
        if len(calls) == 1:
            raise PermissionError(errno.EACCES, "Permission denied", "/var/log/nonstop.log")
    monkeypatch.setattr(worker_main, "configure_logging", configure)

    async def scenario():
        w = await Running().start()
        extra = bind_listener("127.0.0.1", 0)
        port = extra.getsockname()[1]
        key = f"rtmp 127.0.0.1:{port}"
        w.master.send("reload", [extra.fileno()], path=None, add=[key], remove=[])
        extra.close()
        reply = (await w.reports("reloaded"))[-1]
        assert reply["ok"] is False and "cannot open the log file" in reply["error"], reply
        assert not refused(port), "the listener the master added is served"
        w.master.send("quit", graceful=False)
        assert await asyncio.wait_for(w.task, 5) == 0
    run(scenario())
    assert len(calls) == 2, "the old log settings were put back"
    assert "order reload failed" not in logged.getvalue()
