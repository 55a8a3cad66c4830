"""Specification of the RTMP handshake (nonstop.protocol.handshake): both layouts, simple fallback, splits."""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import struct

import pytest

from nonstop.protocol import handshake
from nonstop.protocol.handshake import (C0_VERSION, HANDSHAKE_SIZE, ClientHandshake, HandshakeError,
                                        ServerHandshake)

# The keys, spelled out again here so the tests do not trust the module's copies.
KEY_TAIL = bytes.fromhex("F0EEC24A8068BEE82E00D0D1029E7E576EEC5D2D29806FAB93B8E636CFEB31AE")
FP_KEY = b"Genuine Adobe Flash Player 001" + KEY_TAIL
FMS_KEY = b"Genuine Adobe Flash Media Server 001" + KEY_TAIL

# C0+C1 as sent by `ffmpeg -i rtmp://127.0.0.1:port/live/s` (FFmpeg 5.1.9), captured once with a socket
# listener. FFmpeg always uses the complex handshake with the digest block first (schema1).
FFMPEG_C0C1 = base64.b64decode(
    "AwAAAAAJAHwC93hVHs6rjh42LwfFhopwsmbUAiDlCGEYoi42l9X8K2Mpwi7nx8mwtbNF36g5j+o7yHkgihBoQlqhF0y1cljP6+JN"
    "pC7E/52hnHtAbxjJW/3QTuSLb4MyFKR7i/aOsFJU4lrpqai0lsVJb26c18aMtrzIQWnmfz43L/4YbahROGLFr961oSGKhguszdhp"
    "slPbq4oO+1mkjEQgmYdeVbdP0Hobaa8wPgmYc8t34tnixHQesfUGp/Cylir5H1BRyJCjIJlPTIs2oB+pwPFfS3z3tsOBfaYJGGEd"
    "OwL/fMlAOJN1N9M4LkFr1XV3g035yvdINSFQzpLQ27QOhx/DZOGLfjVp45h2wa4Mt5/216sy+fARhpyNpBke9G08G8a3LYOBLyJD"
    "0XUqQSYy1mogdfXTAvRc3yuYuAK3mAXcSDfYTt7RzELLp+7DE3v4bdCy1/Yk1SGj/2Vbzw30EBNB0jDpRlFijkWnq/gYMQHOmB5e"
    "hqb67Fx5qn7HGB6kWe2WbgyTKm+eS/VUq3sckFzeBU7UDS+4m7/GV1LljP3k8qBNw60eXvT8ZNV7BxwUFGpFH2oEMVbSiA9ZV9eN"
    "/T/yuID2JKxw8nCU83c06vGST2asPWSK4jKTBUSkQgtl7tRpb39Q/gX8lIUWZQv7m2X5U9hI40VpZdDXa2J6hONendq9i0Pw+tru"
    "RYzfWevXc5IuCuUH1eZAkukOxn7YQ56PIhx1Op+SFvHLhbUQe8fMfE+yw+7Rr8cJsZL1DeacH/ylZQ77Ujtfq1mXysS371ryv1lz"
    "5ik7rh/B2kmb5VFQd95N2z9/vNdBcRxit9gDuNBUz1eBgnFNHERb1pK6G4OaCecmb8hdqo+tQz2rvSBs3h6lcXcMa/p5VsJm7oQ1"
    "6wHKpvWDwNg8M+788/l9uRe9spn4qJ+4hgqxzWRMHoLM4TI6nredJfXcVwtwtAuyAGF0M1PQU27Nq9gvInd1YijLVP5pMsTJvRMN"
    "K/xwC/XYXaaUbpb4Lgr9jpwgz+q/mmoYm7F7vvU50dnnPulm/LXWvb+YRE3oZb4WBeNAh7NM3wTjr/Vb1BN8Ui0uPHvyY02zJrIq"
    "R023+KCVKrNRDeVVOWwYo3ioOQtzv/d3L7J2D6V4ajsEWcRaHRsN/0y7tl2g7TTzIRbDwswrlYJREbz7skbBUFqgDJcNBtdsyVDO"
    "NosiDbIEh8ugK7H8VLNlZ7QpE9a4hQYs13lWAdMaSo5tVkZ/pcUhYmdv1SYSJRPD5H8ubZ1qGcT4eVQxqUztA5Ih0nrGinp3DpMF"
    "JSJxRZtx0FUFxJd7cOloUSCLrNzffmgrOEiECIDx/sKjL7FAaGK8g8rYmt9ynzum/9P+gI6EA+fGoPbc2jIRiY9vFlBbB4zHi4Db"
    "YA3tLyAPJf9dyzHTLL4gVri9wxCRYxq70qwo1h/jJIDsUDW7818XM5Pw1Zoh0jALLbS1nqpj/+D5PWXcAoUWkF8iqcff84fE63jG"
    "MA5+u7KmZjz75amXfK9XZLo/CrpX205gUeCuxuBbG9qmSal4de28QLzEIUu3/vcnMNQ2isvT4Qq0x2QqHFP5PKJtucdmVVvib9/w"
    "4qchQluVdisLd2/T4+sXMT1TEpyfNAA8maUZaoxqrLbWS1HdmLJ8W1mnC9lBoboDAPt0TPxJnZl+bZM5LSinZ9EW37wsuetAVA0R"
    "6zBK2TIjhv3Fl9VdPRxnvFTfNUea+xnqLNIE3TMe+0nB4XL2u4n79YIH3K5sEvinWYvvHocsDDXyK0wp3xD5uxrdOuuIerX7OMA2"
    "uING92HELyld/gtDfftPMKcSdqt9QJzkJJY/nrtPH0flKxh4byebWocib2aYHdbQrRH0mvMQVf9pcQ/aNFfEt4UtsuOTbQd4v4ef"
    "FzStOiT/sa6VhHYLnLBFKlO6CWL/4vYFr1KDC9IRpUiIlMwLBSJVBIcRzRmFEKnpQ7+Lg5GYRV+9QQcwBdMDmQuI2bY2VtQ8/sjt"
    "g3SPSw8PxRICFnlLIqBU5bxYq9jEEJYHCIQ5NFPOUJaUr76r4A=="
)


