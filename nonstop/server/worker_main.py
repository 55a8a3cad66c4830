"""A worker process: started by the master as `python -m nonstop.cli --worker [-c FILE]`, it serves every
connection on listening sockets it inherits, and takes its orders from the master on the control channel.

Signals are the master's business: the worker ignores the ones the master handles (it runs in its own process
group, so a terminal's ^C reaches the master only, and a stray group-wide signal changes nothing), except
SIGTERM, which is a fast quit of this worker in any state (an orphan's way out; send the others to the master).

If the control channel closes, the master is gone (killed: a master that quits orders its workers first). The
master's end of the channel is held by the master alone (close-on-exec, made inheritable only across its own
upgrade execve, which keeps its pid and so stays the same master), so the channel's EOF is the one sign that
is needed; PR_SET_PDEATHSIG is not used (it fires on the death of the parent *thread* and needs care around
the master's threads). The orphan then closes every listener at once, the API's included, so a new master can
bind the same ports, drains for at most grace_max_wait (ORPHAN_DRAIN_MAX_S when that is 0) and exits.

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

from nonstop.api.metrics import worker_totals
from nonstop.config import ConfigError, load
from nonstop.handover import transfer, wire  # noqa: F401  (imported at start, decision 9)
from nonstop.log import log
from nonstop.master.channel import WORKER_ENV, Channel
from nonstop.server.lifecycle import QUIT_FAST, Serving
from nonstop.master.limits import raise_nofile_limit
from nonstop.server.run import configure_logging
from nonstop.server.worker import Worker

# Test only: make an upgrade's new worker fail. "1": exit at start; "hang": never report ready; "handover": die
# in the middle of the handover (after the first stream moved).
UPGRADE_FAIL_ENV = "NONSTOP_TEST_UPGRADE_FAIL"
# At exit, how long a takeover that never started may take to notice its socket was shut down.
TAKEOVER_STOP_S = 1.0
# What the master handles; a worker must never die of, or act on, a signal meant for the master. SIGTERM is not
# one of them: it is a fast quit of the worker, and kills it outright until its loop handles it (at start, when
# it holds no connection).
MASTER_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
# An orphan's drain bound when grace_max_wait is 0 (no bound). Short, because until it exits its publishers are
# not on the new master's worker, where new viewers land: 10 s lets a short play (a probe, a clip) end, and
# then everyone reconnects to the new server together.
ORPHAN_DRAIN_MAX_S = 10.0


def orphan_drain_ms(config) -> int:
    """How long an orphaned worker drains: grace_max_wait, or ORPHAN_DRAIN_MAX_S when that is 0 (no bound)."""
    return config.grace_max_wait or int(ORPHAN_DRAIN_MAX_S * 1000)


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
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        configure_logging(config)
    except OSError as e:    # the master opened it a moment ago; log to its stderr, as the master does then
        log.configure(config.log_level, "console")
        log.error("worker", f"cannot open the log file {config.log_file}: {e}; logging to stderr")
    tune_gc()
    try:
        spec = json.loads(os.environ.pop(WORKER_ENV))
        channel = Channel(socket.socket(fileno=spec["control"]))
        listeners = {key: _inherited(fd) for key, fd in spec["listeners"]}
        handover = spec.get("handover")
        handover_sock = socket.socket(fileno=handover) if handover is not None else None
    except (KeyError, ValueError, TypeError, OSError) as e:
        log.error("worker", f"--worker is for the master to use: no usable {WORKER_ENV} ({e!r})")
        return 1
    failure = os.environ.get(UPGRADE_FAIL_ENV, "")
    if handover_sock is not None and failure == "1":
        log.error("worker", f"{UPGRADE_FAIL_ENV}=1: this upgrade's new worker fails at start (test only)")
        return 1
    raise_nofile_limit(config.max_connections)
    process = WorkerProcess(config, channel)
    process.worker.generation = int(spec.get("generation", 1))
    process.worker.upgrade_info = spec.get("upgrade") or None
    if handover_sock is not None and failure == "hang":
        log.error("worker", f"{UPGRADE_FAIL_ENV}=hang: this upgrade's new worker never gets ready (test only)")
        process.never_ready = True
    process.crash_mid_handover = handover_sock is not None and failure == "handover"
    return uvloop.run(process.run(listeners, handover_sock))



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
        self.never_ready = False
        self.crash_mid_handover = False
        self._takeover: asyncio.Task | None = None

    async def run(self, listeners: dict[str, socket.socket], handover: socket.socket | None = None) -> int:
        loop = asyncio.get_running_loop()
        await self.serving.start(listeners)
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        loop.add_reader(self.channel.fileno(), self._on_readable)
        orders = loop.create_task(self._carry_out_orders())
        if handover is not None:
            # The old worker sends only once the master saw us ready; until then this waits on the socket.
            self.worker.taking_over = True
            self._takeover = loop.create_task(self._take_over(handover))
        if not self.never_ready:
            self.channel.send("ready", pid=os.getpid())
        log.trace("worker", f"worker serving, pid={os.getpid()}, master={self.worker.master_pid}, "
                            f"listeners: {self.serving.describe()}")
        code = await self.serving.wait()
        orders.cancel()
        if self._takeover is not None and not self._takeover.done():
            # Quitting before the old worker handed anything over: wake the receiving thread, or the process
            # could not exit (an executor thread blocked in recv).
            try:
                handover.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            await asyncio.wait([self._takeover], timeout=TAKEOVER_STOP_S)
        if not self.channel.closed:
            loop.remove_reader(self.channel.fileno())
            self.channel.send("exiting", code=code)
            self.channel.close()
        return code

    # ----- upgrade ------------------------------------------------------------------------------------------

    async def _take_over(self, sock: socket.socket) -> None:
        if self.crash_mid_handover:
            self.worker.on_adopt_source = self._crash_on_second_source
        try:
            stats = await transfer.take_over_on(self.worker, sock)
        finally:
            self.worker.taking_over = False
            self.worker.retry_waiting_flv()
        if stats.carried:
            self.worker.carried_totals = stats.carried
        log.trace("worker", f"takeover done: {stats.handed_over} connections")
        self.channel.send("taken_over", handed_over=stats.handed_over, refused=stats.refused)

    def _crash_on_second_source(self, count: int) -> None:
        if count >= 2:
            log.error("worker", f"{UPGRADE_FAIL_ENV}=handover: dying in the middle of the handover (test only)")
            os._exit(3)

    async def _hand_over(self, fds: list[int]) -> None:
        """The master's order to an upgrade's old worker: stop accepting, hand everything over on the socket
        that came with the order, then drain what is left (bounded by grace_max_wait) and exit.

        If the handover broke, this worker serves its listeners again and reports `handover_failed` with the
        figures: when nothing moved the master rolls back (kills the new worker); once anything moved it keeps
        the new worker and orders this one to drain (transfer.py I4: what moved is never killed)."""
        if len(fds) != 1 or self.serving.quitting is not None:
            _close_fds(fds)
            self.channel.send("handover_failed", error="no handover socket" if len(fds) != 1 else "quitting")
            return
        sock = socket.socket(fileno=fds[0])
        self.channel.send("handover_started")
        await self.serving.retire()
        try:
            stats = await transfer.hand_over_on(self.worker, sock, totals=lambda: worker_totals(self.worker))
        except Exception as e:  # hand_over_on never raises; if it ever did, serve again rather than freeze
            log.error("worker", f"the handover failed: {e!r}")
            stats = transfer.HandoverStats()
            stats.broken = f"{e!r}"
            sock.close()
        if stats.broken:
            log.error("worker", f"the handover broke ({stats.broken}) after {stats.handed_over} connections "
                                f"moved; serving again what was not moved")
            await self.serving.unretire()
            self.channel.send("handover_failed", error=stats.broken, stats=stats.as_dict(),
                              per_conn=stats.per_conn_s)
            return
        log.trace("worker", f"handover done: {stats.as_dict()}")
        self.channel.send("handed_over", stats=stats.as_dict(), per_conn=stats.per_conn_s)
        self.serving.retire_done()

    # ----- orders ------------------------------------------------------------------------------------------

    def _on_sigterm(self) -> None:
        log.trace("worker", f"sig={signal.SIGTERM.value}, worker fast quit")
        self.serving.quit(graceful=False)

    def _master_gone(self) -> None:
        if self.serving.quitting == QUIT_FAST:
            return
        bound = orphan_drain_ms(self.worker.config)
        log.error("worker", f"the master pid={self.worker.master_pid} is gone (control channel closed): closing "
                            f"every listener, draining for at most {bound} ms, then exiting")
        self.serving.orphaned(bound)

    def _on_readable(self) -> None:
        messages = self.channel.receive()
        if messages is None:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
            self.channel.close()
            self._master_gone()
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
            try:
                log.reopen()
            except OSError as e:
                log.error("worker", f"cannot reopen the log file {log.path}: {e}; still writing to the old one")
            else:
                log.trace("worker", "reopened the log file")
        elif op == "reload":
            await self._reload(message, fds)
        elif op == "handover":
            await self._hand_over(fds)
        elif op == "upgrade_status":
            _close_fds(fds)
            if isinstance(message.get("generation"), int):
                self.worker.generation = message["generation"]
            if isinstance(message.get("upgrade"), dict):
                self.worker.upgrade_info = message["upgrade"]
            if isinstance(message.get("workers"), list):
                self.worker.workers_info = message["workers"]
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
            try:
                configure_logging(config)
            except OSError as e:
                # The listeners and the rest of the config must still follow the master's plan.
                error = f"cannot open the log file {config.log_file}: {e}; still writing to the old one"
                try:
                    configure_logging(self.worker.config)
                except OSError:
                    pass
                log.error("worker", error)
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
