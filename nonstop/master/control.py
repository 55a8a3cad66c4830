"""`nonstop -s SIGNAL -c FILE`: signal the running master named by FILE's pid file, in nginx's style.

| verb | signal | meaning |
|---|---|---|
| stop | SIGINT | fast quit, even with `force_grace_quit on` (which only changes SIGTERM) |
| quit, grace | SIGQUIT | graceful quit (`grace` is SRS's init-script verb) |
| reload | SIGHUP | re-read the config |
| reopen | SIGUSR1 | reopen the log file |
| upgrade | SIGUSR2 | zero-downtime upgrade to the code on disk (nonstop/master/master.py) |

Exit codes follow the CLI's: 0 sent, 2 unknown verb, 3 config error, 5 no pid file or no such process, 1 other.
"""

from __future__ import annotations

import os
import signal
import sys

from nonstop.config import ConfigError, load
from nonstop.master.pidfile import read_pid

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_NO_PROCESS = 5

SIGNALS = {
    "stop": signal.SIGINT,
    "quit": signal.SIGQUIT,
    "grace": signal.SIGQUIT,
    "reload": signal.SIGHUP,
    "reopen": signal.SIGUSR1,
    "upgrade": signal.SIGUSR2,
}


def _error(message: str) -> None:
    print(f"nonstop: {message}", file=sys.stderr)


def send_signal(name: str, config_path: str | None) -> int:
    sig = SIGNALS.get(name)
    if sig is None:
        _error(f"unknown signal {name!r}; use one of: {', '.join(SIGNALS)}")
        return EXIT_USAGE
    try:
        config = load(config_path)
    except ConfigError as e:
        _error(f"config error: {e}")
        return EXIT_CONFIG
    except OSError as e:
        _error(f"cannot read config {config_path}: {e.strerror}")
        return EXIT_CONFIG
    path = config.pid
    try:
        pid = read_pid(path)
    except FileNotFoundError:
        _error(f"no pid file {path}: nonstop is not running (or -c names another config)")
        return EXIT_NO_PROCESS
    except OSError as e:
        _error(f"cannot read the pid file {path}: {e.strerror}")
        return EXIT_RUNTIME
    if pid is None:
        _error(f"the pid file {path} holds no pid")
        return EXIT_NO_PROCESS
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        _error(f"no such process {pid} (from the stale pid file {path}): nonstop is not running")
        return EXIT_NO_PROCESS
    except PermissionError:
        _error(f"not allowed to signal process {pid} (from {path}); run as its user")
        return EXIT_RUNTIME
    print(f"sent {signal.Signals(sig).name} ({name}) to nonstop pid {pid}")
    return EXIT_OK
