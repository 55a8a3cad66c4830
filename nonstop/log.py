"""One line per event, SRS style: `[2026-11-21 12:00:00.123][Trace][pid][cid] message`.

A context id (cid) names each connection, so every line about one client can be grepped. Levels follow
`srs_log_level` (verbose, info, trace, warn, error); lines go to the console or to `srs_log_file`, which
SIGUSR1 reopens for log rotation.

Clients choose much of what is logged (app, stream, tcUrl, query, an HTTP path or header), so no message is
written as it came: every control character and the backslash are escaped (`\\n`, `\\x00`, `\\\\`), so a
client cannot start a line of its own or send escape sequences to a terminal; `quote(text)` cuts a
client-supplied field to FIELD_MAX characters where it enters a message; and a line never exceeds LINE_MAX.
"""

from __future__ import annotations

import os
import re
import sys
import time

LEVELS = {"verbose": 0, "info": 1, "trace": 2, "warn": 3, "error": 4}
# The labels SRS prints for each level.
LABELS = {0: "Verb", 1: "Debug", 2: "Trace", 3: "Warn", 4: "Error"}
# SRS's SRS_BASIC_LOG_SIZE: a log line is at most 8192 bytes, and SRS cuts longer ones. We count characters.
LINE_MAX = 8192
# A client-supplied field in a message (quote()): room for a tcUrl with a token in its query, while a 60 KB
# app name costs one short line instead of a 60 KB one.
FIELD_MAX = 512
# C0 controls, DEL, C1 controls (some terminals act on them too), the Unicode line and paragraph separators
# (some log viewers break lines there), lone surrogates (a UTF-8 log file cannot hold them, so the line would
# be lost), and the backslash, which escapes everything else.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff\\\\]")
_SHORT = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape_char(match: re.Match) -> str:
    char = match.group()
    short = _SHORT.get(char)
    if short is not None:
        return short
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control character and backslash escaped: one line, safe on a terminal."""
    return _UNSAFE.sub(_escape_char, text) if _UNSAFE.search(text) else text


def quote(value, cap: int = FIELD_MAX) -> str:
    """A client-supplied field as it may appear in a message: at most `cap` characters, then a note of what was
    cut (the escaping happens for the whole line when it is written)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= cap:
        return text
    return f"{text[:cap]}...({len(text) - cap} more chars)"


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
        line = f"[{stamp}.{int(now * 1000) % 1000:03d}][{LABELS[level]}][{self.pid}][{cid}] {escape(message)}"
        if len(line) > LINE_MAX:
            cut = f"...(line cut, {len(line)} chars)"
            line = line[:LINE_MAX - len(cut)] + cut
        line += "\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must never take a connection down

    quote = staticmethod(quote)

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
