"""The RTMP handshake, server and client side, simple and complex, as sans-IO state machines.

Bytes go in through `receive_data`, the bytes to send come back out; nothing here reads a clock or a socket.
The server answers the complex ("digest") handshake that Flash Player, FFmpeg and librtmp speak, and falls
back to the simple one (S2 echoes C1) for clients whose C1 carries no valid digest, exactly as SRS does
(srs-reference.md §3). Both sides stop at the end of the handshake and hand over whatever followed it,
the first chunks, as `trailing_data`.

Packet layout (every C1/S1 is 1536 bytes):

    time(4) | version(4) | block A (764) | block B (764)

In the complex handshake one block is a *digest block* and the other a *key block*. SRS calls the layout
with the key block first "schema0" and the one with the digest block first "schema1"; FFmpeg and librtmp
clients use schema1. A digest block starts with 4 offset bytes; the 32-byte digest sits at
`(sum of those 4 bytes) % 728 + block base + 4`. The digest is HMAC-SHA256 over the whole packet minus
those 32 bytes. The key block (a Diffie-Hellman key, only used by encrypted RTMPE) is filled with random
bytes: nobody verifies it for plain RTMP.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct

from nonstop.protocol.errors import ProtocolError

C0_VERSION = 3  # RTMP 1.0; 6 would be RTMPE (encrypted), which we do not speak
HANDSHAKE_SIZE = 1536  # C1, S1, C2 and S2 are all this long

_HEADER_SIZE = 8  # time(4) + version(4) before the two blocks
_BLOCK_SIZE = 764
_DIGEST_SIZE = 32  # SHA-256
# The digest may start anywhere in its block after the 4 offset bytes, and must fit: 764 - 4 - 32 = 728.
_DIGEST_OFFSET_MODULO = _BLOCK_SIZE - 4 - _DIGEST_SIZE
# The 32-byte signature that closes a complex S2 or C2 signs the 1504 random bytes before it.
_RANDOM_ECHO_SIZE = HANDSHAKE_SIZE - _DIGEST_SIZE

SCHEMA_KEY_DIGEST = 0  # SRS's schema0: key block at byte 8, digest block at byte 772
SCHEMA_DIGEST_KEY = 1  # SRS's schema1: digest block at byte 8 (what FFmpeg and librtmp send)
_DIGEST_BLOCK_BASE = {SCHEMA_KEY_DIGEST: _HEADER_SIZE + _BLOCK_SIZE, SCHEMA_DIGEST_KEY: _HEADER_SIZE}

# The well-known constants of the Flash handshake: a text prefix and 32 shared random bytes.
_KEY_TAIL = bytes.fromhex("F0EEC24A8068BEE82E00D0D1029E7E576EEC5D2D29806FAB93B8E636CFEB31AE")
FLASH_PLAYER_KEY = b"Genuine Adobe Flash Player 001" + _KEY_TAIL  # 62 bytes
FMS_KEY = b"Genuine Adobe Flash Media Server 001" + _KEY_TAIL  # 68 bytes
# C1 and S1 digests are keyed with the text part only; the C2/S2 signatures with the whole key.
_C1_DIGEST_KEY = FLASH_PLAYER_KEY[:30]
_S1_DIGEST_KEY = FMS_KEY[:36]

# What S1 and C1 say in their version field when they carry a digest. A client looks at S1's version to
# decide whether to verify S1/S2 at all (FFmpeg when the version's first byte is >= 3, librtmp when it is
# non-zero), so ours is non-zero and our digests must verify; FMS 4.5.0.1 is what Adobe's server sent.
SERVER_VERSION = 0x04050001
# Flash Player 9+ and librtmp announce a version with the top bit set when they use the digest handshake.
CLIENT_VERSION = 0x80000702

_U32_MASK = 0xFFFFFFFF


class HandshakeError(ProtocolError):
    """The peer's handshake bytes are unacceptable (wrong version byte) or the machine was misused."""


# ----- digest helpers (module level so the tests and both roles share one definition) ---------------------

