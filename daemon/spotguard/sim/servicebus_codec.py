"""AMQP 1.0 type system: decode and encode values, skip over them, for the local Service Bus broker.

The broker keeps messages as encoded bytes and touches only the sections it must change, so it
needs a codec it controls: one that round-trips what it decodes (a ``symbol`` stays a symbol, a
``uint`` a uint, a timestamp a timestamp) and never hands out views into a buffer that may be
freed (proton's ``Data`` returns ``memoryview``s into its own buffer for binary values).

Decoded values map to Python as follows; the wrapper types re-encode to the same AMQP type:

===========================  =============================================================
AMQP                         Python
===========================  =============================================================
null, boolean                ``None``, ``bool``
long                         ``int``
ubyte/ushort/uint/ulong,     ``UByte``/``UShort``/``UInt``/``ULong``,
byte/short/int               ``Byte``/``Short``/``Int`` (``int`` subclasses)
timestamp                    ``Timestamp`` (``int``, milliseconds since the Unix epoch)
double / float               ``float`` / ``Float``
decimal32/64/128             ``Decimal`` (the raw bytes and their width)
char                         ``Char`` (``str``)
uuid                         ``uuid.UUID``
binary / string / symbol     ``bytes`` / ``str`` / ``Symbol`` (``str``)
list / map / array           ``list`` / ``dict`` / ``Array``
described                    ``Described``
===========================  =============================================================
"""

from __future__ import annotations

import struct
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final


class DecodeError(ValueError):
    """The bytes are not a well-formed AMQP encoding (or are cut short)."""


class UByte(int):
    pass


class UShort(int):
    pass


class UInt(int):
    pass


class ULong(int):
    pass


class Byte(int):
    pass


class Short(int):
    pass


class Int(int):
    pass


class Timestamp(int):
    """Milliseconds since the Unix epoch (AMQP ``timestamp``)."""


class Float(float):
    """A 32-bit IEEE 754 float (AMQP ``float``); plain ``float`` is ``double``."""


class Symbol(str):
    """An AMQP ``symbol`` (ASCII); plain ``str`` is ``string``."""


class Char(str):
    """One UTF-32 character (AMQP ``char``)."""


