"""The master's upgrade sequence (SIGUSR2), a part of the Master class kept in its own file.

Upgrade (SIGUSR2), one at a time; its plain state is nonstop/master/upgrade.py:
1. `nonstop -t` runs with the code now on disk (after importing every module the master and the worker run),
   bounded by CHECK_TIMEOUT_S; a failure ends the upgrade there.
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

import os
import signal
import socket
import subprocess
import sys
import time

from nonstop.log import log
from nonstop.master import sdnotify
from nonstop.master import upgrade as up
from nonstop.master.channel import Channel
from nonstop.master.workers import RETIRING, SERVING, AdoptedChild, WorkerProcess

# `nonstop -t` is a config parse; 30 s is room for a loaded host, far from an upgrade_timeout's scale.
CHECK_TIMEOUT_S = 30.0
# `nonstop -t`, after importing everything a master and a worker run: the new image must be able to start, not
# only to parse the config (a master whose new code cannot import would die after its execve).
CHECK_PROGRAM = ("import sys\n"
                 "import nonstop.master.master, nonstop.server.worker_main\n"
                 "from nonstop.cli import main\n"
                 "sys.exit(main(sys.argv[1:]))\n")
# The old worker confirms a handover order at once; one that did not within this does not know the order.
HANDOVER_START_TIMEOUT_S = 5.0
# Signals that must not hit the master between its execve and the new image's handlers: blocked before, and
# delivered once the new image unblocks them.
EXEC_BLOCKED = {signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2,
                signal.SIGCHLD}


class Upgrading:
    """Mixed into Master: it uses the master's workers, listeners, pid file, config, timers and spawn()."""

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
        if self.quitting:
            self._end_upgrade(up.FAILED, f"a {self.quitting} quit started during the config check")
            return
        self.upgrade.advance(up.REEXEC)
        self._reexec()          # returns only if the execve failed
        self._start_new_worker()

    def _check_new_code(self) -> tuple[bool, str]:
        args = [sys.executable, "-c", CHECK_PROGRAM, "-t"]
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

    def _finish_handover(self, new: WorkerProcess | None, why: str = "") -> None:
        if new is not None:
            new.candidate = False
            if new.handover_end is not None:
                new.handover_end.close()
                new.handover_end = None
        self._end_upgrade(up.DONE, why)

    def _handover_failed(self, old: WorkerProcess, message: dict) -> None:
        """The old worker's handover broke; it serves again what it still has. If nothing moved, roll back.
        Once anything moved, the new worker holds live connections: it is kept (never killed because
        something later failed, handover/transfer.py I4) and the old worker drains what did not move."""
        stats = message.get("stats") or {}
        per_conn = [s for s in message.get("per_conn") or [] if isinstance(s, (int, float))]
        new = next((w for w in self.workers if w.candidate), None)
        moved = _int(stats.get("handed_over")) + _int(stats.get("streams"))
        if moved and new is not None and new.proc.poll() is None and self.upgrade.in_flight:
            self.upgrade.handover_stats(stats, per_conn)
            old.state = RETIRING
            old.order("quit", graceful=True)
            self._finish_handover(new, f"the handover broke after {moved} moved ({message.get('error')}); "
                                       f"the new worker pid={new.pid} keeps them, worker pid={old.pid} drains "
                                       f"the rest")
            return
        old.state = SERVING
        self.upgrade.handover_stats(stats, per_conn)
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
        self._end_upgrade(up.ROLLED_BACK, why if self.quitting else f"{why}; the old worker keeps serving")

    def _quit_during_upgrade(self) -> None:
        """A quit began (self.quitting is set). An upgrade still checking or starting ends here, as abandoned:
        nothing will be handed over, and its new worker, no longer a candidate, gets the quit order with the
        others and quits like them (a graceful quit drains what it accepted meanwhile). A quit during the
        handover is left to the handover's own path."""
        state = self.upgrade.state
        if state not in up.BEFORE_HANDOVER:
            return
        for new in [w for w in self.workers if w.candidate]:
            new.candidate = False
            if new.handover_end is not None:
                new.handover_end.close()
                new.handover_end = None
        phase = {up.CHECKING: "the config check", up.REEXEC: "the re-exec", up.STARTING: "start"}[state]
        self._end_upgrade(up.ABANDONED, f"{self.quitting} quit during {phase}; no handover, every worker quits")

    def _end_upgrade(self, result: str, why: str) -> None:
        if not self.upgrade.in_flight:
            return
        self.upgrade.finish(result, self._now_ms(), why)
        u = self.upgrade
        if result == up.DONE:
            # Honest figures: failed = connections whose batch did not move (they stayed on the old worker),
            # drained = left behind alone; a broken handover says why. Anything but a clean move is a warning.
            line = (f"upgrade done: generation {self.generation}, handed_over={u.handed_over}, "
                    f"failed={u.failed}, drained={u.drained}, total_ms={u.total_ms:.1f}, "
                    f"worst_ms={u.worst_ms:.1f}" + (f"; {why}" if why else ""))
            (log.warn if (u.failed or u.drained or why) else log.trace)("main", line)
        elif result == up.ABANDONED:
            log.warn("main", f"upgrade ended: {why}")
        else:
            log.error("main", f"upgrade {result}: {why}")
        sdnotify.ready()
        self._push_upgrade()

    def _push_upgrade(self) -> None:
        """Tell every worker the upgrade state, its history and the worker list (for the API and the console);
        sent at each step of an upgrade, at the end of a reload and whenever a worker starts serving or exits."""
        workers = self.workers_info()
        for worker in self.live_workers():
            worker.order("upgrade_status", upgrade=self.upgrade.to_dict(), workers=workers)

    def workers_info(self) -> list[dict]:
        """The master's workers as plain data: pid, generation, state (starting, serving, retiring: handing
        over or draining its leftovers after an upgrade, draining: quitting) and start time (ms, wall clock)."""
        now, wall = time.monotonic(), time.time()
        return [{"pid": w.pid, "generation": w.generation, "state": w.state,
                 "started_ms": int((wall - (now - w.started_at)) * 1000)} for w in self.live_workers()]


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0
