"""The master: a small process whose pid never changes. It owns the listening sockets, the pid file and its
lock, the signals and the config; it starts the worker that serves every connection, and turns signals into
orders for it. It does no media work (and imports no media code).

Signals, each handled at once (asyncio's add_signal_handler, one method per signal, gunicorn style):
| signal | meaning |
|---|---|
| SIGINT | fast quit, always |
| SIGTERM | fast quit; graceful with `force_grace_quit on` |
| SIGQUIT | graceful quit (a second one is ignored, with a log line) |
| SIGHUP | reload the config (refused during a drain) |
| SIGUSR1 | reopen the log file, here and in the workers |
| SIGUSR2 | upgrade: check the config with the code on disk, re-exec in place, start a new worker, have the old one hand its connections over (refused during a drain or another upgrade) |
| SIGCHLD | a worker exited: if nobody asked it to, start a new one, with backoff |

The master keeps a list of workers, not one, and each worker has its own control channel (channel.py), so an
upgrade starts a new worker next to old ones that drain.

Upgrade (SIGUSR2), one at a time; its plain state is nonstop/master/upgrade.py:
1. `nonstop -t` runs with the code now on disk, bounded by CHECK_TIMEOUT_S; a failure ends the upgrade there.
2. The master re-execs itself in place (`os.execve`, the same pid): its listeners, its pid file's fd (so its
   lock) and its workers' control channels are made inheritable and named in STATE_ENV; signals are blocked
   across the exec (the mask survives it) and unblocked once the new image handles them. RELOADING=1 then.
3. A new worker starts on the same listening sockets, with one end of a fresh UNIX socketpair for the handover.
   If it exits or is not ready within `upgrade_timeout`, it is killed and the old worker serves on (rollback).
4. Once it is ready, the old worker gets the other end with a `handover` order: it stops accepting, hands over
   everything it can, reports the figures, drains the rest (bounded by grace_max_wait) and exits. READY=1 once
   the upgrade is over, whatever its result.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time

from nonstop.config import ConfigError, diff, load
from nonstop.config import EMBEDDED
from nonstop.log import log
from nonstop.master import daemon, sdnotify
from nonstop.master.channel import WORKER_ENV, Channel, socketpair
from nonstop.master.limits import raise_nofile_limit
from nonstop.master.pidfile import AlreadyRunning, PidFile
from nonstop.master.sockets import LISTEN_ENV, ListenerSet, systemd_sockets
from nonstop.master import upgrade as up

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_RUNNING = 4

# A worker that dies is restarted after 0.1 s, then 0.2, 0.4 ... up to 10 s while it keeps dying; one that
# served for BACKOFF_RESET_S before dying starts the sequence over.
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 10.0
BACKOFF_RESET_S = 30.0
# A fast quit must end within 1 s: a worker still alive after this is killed.
FAST_QUIT_KILL_S = 0.8
# On top of the grace waits, how long a graceful quit with a bound may overrun before its worker is killed.
GRACE_OVERRUN_S = 5.0
# A worker that has not confirmed a reload by then is reported; systemd gets READY=1 anyway.
RELOAD_ACK_TIMEOUT_S = 10.0
# Settings that only a restart changes.
RESTART_ONLY = ("daemon", "pid", "master_process")

# `nonstop -t` is a config parse; 30 s is room for a loaded host, far from an upgrade_timeout's scale.
CHECK_TIMEOUT_S = 30.0
# The old worker confirms a handover order at once; one that did not within this does not know the order.
HANDOVER_START_TIMEOUT_S = 5.0
# Signals that must not hit the master between its execve and the new image's handlers: blocked before, and
# delivered once the new image unblocks them.
EXEC_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGCHLD}

STARTING, SERVING, DRAINING, RETIRING = "starting", "serving", "draining", "retiring"


def configure_logging(config) -> None:
    log.configure(config.log_level, config.log_tank, config.log_file)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class AdoptedChild:
    """A worker started by the master's previous image (before its execve): still our child, but with no Popen
    object; the same few methods, over waitpid and kill."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                self.returncode = 0    # reaped elsewhere: gone
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def kill(self) -> None:
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class WorkerProcess:
    """The master's handle on one worker process."""

    def __init__(self, proc, channel: Channel, generation: int = 1):
        self.proc = proc
        self.pid = proc.pid
        self.channel = channel
        self.state = STARTING
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.reload_pending = False
        self.generation = generation
        # An upgrade's new worker: the master's end of its handover socketpair, until the old worker gets it.
        self.candidate = False
        self.handover_end: socket.socket | None = None
        self.discarded = False      # a rolled-back new worker: its exit is expected
        self.handover_started = False

    def order(self, op: str, fds: list[int] | None = None, **fields) -> bool:
        return self.channel.send(op, fds, **fields)


