"""A worker process: started by the master as `python -m nonstop.cli --worker [-c FILE]`, it serves every
connection on listening sockets it inherits, and takes its orders from the master on the control channel.

Signals are the master's business: the worker ignores the ones the master handles (it runs in its own process
group, so a terminal's ^C reaches the master only, and a stray group-wide signal changes nothing). If the
control channel closes, the master is gone, and the worker quits gracefully on its own.

Everything is imported at start (architecture decision 9), by importing this module.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import signal
import socket

import uvloop

from nonstop.config import ConfigError, load
from nonstop.handover import transfer, wire  # noqa: F401  (imported at start, decision 9)
from nonstop.log import log
from nonstop.master.channel import WORKER_ENV, Channel
from nonstop.server.lifecycle import Serving
from nonstop.master.limits import raise_nofile_limit
from nonstop.server.run import configure_logging
from nonstop.server.worker import Worker

# What the master handles; a worker must never die of, or act on, a signal meant for the master.
MASTER_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


# The media path allocates a Packet and a few small containers per message (9,000 a second with 200
# publishers); with CPython's default gen-0 threshold of 700 the cyclic collector ran over ten times a second
# and was 5% of the worker's samples in an ingest profile (bench/RESULTS.md). Reference counting frees media
# messages; the collector is only for rare cycles, so it may run less often.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    """Collect less often, and move what was imported at start out of the collector's sight (gc.freeze)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def run_worker(config) -> int:
    for sig in MASTER_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    configure_logging(config)
    tune_gc()
    try:
        spec = json.loads(os.environ.pop(WORKER_ENV))
        channel = Channel(socket.socket(fileno=spec["control"]))
        listeners = {key: _inherited(fd) for key, fd in spec["listeners"]}
    except (KeyError, ValueError, TypeError, OSError) as e:
        log.error("worker", f"--worker is for the master to use: no usable {WORKER_ENV} ({e!r})")
        return 1
    raise_nofile_limit(config.max_connections)
    return uvloop.run(WorkerProcess(config, channel).run(listeners))



def _inherited(fd: int) -> socket.socket:
    sock = socket.socket(fileno=fd)
    sock.set_inheritable(False)
    sock.setblocking(False)
    return sock


class WorkerProcess:
    def __init__(self, config, channel: Channel):
        self.channel = channel
        self.worker = Worker(config)
        # Who supervises this worker; /metrics reports the master's memory and CPU too.
        self.worker.master_pid = os.getppid()
        self.serving = Serving(self.worker, on_draining=lambda: channel.send("draining"),
                               on_listeners_closed=lambda keys: channel.send("listeners_closed", keys=keys))
        self._orders: asyncio.Queue = asyncio.Queue()

    async def run(self, listeners: dict[str, socket.socket]) -> int:
        loop = asyncio.get_running_loop()
        await self.serving.start(listeners)
        loop.add_reader(self.channel.fileno(), self._on_readable)
        orders = loop.create_task(self._carry_out_orders())
        self.channel.send("ready", pid=os.getpid())
        log.trace("worker", f"worker serving, pid={os.getpid()}, master={self.worker.master_pid}, "
                            f"listeners: {self.serving.describe()}")
        code = await self.serving.wait()
        orders.cancel()
        if not self.channel.closed:
            loop.remove_reader(self.channel.fileno())
            self.channel.send("exiting", code=code)
            self.channel.close()
        return code

    # ----- orders ------------------------------------------------------------------------------------------

    def _on_readable(self) -> None:
        messages = self.channel.receive()
        if messages is None:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self.channel.close()
            if self.serving.quitting is None:
                log.error("worker", "the master is gone (control channel closed); quitting gracefully")
                self.serving.quit(graceful=True)
            return
        for message, fds in messages:
            self._orders.put_nowait((message, fds))

    async def _carry_out_orders(self) -> None:
        # One at a time, in order: a reload's listeners must be in place before a later order looks at them.
        while True:
            message, fds = await self._orders.get()
            try:
                await self._carry_out(message, fds)
            except Exception as e:  # an order gone wrong must not take the connections down
                log.error("worker", f"order {message.get('op')} failed: {e!r}")

    async def _carry_out(self, message: dict, fds: list[int]) -> None:
        op = message["op"]
        if op == "quit":
            _close_fds(fds)
            self.serving.quit(graceful=bool(message.get("graceful")))
        elif op == "reopen":
            _close_fds(fds)
            log.reopen()
            log.trace("worker", "reopened the log file")
        elif op == "reload":
            await self._reload(message, fds)
        else:
            _close_fds(fds)
            log.warn("worker", f"unknown order {op!r} from the master; ignored")

    async def _reload(self, message: dict, fds: list[int]) -> None:
        add_keys = list(message.get("add", []))
        if len(add_keys) != len(fds):
            _close_fds(fds)
            self.channel.send("reloaded", ok=False, error=f"{len(add_keys)} listeners but {len(fds)} fds")
            return
        add = {key: _inherited(fd) for key, fd in zip(add_keys, fds)}
        remove = list(message.get("remove", []))
        if self.serving.quitting is not None:
            for sock in add.values():
                sock.close()
            self.channel.send("reloaded", ok=False, error="quitting")
            return
        error = ""
        try:
            config = load(message.get("path"))
        except (ConfigError, OSError) as e:
            # The master checked this file a moment ago; if it changed since, keep the running config, but
            # follow the master's listeners, which it has already committed to.
            error = f"the worker could not load the config the master checked: {e}"
            log.error("worker", error)
            config = self.worker.config
        else:
            for warning in config.warnings:
                log.warn("config", warning)
            configure_logging(config)
        await self.serving.reload(config, add, remove)
        raise_nofile_limit(config.max_connections)
        log.trace("worker", f"reloaded; listeners: {self.serving.describe()}")
        self.channel.send("reloaded", ok=not error, error=error)


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