@dataclass(frozen=True, slots=True)
class Decimal:
    """A decimal32/64/128, kept as its encoded bytes (nothing here does arithmetic on them)."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class Described:
    descriptor: Any
    value: Any


@dataclass(slots=True)
class Array:
    """An AMQP array: ``code`` is the element constructor (e.g. ``0x98`` for uuid), ``descriptor``
    is set for an array of described values."""

    code: int
    items: list[Any] = field(default_factory=list)
    descriptor: Any = None


# --- skipping -------------------------------------------------------------------------------

_FIXED_WIDTH: Final = {0x4: 0, 0x5: 1, 0x6: 2, 0x7: 4, 0x8: 8, 0x9: 16}


def _need(buf: bytes | memoryview, end: int) -> int:
    if end > len(buf):
        raise DecodeError(f"encoding cut short: needs {end} bytes, has {len(buf)}")
    return end


def _constructor_end(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """The end of the constructor at ``pos`` and its primitive code (a descriptor is skipped)."""
    _need(buf, pos + 1)
    code = buf[pos]
    if code == 0x00:
        pos = skip_value(buf, pos + 1)
        _need(buf, pos + 1)
        code = buf[pos]
        if code == 0x00:
            raise DecodeError("a descriptor of a descriptor is not allowed")
    return pos + 1, code


def _payload_end(buf: bytes | memoryview, pos: int, code: int) -> int:
    """The end of the payload of a primitive of type ``code`` starting at ``pos``."""
    category = code >> 4
    if category in _FIXED_WIDTH:
        if code not in _DECODERS:
            raise DecodeError(f"unknown AMQP type code 0x{code:02x}")
        return _need(buf, pos + _FIXED_WIDTH[category])
    if category in (0xA, 0xC, 0xE):
        _need(buf, pos + 1)
        return _need(buf, pos + 1 + buf[pos])
    if category in (0xB, 0xD, 0xF):
        _need(buf, pos + 4)
        (size,) = struct.unpack_from(">I", buf, pos)
        return _need(buf, pos + 4 + size)
    raise DecodeError(f"unknown AMQP type code 0x{code:02x}")


def skip_value(buf: bytes | memoryview, pos: int = 0) -> int:
    """The offset just past the value encoded at ``pos`` (nothing is decoded)."""
    described = 0
    while _need(buf, pos + 1) and buf[pos] == 0x00:  # descriptor, then the described value
        described += 1
        if described > MAX_DEPTH:
            raise DecodeError(f"descriptors nested deeper than {MAX_DEPTH}")
        pos += 1
    end = _payload_end(buf, pos + 1, buf[pos])
    for _ in range(described):
        end = skip_value(buf, end)
    return end


# --- decoding -------------------------------------------------------------------------------


#: Deeper nesting is refused (a hostile payload could otherwise exhaust Python's stack).
MAX_DEPTH: Final = 32
_depth = threading.local()


def decode_value(buf: bytes | memoryview, pos: int = 0) -> tuple[Any, int]:
    """The value encoded at ``pos`` and the offset just past it."""
    depth: int = getattr(_depth, "value", 0)
    if depth >= MAX_DEPTH:
        raise DecodeError(f"values nested deeper than {MAX_DEPTH}")
    _depth.value = depth + 1
    try:
        return _decode_value(buf, pos)
    finally:
        _depth.value = depth


def _decode_value(buf: bytes | memoryview, pos: int) -> tuple[Any, int]:
    _need(buf, pos + 1)
    code = buf[pos]
    if code == 0x00:
        descriptor, pos = decode_value(buf, pos + 1)
        value, pos = decode_value(buf, pos)
        return Described(descriptor, value), pos
    end = _payload_end(buf, pos + 1, code)
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise DecodeError(f"unknown AMQP type code 0x{code:02x}")
    return decoder(bytes(buf[pos + 1 : end])), end


def decode(data: bytes) -> Any:
    """Exactly one value: DecodeError if bytes are left over."""
    value, end = decode_value(data)
    if end != len(data):
        raise DecodeError(f"{len(data) - end} bytes after the value")
    return value


def _items(body: bytes, count: int) -> list[Any]:
    out: list[Any] = []
    pos = 0
    for _ in range(count):
        value, pos = decode_value(body, pos)
        out.append(value)
    if pos != len(body):
        raise DecodeError("compound size does not match its items")
    return out


def _compound(body: bytes, wide: bool) -> list[Any]:
    header = 4 if wide else 1
    if len(body) < header:
        raise DecodeError("compound without a count")
    count = struct.unpack_from(">I", body)[0] if wide else body[0]
    if count > len(body):
        raise DecodeError(f"compound claims {count} items in {len(body)} bytes")
    return _items(body[header:], count)


def _map(body: bytes, wide: bool) -> dict[Any, Any]:
    items = _compound(body, wide)
    if len(items) % 2:
        raise DecodeError("a map needs an even number of items")
    try:
        return dict(zip(items[::2], items[1::2], strict=True))
    except TypeError as exc:  # an unhashable key (a list or a map)
        raise DecodeError(f"unusable map key: {exc}") from None


def _array(body: bytes, wide: bool) -> Array:
    header = 4 if wide else 1
    if len(body) < header:
        raise DecodeError("array without a count")
    count = struct.unpack_from(">I", body)[0] if wide else body[0]
    pos, code = _constructor_end(body, header)
    descriptor = decode_value(body, header + 1)[0] if body[header] == 0x00 else None
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise DecodeError(f"unknown AMQP type code 0x{code:02x} in an array")
    if count > len(body):
        raise DecodeError(f"array claims {count} items in {len(body)} bytes")
    items: list[Any] = []
    for _ in range(count):
        end = _payload_end(body, pos, code)
        item = decoder(body[pos:end])
        items.append(Described(descriptor, item) if descriptor is not None else item)
        pos = end
    if pos != len(body):
        raise DecodeError("array size does not match its items")
    return Array(code, items, descriptor)


def _utf8(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"string is not UTF-8: {exc}") from None


def _symbol(raw: bytes) -> Symbol:
    try:
        return Symbol(raw.decode("ascii"))
    except UnicodeDecodeError as exc:
        raise DecodeError(f"symbol is not ASCII: {exc}") from None


def _char(raw: bytes) -> Char:
    try:
        return Char(chr(struct.unpack(">I", raw)[0]))
    except (ValueError, OverflowError) as exc:
        raise DecodeError(f"not a character: {exc}") from None


def _unpack(fmt: str, wrap: Callable[[Any], Any]) -> Callable[[bytes], Any]:
    return lambda raw: wrap(struct.unpack(fmt, raw)[0])


_DECODERS: Final[dict[int, Callable[[bytes], Any]]] = {
    0x40: lambda _: None,
    0x41: lambda _: True,
    0x42: lambda _: False,
    0x56: lambda raw: raw != b"\x00",
    0x43: lambda _: UInt(0),
    0x44: lambda _: ULong(0),
    0x45: lambda _: [],
    0x50: _unpack(">B", UByte),
    0x51: _unpack(">b", Byte),
    0x52: _unpack(">B", UInt),
    0x53: _unpack(">B", ULong),
    0x54: _unpack(">b", Int),
    0x55: _unpack(">b", int),
    0x60: _unpack(">H", UShort),
    0x61: _unpack(">h", Short),
    0x70: _unpack(">I", UInt),
    0x71: _unpack(">i", Int),
    0x72: _unpack(">f", Float),
    0x73: _char,
    0x74: Decimal,
    0x80: _unpack(">Q", ULong),
    0x81: _unpack(">q", int),
    0x82: _unpack(">d", float),
    0x83: _unpack(">q", Timestamp),
    0x84: Decimal,
    0x94: Decimal,
    0x98: lambda raw: uuid.UUID(bytes=raw),
    0xA0: lambda raw: raw[1:],
    0xA1: lambda raw: _utf8(raw[1:]),
    0xA3: lambda raw: _symbol(raw[1:]),
    0xB0: lambda raw: raw[4:],
    0xB1: lambda raw: _utf8(raw[4:]),
    0xB3: lambda raw: _symbol(raw[4:]),
    0xC0: lambda raw: _compound(raw[1:], wide=False),
    0xD0: lambda raw: _compound(raw[4:], wide=True),
    0xC1: lambda raw: _map(raw[1:], wide=False),
    0xD1: lambda raw: _map(raw[4:], wide=True),
    0xE0: lambda raw: _array(raw[1:], wide=False),
    0xF0: lambda raw: _array(raw[4:], wide=True),
}


# --- encoding -------------------------------------------------------------------------------

_INT_TYPES: Final[dict[type, tuple[int, str]]] = {
    UByte: (0x50, ">B"),
    Byte: (0x51, ">b"),
    UShort: (0x60, ">H"),
    Short: (0x61, ">h"),
    UInt: (0x70, ">I"),
    Int: (0x71, ">i"),
    ULong: (0x80, ">Q"),
    Timestamp: (0x83, ">q"),
    int: (0x81, ">q"),
}
_DECIMAL_CODES: Final = {4: 0x74, 8: 0x84, 16: 0x94}


def _small_int(value: int) -> tuple[int, bytes] | None:
    """The compact encodings of uint, ulong, int and long, where the value allows one."""
    kind = type(value)
    if kind in (UInt, ULong) and 0 <= value <= 0xFF:
        zero, small = (0x43, 0x52) if kind is UInt else (0x44, 0x53)
        return (zero, b"") if value == 0 else (small, bytes([value]))
    if kind in (Int, int) and -128 <= value <= 127:
        return (0x54 if kind is Int else 0x55), struct.pack(">b", value)
    return None


def _sized(small: int, large: int, payload: bytes, wide: bool) -> tuple[int, bytes]:
    if not wide and len(payload) <= 0xFF:
        return small, bytes([len(payload)]) + payload
    return large, struct.pack(">I", len(payload)) + payload


def _compound_payload(
    small: int, large: int, values: Iterable[Any], count: int, wide: bool
) -> tuple[int, bytes]:
    body = b"".join(encode(v) for v in values)
    if not wide and len(body) + 1 <= 0xFF and count <= 0xFF:
        return small, bytes([len(body) + 1, count]) + body
    return large, struct.pack(">II", len(body) + 4, count) + body


def _payload(value: Any, wide: bool = False) -> tuple[int, bytes]:
    """The constructor code and payload of ``value``; ``wide`` picks the 4-byte-size forms that an
    array's elements share."""
    if value is None:
        return 0x40, b""
    if isinstance(value, bool):
        return 0x56, b"\x01" if value else b"\x00"
    if isinstance(value, int):
        if not wide and (small := _small_int(value)) is not None:
            return small
        code, fmt = _INT_TYPES.get(type(value), _INT_TYPES[int])
        try:
            return code, struct.pack(fmt, value)
        except struct.error as exc:
            raise ValueError(f"{value!r} does not fit AMQP type 0x{code:02x}") from exc
    if isinstance(value, Float):
        return 0x72, struct.pack(">f", value)
    if isinstance(value, float):
        return 0x82, struct.pack(">d", value)
    if isinstance(value, Char):
        return 0x73, struct.pack(">I", ord(value))
    if isinstance(value, Symbol):
        return _sized(0xA3, 0xB3, value.encode("ascii"), wide)
    if isinstance(value, str):
        return _sized(0xA1, 0xB1, value.encode("utf-8"), wide)
    if isinstance(value, bytes | bytearray | memoryview):
        return _sized(0xA0, 0xB0, bytes(value), wide)
    if isinstance(value, uuid.UUID):
        return 0x98, value.bytes
    if isinstance(value, Decimal):
        return _DECIMAL_CODES[len(value.raw)], value.raw
    if isinstance(value, list | tuple):
        if not value and not wide:
            return 0x45, b""
        return _compound_payload(0xC0, 0xD0, value, len(value), wide)
    if isinstance(value, dict):
        flat = [x for pair in value.items() for x in pair]
        return _compound_payload(0xC1, 0xD1, flat, len(flat), wide)
    if isinstance(value, Array):
        return 0xF0, _array_payload(value)
    raise TypeError(f"no AMQP encoding for {type(value).__name__}")


def _array_payload(array: Array) -> bytes:
    parts: list[bytes] = []
    code: int | None = None
    for item in array.items:
        value = item.value if isinstance(item, Described) else item
        item_code, payload = _payload(value, wide=True)
        if code is None:
            code = item_code
        elif item_code != code:
            raise ValueError("array items must share one AMQP type")
        parts.append(payload)
    if code is None:
        code = {0xA0: 0xB0, 0xA1: 0xB1, 0xA3: 0xB3, 0xC0: 0xD0, 0xC1: 0xD1}.get(
            array.code, array.code
        )
    constructor = bytes([code])
    if array.descriptor is not None:
        constructor = b"\x00" + encode(array.descriptor) + constructor
    body = constructor + b"".join(parts)
    return struct.pack(">II", len(body) + 4, len(array.items)) + body


def encode(value: Any) -> bytes:
    """The AMQP encoding of ``value`` (see the module docstring for the type mapping)."""
    if isinstance(value, Described):
        return b"\x00" + encode(value.descriptor) + encode(value.value)
    code, payload = _payload(value)
    return bytes([code]) + payload
