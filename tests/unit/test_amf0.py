"""AMF0 encode/decode: byte vectors per type, round trips, real-world commands, and the caps."""

import copy
import pickle
import struct

import pytest

from nonstop.protocol import amf0
from nonstop.protocol.amf0 import (
    UNDEFINED, UNSUPPORTED, Date, DecodeError, EcmaArray, EncodeError, TypedObject, XmlDocument,
)
from nonstop.protocol.errors import ProtocolError

# What ffmpeg 5.1 (Lavf59.27.100) sent as its connect command, captured from the wire (chunking removed).
FFMPEG_CONNECT = bytes.fromhex(
    "020007636f6e6e656374003ff00000000000000300036170700200046c69766500047479706502000a6e6f6e7072697661"
    "74650008666c617368566572020024464d4c452f332e302028636f6d70617469626c653b204c61766635392e32372e3130"
    "30290005746355726c02001b72746d703a2f2f3132372e302e302e313a31393339392f6c697665000009"
)
# ffmpeg's onMetaData script tag payload (an ECMA array with its count hint and end marker).
FFMPEG_ON_METADATA = bytes.fromhex(
    "02000a6f6e4d65746144617461080000000800086475726174696f6e003fa47ae147ae147b000577696474680040940000"
    "000000000006686569676874004086800000000000000d766964656f646174617261746500000000000000000000096672"
    "616d6572617465004039000000000000000c766964656f636f646563696400401c0000000000000007656e636f64657202"
    "000d4c61766635392e32372e313030000866696c6573697a650040b94f0000000000000009"
)


# ----- byte vectors, one per type -------------------------------------------------------------------------
@pytest.mark.parametrize("value, wire", [
    (1.0, "003ff0000000000000"),
    (0.0, "000000000000000000"),
    (-2.5, "00c004000000000000"),
    (True, "0101"),
    (False, "0100"),
    ("", "020000"),
    ("live", "0200046c697665"),
    ("é", "020002c3a9"),
    ({}, "03000009"),
    ({"app": "live"}, "0300036170700200046c697665000009"),
    (None, "05"),
    (UNDEFINED, "06"),
    (EcmaArray(), "0800000000000009"),
    (EcmaArray({"a": 1.0}), "0800000001" "000161" "003ff0000000000000" "000009"),
    ([], "0a00000000"),
    ([1.0, "x"], "0a00000002" "003ff0000000000000" "02000178"),
    (Date(1.0, 0), "0b3ff00000000000000000"),
    (Date(0.0, -60), "0b0000000000000000ffc4"),
    (UNSUPPORTED, "0d"),
    (XmlDocument("<a/>"), "0f000000043c612f3e"),
    (TypedObject("Pt", {"x": 1.0}), "100002" "5074" "000178" "003ff0000000000000" "000009"),
])
def test_each_type_has_its_wire_form_and_decodes_back(value, wire):
    expected = bytes.fromhex(wire)
    assert amf0.encode_value(value) == expected
    decoded, offset = amf0.decode(expected)
    assert offset == len(expected)
    assert decoded == value
    assert type(decoded) is (type(value) if not isinstance(value, tuple) else list)


def test_ints_are_sent_as_float64_numbers_and_come_back_as_floats():
    assert amf0.encode_value(3) == amf0.encode_value(3.0)
    value, _ = amf0.decode(amf0.encode_value(3))
    assert value == 3.0 and type(value) is float


def test_bool_is_a_boolean_not_a_number():
    assert amf0.encode_value(True)[0] == 0x01


def test_tuple_is_a_strict_array():
    assert amf0.encode_value((1.0, None)) == amf0.encode_value([1.0, None])


def test_encode_concatenates_values():
    assert amf0.encode("a", 1.0, None) == bytes.fromhex("02000161" "003ff0000000000000" "05")
    assert amf0.encode() == b""


