"""AMF0 (Action Message Format 0): the value encoding of RTMP commands and of FLV/RTMP script data.

`encode(*values)` turns Python values into AMF0 bytes; `decode` / `decode_all` turn bytes back into Python
values and raise `DecodeError` for anything malformed, truncated or over a cap. Sans-IO: bytes in, values out.

Type mapping (encode -> wire -> decode):

    float / int (not bool)   Number       0x00   float (ints are sent as float64, as Flash does)
    bool                     Boolean      0x01   bool
    str (UTF-8 <= 65535)     String       0x02   str
    str (UTF-8 >  65535)     Long String  0x0C   str
    dict                     Object       0x03   dict, keys str, wire order kept
    None                     Null         0x05   None
    UNDEFINED                Undefined    0x06   UNDEFINED
    EcmaArray                ECMA Array   0x08   EcmaArray
    list / tuple             Strict Array 0x0A   list
    Date                     Date         0x0B   Date
    UNSUPPORTED              Unsupported  0x0D   UNSUPPORTED
    XmlDocument              XML Document 0x0F   XmlDocument
    TypedObject              Typed Object 0x10   TypedObject

Decode-only: Reference 0x07 resolves to the same Python object decoded earlier in this call. MovieClip 0x04,
RecordSet 0x0E and the AVM+ switch 0x11 are refused (the RTMP layer strips the AMF3 message's first byte
itself; nothing in RTMP sends the other two).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nonstop.protocol.errors import ProtocolError

__all__ = [
    "DecodeError", "EncodeError", "Undefined", "UNDEFINED", "Unsupported", "UNSUPPORTED", "EcmaArray",
    "TypedObject", "XmlDocument", "Date", "encode", "encode_value", "decode", "decode_all",
    "MAX_DEPTH", "MAX_REFERENCE_EXPANSION",
]

# ----- markers (AMF0 specification, section 2.1) ---------------------------------------------------------
NUMBER = 0x00
BOOLEAN = 0x01
STRING = 0x02
OBJECT = 0x03
MOVIECLIP = 0x04
NULL = 0x05
UNDEFINED_MARKER = 0x06
REFERENCE = 0x07
ECMA_ARRAY = 0x08
OBJECT_END = 0x09
STRICT_ARRAY = 0x0A
DATE = 0x0B
LONG_STRING = 0x0C
UNSUPPORTED_MARKER = 0x0D
RECORDSET = 0x0E
XML_DOCUMENT = 0x0F
TYPED_OBJECT = 0x10
AVMPLUS = 0x11

# ----- caps ----------------------------------------------------------------------------------------------
# Nesting of objects/arrays. Real RTMP traffic nests 2-3 deep (the redirect's `ex` inside the status
# object is the deepest we know); 64 is far above that and far below Python's recursion limit.
MAX_DEPTH = 64
# References let a few bytes stand for a large object, and a chain of objects that each reference the
# previous one twice doubles at every step. Whoever re-encodes a decoded value (the Source rewrites
# onMetaData) would write every copy out, so the total bytes that references stand for, per decode call,
# are capped. No mainstream RTMP encoder (ffmpeg, librtmp, OBS, FMLE) emits references, so 1 MiB costs nothing.
MAX_REFERENCE_EXPANSION = 1 << 20

# Length fields: a UTF-8 String has a u16 length, a Long String / XML Document a u32 length.
MAX_SHORT_STRING = 0xFFFF
MAX_LONG_STRING = 0xFFFFFFFF
# A Date's time zone is an s16 (minutes; Flash writes 0 and ignores it).
TZ_MIN, TZ_MAX = -0x8000, 0x7FFF

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_F64 = struct.Struct(">d")
_DATE = struct.Struct(">dh")
_OBJECT_END_BYTES = b"\x00\x00\x09"


class DecodeError(ProtocolError):
    """The bytes are not valid AMF0, are truncated, or exceed a cap."""


class EncodeError(ProtocolError):
    """The Python value has no AMF0 encoding (unknown type, non-str key, too long, too deep)."""


# ----- value types ---------------------------------------------------------------------------------------
class Undefined:
    """AMF0 `undefined` (0x06). Use the singleton UNDEFINED; it is falsy, like `undefined` in ActionScript."""

    __slots__ = ()
    _instance: Undefined | None = None

    def __new__(cls) -> Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "UNDEFINED"

    def __reduce__(self) -> str:
        return "UNDEFINED"  # copy/pickle keep the singleton


class Unsupported:
    """AMF0 `unsupported` (0x0D). Use the singleton UNSUPPORTED."""

    __slots__ = ()
    _instance: Unsupported | None = None

    def __new__(cls) -> Unsupported:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNSUPPORTED"

    def __reduce__(self) -> str:
        return "UNSUPPORTED"


UNDEFINED = Undefined()
UNSUPPORTED = Unsupported()


class EcmaArray(dict):
    """AMF0 ECMA array (0x08): an associative array. onMetaData is sent as one; a plain dict is an Object."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"EcmaArray({dict.__repr__(self)})"


