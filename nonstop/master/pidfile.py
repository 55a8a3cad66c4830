"""The pid file: the master's pid with a trailing newline, write-locked with fcntl for the master's life.

The lock, not the file's existence, says whether an instance runs: a file left behind by a crash (or by
SRS, which never deletes its own) is unlocked, so the next start takes it over. The lock is a POSIX record
lock (`fcntl.lockf`, i.e. F_SETLK with F_WRLCK, as SRS takes it), held by the open fd and released by the kernel
when the process dies, however it dies. Beware the POSIX rule: closing *any* fd of the file drops the process's
lock, so nothing in the master may open the pid file but this class. On a clean exit the file is removed, but only if it still holds our own
pid: an operator or a newer instance may have written another.
"""

from __future__ import annotations

import errno
import fcntl
import os


class AlreadyRunning(Exception):
    """Another process holds the pid file's lock."""

    def __init__(self, path: str, pid: int | None):
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"nonstop is already running ({who} holds the lock on the pid file {path})")
        self.path = path
        self.pid = pid


def read_pid(path: str) -> int | None:
    """The pid in the file, or None when the file holds no pid. Raises OSError when it cannot be read."""
    with open(path, "rb") as f:
        text = f.read(64).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


class PidFile:
    def __init__(self, path: str):
        self.path = path
        self.fd: int | None = None
        self.pid = 0

    def acquire(self) -> None:
        """Lock the file and write our pid. Raises AlreadyRunning, or OSError when it cannot be created."""
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                try:
                    holder = read_pid(self.path)
                except OSError:
                    holder = None
                raise AlreadyRunning(self.path, holder) from None
            raise
        self.pid = os.getpid()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{self.pid}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        """Remove the file if it still holds our pid, then drop the lock (in that order, so no other instance
        can lock the file we are about to remove)."""
        if self.fd is None:
            return
        # Read through our own fd: closing any other fd of this file would drop our POSIX lock early.
        try:
            if os.pread(self.fd, 64, 0).decode("ascii", "replace").strip() == str(self.pid) and \
                    os.path.samefile(self.path, f"/proc/self/fd/{self.fd}"):
                os.unlink(self.path)
        except OSError:
            pass  # already gone or unreadable: nothing of ours to remove
        os.close(self.fd)
        self.fd = None