def seeded(seed: int):
    """A deterministic random_bytes."""
    rng = random.Random(seed)
    return lambda n: rng.randbytes(n)


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def digest_position(packet: bytes, block_base: int) -> int:
    return sum(packet[block_base:block_base + 4]) % 728 + block_base + 4


def without(packet: bytes, pos: int) -> bytes:
    return packet[:pos] + packet[pos + 32:]


def hand_made_c1(block_base: int, seed: int = 7) -> tuple[bytes, bytes]:
    """A C1 built by hand: digest block at `block_base` (8 = schema1, 772 = schema0). Returns (C1, digest)."""
    c1 = bytearray(random.Random(seed).randbytes(HANDSHAKE_SIZE))
    c1[0:8] = bytes([0, 0, 0, 0, 0x80, 0, 7, 2])
    pos = digest_position(c1, block_base)
    digest = hmac_sha256(FP_KEY[:30], without(bytes(c1), pos))
    c1[pos:pos + 32] = digest
    return bytes(c1), digest


def check_complex_answer(reply: bytes, c1_digest: bytes, block_base: int) -> None:
    """S0 = 3, S1 carries an FMS digest in the client's layout, S2 is signed with HMAC(FMS key, C1 digest)."""
    assert len(reply) == 1 + 2 * HANDSHAKE_SIZE and reply[0] == C0_VERSION
    s1, s2 = reply[1:1 + HANDSHAKE_SIZE], reply[1 + HANDSHAKE_SIZE:]
    assert s1[4] >= 3, "FFmpeg only verifies (and so only accepts our complex answer) with version >= 3"
    pos = digest_position(s1, block_base)
    assert s1[pos:pos + 32] == hmac_sha256(FMS_KEY[:36], without(s1, pos))
    s2_key = hmac_sha256(FMS_KEY, c1_digest)
    assert s2[-32:] == hmac_sha256(s2_key, s2[:-32])