class TypedObject(dict):
    """AMF0 typed object (0x10): an Object with an ActionScript class name. Equal only with the same name."""

    def __init__(self, class_name: str, mapping=()) -> None:
        super().__init__(mapping)
        self.class_name = class_name

    def __eq__(self, other: object) -> bool:
        if isinstance(other, TypedObject) and other.class_name != self.class_name:
            return False
        return dict.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    __hash__ = None  # type: ignore[assignment]  # mutable, like dict

    def __repr__(self) -> str:
        return f"TypedObject({self.class_name!r}, {dict.__repr__(self)})"


class XmlDocument(str):
    """AMF0 XML document (0x0F): a string with a u32 length, kept apart from String so it round-trips."""

    __slots__ = ()


@dataclass(frozen=True)
class Date:
    """AMF0 date (0x0B): milliseconds since the Unix epoch (UTC) and a time zone in minutes (unused)."""

    ms: float
    tz: int = 0


# ----- encoding ------------------------------------------------------------------------------------------
def encode(*values) -> bytes:
    """Encode each value in turn and concatenate: `encode("connect", 1.0, {"app": "live"})`.

    Raises EncodeError for a value with no AMF0 form (see the module docstring for the mapping).
    """
    out: list[bytes] = []
    for value in values:
        _encode_into(value, out, 0)
    return b"".join(out)


def encode_value(value) -> bytes:
    """Encode one value. Raises EncodeError for a value with no AMF0 form."""
    out: list[bytes] = []
    _encode_into(value, out, 0)
    return b"".join(out)


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # lone surrogates
        raise EncodeError(f"string is not encodable as UTF-8: {e}") from None


def _key_bytes(key) -> bytes:
    if not isinstance(key, str):
        raise EncodeError(f"object keys must be str, not {type(key).__name__}")
    raw = _utf8(key)
    if len(raw) > MAX_SHORT_STRING:
        raise EncodeError(f"object key of {len(raw)} bytes exceeds the u16 length field")
    return _U16.pack(len(raw)) + raw


def _encode_pairs(mapping: dict, out: list[bytes], depth: int) -> None:
    for key, item in mapping.items():
        out.append(_key_bytes(key))
        _encode_into(item, out, depth)
    out.append(_OBJECT_END_BYTES)


