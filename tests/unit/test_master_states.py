"""The master's state machine (Master and its Upgrading part), without processes: fake worker processes with real
control channels (the test reads the orders at the worker's end), and a fake loop whose timers the test fires by
moving a clock. Signals to orders, a worker's exit and the respawn backoff, reload and reopen, the quits, and
the upgrade's check and start phases."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import threading
import time

import pytest

from nonstop.config import load, load_text
from nonstop.config.values import Endpoint
from nonstop.log import log
from nonstop.master import master as master_mod
from nonstop.master import sockets as sockets_mod
from nonstop.master import upgrade as up
from nonstop.master.channel import Channel, socketpair
from nonstop.master.master import (BACKOFF_MAX_S, BACKOFF_MIN_S, BACKOFF_RESET_S, EXIT_OK, EXIT_RUNTIME,
                                   FAST_QUIT_KILL_S, GRACE_OVERRUN_S, RELOAD_ACK_TIMEOUT_S, Master)
from nonstop.master.sockets import ListenerSet, listener_key
from nonstop.master.workers import DRAINING, RETIRING, SERVING, STARTING, WorkerProcess

pytestmark = pytest.mark.timeout(30)

CONFIG = "listen 127.0.0.1:1935;\ndaemon off;\nsrs_log_tank console;\n{extra}\nvhost __defaultVhost__ {{ }}\n"


# ----- fakes ---------------------------------------------------------------------------------------------------

class FakeFuture:
    """Enough of a future for Master.done and run_in_executor: awaitable by a coroutine the test steps."""

    def __init__(self):
        self._done = False
        self._result = None

    def done(self) -> bool:
        return self._done

    def set_result(self, value) -> None:
        assert not self._done
        self._done, self._result = True, value

    def result(self):
        assert self._done
        return self._result

    def __await__(self):
        while not self._done:
            yield self
        return self._result


class FakeTimer:
    def __init__(self, when: float, callback, args):
        self._when, self.callback, self.args = when, callback, args
        self._cancelled = False

    def when(self) -> float:
        return self._when

    def cancel(self) -> None:
        self._cancelled = True

    def cancelled(self) -> bool:
        return self._cancelled


class FakeLoop:
    """A clock the test moves (advance() fires what is due, in order), readers, tasks the test steps."""

    def __init__(self):
        self.now = 1000.0
        self.timers: list[FakeTimer] = []
        self.readers: dict[int, tuple] = {}
        self.tasks: list = []
        self.executor_calls: list[tuple] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback, *args) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback, args)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[tuple[float, str]]:
        """(delay from now, callback name) of every timer still to fire."""
        return sorted((round(t.when() - self.now, 6), t.callback.__name__) for t in self.timers
                      if not t.cancelled())

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if not t.cancelled() and t.when() <= end), key=FakeTimer.when)
            if not due:
                break
            timer = due[0]
            self.timers.remove(timer)
            self.now = timer.when()
            timer.callback(*timer.args)
        self.now = end

    def add_reader(self, fd: int, callback, *args) -> None:
        self.readers[fd] = (callback, args)

    def remove_reader(self, fd: int) -> bool:
        return self.readers.pop(fd, None) is not None

    def create_future(self) -> FakeFuture:
        return FakeFuture()

    def create_task(self, coro):
        self.tasks.append(coro)
        step(coro)
        return coro

    def run_in_executor(self, executor, fn, *args) -> FakeFuture:
        future = FakeFuture()
        self.executor_calls.append((fn, args, future))
        return future


def step(coro) -> bool:
    """Run a coroutine until it waits; True once it has finished."""
    try:
        coro.send(None)
    except StopIteration:
        return True
    return False


class FakeProc:
    """A worker process: alive until the test says it exited (or the master kills it)."""
    next_pid = 40000

    def __init__(self):
        FakeProc.next_pid += 1
        self.pid = FakeProc.next_pid
        self.returncode: int | None = None
        self.killed = False

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        if self.returncode is None:
            self.returncode = -signal.SIGKILL


class Harness:
    """A Master on a fake loop whose spawn() makes fake workers; `ends[pid]` is the worker's end of the channel."""

    def __init__(self, config, started: bool = True):
        self.loop = FakeLoop()
        self.master = Master(config)
        self.master.loop = self.loop
        self.master.done = self.loop.create_future()
        self.master.spawn = self.spawn
        self.ends: dict[int, Channel] = {}
        self.spawned: list[WorkerProcess] = []
        self.spawn_handovers: list[socket.socket | None] = []
        if started:
            self.ready(self.master.spawn())

    def spawn(self, handover: socket.socket | None = None) -> WorkerProcess:
        ours, theirs = socketpair()
        generation = self.master.generation + 1 if handover is not None else self.master.generation
        worker = WorkerProcess(FakeProc(), Channel(ours), generation)
        self.master.workers.append(worker)
        self.loop.add_reader(worker.channel.fileno(), self.master._on_channel, worker)
        self.ends[worker.pid] = Channel(theirs)
        self.spawned.append(worker)
        self.spawn_handovers.append(handover)
        return worker

    def report(self, worker: WorkerProcess, op: str, **fields) -> None:
        """The worker sends a report; the master reads it as its loop would."""
        assert self.ends[worker.pid].send(op, **fields)
        callback, args = self.loop.readers[worker.channel.fileno()]
        callback(*args)

    def ready(self, worker: WorkerProcess) -> WorkerProcess:
        self.report(worker, "ready", pid=worker.pid)
        return worker

    def orders(self, worker: WorkerProcess) -> list[dict]:
        """The orders the worker got since the last call (fds that rode along are closed)."""
        got = []
        for message, fds in self.ends[worker.pid].receive() or []:
            for fd in fds:
                socket.socket(fileno=fd).close()
            message["fds"] = len(fds)
            got.append(message)
        return got

    def ops(self, worker: WorkerProcess) -> list[str]:
        return [m["op"] for m in self.orders(worker) if m["op"] != "upgrade_status"]

    def exit(self, worker: WorkerProcess, code: int) -> None:
        worker.proc.returncode = code
        self.master.handle_chld()

    @property
    def result(self):
        return self.master.done.result() if self.master.done.done() else None

    def close(self) -> None:
        for worker in list(self.master.workers):
            self.master._forget(worker)
        for end in self.ends.values():
            end.close()
        self.master.listeners.close_all()
        for coro in self.loop.tasks:
            coro.close()


