"""The listening sockets a master owns, by key, and how they follow the config across reloads.

A listener's key is its kind and endpoint, `"rtmp 0.0.0.0:1935"`, `"http 127.0.0.1:8080"`, `"api ..."`. The same
keys name the listeners on the control channel, so master and worker agree on what is what.

Sockets are bound here, or adopted from systemd socket activation (LISTEN_FDS/LISTEN_PID/LISTEN_FDNAMES, fd 3
onward), matched to the config's endpoints by address. On a reload, `plan()` works out what changed: a listener
whose key stays is kept (the very same kernel socket, so nothing queued in its backlog is lost), a new endpoint
is bound, a listener that only changed kind keeps its socket under the new key, and the rest are closed at
`commit()`. A plan that cannot bind everything binds nothing, so a bad reload leaves the old listeners alone.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import time
from dataclasses import dataclass, field

from nonstop.config.values import Endpoint
from nonstop.log import log

RTMP = "rtmp"
HTTP = "http"
API = "api"

# systemd passes activated sockets from this fd on (sd_listen_fds(3): SD_LISTEN_FDS_START).
SD_LISTEN_FDS_START = 3
# At start, a port still held (an old instance or an orphaned worker letting go of it) is tried again, as nginx
# does: 5 tries, 0.5 s apart, each failure logged, before the start fails.
BIND_TRIES = 5
BIND_RETRY_S = 0.5
LISTEN_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
WILDCARD_HOSTS = ("0.0.0.0", "::")
# Linux caps the accept queue at net.core.somaxconn (4096 on current kernels); ask for the most.
LISTEN_BACKLOG = 4096


def listener_key(kind: str, endpoint: Endpoint) -> str:
    return f"{kind} {endpoint}"


def kind_of(key: str) -> str:
    return key.split(" ", 1)[0]


def api_shares_http(config) -> bool:
    """Equal API and HTTP server ports share one socket, which serves both (as SRS does)."""
    return (config.http_api.enabled and config.http_server.enabled
            and config.http_api.listen.port == config.http_server.listen.port)


def wanted(config) -> dict[str, Endpoint]:
    """Every listener the config names, by key, in config order (duplicates once)."""
    out: dict[str, Endpoint] = {}
    for ep in config.listen:
        out[listener_key(RTMP, ep)] = ep
    if config.http_server.enabled:
        out[listener_key(HTTP, config.http_server.listen)] = config.http_server.listen
    if config.http_api.enabled and not api_shares_http(config):
        out[listener_key(API, config.http_api.listen)] = config.http_api.listen
    return out


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A listening socket, created explicitly (architecture decision 8), never by `create_server(host, port)`:
    the master creates (or adopts) it and its workers inherit it, so a new worker serves the very same kernel
    socket and no connect is refused during an upgrade."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


# The directive each kind of listener comes from, for the error when it cannot be bound.
DIRECTIVE_OF = {RTMP: "listen", HTTP: "http_server.listen", API: "http_api.listen"}


def bind_named(key: str, ep: Endpoint, config) -> socket.socket:
    """bind_listener, whose OSError names the address and the directive it came from: `[Errno 98] Address
    already in use: 0.0.0.0:1935 (listen in /etc/nonstop.conf)`."""
    try:
        return bind_listener(ep.host, ep.port, reuse_port=config.reuse_port)
    except OSError as e:
        directive = DIRECTIVE_OF.get(kind_of(key), key)
        where = f" in {config.path}" if getattr(config, "path", "") else ""
        raise OSError(e.errno, f"{e.strerror or e}: {ep} ({directive}{where})") from e


def endpoint_matches(sock: socket.socket, ep: Endpoint) -> bool:
    """Is `sock` bound where `ep` says? A wildcard matches either family's wildcard: systemd's `ListenStream=1935`
    is a dual-stack [::]:1935, which serves what nonstop's `listen 1935` (0.0.0.0:1935) means."""
    try:
        host, port = sock.getsockname()[:2]
    except (OSError, ValueError):
        return False
    if port != ep.port:
        return False
    if ep.is_wildcard:
        return host in WILDCARD_HOSTS
    try:
        return ipaddress.ip_address(host) == ipaddress.ip_address(ep.host)
    except ValueError:
        return False