def _encode_into(value, out: list[bytes], depth: int) -> None:
    # Order matters: bool before int (bool is an int), the dict/str subclasses before dict/str.
    if value is None:
        out.append(b"\x05")
    elif value is True or value is False:
        out.append(b"\x01\x01" if value else b"\x01\x00")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            out.append(b"\x00" + _F64.pack(float(value)))
        except OverflowError:
            raise EncodeError(f"integer {value} is too large for a float64 Number") from None
    elif isinstance(value, XmlDocument):
        raw = _utf8(value)
        if len(raw) > MAX_LONG_STRING:
            raise EncodeError("XML document exceeds the u32 length field")
        out.append(bytes([XML_DOCUMENT]) + _U32.pack(len(raw)) + raw)
    elif isinstance(value, str):
        raw = _utf8(value)
        if len(raw) <= MAX_SHORT_STRING:
            out.append(bytes([STRING]) + _U16.pack(len(raw)) + raw)
        elif len(raw) <= MAX_LONG_STRING:
            out.append(bytes([LONG_STRING]) + _U32.pack(len(raw)) + raw)
        else:
            raise EncodeError("string exceeds the u32 length field")
    elif value is UNDEFINED:
        out.append(b"\x06")
    elif value is UNSUPPORTED:
        out.append(b"\x0d")
    elif isinstance(value, Date):
        if not isinstance(value.tz, int) or not TZ_MIN <= value.tz <= TZ_MAX:
            raise EncodeError(f"Date time zone {value.tz!r} is not an s16")
        try:
            out.append(bytes([DATE]) + _DATE.pack(float(value.ms), value.tz))
        except (TypeError, ValueError, OverflowError) as e:
            raise EncodeError(f"bad Date {value!r}: {e}") from None
    elif isinstance(value, (dict, list, tuple)):
        depth += 1
        if depth > MAX_DEPTH:
            # Also what stops a cyclic structure from recursing forever.
            raise EncodeError(f"nesting deeper than MAX_DEPTH={MAX_DEPTH}")
        if isinstance(value, EcmaArray):
            out.append(bytes([ECMA_ARRAY]) + _U32.pack(min(len(value), MAX_LONG_STRING)))
            _encode_pairs(value, out, depth)
        elif isinstance(value, TypedObject):
            if not isinstance(value.class_name, str):
                raise EncodeError("TypedObject.class_name must be str")
            out.append(bytes([TYPED_OBJECT]) + _key_bytes(value.class_name))
            _encode_pairs(value, out, depth)
        elif isinstance(value, dict):
            out.append(bytes([OBJECT]))
            _encode_pairs(value, out, depth)
        else:
            if len(value) > MAX_LONG_STRING:
                raise EncodeError("strict array exceeds the u32 count field")
            out.append(bytes([STRICT_ARRAY]) + _U32.pack(len(value)))
            for item in value:
                _encode_into(item, out, depth)
    else:
        raise EncodeError(f"no AMF0 encoding for {type(value).__name__}")


# ----- decoding ------------------------------------------------------------------------------------------
def decode(data, offset: int = 0) -> tuple[object, int]:
    """Decode one value starting at `offset` of `data` (bytes, bytearray or memoryview).

    Returns (value, offset just past it). Raises DecodeError if the value is malformed, truncated, nested
    deeper than MAX_DEPTH, or uses a reference that does not resolve.
    """
    decoder = _Decoder(data, offset)
    value = decoder.value(0)
    return value, decoder.pos


def decode_all(data) -> list:
    """Decode values until the end of `data`: the arguments of a command or data message.

    References resolve across the whole call (one message is one reference table). An empty input gives [].
    Raises DecodeError as `decode` does; nothing is returned for a partially valid input.
    """
    decoder = _Decoder(data, 0)
    values = []
    while decoder.pos < decoder.end:
        values.append(decoder.value(0))
    return values


def decode_data_message(data) -> list:
    """The values of a data message, without the `@setDataFrame` an encoder (FMLE, FFmpeg) puts in front of
    `onMetaData`. Raises DecodeError as `decode_all` does."""
    values = decode_all(data)
    return values[1:] if values and values[0] == "@setDataFrame" else values


def metadata_object(values: list) -> dict | None:
    """The object of an `onMetaData` data message ({} when it carries none), or None for any other message."""
    if not values or values[0] != "onMetaData":
        return None
    return next((v for v in values[1:] if isinstance(v, dict)), {})


_IN_PROGRESS = object()  # reference-table slot of a complex value still being decoded