@pytest.fixture
def logged(monkeypatch):
    """The log lines, in a string."""
    stream = io.StringIO()
    monkeypatch.setattr(log, "stream", stream)
    monkeypatch.setattr(log, "path", None)
    monkeypatch.setattr(master_mod, "configure_logging", lambda config: None)   # a reload would take it away
    return stream


@pytest.fixture
def make(logged):
    made = []

    def make_harness(extra: str = "", started: bool = True, path=None) -> Harness:
        config = load(str(path)) if path is not None else load_text(CONFIG.format(extra=extra))
        harness = Harness(config, started)
        made.append(harness)
        return harness
    yield make_harness
    for harness in made:
        harness.close()


# ----- signals to orders, and the quits ------------------------------------------------------------------------

def test_sigint_is_a_fast_quit_that_kills_a_worker_still_alive_after_its_bound(make, logged):
    h = make()
    worker = h.master.workers[0]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    h.master.listeners.sockets["rtmp test"] = sock
    h.master.handle_int()
    assert h.orders(worker) == [{"op": "quit", "graceful": False, "fds": 0}]
    assert sock.fileno() == -1 and not h.master.listeners.sockets, "the master closed its listeners"
    assert h.loop.pending() == [(FAST_QUIT_KILL_S, "_kill_workers")]
    h.master.handle_int()       # a second one changes nothing
    assert h.orders(worker) == []
    h.loop.advance(FAST_QUIT_KILL_S)
    assert worker.proc.killed and "fast quit: killing worker pid=" in logged.getvalue()
    assert h.result is None, "the master waits for the exit itself"
    h.master.handle_chld()
    assert h.result == EXIT_OK and not h.master.workers