def systemd_sockets(environ=os.environ) -> list[tuple[str, socket.socket]]:
    """The sockets systemd passed to this process, as (name, socket); [] when not socket-activated.

    The variables are removed from the environment, so no child mistakes them for its own.
    """
    if environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(environ.get("LISTEN_FDS", "0"))
    except ValueError:
        count = 0
    names = environ.get("LISTEN_FDNAMES", "").split(":") if environ.get("LISTEN_FDNAMES") else []
    for name in LISTEN_ENV:
        environ.pop(name, None)
    found = []
    for i in range(count):
        fd = SD_LISTEN_FDS_START + i
        name = names[i] if i < len(names) else f"fd{fd}"
        try:
            sock = socket.socket(fileno=fd)
        except OSError as e:
            log.warn("main", f"systemd passed fd {fd} ({name}), which is not a socket: {e}")
            continue
        sock.set_inheritable(False)     # workers get it through pass_fds, nothing else should
        found.append((name, sock))
    return found


@dataclass
class ListenerPlan:
    """What a reload changes. `add` holds new keys with their sockets (new, or kept under a new kind)."""
    keep: dict[str, socket.socket] = field(default_factory=dict)
    add: dict[str, socket.socket] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    close: list[socket.socket] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.add or self.remove)


class ListenerSet:
    """The listening sockets by key; the owner (the master, or the single process) closes them."""

    def __init__(self):
        self.sockets: dict[str, socket.socket] = {}

    def items(self):
        return self.sockets.items()

    def open(self, config, adopted: list[tuple[str, socket.socket]] | None = None) -> None:
        """Take what systemd passed (matched by address), bind the rest. Raises OSError, closing everything."""
        adopted = list(adopted or [])
        try:
            for key, ep in wanted(config).items():
                match = next((pair for pair in adopted if endpoint_matches(pair[1], ep)), None)
                if match is not None:
                    adopted.remove(match)
                    match[1].setblocking(False)
                    self.sockets[key] = match[1]
                    log.trace("main", f"listen {key}: adopted from systemd ({match[0]}, fd {match[1].fileno()})")
                else:
                    self.sockets[key] = _bind_with_retries(key, ep, config)
        except OSError:
            self.close_all()
            for _, sock in adopted:
                sock.close()
            raise
        for name, sock in adopted:
            log.warn("main", f"systemd passed {name} (fd {sock.fileno()}, {_address(sock)}), which the config does "
                             f"not listen on; closing it")
            sock.close()

    def plan(self, config) -> ListenerPlan:
        """Bind what the new config adds. Raises OSError (having closed what it bound) if any bind fails."""
        plan = ListenerPlan()
        new = wanted(config)
        by_endpoint = {}
        for key, sock in self.sockets.items():
            if key not in new:
                by_endpoint.setdefault(key.split(" ", 1)[1], key)
        bound: list[socket.socket] = []
        try:
            for key, ep in new.items():
                if key in self.sockets:
                    plan.keep[key] = self.sockets[key]
                elif str(ep) in by_endpoint:
                    # Same address, another kind: the socket stays, only its meaning changes.
                    plan.add[key] = self.sockets[by_endpoint.pop(str(ep))]
                else:
                    sock = bind_named(key, ep, config)
                    bound.append(sock)
                    plan.add[key] = sock
        except OSError:
            for sock in bound:
                sock.close()
            raise
        reused = {id(s) for s in plan.add.values()}
        for key, sock in self.sockets.items():
            if key not in new:
                plan.remove.append(key)
                if id(sock) not in reused:
                    plan.close.append(sock)
        return plan

    def commit(self, plan: ListenerPlan) -> None:
        for sock in plan.close:
            sock.close()
        self.sockets = {**plan.keep, **plan.add}

    def close(self, keys) -> None:
        for key in keys:
            sock = self.sockets.pop(key, None)
            if sock is not None:
                sock.close()

    def close_all(self) -> None:
        self.close(list(self.sockets))

    def describe(self) -> str:
        return ", ".join(self.sockets) or "none"


def _bind_with_retries(key: str, ep: Endpoint, config) -> socket.socket:
    for attempt in range(1, BIND_TRIES + 1):
        try:
            return bind_named(key, ep, config)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or attempt == BIND_TRIES:
                raise
            log.warn("main", f"listen {key}: {e.strerror}; trying again in {BIND_RETRY_S}s "
                             f"({attempt}/{BIND_TRIES})")
            time.sleep(BIND_RETRY_S)
    raise AssertionError("unreachable")


def _address(sock: socket.socket) -> str:
    try:
        host, port = sock.getsockname()[:2]
        return f"{host}:{port}"
    except (OSError, ValueError):
        return "?"
