"""Property tests: AMF0 and FLV decoders turn any bytes into values or their own error, never anything else,
round-trip what they encode, and keep their buffers bounded."""

import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nonstop.protocol import amf0, flv
from nonstop.protocol.amf0 import DecodeError, EcmaArray
from nonstop.protocol.flv import FlvError, FlvReader, FlvTag

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Generating nested AMF values is what costs time here, so these properties run fewer examples.
FUZZ_VALUES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ----- AMF0 ------------------------------------------------------------------------------------------------
keys = st.text(max_size=12)
scalars = (
    st.floats(allow_nan=False)
    | st.booleans()
    | st.text(max_size=40)
    | st.none()
    | st.just(amf0.UNDEFINED)
)
amf_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(keys, children, max_size=5)
        | st.dictionaries(keys, children, max_size=5).map(EcmaArray)
    ),
    max_leaves=20,
)


def same(a, b) -> bool:
    """Equality that also checks the container types (an EcmaArray must not come back as a dict)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


@FUZZ
@given(st.binary(max_size=300))
def test_decode_all_on_any_bytes_returns_or_raises_decode_error(data):
    try:
        amf0.decode_all(data)
    except DecodeError:
        pass


@FUZZ_VALUES
@given(amf_values, st.binary(max_size=4))
def test_decode_all_on_mutated_valid_values_returns_or_raises_decode_error(value, noise):
    wire = bytearray(amf0.encode_value(value))
    if wire:
        wire[len(noise) * 7 % len(wire)] ^= noise[0] if noise else 0xFF
    try:
        amf0.decode_all(bytes(wire) + noise)
    except DecodeError:
        pass


@FUZZ_VALUES
@given(st.lists(amf_values, max_size=4))
def test_encoded_values_decode_to_themselves(values):
    wire = amf0.encode(*values)
    decoded = amf0.decode_all(wire)
    assert same(decoded, [list(v) if isinstance(v, tuple) else v for v in values])
    assert amf0.encode(*decoded) == wire


@FUZZ_VALUES
@given(amf_values, st.data())
def test_every_proper_prefix_of_a_value_is_a_decode_error(value, data):
    wire = amf0.encode_value(value)
    cut = data.draw(st.integers(0, len(wire) - 1))
    try:
        amf0.decode(wire[:cut])
    except DecodeError:
        return
    raise AssertionError(f"prefix of {cut} bytes decoded")


# ----- FLV reader ------------------------------------------------------------------------------------------
tags = st.lists(st.builds(FlvTag, st.sampled_from([flv.TAG_AUDIO, flv.TAG_VIDEO, flv.TAG_SCRIPT]),
                          st.integers(0, 2**32 - 1), st.binary(max_size=60)), max_size=6)
CAP = 64


def feed_checked(reader: FlvReader, chunks) -> list[FlvTag]:
    out: list[FlvTag] = []
    for chunk in chunks:
        out += reader.feed(chunk)
        assert len(reader.snapshot()["buffer"]) <= flv.TAG_HEADER_SIZE + reader.max_tag_size
    return out


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0] + points, points + [len(data)])]


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(0, 400), max_size=6))
def test_reader_on_any_bytes_returns_or_raises_flv_error(data, cuts):
    reader = FlvReader(max_tag_size=CAP)
    try:
        feed_checked(reader, split(data, cuts))
    except FlvError:
        pass


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_reader_on_any_body_after_a_valid_header_returns_or_raises_flv_error(body, cuts):
    reader = FlvReader(max_tag_size=CAP)
    try:
        feed_checked(reader, split(flv.file_header(True, True) + body, cuts))
    except FlvError:
        pass


@FUZZ
@given(tags, st.lists(st.integers(0, 1000), max_size=8), st.booleans())
def test_reader_gives_back_the_tags_for_any_split_and_handover(written, cuts, hand_over):
    data = flv.file_header(True, False) + b"".join(
        flv.encode_tag(t.tag_type, t.timestamp, t.payload) for t in written)
    reader = FlvReader(max_tag_size=CAP)
    got: list[FlvTag] = []
    for chunk in split(data, cuts):
        got += feed_checked(reader, [chunk])
        if hand_over:
            reader = FlvReader.restore(reader.snapshot())
    assert got == written
    assert flv.read_file_tags(data) == written


# ----- payload helpers -------------------------------------------------------------------------------------
payloads = st.binary(max_size=64) | st.builds(
    lambda head, body: head + body,
    st.sampled_from([b"\x17\x00\x00\x00\x00\x01", b"\xaf\x00", b"\x90mp4a", b"\x90hvc1", b"\x80avc1",
                     b"\x17\x00\x00\x00\x00\x01\x64\x00\x1f\xff\xe1\x00\x1a\x67\x64\x00\x1f"]),
    st.binary(max_size=64),
)


@FUZZ
@given(payloads)
def test_payload_helpers_never_raise(payload):
    assert flv.is_video_keyframe(payload) in (True, False)
    assert flv.is_video_sequence_header(payload) in (True, False)
    assert flv.is_audio_sequence_header(payload) in (True, False)
    assert flv.video_codec(payload) is None or isinstance(flv.video_codec(payload), str)
    assert flv.audio_codec(payload) is None or isinstance(flv.audio_codec(payload), str)
    avc = flv.parse_avc_sequence_header(payload)
    assert avc is None or (avc["width"] > 0 and avc["height"] > 0)
    aac = flv.parse_aac_sequence_header(payload)
    assert aac is None or aac["sample_rate"] >= 0


@FUZZ
@given(st.binary(max_size=40))
def test_sps_parser_never_raises_on_garbage_after_a_real_record_prefix(tail):
    sps = b"\x67\x64\x00\x1f" + tail  # a High profile SPS header, then anything
    payload = bytes.fromhex("17000000000164001fffe1") + len(sps).to_bytes(2, "big") + sps
    result = flv.parse_avc_sequence_header(payload)
    assert result is None or set(result) == {"profile", "level", "width", "height"}