def test_sigterm_is_fast_and_graceful_with_force_grace_quit(make):
    h = make()
    h.master.handle_term()
    assert [m["graceful"] for m in h.orders(h.master.workers[0])] == [False]
    h = make("force_grace_quit on;")
    h.master.handle_term()
    assert [m["graceful"] for m in h.orders(h.master.workers[0])] == [True]


def test_sigquit_drains_once_and_a_later_fast_quit_ends_it(make, logged):
    h = make("grace_start_wait 1000; grace_max_wait 2000; grace_final_wait 500;")
    worker = h.master.workers[0]
    h.master.handle_quit()
    h.master.handle_quit()
    assert h.orders(worker) == [{"op": "quit", "graceful": True, "fds": 0}], "the second QUIT is not an order"
    assert "graceful quit already in progress; ignored" in logged.getvalue()
    assert h.loop.pending() == [(3.5 + GRACE_OVERRUN_S, "_kill_workers")], "the drain's own bound, plus overrun"
    h.report(worker, "draining")
    assert worker.state == DRAINING
    h.master.handle_int()
    assert h.orders(worker) == [{"op": "quit", "graceful": False, "fds": 0}]
    h.exit(worker, 0)
    assert h.result == EXIT_OK


def test_an_unbounded_drain_sets_no_kill_timer_and_the_listeners_close_when_every_worker_let_go(make):
    h = make()
    worker = h.master.workers[0]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    key = listener_key("rtmp", Endpoint("127.0.0.1", sock.getsockname()[1]))
    h.master.listeners.sockets[key] = sock
    h.master.handle_quit()
    assert h.loop.pending() == []
    h.report(worker, "listeners_closed", keys=[key])
    assert key in h.master.listeners.sockets, "a worker that has not reported draining may still serve it"
    h.report(worker, "draining")
    h.report(worker, "listeners_closed", keys=[key])
    assert key not in h.master.listeners.sockets and sock.fileno() == -1


def test_a_graceful_quit_without_a_live_worker_ends_at_once(make):
    h = make()
    h.exit(h.master.workers[0], -9)             # respawn pending
    h.master.handle_quit()
    assert h.result == EXIT_OK
    h.loop.advance(BACKOFF_MAX_S)
    assert len(h.spawned) == 1, "no respawn once quitting"


# ----- a worker's exit and the respawn backoff ---------------------------------------------------------------

def test_a_worker_that_keeps_dying_is_restarted_with_a_doubling_delay_up_to_the_max(make, logged):
    h = make()
    delays = []
    for _ in range(10):
        worker = h.master.live_workers()[0]
        h.exit(worker, 1)
        assert f"worker pid={worker.pid} exited unexpectedly (exit code 1)" in logged.getvalue()
        (delay, name), = h.loop.pending()
        assert name == "_respawn"
        delays.append(delay)
        h.loop.advance(delay)
        assert len(h.master.live_workers()) == 1
        h.ready(h.master.live_workers()[0])
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, BACKOFF_MAX_S, BACKOFF_MAX_S, BACKOFF_MAX_S]
    assert delays[0] == BACKOFF_MIN_S


def test_a_serving_worker_that_dies_while_an_old_one_drains_is_replaced(make, logged):
    """An upgrade's old worker still draining (a never-reading player left behind) does not serve the
    listeners: the serving worker's death must start a new one all the same (found by the chaos test)."""
    h = make()
    old = h.master.live_workers()[0]
    old.state = RETIRING
    new = h.ready(h.spawn())
    h.exit(new, -9)
    (delay, name), = h.loop.pending()
    assert name == "_respawn"
    h.loop.advance(delay)
    serving = h.master.serving_workers()
    assert len(serving) == 1 and serving[0] is not new and serving[0] is not old
    assert old in h.master.live_workers()