def pair_up(client: ClientHandshake, server: ServerHandshake, step: int | None = None) -> tuple[bytes, bytes]:
    """Run a handshake between the two, moving `step` bytes at a time; the client's first chunk bytes and
    the server's follow the handshake on the wire. Returns what each side saw after its handshake."""
    def deliver(hs, data: bytes) -> bytes:
        if step is None:
            return hs.receive_data(data)
        return b"".join(hs.receive_data(data[i:i + step]) for i in range(0, len(data), step))

    s0s1s2 = deliver(server, client.initial_bytes())
    c2 = deliver(client, s0s1s2 + b"server-chunks")
    deliver(server, c2 + b"client-chunks")
    return client.trailing_data, server.trailing_data


# ----- server, against byte vectors ------------------------------------------------------------------------

@pytest.mark.parametrize("block_base", [8, 772], ids=["schema1_digest_first", "schema0_key_first"])
def test_server_validates_a_hand_made_c1_and_answers_complex_in_the_same_layout(block_base):
    c1, digest = hand_made_c1(block_base)
    server = ServerHandshake(random_bytes=seeded(1))
    reply = server.receive_data(bytes([3]) + c1)
    assert server.complex and not server.done
    check_complex_answer(reply, digest, block_base)


def test_server_validates_a_real_ffmpeg_c1_in_schema1():
    assert len(FFMPEG_C0C1) == 1 + HANDSHAKE_SIZE
    c1 = FFMPEG_C0C1[1:]
    pos = digest_position(c1, 8)
    digest = c1[pos:pos + 32]
    server = ServerHandshake(random_bytes=seeded(2))
    reply = server.receive_data(FFMPEG_C0C1)
    assert server.complex
    check_complex_answer(reply, digest, 8)


def test_server_falls_back_to_simple_when_c1_has_no_digest():
    c1 = bytes(range(256)) * 6
    server = ServerHandshake(random_bytes=seeded(3), epoch_ms=123456)
    reply = server.receive_data(bytes([3]) + c1)
    assert not server.complex
    s1, s2 = reply[1:1 + HANDSHAKE_SIZE], reply[1 + HANDSHAKE_SIZE:]
    assert reply[0] == 3
    assert struct.unpack(">I", s1[:4])[0] == 123456
    assert s1[4:8] == c1[0:4], "SRS: S1's second field is C1's time"
    assert s2 == c1, "the simple S2 echoes C1"


def test_a_c1_digest_keyed_with_the_wrong_key_is_simple():
    c1 = bytearray(hand_made_c1(8)[0])
    pos = digest_position(c1, 8)
    c1[pos:pos + 32] = hmac_sha256(FMS_KEY[:36], without(bytes(c1), pos))
    server = ServerHandshake(random_bytes=seeded(4))
    server.receive_data(bytes([3]) + c1)
    assert not server.complex


def test_s1_time_is_the_given_epoch_modulo_2_32():
    server = ServerHandshake(random_bytes=seeded(5), epoch_ms=2**32 + 77)
    reply = server.receive_data(FFMPEG_C0C1)
    assert struct.unpack(">I", reply[1:5])[0] == 77


@pytest.mark.parametrize("version", [0, 6, 0xFF])
def test_c0_other_than_3_fails_on_its_first_byte_and_stays_failed(version):
    server = ServerHandshake()
    with pytest.raises(HandshakeError):
        server.receive_data(bytes([version]))
    with pytest.raises(HandshakeError):
        server.receive_data(FFMPEG_C0C1)


