"""The master's handle on its worker processes: their states, and the same few methods whether the master
started them (a Popen) or adopted them from its own previous image after an upgrade's execve."""

from __future__ import annotations

import os
import signal
import socket
import time

from nonstop.master.channel import Channel

STARTING, SERVING, DRAINING, RETIRING = "starting", "serving", "draining", "retiring"


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