def test_a_worker_that_served_long_enough_starts_the_backoff_over(make):
    h = make()
    for _ in range(3):
        h.exit(h.master.live_workers()[0], -9)
        h.loop.advance(h.loop.pending()[0][0])
        h.ready(h.master.live_workers()[0])
    worker = h.master.live_workers()[0]
    worker.ready_at = time.monotonic() - BACKOFF_RESET_S
    h.exit(worker, -9)
    assert h.loop.pending() == [(BACKOFF_MIN_S, "_respawn")]


def test_a_first_worker_that_never_served_ends_the_master(make, logged):
    h = make(started=False)
    h.master.spawn()
    h.exit(h.spawned[0], 1)
    assert h.result == EXIT_RUNTIME and h.loop.pending() == []
    assert "the first worker never served; giving up" in logged.getvalue()


def test_a_worker_that_cannot_be_started_is_retried_with_backoff(make, monkeypatch, logged):
    h = make()
    del h.master.spawn          # the real spawn, with a Popen that fails

    def no_popen(*args, **kwargs):
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")
    monkeypatch.setattr(master_mod.subprocess, "Popen", no_popen)
    h.exit(h.master.workers[0], -9)
    h.loop.advance(BACKOFF_MIN_S)
    assert "cannot start a worker" in logged.getvalue()
    assert h.loop.pending() == [(BACKOFF_MIN_S * 2, "_respawn")]
    assert h.master.workers == [] and h.result is None, "the master stays, with its listeners"


def test_a_channel_closed_by_the_worker_is_forgotten_and_its_exit_handled(make):
    h = make()
    worker = h.master.workers[0]
    worker.proc.returncode = 0
    h.ends[worker.pid].close()
    callback, args = h.loop.readers[worker.channel.fileno()]
    callback(*args)
    assert worker not in h.master.workers and worker.channel.closed
    assert h.loop.pending() == [(BACKOFF_MIN_S, "_respawn")]


def test_a_report_of_an_unexpected_shape_is_logged_and_the_next_ones_still_count(make, logged):
    h = make(started=False)
    worker = h.master.spawn()
    end = h.ends[worker.pid]
    end.send("listeners_closed", keys=5)         # not a list
    end.send("no_such_report")
    end.send("ready", pid=worker.pid)           # in the same read as the two above
    callback, args = h.loop.readers[worker.channel.fileno()]
    callback(*args)
    text = logged.getvalue()
    assert "cannot use the report 'listeners_closed'" in text and "unknown report 'no_such_report'" in text
    assert worker.state == SERVING and h.master.ever_ready


# ----- reload and reopen ---------------------------------------------------------------------------------------

def test_a_reload_waits_for_every_worker_and_a_worker_exit_counts_as_done(make, tmp_path, logged):
    path = tmp_path / "nonstop.conf"
    path.write_text(CONFIG.format(extra=""))
    h = make(path=path)
    second = h.ready(h.master.spawn())
    first = h.master.workers[0]
    path.write_text(CONFIG.format(extra="max_connections 77;"))
    h.master.handle_hup()
    assert h.ops(first) == ["reload"] and h.ops(second) == ["reload"]
    assert h.master.reloading and first.reload_pending and second.reload_pending
    h.master.handle_hup()
    assert "reload refused: the previous reload is not finished" in logged.getvalue()
    h.report(first, "reloaded", ok=True, error="")
    assert h.master.reloading
    h.exit(second, -9)
    assert not h.master.reloading and "reload config success" in logged.getvalue()
    assert h.master.config.max_connections == 77


def test_a_reload_a_worker_never_confirms_ends_at_its_timeout(make, tmp_path, logged):
    path = tmp_path / "nonstop.conf"
    path.write_text(CONFIG.format(extra=""))
    h = make(path=path)
    h.master.handle_hup()
    assert (RELOAD_ACK_TIMEOUT_S, "_reload_timeout") in h.loop.pending()
    h.loop.advance(RELOAD_ACK_TIMEOUT_S)
    assert not h.master.reloading
    assert "did not confirm the reload in time" in logged.getvalue()