def digest_offset(packet: bytes, schema: int) -> int:
    """Where the 32-byte digest sits in a C1/S1 packet laid out in `schema`."""
    base = _DIGEST_BLOCK_BASE[schema]
    return sum(packet[base:base + 4]) % _DIGEST_OFFSET_MODULO + base + 4


def _packet_digest(packet: bytes, offset: int, key: bytes) -> bytes:
    """HMAC-SHA256 of the packet without its 32 digest bytes."""
    mac = hmac.new(key, packet[:offset], hashlib.sha256)
    mac.update(packet[offset + _DIGEST_SIZE:])
    return mac.digest()


def find_digest(packet: bytes, key: bytes) -> tuple[int, bytes] | None:
    """(schema, digest) if the packet carries a valid digest keyed with `key` in either layout, else None.

    Schema1 is tried first because FFmpeg, librtmp and OBS use it; a packet valid in both is a 2**-256 event.
    """
    for schema in (SCHEMA_DIGEST_KEY, SCHEMA_KEY_DIGEST):
        offset = digest_offset(packet, schema)
        digest = packet[offset:offset + _DIGEST_SIZE]
        if hmac.compare_digest(_packet_digest(packet, offset, key), digest):
            return schema, bytes(digest)
    return None


def sign_packet(packet: bytearray, schema: int, key: bytes) -> bytes:
    """Write the digest into a C1/S1 packet (in place) and return it."""
    offset = digest_offset(packet, schema)
    digest = _packet_digest(packet, offset, key)
    packet[offset:offset + _DIGEST_SIZE] = digest
    return digest


def _signed_echo(random_part: bytes, peer_digest: bytes, full_key: bytes) -> bytes:
    """A complex S2/C2: random bytes followed by their HMAC keyed with HMAC(full key, the peer's digest)."""
    key = hmac.new(full_key, peer_digest, hashlib.sha256).digest()
    return random_part + hmac.new(key, random_part, hashlib.sha256).digest()


def _random(random_bytes, size: int) -> bytes:
    data = bytes(random_bytes(size))
    if len(data) != size:
        raise ValueError(f"random_bytes({size}) returned {len(data)} bytes")
    return data


def _new_packet(random_bytes, epoch_ms: int, version: int) -> bytearray:
    """time(4) + version(4) + random: the start of every C1/S1 we send."""
    packet = bytearray(_random(random_bytes, HANDSHAKE_SIZE))
    struct.pack_into(">II", packet, 0, epoch_ms & _U32_MASK, version)
    return packet


# ----- the two roles ----------------------------------------------------------------------------------------

