"""One line per event, SRS style: `[2026-11-21 12:00:00.123][Trace][pid][cid] message`.

A context id (cid) names each connection, so every line about one client can be grepped. Levels follow
`srs_log_level` (verbose, info, trace, warn, error); lines go to the console or to `srs_log_file`, which
SIGUSR1 reopens for log rotation.
"""

from __future__ import annotations

import os
import sys
import time

LEVELS = {"verbose": 0, "info": 1, "trace": 2, "warn": 3, "error": 4}
# The labels SRS prints for each level.
LABELS = {0: "Verb", 1: "Debug", 2: "Trace", 3: "Warn", 4: "Error"}


class Logger:
    def __init__(self):
        self.level = LEVELS["trace"]
        self.path: str | None = None
        self.stream = sys.stderr
        self.pid = os.getpid()

    def configure(self, level: str = "trace", tank: str = "console", path: str | None = None) -> None:
        self.level = LEVELS.get(level, LEVELS["trace"])
        self.pid = os.getpid()
        if tank == "file" and path:
            self.path = path
            self.reopen()
        else:
            self.path = None
            self.stream = sys.stderr

    def reopen(self) -> None:
        """Reopen the log file (SIGUSR1, after logrotate moved it away)."""
        if not self.path:
            return
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        old = self.stream
        self.stream = open(self.path, "a", buffering=1, encoding="utf-8")
        if old not in (sys.stderr, sys.stdout, None):
            try:
                old.close()
            except OSError:
                pass

    def _write(self, level: int, cid: str, message: str) -> None:
        if level < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        line = f"[{stamp}.{int(now * 1000) % 1000:03d}][{LABELS[level]}][{self.pid}][{cid}] {message}\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must never take a connection down

    def verbose(self, cid: str, message: str) -> None:
        self._write(0, cid, message)

    def info(self, cid: str, message: str) -> None:
        self._write(1, cid, message)

    def trace(self, cid: str, message: str) -> None:
        self._write(2, cid, message)

    def warn(self, cid: str, message: str) -> None:
        self._write(3, cid, message)

    def error(self, cid: str, message: str) -> None:
        self._write(4, cid, message)


log = Logger()