class _Decoder:
    """One decode call: a cursor over the input plus the reference table of complex values seen so far."""

    __slots__ = ("buf", "pos", "end", "refs", "ref_sizes", "expansion")

    def __init__(self, data, offset: int) -> None:
        view = memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        self.buf = view
        self.end = len(view)
        if not isinstance(offset, int) or not 0 <= offset <= self.end:
            raise DecodeError(f"offset {offset!r} is outside the {self.end}-byte input")
        self.pos = offset
        self.refs: list = []          # complex values in the order they started (the AMF0 reference order)
        self.ref_sizes: list[int] = []  # their encoded size with references expanded
        self.expansion = 0             # bytes that references in this call stand for

    # -- primitives --
    def take(self, n: int, what: str) -> memoryview:
        # Check against what is left before slicing: a declared length never causes an allocation.
        if n > self.end - self.pos:
            raise DecodeError(f"truncated {what}: needs {n} bytes at offset {self.pos}, "
                              f"{self.end - self.pos} left")
        start = self.pos
        self.pos = start + n
        return self.buf[start:self.pos]

    def u8(self, what: str) -> int:
        if self.pos >= self.end:
            raise DecodeError(f"truncated {what} at offset {self.pos}")
        self.pos += 1
        return self.buf[self.pos - 1]

    def u16(self, what: str) -> int:
        return _U16.unpack(self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return _U32.unpack(self.take(4, what))[0]

    def text(self, n: int, what: str) -> str:
        # Real encoders emit bad UTF-8 (truncated multibyte names, Latin-1 titles); never fail on it.
        return str(self.take(n, what), "utf-8", "replace")

    # -- values --
    def value(self, depth: int):
        start = self.pos
        marker = self.u8("value marker")
        if marker == NUMBER:
            return _F64.unpack(self.take(8, "number"))[0]
        if marker == BOOLEAN:
            return self.u8("boolean") != 0
        if marker == STRING:
            return self.text(self.u16("string length"), "string")
        if marker == NULL:
            return None
        if marker == UNDEFINED_MARKER:
            return UNDEFINED
        if marker == LONG_STRING:
            return self.text(self.u32("long string length"), "long string")
        if marker == XML_DOCUMENT:
            return XmlDocument(self.text(self.u32("xml length"), "xml document"))
        if marker == DATE:
            ms, tz = _DATE.unpack(self.take(10, "date"))
            return Date(ms, tz)
        if marker == UNSUPPORTED_MARKER:
            return UNSUPPORTED
        if marker == REFERENCE:
            return self.reference()
        if marker in (OBJECT, ECMA_ARRAY, STRICT_ARRAY, TYPED_OBJECT):
            return self.complex(marker, start, depth + 1)
        if marker == OBJECT_END:
            raise DecodeError(f"object end marker where a value was expected at offset {start}")
        if marker in (MOVIECLIP, RECORDSET):
            raise DecodeError(f"reserved AMF0 type 0x{marker:02x} at offset {start}")
        if marker == AVMPLUS:
            raise DecodeError(f"AMF3 (AVM+ switch) value at offset {start} is not supported")
        raise DecodeError(f"unknown AMF0 marker 0x{marker:02x} at offset {start}")

    def complex(self, marker: int, start: int, depth: int):
        if depth > MAX_DEPTH:
            raise DecodeError(f"nesting deeper than MAX_DEPTH={MAX_DEPTH} at offset {start}")
        index = len(self.refs)
        # The slot is taken when the value starts (that is the numbering Flash uses); until the value is
        # complete a reference to it is refused, so a decoded value is never cyclic.
        self.refs.append(_IN_PROGRESS)
        self.ref_sizes.append(0)
        expansion_before = self.expansion
        if marker == OBJECT:
            result = self.pairs({}, depth)
        elif marker == ECMA_ARRAY:
            self.u32("ecma array count")  # only a hint, often wrong (0 from some encoders): not trusted
            result = self.pairs(EcmaArray(), depth)
        elif marker == TYPED_OBJECT:
            class_name = self.text(self.u16("class name length"), "class name")
            result = self.pairs(TypedObject(class_name), depth)
        else:
            count = self.u32("strict array count")
            if count > self.end - self.pos:  # each element takes at least its marker byte
                raise DecodeError(f"strict array of {count} elements at offset {start} is longer than the input")
            result = [self.value(depth) for _ in range(count)]
        self.refs[index] = result
        self.ref_sizes[index] = (self.pos - start) + (self.expansion - expansion_before)
        return result

    def pairs(self, result: dict, depth: int) -> dict:
        """Key/value pairs up to the end marker: an empty key followed by 0x09."""
        while True:
            key = self.text(self.u16("object key length"), "object key")
            if not key and self.pos < self.end and self.buf[self.pos] == OBJECT_END:
                self.pos += 1
                return result
            # An empty key followed by anything but 0x09 is a property named "" (legal AMF0, and
            # ActionScript allows it); the value decoder reports truncation if the input ends here.
            result[key] = self.value(depth)

    def reference(self):
        index = self.u16("reference index")
        if index >= len(self.refs):
            raise DecodeError(f"reference {index} to an object not decoded yet ({len(self.refs)} so far)")
        target = self.refs[index]
        if target is _IN_PROGRESS:
            raise DecodeError(f"reference {index} to an enclosing object (a cycle)")
        self.expansion += self.ref_sizes[index]
        if self.expansion > MAX_REFERENCE_EXPANSION:
            raise DecodeError(f"references stand for more than MAX_REFERENCE_EXPANSION="
                              f"{MAX_REFERENCE_EXPANSION} bytes")
        return target