class ServerHandshake:
    """The server side: wait for C0+C1, answer S0+S1+S2 at once, then wait for C2 (which is not checked).

    At most C0+C1 (1537 bytes) is ever buffered: C2 is only counted, never kept, because nothing verifies it
    (SRS does not either; FFmpeg's C2 would fail the check).
    """

    def __init__(self, random_bytes=os.urandom, epoch_ms: int = 0):
        """`random_bytes(n)` supplies randomness (tests pass a deterministic one); `epoch_ms` goes into S1's
        time field, since this module reads no clock."""
        self.random_bytes = random_bytes
        self.epoch_ms = epoch_ms
        self.done = False
        self.trailing_data = b""
        self.complex = False
        self.failed = False
        self._c0c1 = bytearray()
        self._c2_remaining: int | None = None  # None until S0+S1+S2 went out

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the client in any split; returns the bytes to send (S0+S1+S2 once, else b"").

        Bytes after C2 are kept in `trailing_data` (they are the first chunks). Once `done`, further bytes are
        appended to `trailing_data`. Raises HandshakeError if C0 is not 3; the machine then stays failed.
        """
        if self.failed:
            raise HandshakeError("handshake already failed")
        if self.done:
            self.trailing_data += bytes(data)
            return b""
        data = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        reply = b""
        if self._c2_remaining is None:
            wanted = 1 + HANDSHAKE_SIZE - len(self._c0c1)
            self._c0c1 += data[:wanted]
            data = data[wanted:]
            if self._c0c1 and self._c0c1[0] != C0_VERSION:
                self.failed = True
                raise HandshakeError(f"C0 version {self._c0c1[0]} is not {C0_VERSION}")
            if len(self._c0c1) <= HANDSHAKE_SIZE:
                return b""
            reply = self._answer(bytes(self._c0c1[1:]))
            self._c0c1 = bytearray()
            self._c2_remaining = HANDSHAKE_SIZE
        taken = min(len(data), self._c2_remaining)
        self._c2_remaining -= taken
        if self._c2_remaining == 0:
            self.done = True
            self.trailing_data = bytes(data[taken:])
        return reply

    def _answer(self, c1: bytes) -> bytes:
        found = find_digest(c1, _C1_DIGEST_KEY)
        if found is None:
            # Simple handshake, SRS style: S1 = our time + C1's time + random, S2 = C1.
            s1 = _new_packet(self.random_bytes, self.epoch_ms, 0)
            s1[4:8] = c1[0:4]
            return bytes([C0_VERSION]) + s1 + c1
        self.complex = True
        schema, c1_digest = found
        s1 = _new_packet(self.random_bytes, self.epoch_ms, SERVER_VERSION)
        sign_packet(s1, schema, _S1_DIGEST_KEY)  # same layout as the client's, as SRS and FMS answer
        s2 = _signed_echo(_random(self.random_bytes, _RANDOM_ECHO_SIZE), c1_digest, FMS_KEY)
        return bytes([C0_VERSION]) + s1 + s2

    def snapshot(self) -> dict:
        """Plain state for a handover (the random source is not part of it)."""
        return {
            "role": "server",
            "epoch_ms": self.epoch_ms,
            "done": self.done,
            "trailing_data": self.trailing_data,
            "complex": self.complex,
            "failed": self.failed,
            "c0c1": bytes(self._c0c1),
            "c2_remaining": self._c2_remaining,
        }

    @classmethod
    def restore(cls, d: dict, random_bytes=os.urandom) -> "ServerHandshake":
        """Rebuild from `snapshot()`; raises HandshakeError if the snapshot is malformed."""
        try:
            if d["role"] != "server":
                raise HandshakeError("not a server handshake snapshot")
            hs = cls(random_bytes=random_bytes, epoch_ms=int(d["epoch_ms"]))
            hs.done = bool(d["done"])
            hs.trailing_data = bytes(d["trailing_data"])
            hs.complex = bool(d["complex"])
            hs.failed = bool(d["failed"])
            hs._c0c1 = bytearray(d["c0c1"])
            hs._c2_remaining = None if d["c2_remaining"] is None else int(d["c2_remaining"])
        except (KeyError, TypeError, ValueError) as e:
            raise HandshakeError(f"bad server handshake snapshot: {e!r}") from e
        if len(hs._c0c1) > 1 + HANDSHAKE_SIZE or not 0 <= (hs._c2_remaining or 0) <= HANDSHAKE_SIZE:
            raise HandshakeError("bad server handshake snapshot: sizes out of range")
        return hs


class ClientHandshake:
    """The client side: send C0+C1, answer C2 as soon as S0+S1 are in, finish when S2 is in.

    With `complex=True` (the default, like FFmpeg and OBS) C1 carries a digest. S1 is checked loosely: if it
    carries a valid server digest, C2 is the signed complex answer, otherwise C2 echoes S1 (a simple server).
    S2 is not verified, so a server that gets S2 wrong still works; at most S0+S1 (1537 bytes) is buffered.
    """

    def __init__(self, random_bytes=os.urandom, epoch_ms: int = 0, complex: bool = True, *,
                 schema: int = SCHEMA_DIGEST_KEY):
        """`schema` picks C1's layout for the complex handshake (schema1, FFmpeg's, by default)."""
        if schema not in _DIGEST_BLOCK_BASE:
            raise ValueError(f"unknown schema {schema!r}")
        self.random_bytes = random_bytes
        self.epoch_ms = epoch_ms
        # What we offer; after S1 it says whether the complex handshake was actually used.
        self.complex = complex
        self.schema = schema
        self.done = False
        self.trailing_data = b""
        self.failed = False
        self._s0s1 = bytearray()
        self._s2_remaining: int | None = None  # None until C2 was produced

    def initial_bytes(self) -> bytes:
        """C0 + C1, to send right after connecting. Call it once."""
        version = CLIENT_VERSION if self.complex else 0
        c1 = _new_packet(self.random_bytes, self.epoch_ms, version)
        if self.complex:
            sign_packet(c1, self.schema, _C1_DIGEST_KEY)
        return bytes([C0_VERSION]) + c1

    def receive_data(self, data: bytes) -> bytes:
        """Feed bytes from the server in any split; returns C2 once S0+S1 are in, else b"".

        `done` turns True once S2 is in too; bytes after S2 land in `trailing_data` (also any fed after done).
        Raises HandshakeError if S0 is not 3.
        """
        if self.failed:
            raise HandshakeError("handshake already failed")
        if self.done:
            self.trailing_data += bytes(data)
            return b""
        data = memoryview(data).cast("B") if not isinstance(data, (bytes, bytearray)) else data
        reply = b""
        if self._s2_remaining is None:
            wanted = 1 + HANDSHAKE_SIZE - len(self._s0s1)
            self._s0s1 += data[:wanted]
            data = data[wanted:]
            if self._s0s1 and self._s0s1[0] != C0_VERSION:
                self.failed = True
                raise HandshakeError(f"S0 version {self._s0s1[0]} is not {C0_VERSION}")
            if len(self._s0s1) <= HANDSHAKE_SIZE:
                return b""
            reply = self._answer(bytes(self._s0s1[1:]))
            self._s0s1 = bytearray()
            self._s2_remaining = HANDSHAKE_SIZE
        taken = min(len(data), self._s2_remaining)
        self._s2_remaining -= taken
        if self._s2_remaining == 0:
            self.done = True
            self.trailing_data = bytes(data[taken:])
        return reply

    def _answer(self, s1: bytes) -> bytes:
        found = find_digest(s1, _S1_DIGEST_KEY) if self.complex else None
        if found is None:
            self.complex = False
            return s1
        return _signed_echo(_random(self.random_bytes, _RANDOM_ECHO_SIZE), found[1], FLASH_PLAYER_KEY)

    def snapshot(self) -> dict:
        """Plain state for a handover (the random source is not part of it)."""
        return {
            "role": "client",
            "epoch_ms": self.epoch_ms,
            "complex": self.complex,
            "schema": self.schema,
            "done": self.done,
            "trailing_data": self.trailing_data,
            "failed": self.failed,
            "s0s1": bytes(self._s0s1),
            "s2_remaining": self._s2_remaining,
        }

    @classmethod
    def restore(cls, d: dict, random_bytes=os.urandom) -> "ClientHandshake":
        """Rebuild from `snapshot()`; raises HandshakeError if the snapshot is malformed."""
        try:
            if d["role"] != "client":
                raise HandshakeError("not a client handshake snapshot")
            hs = cls(random_bytes=random_bytes, epoch_ms=int(d["epoch_ms"]), complex=bool(d["complex"]),
                     schema=d["schema"])
            hs.done = bool(d["done"])
            hs.trailing_data = bytes(d["trailing_data"])
            hs.failed = bool(d["failed"])
            hs._s0s1 = bytearray(d["s0s1"])
            hs._s2_remaining = None if d["s2_remaining"] is None else int(d["s2_remaining"])
        except (KeyError, TypeError, ValueError) as e:
            raise HandshakeError(f"bad client handshake snapshot: {e!r}") from e
        if len(hs._s0s1) > 1 + HANDSHAKE_SIZE or not 0 <= (hs._s2_remaining or 0) <= HANDSHAKE_SIZE:
            raise HandshakeError("bad client handshake snapshot: sizes out of range")
        return hs