class Master:
    def __init__(self, config):
        self.config = config
        self.path = None if config.path == EMBEDDED else config.path
        self.listeners = ListenerSet()
        self.pidfile: PidFile | None = None
        self.status_fd: int | None = None       # daemon on: where to report how the start went
        self.workers: list[WorkerProcess] = []
        self.quitting: str | None = None        # None, "fast" or "graceful"
        self.reloading = False
        self.reload_id = 0                      # which reload a confirmation timeout belongs to
        self.ever_ready = False
        self.backoff = BACKOFF_MIN_S
        self.loop: asyncio.AbstractEventLoop | None = None
        self.done: asyncio.Future | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self.generation = 1
        self.upgrade = up.Upgrade()
        self.past: dict | None = None           # what the previous image left (after an upgrade's execve)

    # ----- start and stop ----------------------------------------------------------------------------------

    def run(self) -> int:
        config = self.config
        configure_logging(config)
        for warning in config.warnings:
            log.warn("config", warning)
        try:
            self.past = up.take_state()
        except ValueError as e:
            log.error("main", f"the previous master left an unusable {up.STATE_ENV} ({e}); starting afresh")
        if self.past is not None:
            return self._run_after_exec()
        if config.daemon:
            if config.log_tank == "console":
                log.warn("main", "daemon on with srs_log_tank console: the logs go to /dev/null")
            self.status_fd = daemon.daemonize()
            log.pid = os.getpid()
        self.pidfile = PidFile(config.pid)
        try:
            self.pidfile.acquire()
        except AlreadyRunning as e:
            return self._fail(EXIT_RUNNING, str(e))
        except OSError as e:
            return self._fail(EXIT_RUNTIME, f"cannot write the pid file {config.pid}: {e.strerror}")
        try:
            return self._run_with_pidfile()
        finally:
            self.listeners.close_all()
            self.pidfile.release()

    def _run_after_exec(self) -> int:
        """The same master after an upgrade's execve: adopt the pid file, listeners and workers it left."""
        past = self.past
        self.pidfile = PidFile(self.config.pid)
        if past.get("pidfile_fd") is not None:
            self.pidfile.fd, self.pidfile.pid = past["pidfile_fd"], past.get("pid") or os.getpid()
            os.set_inheritable(self.pidfile.fd, False)
        for key, fd in past["listeners"]:
            sock = socket.socket(fileno=fd)
            sock.set_inheritable(False)
            sock.setblocking(False)
            self.listeners.sockets[key] = sock
        self.generation = past["generation"]
        self.upgrade = up.Upgrade.from_dict(past["upgrade"])
        self.ever_ready = bool(past.get("ever_ready", True))
        log.trace("main", f"master re-executed with the new code, pid={os.getpid()}, generation {self.generation}")
        try:
            return self._run_with_pidfile(adopted=True)
        finally:
            self.listeners.close_all()
            self.pidfile.release()

    def _run_with_pidfile(self, adopted: bool = False) -> int:
        raise_nofile_limit(self.config.max_connections)
        if not adopted:
            try:
                self.listeners.open(self.config, systemd_sockets())
            except OSError as e:
                return self._fail(EXIT_RUNTIME, f"cannot listen: {e}")
        if self.config.daemon and not adopted:
            daemon.detach_stdio()
        code = asyncio.run(self._main())
        daemon.report(self.status_fd, code)
        log.trace("main", f"master quit, exit code {code}")
        return code

    def _fail(self, code: int, message: str) -> int:
        log.error("main", message)
        if log.path or self.config.daemon:
            print(f"nonstop: {message}", file=sys.stderr)
        daemon.report(self.status_fd, code)
        return code

    async def _main(self) -> int:
        self.loop = asyncio.get_running_loop()
        self.done = self.loop.create_future()
        for sig, handler in ((signal.SIGINT, self.handle_int), (signal.SIGTERM, self.handle_term),
                             (signal.SIGQUIT, self.handle_quit), (signal.SIGHUP, self.handle_hup),
                             (signal.SIGUSR1, self.handle_usr1), (signal.SIGUSR2, self.handle_usr2),
                             (signal.SIGCHLD, self.handle_chld)):
            self.loop.add_signal_handler(sig, handler)
        log.trace("main", f"master pid={os.getpid()}, listeners: {self.listeners.describe()}")
        if self.past is not None:
            self._adopt_workers(self.past["workers"])
            signal.pthread_sigmask(signal.SIG_UNBLOCK, EXEC_BLOCKED)
            self.handle_chld()      # a worker that exited during the exec
            if self.upgrade.state == up.REEXEC:
                self._start_new_worker()
            elif not self.live_workers():
                self.spawn()
        else:
            self.spawn()
        try:
            return await self.done
        finally:
            for timer in self._timers:
                timer.cancel()
            for worker in list(self.workers):
                self._forget(worker)

    def finish(self, code: int) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(code)

    def _later(self, delay: float, callback, *args) -> None:
        now = self.loop.time()
        self._timers = [t for t in self._timers if not t.cancelled() and t.when() > now]
        self._timers.append(self.loop.call_later(delay, callback, *args))

    # ----- workers -----------------------------------------------------------------------------------------

    def spawn(self, handover: socket.socket | None = None) -> WorkerProcess | None:
        """Start a worker on the master's listeners. It inherits the sockets and one end of its channel (and,
        for an upgrade's new worker, one end of the handover socketpair)."""
        ours, theirs = socketpair()
        listeners = list(self.listeners.items())
        generation = self.generation + 1 if handover is not None else self.generation
        spec = {"control": theirs.fileno(), "listeners": [[key, sock.fileno()] for key, sock in listeners],
                "generation": generation, "upgrade": self.upgrade.to_dict()}
        extra_fds = []
        if handover is not None:
            spec["handover"] = handover.fileno()
            extra_fds.append(handover.fileno())
        env = {k: v for k, v in os.environ.items() if k not in (sdnotify.NOTIFY_SOCKET, *LISTEN_ENV)}
        env[WORKER_ENV] = json.dumps(spec)
        args = [sys.executable, "-m", "nonstop.cli", "--worker"]
        if self.path is not None:
            args += ["-c", self.path]
        else:
            env.pop("NONSTOP_CONF", None)     # the master runs the embedded config; so must the worker
        try:
            # Its own process group: a terminal's ^C or ^\ reaches the master, which gives the orders.
            proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, process_group=0,
                                    pass_fds=[theirs.fileno(), *(sock.fileno() for _, sock in listeners),
                                              *extra_fds])
        except OSError as e:
            ours.close()
            theirs.close()
            log.error("main", f"cannot start a worker: {e}")
            if handover is not None:
                return None     # the upgrade rolls back; the old worker serves on
            if not self.ever_ready:
                self.finish(EXIT_RUNTIME)
            else:
                self._schedule_respawn(self.backoff)
                self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
            return None
        theirs.close()
        worker = WorkerProcess(proc, Channel(ours), generation)
        self.workers.append(worker)
        self.loop.add_reader(worker.channel.fileno(), self._on_channel, worker)
        log.trace("main", f"started worker pid={proc.pid}")
        return worker

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.proc.returncode is None]

    def _on_channel(self, worker: WorkerProcess) -> None:
        messages = worker.channel.receive()
        if messages is None:
            # The worker closed its end: it is exiting. SIGCHLD tells when it is gone; until then stop listening.
            self.loop.remove_reader(worker.channel.fileno())
            worker.channel.close()
            self.handle_chld()
            return
        for message, fds in messages:
            for fd in fds:          # workers never send fds to the master
                os.close(fd)
            self._on_report(worker, message)

    def _on_report(self, worker: WorkerProcess, message: dict) -> None:
        op = message["op"]
        if op == "ready":
            worker.state = SERVING if worker.state == STARTING else worker.state
            worker.ready_at = time.monotonic()
            log.trace("main", f"worker pid={worker.pid} serving")
            if worker.candidate:
                self._new_worker_ready(worker)
            if not self.ever_ready:
                self.ever_ready = True
                sdnotify.ready()
                daemon.report(self.status_fd, EXIT_OK)
                self.status_fd = None
        elif op == "draining":
            worker.state = DRAINING if worker.state != RETIRING else RETIRING
        elif op == "handed_over":
            self._handed_over(worker, message)
        elif op == "handover_failed":
            self._handover_failed(worker, message)
        elif op == "handover_started":
            worker.handover_started = True
        elif op == "taken_over":
            log.trace("main", f"worker pid={worker.pid} took over {message.get('handed_over')} connections")
        elif op == "listeners_closed":
            keys = [k for k in message.get("keys", []) if isinstance(k, str)]
            if self.quitting and all(w.state == DRAINING for w in self.live_workers()):
                # Only when every worker let go of them is the kernel socket closed and a connect refused.
                self.listeners.close(keys)
        elif op == "reloaded":
            if not message.get("ok"):
                log.warn("main", f"worker pid={worker.pid} reload: {message.get('error')}")
            worker.reload_pending = False
            self._reload_progress()
        elif op == "exiting":
            log.trace("main", f"worker pid={worker.pid} is exiting, code {message.get('code')}")
        else:
            log.warn("main", f"unknown report {op!r} from worker pid={worker.pid}; ignored")

    def handle_chld(self) -> None:
        for worker in list(self.workers):
            code = worker.proc.poll()
            if code is not None:
                self._on_exit(worker, code)

    def _forget(self, worker: WorkerProcess) -> None:
        if not worker.channel.closed:
            self.loop.remove_reader(worker.channel.fileno())
            worker.channel.close()
        if worker in self.workers:
            self.workers.remove(worker)

    def _on_exit(self, worker: WorkerProcess, code: int) -> None:
        self._forget(worker)
        if worker.reload_pending:
            worker.reload_pending = False
            self._reload_progress()
        if worker.discarded:
            log.trace("main", f"discarded new worker pid={worker.pid} exited ({describe_exit(code)})")
            return
        if worker.candidate and self.upgrade.in_flight:
            self._rollback(worker, f"the new worker pid={worker.pid} exited ({describe_exit(code)})")
            return
        if worker.state == RETIRING and not self.quitting:
            if self.upgrade.state == up.HANDING_OVER:
                # It died before reporting: what it had handed over is served by the new worker, the rest is lost.
                log.error("main", f"old worker pid={worker.pid} exited ({describe_exit(code)}) during its handover")
                self._finish_handover(next((w for w in self.workers if w.candidate), None))
                return
            log.trace("main", f"old worker pid={worker.pid} (generation {worker.generation}) exited "
                              f"({describe_exit(code)}) after its handover")
            return
        if self.quitting:
            log.trace("main", f"worker pid={worker.pid} quit ({describe_exit(code)})")
            if not self.workers:
                self.finish(EXIT_OK)
            return
        log.error("main", f"worker pid={worker.pid} exited unexpectedly ({describe_exit(code)})")
        if not self.ever_ready:
            log.error("main", "the first worker never served; giving up (see its log lines above)")
            self.finish(EXIT_RUNTIME)
            return
        served = time.monotonic() - (worker.ready_at or worker.started_at)
        if served >= BACKOFF_RESET_S:
            self.backoff = BACKOFF_MIN_S
        self._schedule_respawn(self.backoff)
        self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)

    def _schedule_respawn(self, delay: float) -> None:
        log.warn("main", f"starting a new worker in {delay:.1f}s; the listeners stay open meanwhile")
        self._later(delay, self._respawn)

    def _respawn(self) -> None:
        if not self.quitting and not self.live_workers():
            self.spawn()

    # ----- signals ------------------------------------------------------------------------------------------

    def handle_int(self) -> None:
        self.fast_quit(signal.SIGINT)

    def handle_term(self) -> None:
        if self.config.force_grace_quit:
            log.trace("main", f"force gracefully quit, signo={signal.SIGTERM.value}")
            self.graceful_quit(signal.SIGTERM)
        else:
            self.fast_quit(signal.SIGTERM)

    def handle_quit(self) -> None:
        self.graceful_quit(signal.SIGQUIT)

    def handle_hup(self) -> None:
        self.reload()

    def handle_usr1(self) -> None:
        self.reopen()

    def handle_usr2(self) -> None:
        self.start_upgrade()

    # ----- quitting -----------------------------------------------------------------------------------------

    def fast_quit(self, sig: signal.Signals) -> None:
        if self.quitting == "fast":
            return
        log.trace("main", f"sig={sig.value}, user terminate program, fast quit")
        if self.quitting is None:
            sdnotify.stopping()
        self.quitting = "fast"
        for worker in self.live_workers():
            worker.order("quit", graceful=False)
        self.listeners.close_all()
        if not self.live_workers():
            self.finish(EXIT_OK)
            return
        self._later(FAST_QUIT_KILL_S, self._kill_workers, "fast quit")

    def graceful_quit(self, sig: signal.Signals) -> None:
        if self.quitting == "graceful":
            log.trace("main", f"sig={sig.value}, graceful quit already in progress; ignored")
            return
        if self.quitting == "fast":
            return
        log.trace("main", f"sig={sig.value}, user start gracefully quit")
        sdnotify.stopping()
        self.quitting = "graceful"
        workers = self.live_workers()
        if not workers:
            self.finish(EXIT_OK)
            return
        for worker in workers:
            worker.order("quit", graceful=True)
        config = self.config
        if config.grace_max_wait:
            bound = (config.grace_start_wait + config.grace_max_wait + config.grace_final_wait) / 1000
            self._later(bound + GRACE_OVERRUN_S, self._kill_workers, "graceful quit overran grace_max_wait")

    def _kill_workers(self, why: str) -> None:
        for worker in self.live_workers():
            log.warn("main", f"{why}: killing worker pid={worker.pid}")
            worker.proc.kill()

    # ----- upgrade ------------------------------------------------------------------------------------------

    def _now_ms(self) -> int:
        return int(time.time() * 1000)

    def start_upgrade(self) -> None:
        signo = signal.SIGUSR2.value
        if self.quitting:
            log.warn("main", f"sig={signo}, upgrade refused: a {self.quitting} quit is in progress")
            return
        if self.upgrade.in_flight:
            log.warn("main", f"sig={signo}, upgrade refused: the previous upgrade is still {self.upgrade.state}")
            return
        if self.reloading:
            log.warn("main", f"sig={signo}, upgrade refused: a reload is not finished")
            return
        if not any(w.state == SERVING for w in self.live_workers()):
            log.warn("main", f"sig={signo}, upgrade refused: no worker serves yet")
            return
        log.trace("main", f"sig={signo}, upgrade: checking the config with the code on disk")
        self.upgrade.begin(self._now_ms())
        sdnotify.reloading()
        self._push_upgrade()
        self.loop.create_task(self._upgrade())

    async def _upgrade(self) -> None:
        ok, why = await self.loop.run_in_executor(None, self._check_new_code)
        if not ok:
            self._end_upgrade(up.FAILED, f"the config check with the new code failed: {why}")
            return
        self.upgrade.advance(up.REEXEC)
        self._reexec()          # returns only if the execve failed
        self._start_new_worker()

    def _check_new_code(self) -> tuple[bool, str]:
        args = [sys.executable, "-m", "nonstop.cli", "-t"]
        if self.path is not None:
            args += ["-c", self.path]
        try:
            result = subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                    timeout=CHECK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return False, f"`nonstop -t` took more than {CHECK_TIMEOUT_S:.0f}s"
        except OSError as e:
            return False, f"cannot run `nonstop -t`: {e}"
        if result.returncode != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            return False, lines[0] if lines else f"exit code {result.returncode}"
        return True, ""

    def _reexec(self) -> None:
        """execve the code on disk in place. Everything that must survive is made inheritable and named in the
        environment; the workers are not told (their channels simply go on in the new image)."""
        workers = self.live_workers()
        state = up.encode_state(
            listeners=[(key, sock.fileno()) for key, sock in self.listeners.items()],
            pidfile_fd=self.pidfile.fd if self.pidfile else None, pid=os.getpid(),
            workers=[{"pid": w.pid, "channel": w.channel.fileno(), "state": w.state,
                      "generation": w.generation} for w in workers if not w.channel.closed],
            generation=self.generation, upgrade=self.upgrade, ever_ready=self.ever_ready)
        fds = [sock.fileno() for _, sock in self.listeners.items()] + \
              [w.channel.fileno() for w in workers if not w.channel.closed]
        if self.pidfile and self.pidfile.fd is not None:
            fds.append(self.pidfile.fd)
        env = dict(os.environ)
        env[up.STATE_ENV] = state
        if self.path is None:
            env.pop("NONSTOP_CONF", None)
        args = [sys.executable, "-m", "nonstop.cli", *sys.argv[1:]]
        log.trace("main", f"upgrade: re-executing the master in place: {' '.join(args)}")
        signal.pthread_sigmask(signal.SIG_BLOCK, EXEC_BLOCKED)
        try:
            for fd in fds:
                os.set_inheritable(fd, True)
            os.execve(sys.executable, args, env)
        except OSError as e:
            for fd in fds:
                try:
                    os.set_inheritable(fd, False)
                except OSError:
                    pass
            signal.pthread_sigmask(signal.SIG_UNBLOCK, EXEC_BLOCKED)
            log.error("main", f"upgrade: cannot re-execute the master ({e}); it goes on with its old code")

    def _adopt_workers(self, workers: list[dict]) -> None:
        for info in workers:
            sock = socket.socket(fileno=info["channel"])
            sock.set_inheritable(False)
            worker = WorkerProcess(AdoptedChild(info["pid"]), Channel(sock), int(info.get("generation", 1)))
            worker.state = info.get("state", SERVING)
            worker.ready_at = time.monotonic()
            self.workers.append(worker)
            self.loop.add_reader(worker.channel.fileno(), self._on_channel, worker)
            log.trace("main", f"adopted worker pid={worker.pid} (generation {worker.generation}, {worker.state})")

    def _start_new_worker(self) -> None:
        self.upgrade.advance(up.STARTING)
        self._push_upgrade()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        new = self.spawn(handover=theirs)
        theirs.close()
        if new is None:
            ours.close()
            self._end_upgrade(up.ROLLED_BACK, "the new worker could not be started")
            return
        new.candidate = True
        new.handover_end = ours
        log.trace("main", f"upgrade: new worker pid={new.pid} (generation {new.generation}) starting, "
                          f"upgrade_timeout={self.config.upgrade_timeout} ms")
        self._later(self.config.upgrade_timeout / 1000, self._upgrade_timeout, new)

    def _upgrade_timeout(self, new: WorkerProcess) -> None:
        if new.candidate and self.upgrade.state == up.STARTING and new.proc.poll() is None:
            new.proc.kill()
            self._rollback(new, f"the new worker pid={new.pid} was not ready within upgrade_timeout="
                                f"{self.config.upgrade_timeout} ms; killed it")

    def _new_worker_ready(self, new: WorkerProcess) -> None:
        if self.upgrade.state != up.STARTING:
            return
        old = [w for w in self.live_workers() if w is not new and w.state == SERVING]
        self.upgrade.advance(up.HANDING_OVER)
        self.generation = new.generation
        if not old:
            self._finish_handover(new)
            return
        retiring = old[0]
        end, new.handover_end = new.handover_end, None
        sent = retiring.order("handover", [end.fileno()])
        end.close()
        if not sent:
            self._finish_handover(new)
            return
        retiring.state = RETIRING
        self._later(HANDOVER_START_TIMEOUT_S, self._handover_start_timeout, retiring, new)
        for extra in old[1:]:       # only one serves at a time; anything else just drains
            extra.order("quit", graceful=True)
        log.trace("main", f"upgrade: worker pid={new.pid} ready; worker pid={retiring.pid} hands over to it")

    def _handover_start_timeout(self, old: WorkerProcess, new: WorkerProcess) -> None:
        if self.upgrade.state == up.HANDING_OVER and not old.handover_started and new.candidate:
            # An old worker that does not know the order (a build before upgrades) ignores it.
            old.state = SERVING
            self._rollback(new, f"the old worker pid={old.pid} did not start the handover within "
                                f"{HANDOVER_START_TIMEOUT_S:.0f}s")

    def _handed_over(self, old: WorkerProcess, message: dict) -> None:
        stats = message.get("stats") or {}
        self.upgrade.handover_stats(stats, [s for s in message.get("per_conn") or [] if isinstance(s, (int, float))])
        new = next((w for w in self.workers if w.candidate), None)
        log.trace("main", f"upgrade: worker pid={old.pid} handed over: {stats}")
        self._finish_handover(new)

    def _finish_handover(self, new: WorkerProcess | None) -> None:
        if new is not None:
            new.candidate = False
            if new.handover_end is not None:
                new.handover_end.close()
                new.handover_end = None
        self._end_upgrade(up.DONE, "")

    def _handover_failed(self, old: WorkerProcess, message: dict) -> None:
        old.state = SERVING
        self.upgrade.handover_stats(message.get("stats") or {}, message.get("per_conn") or [])
        new = next((w for w in self.workers if w.candidate), None)
        why = f"the handover broke: {message.get('error')}; worker pid={old.pid} serves on"
        if new is not None and new.proc.poll() is None:
            new.proc.kill()
        if new is not None:
            new.candidate = False
            new.discarded = True
        self.generation = old.generation
        if self.upgrade.in_flight:
            self._end_upgrade(up.ROLLED_BACK, why)
        else:
            log.warn("main", why)
            self._push_upgrade()     # the figures of an upgrade already rolled back (its new worker exited)

    def _rollback(self, new: WorkerProcess, why: str) -> None:
        new.candidate = False
        new.discarded = True
        if new.handover_end is not None:
            new.handover_end.close()
            new.handover_end = None
        if new.proc.poll() is None:
            new.proc.kill()
        if self.upgrade.state == up.HANDING_OVER:
            # The old worker notices the broken socket itself and serves on (handover_failed follows).
            self.generation = new.generation - 1
        self._end_upgrade(up.ROLLED_BACK, f"{why}; the old worker keeps serving")

    def _end_upgrade(self, result: str, why: str) -> None:
        if not self.upgrade.in_flight:
            return
        self.upgrade.finish(result, self._now_ms(), why)
        u = self.upgrade
        if result == up.DONE:
            log.trace("main", f"upgrade done: generation {self.generation}, handed_over={u.handed_over}, "
                              f"failed={u.failed}, drained={u.drained}, total_ms={u.total_ms:.1f}, "
                              f"worst_ms={u.worst_ms:.1f}")
        else:
            log.error("main", f"upgrade {result}: {why}")
        sdnotify.ready()
        self._push_upgrade()

    def _push_upgrade(self) -> None:
        for worker in self.live_workers():
            worker.order("upgrade_status", upgrade=self.upgrade.to_dict())

    # ----- reload and reopen --------------------------------------------------------------------------------

    def reload(self) -> None:
        signo = signal.SIGHUP.value
        if self.quitting:
            log.warn("main", f"sig={signo}, reload refused: a {self.quitting} quit is in progress")
            return
        if self.reloading:
            log.warn("main", f"sig={signo}, reload refused: the previous reload is not finished")
            return
        log.trace("main", f"reload config, signo={signo}")
        sdnotify.reloading()
        self.reloading = True
        try:
            new = load(self.path)
        except ConfigError as e:
            return self._reload_failed(f"reload failed, the old config keeps running: {e}")
        except OSError as e:
            return self._reload_failed(f"reload failed, the old config keeps running: cannot read {self.path}: "
                                       f"{e.strerror}")
        for warning in new.warnings:
            log.warn("config", warning)
        changes = diff(self.config, new)
        for key in RESTART_ONLY:
            if key in changes:
                log.warn("main", f"reload: {key} changes only at a restart; it stays {changes[key][0]!r} until then")
                setattr(new, key, changes[key][0])
        try:
            plan = self.listeners.plan(new)
        except OSError as e:
            return self._reload_failed(f"reload failed, the old config keeps running: cannot listen: {e}")
        configure_logging(new)
        self.config = new
        log.trace("main", "reload changes: " + (", ".join(sorted(changes)) or "none"))
        fds = [sock.fileno() for sock in plan.add.values()]
        for worker in self.live_workers():
            if worker.order("reload", fds, path=self.path, add=list(plan.add), remove=plan.remove):
                worker.reload_pending = True
        self.listeners.commit(plan)     # our copies of removed listeners close; the worker closes its own
        if plan.changed:
            log.trace("main", f"listeners now: {self.listeners.describe()}")
        self.reload_id += 1
        self._later(RELOAD_ACK_TIMEOUT_S, self._reload_timeout, self.reload_id)
        self._reload_progress()

    def _reload_failed(self, message: str) -> None:
        log.error("main", message)
        self.reloading = False
        sdnotify.ready()

    def _reload_progress(self) -> None:
        if self.reloading and not any(w.reload_pending for w in self.workers):
            self.reloading = False
            log.trace("main", "reload config success")
            sdnotify.ready()

    def _reload_timeout(self, reload_id: int) -> None:
        if self.reloading and reload_id == self.reload_id:
            for worker in self.workers:
                if worker.reload_pending:
                    log.warn("main", f"worker pid={worker.pid} did not confirm the reload in time")
                    worker.reload_pending = False
            self._reload_progress()

    def reopen(self) -> None:
        log.reopen()
        log.warn("main", f"reopen log file, signo={signal.SIGUSR1.value}")
        for worker in self.live_workers():
            worker.order("reopen")


def run_master(config) -> int:
    return Master(config).run()
