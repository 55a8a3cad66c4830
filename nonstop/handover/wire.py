"""The handover wire format: versioned frames of plain data, with socket fds passed by SCM_RIGHTS.

A frame is `MAGIC (4) | schema version (u16) | fd count (u16) | payload length (u32) | payload`, where the
payload is a pickle of plain data only (dict, list, str, bytes, numbers, None): the unpickler refuses every
class, so a frame can never run code. The fds ride on the first byte of the frame's header, at most
MAX_FDS_PER_FRAME per frame (Linux's SCM_MAX_FD is 253).

The schema version is an integer. A build reads its own version and the one before it
(READABLE_SCHEMAS); a frame of any other version is answered with a refusal, and the sender keeps those
connections and drains them itself, never crashes, never loses one.
"""

from __future__ import annotations

import array
import io
import os
import pickle
import socket
import struct

MAGIC = b"NSHO"
SCHEMA_VERSION = 1
READABLE_SCHEMAS = frozenset({SCHEMA_VERSION})
HEADER = struct.Struct(">4sHHI")
MAX_FDS_PER_FRAME = 253
# A source's GOP at 8 Mb/s for 10 s is 10 MB; a frame carries a batch of sources: cap it generously but finitely.
MAX_PAYLOAD = 512 * 1024 * 1024


class HandoverError(Exception):
    """A broken or refused handover; the sender keeps its connections."""


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):  # plain data never needs a class
        raise HandoverError(f"handover frame names a class {module}.{name}; refused")


def dumps(obj) -> bytes:
    return pickle.dumps(obj, protocol=5)


def loads(data: bytes):
    try:
        return _PlainUnpickler(io.BytesIO(data)).load()
    except HandoverError:
        raise
    except Exception as e:
        raise HandoverError(f"bad handover payload: {e!r}") from e


def schema_override() -> int:
    """Test hook: NONSTOP_TEST_HANDOVER_SCHEMA makes a sender claim another schema version."""
    value = os.environ.get("NONSTOP_TEST_HANDOVER_SCHEMA")
    return int(value) if value else SCHEMA_VERSION


def send_frame(sock: socket.socket, obj, fds: list[int], version: int | None = None) -> None:
    """Blocking send of one frame (the caller runs it where blocking is fine, or on a thread)."""
    send_payload(sock, dumps(obj), fds, version)


def send_payload(sock: socket.socket, payload: bytes, fds: list[int], version: int | None = None) -> None:
    """Blocking send of one frame whose payload is already pickled (by `dumps`). A frame over the bounds
    is refused before anything is sent, so the link stays usable."""
    if len(fds) > MAX_FDS_PER_FRAME:
        raise HandoverError(f"{len(fds)} fds in one frame; at most {MAX_FDS_PER_FRAME}")
    if len(payload) > MAX_PAYLOAD:
        raise HandoverError(f"handover frame of {len(payload)} bytes is over {MAX_PAYLOAD}")
    header = HEADER.pack(MAGIC, version if version is not None else schema_override(), len(fds), len(payload))
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    sent = sock.sendmsg([header[:1]], ancillary)
    if sent != 1:
        raise HandoverError("short sendmsg")
    sock.sendall(header[1:])
    sock.sendall(payload)      # not header + payload: that would copy a large payload once more


def recv_frame(sock: socket.socket) -> tuple[int, object | None, list[int]]:
    """Blocking receive of one frame: (schema version, payload or None if unreadable, fds)."""
    fds = array.array("i")
    msg, ancdata, flags, _ = sock.recvmsg(1, socket.CMSG_SPACE(MAX_FDS_PER_FRAME * fds.itemsize))
    if not msg:
        raise EOFError("handover peer closed")
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    rest = _recv_exact(sock, HEADER.size - 1)
    magic, version, nfds, length = HEADER.unpack(msg + rest)
    if magic != MAGIC:
        for fd in fds:
            os.close(fd)
        raise HandoverError("bad handover frame magic")
    if length > MAX_PAYLOAD:
        raise HandoverError(f"handover frame of {length} bytes is over {MAX_PAYLOAD}")
    payload = _recv_exact(sock, length)
    if version not in READABLE_SCHEMAS:
        return version, None, list(fds)
    return version, loads(payload), list(fds)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        data = sock.recv(min(n, 1 << 20))
        if not data:
            raise EOFError("handover peer closed mid-frame")
        chunks.append(data)
        n -= len(data)
    return b"".join(chunks)