def test_server_answers_only_once_c0_c1_are_complete_and_is_done_after_c2():
    server = ServerHandshake(random_bytes=seeded(6))
    assert server.receive_data(FFMPEG_C0C1[:-1]) == b""
    assert len(server.receive_data(FFMPEG_C0C1[-1:])) == 1 + 2 * HANDSHAKE_SIZE
    assert server.receive_data(b"\0" * (HANDSHAKE_SIZE - 1)) == b"" and not server.done
    assert server.receive_data(b"\0") == b"" and server.done
    assert server.trailing_data == b""


def test_bytes_after_c2_in_the_same_read_become_trailing_data():
    server = ServerHandshake(random_bytes=seeded(7))
    reply = server.receive_data(FFMPEG_C0C1 + b"\0" * HANDSHAKE_SIZE + b"\x03first chunk")
    assert len(reply) == 1 + 2 * HANDSHAKE_SIZE
    assert server.done and server.trailing_data == b"\x03first chunk"


def test_bytes_fed_after_done_are_appended_to_trailing_data():
    server = ServerHandshake(random_bytes=seeded(8))
    server.receive_data(FFMPEG_C0C1 + b"\0" * HANDSHAKE_SIZE + b"ab")
    assert server.receive_data(b"cd") == b""
    assert server.trailing_data == b"abcd"


def test_server_never_holds_more_than_c0_c1_and_does_not_keep_c2():
    server = ServerHandshake(random_bytes=seeded(9))
    for i in range(len(FFMPEG_C0C1)):
        server.receive_data(FFMPEG_C0C1[i:i + 1])
        assert len(server.snapshot()["c0c1"]) <= 1 + HANDSHAKE_SIZE
    server.receive_data(b"\0" * 1000)
    assert server.snapshot()["c0c1"] == b"" and server.snapshot()["c2_remaining"] == HANDSHAKE_SIZE - 1000


# ----- client ------------------------------------------------------------------------------------------------

def test_client_c1_is_complex_schema1_with_a_flash_player_digest_by_default():
    client = ClientHandshake(random_bytes=seeded(10), epoch_ms=5000)
    c0c1 = client.initial_bytes()
    assert len(c0c1) == 1 + HANDSHAKE_SIZE and c0c1[0] == 3
    c1 = c0c1[1:]
    assert struct.unpack(">II", c1[:8]) == (5000, handshake.CLIENT_VERSION)
    pos = digest_position(c1, 8)
    assert c1[pos:pos + 32] == hmac_sha256(FP_KEY[:30], without(c1, pos))


def test_client_c1_can_use_schema0():
    client = ClientHandshake(random_bytes=seeded(11), schema=handshake.SCHEMA_KEY_DIGEST)
    c1 = client.initial_bytes()[1:]
    pos = digest_position(c1, 772)
    assert c1[pos:pos + 32] == hmac_sha256(FP_KEY[:30], without(c1, pos))


def test_simple_client_c1_has_a_zero_version():
    c1 = ClientHandshake(random_bytes=seeded(12), complex=False).initial_bytes()[1:]
    assert c1[4:8] == b"\0\0\0\0"


def test_client_answers_a_complex_s1_with_a_signed_c2_before_s2_arrives():
    client = ClientHandshake(random_bytes=seeded(13))
    client.initial_bytes()
    s1 = bytearray(random.Random(14).randbytes(HANDSHAKE_SIZE))
    s1[4:8] = bytes([4, 5, 0, 1])
    pos = digest_position(s1, 772)
    s1[pos:pos + 32] = hmac_sha256(FMS_KEY[:36], without(bytes(s1), pos))
    c2 = client.receive_data(bytes([3]) + s1)
    assert len(c2) == HANDSHAKE_SIZE and client.complex and not client.done
    key = hmac_sha256(FP_KEY, bytes(s1[pos:pos + 32]))
    assert c2[-32:] == hmac_sha256(key, c2[:-32])
    assert client.receive_data(b"\0" * HANDSHAKE_SIZE + b"rest") == b""
    assert client.done and client.trailing_data == b"rest"


