"""Running one serving process: limits, listeners, the uvloop event loop, signals.

`run_single_process` is the `master_process off` mode (and the whole server until the master lands): one
process owns the listeners and serves. Everything the server will ever run is imported here, at start
(architecture decision 9): after a new version is installed into the same environment, a lazy import in an old
process would load new code.
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import socket
import sys

import uvloop

from nonstop import SERVER_NAME
from nonstop.handover import transfer, wire  # noqa: F401  (imported at start, decision 9)
from nonstop.log import log
from nonstop.server.listeners import bind_listener
from nonstop.server.worker import LISTENER_API, LISTENER_HTTP, LISTENER_RTMP, Worker

# Besides one fd per connection, a process needs fds for listeners, logs, pipes and the handover socket.
FD_MARGIN = 128


def raise_nofile_limit(max_connections: int) -> None:
    """Raise the soft open-file limit to the hard one; warn when max_connections cannot fit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warn("main", f"cannot raise the open-file limit from {soft} to {hard}: {e}")
    limit = soft if soft != resource.RLIM_INFINITY else 1 << 30
    if max_connections + FD_MARGIN > limit:
        log.warn("main", f"max_connections {max_connections} plus a margin of {FD_MARGIN} fds does not fit the "
                         f"open-file limit {limit}; raise it (ulimit -n, LimitNOFILE=)")


def open_listeners(config) -> dict[str, list[socket.socket]]:
    """Bind every listener the config names. Equal API and HTTP server ports share one socket."""
    reuse = getattr(config, "reuse_port", False)
    sockets: dict[str, list[socket.socket]] = {LISTENER_RTMP: [], LISTENER_HTTP: [], LISTENER_API: []}
    try:
        for ep in config.listen:
            sockets[LISTENER_RTMP].append(bind_listener(ep.host, ep.port, reuse_port=reuse))
        if config.http_server.enabled:
            ep = config.http_server.listen
            sockets[LISTENER_HTTP].append(bind_listener(ep.host, ep.port, reuse_port=reuse))
        if config.http_api.enabled and not (config.http_server.enabled
                                            and config.http_api.listen.port == config.http_server.listen.port):
            ep = config.http_api.listen
            sockets[LISTENER_API].append(bind_listener(ep.host, ep.port, reuse_port=reuse))
    except OSError:
        for socks in sockets.values():
            for s in socks:
                s.close()
        raise
    return sockets


def configure_logging(config) -> None:
    log.configure(config.log_level, config.log_tank, config.log_file)


def run_single_process(config, takeover: str | None = None) -> int:
    configure_logging(config)
    for warning in config.warnings:
        log.warn("config", warning)
    raise_nofile_limit(config.max_connections)
    try:
        sockets = open_listeners(config)
    except OSError as e:
        log.error("main", f"cannot listen: {e}")
        print(f"nonstop: cannot listen: {e}", file=sys.stderr)
        return 1
    return uvloop.run(_serve(config, sockets, takeover))


async def _serve(config, sockets: dict[str, list[socket.socket]], takeover: str | None) -> int:
    loop = asyncio.get_running_loop()
    worker = Worker(config)
    quit_event = asyncio.Event()
    state = {"code": 0}

    def fast_quit(signame: str) -> None:
        log.trace("main", f"{signame}: fast quit")
        quit_event.set()

    def upgrade() -> None:
        target = os.environ.get("NONSTOP_TEST_HANDOVER_TO")
        if not target:
            log.warn("main", "SIGUSR2: upgrade is not available in this mode")
            return
        log.trace("main", f"SIGUSR2: handing every connection over to {target}")

        async def run() -> None:
            await worker.close_listeners()
            stats = await transfer.hand_over(worker, target)
            log.trace("main", f"handover done: {stats.as_dict()}")
            quit_event.set()
        loop.create_task(run())

    loop.add_signal_handler(signal.SIGINT, fast_quit, "SIGINT")
    loop.add_signal_handler(signal.SIGTERM, fast_quit, "SIGTERM")
    loop.add_signal_handler(signal.SIGQUIT, fast_quit, "SIGQUIT")
    loop.add_signal_handler(signal.SIGUSR1, log.reopen)
    loop.add_signal_handler(signal.SIGUSR2, upgrade)
    loop.add_signal_handler(signal.SIGHUP, lambda: log.warn("main", "SIGHUP: reload needs the master process"))

    await worker.serve({k: v for k, v in sockets.items() if k != LISTENER_API})
    names = ", ".join(f"{kind}={','.join(str(s.getsockname()[1]) for s in socks)}"
                      for kind, socks in sockets.items() if socks)
    log.trace("main", f"{SERVER_NAME} serving, pid={os.getpid()}, {names}")
    if takeover:
        stats = await transfer.take_over(worker, takeover)
        log.trace("main", f"takeover done: {stats.as_dict()}")
    await quit_event.wait()
    await worker.stop()
    log.trace("main", "quit")
    return state["code"]