def test_a_broken_config_is_refused_and_the_workers_are_not_told(make, tmp_path, logged):
    path = tmp_path / "nonstop.conf"
    path.write_text(CONFIG.format(extra=""))
    h = make(path=path)
    path.write_text(CONFIG.format(extra="no_such_directive on;"))
    h.master.handle_hup()
    assert h.ops(h.master.workers[0]) == [] and not h.master.reloading
    assert f"reload failed, the old config keeps running: {path}:" in logged.getvalue()
    path.unlink()
    h.master.handle_hup()
    assert "cannot read" in logged.getvalue() and not h.master.reloading


def test_a_reload_whose_log_file_cannot_be_opened_is_refused_and_the_next_one_works(make, tmp_path, monkeypatch,
                                                                                   logged):
    path = tmp_path / "nonstop.conf"
    path.write_text(CONFIG.format(extra=""))
    h = make(path=path)
    configured = []

    def configure(config):
        if config.log_tank == "file" and "missing" in config.log_file:
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory", config.log_file)
        configured.append(config)
    monkeypatch.setattr(master_mod, "configure_logging", configure)
    path.write_text(CONFIG.format(extra="").replace("srs_log_tank console;",
                                                    "srs_log_tank file; srs_log_file /missing/x.log;"))
    h.master.handle_hup()
    assert "reload failed, the old config keeps running: cannot open the log file /missing/x.log" in \
        logged.getvalue()
    assert not h.master.reloading and h.ops(h.master.workers[0]) == []
    assert configured == [h.master.config] and h.master.config.log_tank == "console", "the old log is back"
    path.write_text(CONFIG.format(extra="max_connections 9;"))
    h.master.handle_hup()
    assert h.ops(h.master.workers[0]) == ["reload"], "a later reload is not refused as 'not finished'"


def test_a_reload_or_an_upgrade_is_refused_during_a_quit(make, tmp_path, logged):
    path = tmp_path / "nonstop.conf"
    path.write_text(CONFIG.format(extra=""))
    h = make(path=path)
    h.master.handle_quit()
    h.master.handle_hup()
    h.master.handle_usr2()
    assert "reload refused: a graceful quit is in progress" in logged.getvalue()
    assert "upgrade refused: a graceful quit is in progress" in logged.getvalue()
    assert h.ops(h.master.workers[0]) == ["quit"]


def test_reopen_tells_every_worker(make, logged):
    h = make()
    second = h.ready(h.master.spawn())
    h.master.handle_usr1()
    assert h.ops(h.master.workers[0]) == ["reopen"] and h.ops(second) == ["reopen"]
    assert "reopen log file, signo=10" in logged.getvalue()


def test_a_reopen_that_fails_is_logged_and_the_workers_are_still_told(make, monkeypatch, logged):
    h = make()

    def broken_reopen():
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", "/var/log/nonstop/nonstop.log")
    monkeypatch.setattr(log, "reopen", broken_reopen)
    h.master.handle_usr1()      # must not raise
    assert h.ops(h.master.workers[0]) == ["reopen"]
    text = logged.getvalue()
    assert "[Error]" in text and "cannot reopen" in text and "Not a directory" in text


# ----- the upgrade's check and start phases ---------------------------------------------------------------------

def upgrade_harness(make, check=(True, "")) -> Harness:
    h = make()
    h.master._reexec = lambda: None         # as if the execve failed: the same image goes on
    h.master._check_new_code = lambda: check
    return h


def finish_check(h: Harness) -> None:
    fn, args, future = h.loop.executor_calls[-1]
    future.set_result(fn(*args))
    step(h.loop.tasks[-1])


def test_an_upgrade_is_refused_before_a_worker_serves_and_during_another(make, logged):
    h = make(started=False)
    h.master.spawn()
    h.master.handle_usr2()
    assert "upgrade refused: no worker serves yet" in logged.getvalue() and not h.master.upgrade.in_flight
    h.ready(h.spawned[0])
    h.master._check_new_code = lambda: (True, "")
    h.master.handle_usr2()
    assert h.master.upgrade.state == up.CHECKING
    h.master.handle_usr2()
    assert "upgrade refused: the previous upgrade is still checking" in logged.getvalue()


