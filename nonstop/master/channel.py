"""The control channel between the master and one worker: a SOCK_SEQPACKET socketpair.

Each message is one packet: a small JSON object `{"op": ..., ...}`, with file descriptors riding along by
SCM_RIGHTS when it carries listeners. SEQPACKET keeps message boundaries and passes fds, so there is no framing
to get wrong; a zero-length read means the peer is gone.

Orders, master to worker:
- `quit {graceful}`: fast, or graceful (the worker runs the drain and exits);
- `reload {path, add, remove}`: re-read the config at `path` (None: the embedded one), serve the listeners whose
  keys are in `add` (their fds ride along, in order) and stop serving those in `remove`;
- `reopen`: reopen the log file.
Reports, worker to master:
- `ready {pid}`: serving;
- `draining`: readiness is false, a graceful quit started;
- `listeners_closed {keys}`: the worker closed these (RTMP, HTTP-FLV) listeners for the drain; the master closes
  its copies, so new connects are refused;
- `reloaded {ok, error}`: a reload order was carried out;
- `exiting {code}`: about to exit.
Unknown ops are logged and ignored, so a newer worker can talk to an older master (and back) during an upgrade.

At start a worker learns its control fd and listener fds from the WORKER_ENV environment variable (JSON:
`{"control": fd, "listeners": [[key, fd], ...]}`); the fds themselves are inherited (subprocess pass_fds).
"""

from __future__ import annotations

import array
import json
import os
import socket

from nonstop.log import log

WORKER_ENV = "NONSTOP_WORKER"
# Orders and reports are a few hundred bytes; a reload with many listeners stays far below this.
MAX_MESSAGE = 64 * 1024
# Linux's SCM_MAX_FD.
MAX_FDS = 253


def socketpair() -> tuple[socket.socket, socket.socket]:
    """(master end, worker end). Both are close-on-exec; the worker end is passed with pass_fds."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


class Channel:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        sock.setblocking(False)
        self.closed = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, op: str, fds: list[int] | None = None, **fields) -> bool:
        """Send one message; False if the peer is gone (its exit is noticed elsewhere)."""
        if self.closed:
            return False
        data = json.dumps({"op": op, **fields}).encode()
        fds = list(fds or [])
        if len(data) > MAX_MESSAGE or len(fds) > MAX_FDS:
            raise ValueError(f"control message {op} too large: {len(data)} bytes, {len(fds)} fds")
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        try:
            self.sock.sendmsg([data], ancillary)
            return True
        except OSError as e:
            log.warn("control", f"cannot send {op} on the control channel: {e}")
            return False

    def receive(self) -> list[tuple[dict, list[int]]] | None:
        """Every message waiting, as (message, fds); None once the peer has closed its end."""
        messages = []
        while True:
            fds = array.array("i")
            try:
                data, ancillary, flags, _ = self.sock.recvmsg(MAX_MESSAGE,
                                                              socket.CMSG_SPACE(MAX_FDS * fds.itemsize))
            except (BlockingIOError, InterruptedError):
                return messages
            except OSError as e:
                log.warn("control", f"control channel broken: {e}")
                return None if not messages else messages
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
            if not data and not fds:
                return None if not messages else messages
            if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                _close_fds(fds)
                log.warn("control", "dropped a truncated control message")
                continue
            try:
                message = json.loads(data)
                if not isinstance(message, dict) or not isinstance(message.get("op"), str):
                    raise ValueError("not an object with an op")
            except ValueError as e:
                _close_fds(fds)
                log.warn("control", f"dropped a malformed control message: {e}")
                continue
            messages.append((message, list(fds)))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sock.close()


def _close_fds(fds) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
