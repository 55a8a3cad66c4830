"""`master_process off`: one process that is its own master. It owns the listeners, the pid file and the
signals like the master (nonstop/master/master.py), and serves every connection itself, like a worker. There
is no upgrade in this mode, and nothing restarts it; it is for debugging.

The test-only NONSTOP_TEST_HANDOVER_TO=PATH makes SIGUSR2 hand every connection to a `nonstop --takeover PATH`
process, and `--takeover` is the receiving end (tests/e2e/test_handover_proof.py); both run in this mode.

Everything the server will ever run is imported here, at start (architecture decision 9): after a new version
is installed into the same environment, a lazy import in an old process would load new code.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import uvloop

from nonstop import SERVER_NAME
from nonstop.api.metrics import worker_totals
from nonstop.config import ConfigError, EMBEDDED, load
from nonstop.handover import transfer, wire  # noqa: F401  (imported at start, decision 9)
from nonstop.log import log
from nonstop.master import daemon, sdnotify
from nonstop.master.limits import raise_nofile_limit
from nonstop.master.pidfile import AlreadyRunning, PidFile
from nonstop.master.sockets import ListenerSet, systemd_sockets
from nonstop.server.lifecycle import Serving
from nonstop.server.worker import Worker

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_RUNNING = 4
HANDOVER_ENV = "NONSTOP_TEST_HANDOVER_TO"


def configure_logging(config) -> None:
    log.configure(config.log_level, config.log_tank, config.log_file)


def run_single_process(config, takeover: str | None = None) -> int:
    configure_logging(config)
    for warning in config.warnings:
        log.warn("config", warning)
    status_fd = None
    if config.daemon:
        status_fd = daemon.daemonize()
        log.pid = os.getpid()
    pidfile = PidFile(config.pid)
    try:
        pidfile.acquire()
    except (AlreadyRunning, OSError) as e:
        code = EXIT_RUNNING if isinstance(e, AlreadyRunning) else EXIT_RUNTIME
        log.error("main", str(e))
        daemon.report(status_fd, code)
        return code
    listeners = ListenerSet()
    try:
        raise_nofile_limit(config.max_connections)
        try:
            listeners.open(config, systemd_sockets())
        except OSError as e:
            log.error("main", f"cannot listen: {e}")
            print(f"nonstop: cannot listen: {e}", file=sys.stderr)
            daemon.report(status_fd, EXIT_RUNTIME)
            return EXIT_RUNTIME
        if config.daemon:
            daemon.detach_stdio()
        return uvloop.run(SingleProcess(config, listeners, status_fd).run(takeover))
    finally:
        listeners.close_all()
        pidfile.release()


class SingleProcess:
    """The signals of the master table, carried out in this process."""

    def __init__(self, config, listeners: ListenerSet, status_fd: int | None):
        self.config = config
        self.path = None if config.path == EMBEDDED else config.path
        self.listeners = listeners
        self.status_fd = status_fd
        self.worker = Worker(config)
        self.serving = Serving(self.worker, on_listeners_closed=self.listeners.close)
        self.handing_over = False

    async def run(self, takeover: str | None) -> int:
        loop = asyncio.get_running_loop()
        for sig, handler in ((signal.SIGINT, self.handle_int), (signal.SIGTERM, self.handle_term),
                             (signal.SIGQUIT, self.handle_quit), (signal.SIGHUP, self.handle_hup),
                             (signal.SIGUSR1, self.handle_usr1), (signal.SIGUSR2, self.handle_usr2)):
            loop.add_signal_handler(sig, handler)
        # The serving side gets copies of the sockets, the owner keeps its own (as with a master and worker).
        await self.serving.start({key: sock.dup() for key, sock in self.listeners.items()})
        log.trace("main", f"{SERVER_NAME} serving as a single process, pid={os.getpid()}, "
                          f"listeners: {self.serving.describe()}")
        sdnotify.ready()
        daemon.report(self.status_fd, EXIT_OK)
        if takeover:
            stats = await transfer.take_over(self.worker, takeover)
            log.trace("main", f"takeover done: {stats.as_dict()}")
        code = await self.serving.wait()
        log.trace("main", f"quit, exit code {code}")
        return code

    # ----- signals (the master's table) ---------------------------------------------------------------------

    def handle_int(self) -> None:
        self.quit(signal.SIGINT, graceful=False)

    def handle_term(self) -> None:
        if self.config.force_grace_quit:
            log.trace("main", f"force gracefully quit, signo={signal.SIGTERM.value}")
        self.quit(signal.SIGTERM, graceful=self.config.force_grace_quit)

    def handle_quit(self) -> None:
        self.quit(signal.SIGQUIT, graceful=True)

    def handle_hup(self) -> None:
        if self.serving.quitting:
            log.warn("main", f"sig={signal.SIGHUP.value}, reload refused: a {self.serving.quitting} quit is in "
                             f"progress")
            return
        asyncio.get_running_loop().create_task(self.reload())

    def handle_usr1(self) -> None:
        log.reopen()
        log.warn("main", f"reopen log file, signo={signal.SIGUSR1.value}")

    def handle_usr2(self) -> None:
        signo = signal.SIGUSR2.value
        if self.serving.quitting or self.handing_over:
            log.warn("main", f"sig={signo}, upgrade refused: a quit is in progress")
            return
        target = os.environ.get(HANDOVER_ENV)
        if not target:
            log.warn("main", f"sig={signo}, upgrade is not available with master_process off; nothing changes")
            return
        log.trace("main", f"sig={signo}: handing every connection over to {target} (test only)")
        self.handing_over = True
        asyncio.get_running_loop().create_task(self._hand_over(target))

    def quit(self, sig: signal.Signals, graceful: bool) -> None:
        if graceful:
            if self.serving.quitting == "graceful":
                log.trace("main", f"sig={sig.value}, graceful quit already in progress; ignored")
                return
            if self.serving.quitting is None:
                log.trace("main", f"sig={sig.value}, user start gracefully quit")
                sdnotify.stopping()
        else:
            if self.serving.quitting == "fast":
                return
            log.trace("main", f"sig={sig.value}, user terminate program, fast quit")
            if self.serving.quitting is None:
                sdnotify.stopping()
            self.listeners.close_all()
        self.serving.quit(graceful)

    async def _hand_over(self, target: str) -> None:
        self.serving.close_media_listeners()
        self.listeners.close_all()
        stats = await transfer.hand_over(self.worker, target, totals=lambda: worker_totals(self.worker))
        log.trace("main", f"handover done: {stats.as_dict()}")
        self.serving.quit(graceful=False)

    async def reload(self) -> None:
        log.trace("main", f"reload config, signo={signal.SIGHUP.value}")
        sdnotify.reloading()
        try:
            try:
                new = load(self.path)
            except ConfigError as e:
                log.error("main", f"reload failed, the old config keeps running: {e}")
                return
            except OSError as e:
                log.error("main", f"reload failed, the old config keeps running: cannot read {self.path}: "
                                  f"{e.strerror}")
                return
            for warning in new.warnings:
                log.warn("config", warning)
            try:
                plan = self.listeners.plan(new)
            except OSError as e:
                log.error("main", f"reload failed, the old config keeps running: cannot listen: {e}")
                return
            configure_logging(new)
            self.config = new
            add = {key: sock.dup() for key, sock in plan.add.items()}
            self.listeners.commit(plan)
            await self.serving.reload(new, add, plan.remove)
            raise_nofile_limit(new.max_connections)
            log.trace("main", f"reload config success; listeners: {self.serving.describe()}")
        finally:
            sdnotify.ready()