def test_a_failed_check_ends_the_upgrade_there(make, logged):
    h = upgrade_harness(make, check=(False, "config error: bad line"))
    h.master.handle_usr2()
    finish_check(h)
    assert h.master.upgrade.state == up.FAILED and len(h.spawned) == 1
    assert "upgrade failed: the config check with the new code failed: config error: bad line" in logged.getvalue()


def test_an_upgrade_starts_a_new_worker_and_hands_over_once_it_is_ready(make, logged):
    h = upgrade_harness(make)
    old = h.master.workers[0]
    h.master.handle_usr2()
    finish_check(h)
    assert h.master.upgrade.state == up.STARTING and len(h.spawned) == 2
    new = h.spawned[1]
    assert new.candidate and new.generation == 2 and h.spawn_handovers[1] is not None
    assert (h.master.config.upgrade_timeout / 1000, "_upgrade_timeout") in h.loop.pending()
    h.orders(old)
    h.ready(new)
    assert [(m["op"], m["fds"]) for m in h.orders(old) if m["op"] != "upgrade_status"] == [("handover", 1)]
    assert old.state == RETIRING and h.master.upgrade.state == up.HANDING_OVER and h.master.generation == 2
    h.report(old, "handover_started")
    h.report(old, "handed_over", stats={"handed_over": 3, "total_ms": 5.0}, per_conn=[0.001])
    assert h.master.upgrade.state == up.DONE and "upgrade done: generation 2, handed_over=3" in logged.getvalue()
    h.exit(old, 0)
    assert h.loop.pending().count((BACKOFF_MIN_S, "_respawn")) == 0, "a retiring worker's exit is expected"


def test_a_quit_during_the_check_abandons_the_upgrade_before_any_new_worker(make, logged):
    h = upgrade_harness(make)
    h.master.handle_usr2()
    h.master.handle_quit()
    assert h.master.upgrade.state == up.ABANDONED
    assert "upgrade ended: graceful quit during the config check" in logged.getvalue()
    finish_check(h)
    assert len(h.spawned) == 1 and h.master.upgrade.results[up.ABANDONED] == 1
    assert "upgrade failed" not in logged.getvalue()


@pytest.mark.parametrize("quit_kind", ["graceful", "fast"])
def test_a_quit_during_the_start_ends_the_upgrade_truthfully_and_still_completes(make, logged, quit_kind):
    h = upgrade_harness(make)
    old = h.master.workers[0]
    h.master.handle_usr2()
    finish_check(h)
    new = h.spawned[1]
    h.orders(old)
    if quit_kind == "graceful":
        h.master.handle_quit()
    else:
        h.master.handle_int()
    text = logged.getvalue()
    assert f"upgrade ended: {quit_kind} quit during start" in text
    assert h.master.upgrade.state == up.ABANDONED and not new.candidate and new.handover_end is None
    assert [m["graceful"] for m in h.orders(new) if m["op"] == "quit"] == [quit_kind == "graceful"]
    h.ready(new)                # the new worker's ready was already on its way
    assert [m["op"] for m in h.orders(old) if m["op"] == "handover"] == []
    assert old.state != RETIRING and "upgrade done" not in logged.getvalue()
    h.report(old, "draining")
    h.report(new, "draining")
    h.exit(new, 0)
    assert h.result is None
    h.exit(old, 0)
    assert h.result == EXIT_OK
    assert "rolled_back" not in logged.getvalue()


def test_a_worker_that_started_during_an_upgrade_keeps_its_starting_state_until_ready(make):
    h = upgrade_harness(make)
    h.master.handle_usr2()
    finish_check(h)
    assert h.spawned[1].state == STARTING
    h.ready(h.spawned[1])
    assert h.spawned[1].state == SERVING


# ----- binding at start ----------------------------------------------------------------------------------------