def test_nan_and_infinities_are_numbers():
    assert amf0.decode(amf0.encode_value(float("inf")))[0] == float("inf")
    nan, _ = amf0.decode(amf0.encode_value(float("nan")))
    assert nan != nan


def test_object_keys_keep_their_wire_order():
    wire = amf0.encode_value({"z": 1.0, "a": 2.0, "m": 3.0})
    assert list(amf0.decode(wire)[0]) == ["z", "a", "m"]


# ----- strings ---------------------------------------------------------------------------------------------
def test_string_of_65535_utf8_bytes_is_still_a_short_string():
    wire = amf0.encode_value("x" * 0xFFFF)
    assert wire[:3] == b"\x02\xff\xff" and len(wire) == 3 + 0xFFFF


def test_string_over_65535_utf8_bytes_is_a_long_string():
    wire = amf0.encode_value("x" * 0x10000)
    assert wire[:5] == b"\x0c\x00\x01\x00\x00"
    assert amf0.decode(wire) == ("x" * 0x10000, 5 + 0x10000)


def test_long_string_threshold_counts_utf8_bytes_not_characters():
    text = "é" * 40000  # 40000 characters, 80000 bytes
    wire = amf0.encode_value(text)
    assert wire[0] == 0x0C
    assert amf0.decode(wire)[0] == text


def test_invalid_utf8_is_replaced_not_refused():
    assert amf0.decode(b"\x02\x00\x03a\xffb") == ("a\ufffdb", 6)


def test_lone_surrogate_cannot_be_encoded():
    with pytest.raises(EncodeError):
        amf0.encode_value("\udc80")


def test_xml_document_stays_apart_from_string():
    value, _ = amf0.decode(amf0.encode_value(XmlDocument("<x/>")))
    assert isinstance(value, XmlDocument) and value == "<x/>"


# ----- objects, arrays, typed objects ---------------------------------------------------------------------
def test_ecma_array_count_is_only_a_hint():
    # Some encoders write 0 (or a wrong count); the end marker is what ends the array.
    wire = bytes.fromhex("08" "00000000" "000161" "003ff0000000000000" "000162" "0101" "000009")
    value, _ = amf0.decode(wire)
    assert value == {"a": 1.0, "b": True} and isinstance(value, EcmaArray)
    huge_count = bytes.fromhex("08" "ffffffff" "000009")
    assert amf0.decode(huge_count) == (EcmaArray(), 8)


def test_empty_key_with_a_value_is_a_property_named_empty():
    wire = bytes.fromhex("03" "0000" "0101" "000009")
    assert amf0.decode(wire)[0] == {"": True}
    assert amf0.encode_value({"": True}) == wire


def test_typed_object_equality_includes_the_class_name():
    assert TypedObject("A", {"x": 1.0}) != TypedObject("B", {"x": 1.0})
    assert TypedObject("A", {"x": 1.0}) == TypedObject("A", {"x": 1.0})
    assert repr(TypedObject("A")) == "TypedObject('A', {})"


def test_nested_values_round_trip():
    value = {"a": [1.0, {"b": EcmaArray({"c": None})}, UNDEFINED], "d": Date(1.5e12, 0), "e": ""}
    decoded, _ = amf0.decode(amf0.encode_value(value))
    assert decoded == value
    assert isinstance(decoded["a"][1]["b"], EcmaArray)


def test_singletons_are_falsy_or_named_and_survive_copies():
    assert not UNDEFINED and repr(UNDEFINED) == "UNDEFINED" and repr(UNSUPPORTED) == "UNSUPPORTED"
    assert amf0.Undefined() is UNDEFINED
    assert copy.deepcopy(UNDEFINED) is UNDEFINED
    assert pickle.loads(pickle.dumps([UNDEFINED, UNSUPPORTED])) == [UNDEFINED, UNSUPPORTED]
    typed = pickle.loads(pickle.dumps(TypedObject("A", {"x": 1.0})))
    assert typed.class_name == "A" and typed == {"x": 1.0}