def test_client_echoes_s1_as_c2_when_the_server_is_simple():
    client = ClientHandshake(random_bytes=seeded(15))
    client.initial_bytes()
    s1 = random.Random(16).randbytes(HANDSHAKE_SIZE)
    assert client.receive_data(bytes([3]) + s1) == s1
    assert not client.complex


def test_client_refuses_an_s0_other_than_3():
    client = ClientHandshake()
    client.initial_bytes()
    with pytest.raises(HandshakeError):
        client.receive_data(b"\x06")
    with pytest.raises(HandshakeError):
        client.receive_data(b"\x03")


# ----- both of ours together ---------------------------------------------------------------------------------

@pytest.mark.parametrize("schema", [handshake.SCHEMA_DIGEST_KEY, handshake.SCHEMA_KEY_DIGEST])
@pytest.mark.parametrize("step", [None, 1, 1000])
def test_our_client_and_server_complete_a_complex_handshake(schema, step):
    client = ClientHandshake(random_bytes=seeded(20), schema=schema)
    server = ServerHandshake(random_bytes=seeded(21))
    client_tail, server_tail = pair_up(client, server, step)
    assert client.done and server.done and client.complex and server.complex
    assert (client_tail, server_tail) == (b"server-chunks", b"client-chunks")


@pytest.mark.parametrize("step", [None, 1])
def test_our_client_and_server_complete_a_simple_handshake(step):
    client = ClientHandshake(random_bytes=seeded(22), complex=False)
    server = ServerHandshake(random_bytes=seeded(23))
    client_tail, server_tail = pair_up(client, server, step)
    assert client.done and server.done and not client.complex and not server.complex
    assert (client_tail, server_tail) == (b"server-chunks", b"client-chunks")


def test_server_snapshot_restore_at_every_stage_gives_the_same_bytes():
    wire = FFMPEG_C0C1 + b"\0" * HANDSHAKE_SIZE + b"after"
    expected = ServerHandshake(random_bytes=seeded(30)).receive_data(wire)
    for cut in (0, 1, 700, 1536, 1537, 1538, 3000, 3073, 3074):
        first = ServerHandshake(random_bytes=seeded(30))
        reply = first.receive_data(wire[:cut])
        rng = seeded(30) if not reply else seeded(99)  # the answer is not yet out: same randomness
        second = ServerHandshake.restore(first.snapshot(), random_bytes=rng)
        reply += second.receive_data(wire[cut:])
        assert reply == expected, cut
        assert second.done and second.trailing_data == b"after" and second.complex


def test_client_snapshot_restore_mid_handshake_completes():
    client = ClientHandshake(random_bytes=seeded(31))
    server = ServerHandshake(random_bytes=seeded(32))
    s0s1s2 = server.receive_data(client.initial_bytes())
    c2 = client.receive_data(s0s1s2[:1000])
    client = ClientHandshake.restore(client.snapshot(), random_bytes=seeded(33))
    c2 += client.receive_data(s0s1s2[1000:2000])
    client = ClientHandshake.restore(client.snapshot(), random_bytes=seeded(34))
    c2 += client.receive_data(s0s1s2[2000:] + b"x")
    assert client.done and client.complex and client.trailing_data == b"x" and len(c2) == HANDSHAKE_SIZE


def test_restore_refuses_a_malformed_snapshot():
    with pytest.raises(HandshakeError):
        ServerHandshake.restore({"role": "server"})
    with pytest.raises(HandshakeError):
        ServerHandshake.restore(ClientHandshake().snapshot())
    with pytest.raises(HandshakeError):
        ClientHandshake.restore({**ClientHandshake().snapshot(), "s0s1": b"\3" * 5000})