def test_a_port_still_held_at_start_is_tried_again_until_it_is_free(monkeypatch, logged):
    monkeypatch.setattr(sockets_mod, "BIND_RETRY_S", 0.05)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = load_text(f"listen 127.0.0.1:{port};\nvhost __defaultVhost__ {{ }}\n")
    releaser = threading.Timer(0.08, holder.close)
    releaser.start()
    listeners = ListenerSet()
    try:
        listeners.open(config)
        assert list(listeners.sockets) == [f"rtmp 127.0.0.1:{port}"]
        text = logged.getvalue()
        assert f"Address already in use: 127.0.0.1:{port} (listen" in text
        assert "; trying again in 0.05s (1/5)" in text
    finally:
        releaser.join()
        listeners.close_all()


def test_a_port_held_through_every_try_fails_the_start(monkeypatch, logged):
    monkeypatch.setattr(sockets_mod, "BIND_RETRY_S", 0.01)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    config = load_text(f"listen 127.0.0.1:{port};\nvhost __defaultVhost__ {{ }}\n")
    listeners = ListenerSet()
    try:
        with pytest.raises(OSError) as raised:
            listeners.open(config)
        assert raised.value.errno == errno.EADDRINUSE and not listeners.sockets
        assert f"({sockets_mod.BIND_TRIES - 1}/{sockets_mod.BIND_TRIES})" in logged.getvalue()
    finally:
        holder.close()


# ----- after an upgrade's execve ---------------------------------------------------------------------------------

def test_workers_left_by_the_previous_image_are_adopted_with_their_state_and_channel(make):
    h = make(started=False)
    ours, theirs = socketpair()
    pid = os.posix_spawn("/bin/sh", ["sh", "-c", "exit 3"], os.environ)
    h.master._adopt_workers([{"pid": pid, "channel": ours.detach(), "state": DRAINING, "generation": 4}])
    worker, = h.master.workers
    assert (worker.pid, worker.state, worker.generation) == (pid, DRAINING, 4)
    assert Channel(theirs).send("ready", pid=pid)
    callback, args = h.loop.readers[worker.channel.fileno()]
    callback(*args)
    assert worker.state == DRAINING, "a draining worker stays draining"
    deadline = time.monotonic() + 5
    while worker.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert worker.proc.returncode == 3, "reaped with waitpid: it is still our child"
    h.master.handle_quit()
    h.master.handle_chld()
    assert h.result == EXIT_OK and not h.master.workers


def test_spawn_passes_the_channel_the_listeners_and_the_handover_end_and_nothing_else(make, monkeypatch):
    h = make(started=False)
    del h.master.spawn
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    h.master.listeners.sockets["rtmp test"] = sock
    calls = []

    class RecordingPopen:
        def __init__(self, args, **kwargs):
            calls.append((args, kwargs))
            self.pid = 4242
            self.returncode = None

        def poll(self):
            return self.returncode
    monkeypatch.setattr(master_mod.subprocess, "Popen", RecordingPopen)
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    worker = h.master.spawn()
    handover_ours, handover_theirs = socket.socketpair()
    candidate = h.master.spawn(handover=handover_theirs)
    try:
        (args, kwargs), (_, kwargs2) = calls
        assert args[-1] == "--worker" and kwargs["process_group"] == 0, "its own process group: ^C is the master's"
        spec = json.loads(kwargs["env"][master_mod.WORKER_ENV])
        assert spec["listeners"] == [["rtmp test", sock.fileno()]] and spec["generation"] == 1
        assert sorted(kwargs["pass_fds"]) == sorted([spec["control"], sock.fileno()])
        assert "NOTIFY_SOCKET" not in kwargs["env"], "only the master talks to systemd"
        spec2 = json.loads(kwargs2["env"][master_mod.WORKER_ENV])
        assert spec2["generation"] == 2 and spec2["handover"] == handover_theirs.fileno()
        assert handover_theirs.fileno() in kwargs2["pass_fds"]
        assert worker.state == STARTING and candidate.generation == 2 and h.master.workers == [worker, candidate]
    finally:
        handover_ours.close()
        handover_theirs.close()