# ----- real-world vectors ----------------------------------------------------------------------------------
def test_ffmpeg_connect_command_decodes_and_reencodes_byte_for_byte():
    values = amf0.decode_all(FFMPEG_CONNECT)
    assert values == ["connect", 1.0, {
        "app": "live", "type": "nonprivate", "flashVer": "FMLE/3.0 (compatible; Lavf59.27.100)",
        "tcUrl": "rtmp://127.0.0.1:19399/live"}]
    assert amf0.encode(*values) == FFMPEG_CONNECT


def test_connect_command_as_the_rtmp_layer_writes_it():
    wire = amf0.encode("connect", 1.0, {"app": "live", "tcUrl": "rtmp://h/live"})
    assert wire == bytes.fromhex(
        "020007" + b"connect".hex() + "003ff0000000000000" + "03" + "0003" + b"app".hex() + "020004"
        + b"live".hex() + "0005" + b"tcUrl".hex() + "02000d" + b"rtmp://h/live".hex() + "000009")


def test_ffmpeg_on_metadata_is_an_ecma_array():
    name, meta = amf0.decode_all(FFMPEG_ON_METADATA)
    assert name == "onMetaData" and isinstance(meta, EcmaArray)
    assert meta["width"] == 1280.0 and meta["height"] == 720.0 and meta["encoder"] == "Lavf59.27.100"
    assert amf0.encode(name, meta) == FFMPEG_ON_METADATA


def test_decode_reads_from_an_offset_of_any_buffer_type():
    data = b"\xff\xff" + amf0.encode("a", 2.0)
    for buffer in (data, bytearray(data), memoryview(data)):
        value, offset = amf0.decode(buffer, 2)
        assert (value, offset) == ("a", 6)
        assert amf0.decode(buffer, offset) == (2.0, 15)


def test_decode_all_of_nothing_is_an_empty_list():
    assert amf0.decode_all(b"") == []


# ----- references ------------------------------------------------------------------------------------------
def test_reference_resolves_to_the_earlier_object_itself():
    # [ {"a": 1}, ref 1 ]: the strict array is complex object 0, the inner object is 1.
    wire = bytes.fromhex("0a00000002" "03" "000161" "003ff0000000000000" "000009" "070001")
    value, _ = amf0.decode(wire)
    assert value == [{"a": 1.0}, {"a": 1.0}]
    assert value[0] is value[1]


def test_references_count_across_the_values_of_one_decode_all():
    wire = amf0.encode({"a": 1.0}) + bytes.fromhex("070000")
    first, second = amf0.decode_all(wire)
    assert first is second


def test_reference_out_of_range_is_a_decode_error():
    with pytest.raises(DecodeError, match="not decoded yet"):
        amf0.decode(bytes.fromhex("070000"))
    with pytest.raises(DecodeError):
        amf0.decode(bytes.fromhex("0a00000002" "03000009" "070005"))


def test_reference_to_an_enclosing_object_is_refused_so_values_are_never_cyclic():
    with pytest.raises(DecodeError, match="cycle"):
        amf0.decode(bytes.fromhex("03" "000161" "070000" "000009"))


def test_references_cannot_blow_up_the_value():
    # Each array holds two references to the previous one: a few bytes per level, doubling in size.
    wire = bytearray(amf0.encode_value(["x" * 1000]))
    for level in range(30):
        wire += bytes.fromhex("0a00000002") + struct.pack(">BH", 7, level) * 2
    with pytest.raises(DecodeError, match="MAX_REFERENCE_EXPANSION"):
        amf0.decode_all(bytes(wire))


# ----- malformed input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [
    1.0, True, "live", "x" * 70000, {"a": 1.0}, EcmaArray({"a": 1.0}), [1.0, 2.0], Date(1.0),
    XmlDocument("<a/>"), TypedObject("T", {"k": "v"}),
])
def test_every_truncation_is_a_decode_error(value):
    wire = amf0.encode_value(value)
    for cut in range(len(wire)) if len(wire) < 100 else (0, 1, 2, 3, 4, 100, len(wire) - 1):
        with pytest.raises(DecodeError):
            amf0.decode(wire[:cut])


