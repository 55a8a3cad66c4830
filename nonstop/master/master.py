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

The upgrade sequence (SIGUSR2) is in upgrading.py, its plain state in upgrade.py.
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
from nonstop.master.upgrading import EXEC_BLOCKED, Upgrading
from nonstop.master.workers import (DRAINING, RETIRING, SERVING, STARTING, WorkerProcess,  # noqa: F401
                                    describe_exit)

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

def configure_logging(config) -> None:
    log.configure(config.log_level, config.log_tank, config.log_file)




class Master(Upgrading):
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
        self.reload_started_ms = 0              # wall clock, for the reload's entry in the upgrade history
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
        try:
            configure_logging(config)
        except OSError as e:
            message = f"cannot open the log file {config.log_file}: {e}"
            if up.STATE_ENV not in os.environ:
                print(f"nonstop: {message}", file=sys.stderr)     # as nginx: a start fails, before anything
                return EXIT_RUNTIME
            # The same master after an upgrade's execve: it has workers to look after; it logs to stderr.
            log.configure(config.log_level, "console")
            log.error("main", f"{message}; logging to stderr")
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
            try:
                self._on_report(worker, message)
            except (TypeError, ValueError, AttributeError, KeyError) as e:
                # A report of another build's shape (an upgrade runs two builds side by side): the ones after
                # it still count.
                log.error("main", f"cannot use the report {message.get('op')!r} from worker pid={worker.pid}: "
                                  f"{e!r}; ignored")

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
        if not self.quitting:
            self._push_upgrade()        # the worker list changed (an old worker finished draining, or died)
        if worker.reload_pending:
            worker.reload_pending = False
            self._reload_progress()
        if self.quitting:
            if worker.candidate and self.upgrade.in_flight:
                self._rollback(worker, "the service quits")
            log.trace("main", f"worker pid={worker.pid} quit ({describe_exit(code)})")
            if not self.workers:
                self.finish(EXIT_OK)
            return
        if worker.discarded:
            log.trace("main", f"discarded new worker pid={worker.pid} exited ({describe_exit(code)})")
            return
        if worker.candidate and self.upgrade.in_flight:
            self._rollback(worker, f"the new worker pid={worker.pid} exited ({describe_exit(code)})")
            return
        if worker.state == RETIRING:
            if self.upgrade.state == up.HANDING_OVER:
                # It died before reporting: what it had handed over is served by the new worker, the rest is lost.
                log.error("main", f"old worker pid={worker.pid} exited ({describe_exit(code)}) during its handover")
                self._finish_handover(next((w for w in self.workers if w.candidate), None))
                return
            log.trace("main", f"old worker pid={worker.pid} (generation {worker.generation}) exited "
                              f"({describe_exit(code)}) after its handover")
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

    def serving_workers(self) -> list[WorkerProcess]:
        """Live workers that serve or will serve the listeners: not an old worker draining after its handover or
        a graceful quit, not a discarded candidate."""
        return [w for w in self.live_workers() if w.state not in (RETIRING, DRAINING) and not w.discarded]

    def _respawn(self) -> None:
        # Invariant: while the master is not quitting, some worker serves the listeners. An old worker still
        # draining after an upgrade does not count: it let go of the listeners, so if the serving worker dies
        # meanwhile (kill -9, a crash), a new one must start all the same (found by the chaos test).
        if not self.quitting and not self.serving_workers():
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
        self._quit_during_upgrade()
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
        self._quit_during_upgrade()
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

    # ----- reload and reopen --------------------------------------------------------------------------------

    def reload(self) -> None:
        signo = signal.SIGHUP.value
        if self.quitting:
            log.warn("main", f"sig={signo}, reload refused: a {self.quitting} quit is in progress")
            return
        if self.reloading:
            log.warn("main", f"sig={signo}, reload refused: the previous reload is not finished")
            return
        if self.upgrade.in_flight:
            log.warn("main", f"sig={signo}, reload refused: an upgrade is {self.upgrade.state}")
            return
        log.trace("main", f"reload config, signo={signo}")
        sdnotify.reloading()
        self.reloading = True
        self.reload_started_ms = int(time.time() * 1000)
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
            configure_logging(new)
        except OSError as e:    # as nginx: a log file that cannot be opened fails the reload
            self._restore_logging()
            return self._reload_failed(f"reload failed, the old config keeps running: cannot open the log file "
                                       f"{new.log_file}: {e}")
        try:
            plan = self.listeners.plan(new)
        except OSError as e:
            self._restore_logging()
            return self._reload_failed(f"reload failed, the old config keeps running: cannot listen: {e}")
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

    def _restore_logging(self) -> None:
        try:
            configure_logging(self.config)
        except OSError as e:
            log.error("main", f"cannot reopen the log file {self.config.log_file} either: {e}")

    def _reload_failed(self, message: str) -> None:
        log.error("main", message)
        self.reloading = False
        sdnotify.ready()
        self.upgrade.record_reload(False, self.reload_started_ms, int(time.time() * 1000), message)
        self._push_upgrade()

    def _reload_progress(self) -> None:
        if self.reloading and not any(w.reload_pending for w in self.workers):
            self.reloading = False
            log.trace("main", "reload config success")
            sdnotify.ready()
            self.upgrade.record_reload(True, self.reload_started_ms, int(time.time() * 1000))
            self._push_upgrade()

    def _reload_timeout(self, reload_id: int) -> None:
        if self.reloading and reload_id == self.reload_id:
            for worker in self.workers:
                if worker.reload_pending:
                    log.warn("main", f"worker pid={worker.pid} did not confirm the reload in time")
                    worker.reload_pending = False
            self._reload_progress()

    def reopen(self) -> None:
        """Reopen the log file here, then have every worker reopen its own, whatever happened here: each process
        logs its own result, and one that cannot reopen keeps writing to the file it had."""
        try:
            log.reopen()
        except OSError as e:
            log.error("main", f"reopen log file, signo={signal.SIGUSR1.value}: cannot reopen {log.path}: {e}; "
                              f"the master keeps writing to the old one; the workers are told all the same")
        else:
            log.warn("main", f"reopen log file, signo={signal.SIGUSR1.value}")
        for worker in self.live_workers():
            worker.order("reopen")


def run_master(config) -> int:
    return Master(config).run()
