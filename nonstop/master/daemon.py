"""`daemon on`: the master goes to the background, SRS (and nginx) style, with a double fork.

Unlike SRS, the command that started it does not return until the daemon knows how its start went: the first
process waits on a pipe for one status byte (the exit code: 0 once the worker serves, 4 if already running, ...)
and exits with it, so `nonstop -c conf && echo started` means what it says. Workers never daemonize.

The working directory is kept, because relative paths in the config (pid, log file) mean the directory nonstop
was started in, as in SRS.
"""

from __future__ import annotations

import os

# Why the first process may exit without a status byte: the daemon died before it could report.
EXIT_NO_STATUS = 1


def daemonize() -> int:
    """Fork twice and detach; return (in the daemon) the fd on which to `report()` the start status."""
    read_end, write_end = os.pipe()
    if os.fork() > 0:
        os.close(write_end)
        status = os.read(read_end, 1)
        code = status[0] if status else EXIT_NO_STATUS
        if not status:     # the daemon printed its own errors; this one it could not
            os.write(2, b"nonstop: the daemon exited before it could say how its start went; see the log\n")
        os._exit(code)
    os.close(read_end)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)     # the session leader goes, so the daemon can never get a controlling terminal
    return write_end


def detach_stdio() -> None:
    """Point stdin, stdout and stderr at /dev/null (after start-up errors could still be printed)."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def report(fd: int | None, code: int) -> None:
    """Tell the waiting first process how the start went; a no-op when not daemonized or already told."""
    if fd is None:
        return
    try:
        os.write(fd, bytes([code & 0xFF]))
        os.close(fd)
    except OSError:
        pass