def test_truncated_connect_command_is_a_decode_error():
    with pytest.raises(DecodeError):
        amf0.decode_all(FFMPEG_CONNECT[:-1])


def test_declared_length_beyond_the_input_fails_at_once():
    with pytest.raises(DecodeError, match="truncated"):
        amf0.decode(b"\x0c\xff\xff\xff\xff" + b"x" * 10)
    with pytest.raises(DecodeError, match="longer than the input"):
        amf0.decode(b"\x0a\xff\xff\xff\xff\x05")


@pytest.mark.parametrize("marker, why", [
    (0x04, "reserved"), (0x0E, "reserved"), (0x11, "AMF3"), (0x09, "object end"), (0x12, "unknown"),
    (0xFF, "unknown"),
])
def test_unsupported_markers_are_decode_errors(marker, why):
    with pytest.raises(DecodeError, match=why):
        amf0.decode(bytes([marker]) + b"\x00" * 16)


def test_decode_error_is_a_protocol_error():
    assert issubclass(DecodeError, ProtocolError) and issubclass(EncodeError, ProtocolError)


def test_offset_outside_the_input_is_a_decode_error():
    with pytest.raises(DecodeError):
        amf0.decode(b"\x05", 2)
    with pytest.raises(DecodeError):
        amf0.decode(b"\x05", 1)


# ----- caps ------------------------------------------------------------------------------------------------
def nested_arrays(depth: int) -> bytes:
    return b"\x0a\x00\x00\x00\x01" * depth + b"\x05"


def test_nesting_up_to_max_depth_decodes():
    value, _ = amf0.decode(nested_arrays(amf0.MAX_DEPTH))
    for _ in range(amf0.MAX_DEPTH):
        value = value[0]
    assert value is None


def test_nesting_beyond_max_depth_is_a_decode_error():
    with pytest.raises(DecodeError, match="MAX_DEPTH"):
        amf0.decode(nested_arrays(amf0.MAX_DEPTH + 1))
    # Far deeper than Python's recursion limit: still a DecodeError, not a RecursionError.
    with pytest.raises(DecodeError):
        amf0.decode(b"\x03\x00\x01a" * 5000)


def test_encoding_beyond_max_depth_or_a_cycle_is_an_encode_error():
    deep: list = []
    value = deep
    for _ in range(amf0.MAX_DEPTH):
        value.append([])
        value = value[0]
    with pytest.raises(EncodeError, match="MAX_DEPTH"):
        amf0.encode_value(deep)
    cyclic: dict = {}
    cyclic["self"] = cyclic
    with pytest.raises(EncodeError):
        amf0.encode_value(cyclic)


@pytest.mark.parametrize("value", [
    b"bytes", {1: "non-str key"}, {"k": object()}, 10 ** 400, Date(0.0, 40000), TypedObject(1), {"x" * 70000: 1},
    {1.0, 2.0},
])
def test_values_without_an_amf0_form_are_encode_errors(value):
    with pytest.raises(EncodeError):
        amf0.encode_value(value)


def test_data_message_helpers_strip_set_data_frame_and_find_the_metadata_object():
    meta = amf0.EcmaArray([("width", 1280.0)])
    for payload in (amf0.encode("@setDataFrame", "onMetaData", meta), amf0.encode("onMetaData", meta)):
        values = amf0.decode_data_message(payload)
        assert values[0] == "onMetaData"
        assert dict(amf0.metadata_object(values)) == {"width": 1280.0}
    assert amf0.metadata_object(amf0.decode_data_message(amf0.encode("onMetaData"))) == {}
    assert amf0.metadata_object(amf0.decode_data_message(amf0.encode("onCuePoint", 1.0))) is None
    assert amf0.metadata_object([]) is None
