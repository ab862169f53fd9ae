"""The Service Bus broker's AMQP type codec: round trips that keep every type, agreement with
proton's own codec both ways, and nothing but DecodeError from bytes off the wire."""

from __future__ import annotations

import contextlib
import struct
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from proton import Data

from spotguard.sim.servicebus_codec import (
    MAX_DEPTH,
    Array,
    Byte,
    Char,
    DecodeError,
    Described,
    Float,
    Int,
    Short,
    Symbol,
    Timestamp,
    UByte,
    UInt,
    ULong,
    UShort,
    decode,
    decode_value,
    encode,
    skip_value,
)

SAMPLES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    127,
    -129,
    2**62,
    UByte(200),
    Byte(-5),
    UShort(65000),
    Short(-300),
    UInt(0),
    UInt(7),
    UInt(2**32 - 1),
    Int(-(2**31)),
    Int(5),
    ULong(0),
    ULong(255),
    ULong(2**64 - 1),
    Timestamp(1_795_000_000_000),
    1.25,
    Float(0.5),
    Char("é"),
    "",
    "naïve ☃",
    "x" * 300,
    Symbol("x-opt-sequence-number"),
    Symbol("s" * 300),
    b"",
    b"\x00\xff",
    b"b" * 70_000,
    uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e"),
    [],
    [1, "a", [None, b"z"]],
    {"k": "v", Symbol("sym"): [UInt(1)]},
    {"big": "v" * 300},
    Described(ULong(0x70), [True, None, UInt(10), None, UInt(3)]),
    Described(Symbol("amqp:data:binary"), b"payload"),
]


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_round_trip_keeps_value_and_type(value: Any) -> None:
    back = decode(encode(value))
    assert back == value
    assert type(back) is type(value)


@pytest.mark.parametrize("value", SAMPLES, ids=lambda v: type(v).__name__)
def test_proton_reads_what_we_write_and_we_read_what_proton_writes(value: Any) -> None:
    ours = encode(value)
    data = Data()
    assert data.decode(ours) == len(ours)
    data.rewind()
    data.next()
    obj = data.get_object()
    again = Data()
    again.put_object(obj)
    assert decode(again.encode()) == value


def test_arrays_round_trip_with_their_element_type() -> None:
    tokens = [uuid.uuid4() for _ in range(3)]
    for array in (
        Array(0x98, tokens),
        Array(0x81, [1, 2, 3]),
        Array(0xB1, ["a", "bb"]),
        Array(0xB3, [Symbol("x")]),
        Array(0x83, [Timestamp(1), Timestamp(2)]),
        Array(0x81, []),
    ):
        back = decode(encode(array))
        assert isinstance(back, Array)
        assert back.items == array.items
    data = Data()
    data.decode(encode(Array(0x98, tokens)))
    data.rewind()
    data.next()
    assert list(data.get_object().elements) == tokens


def test_an_array_of_mixed_types_is_refused() -> None:
    with pytest.raises(ValueError, match="share one AMQP type"):
        encode(Array(0x81, [1, "one"]))


def test_values_that_do_not_fit_their_type_are_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode(UByte(256))
    with pytest.raises(TypeError, match="no AMQP encoding"):
        encode(object())


def test_skip_value_finds_the_end_without_decoding() -> None:
    stream = b"".join(encode(v) for v in SAMPLES)
    pos, count = 0, 0
    while pos < len(stream):
        end = skip_value(stream, pos)
        assert decode_value(stream, pos)[1] == end
        pos, count = end, count + 1
    assert count == len(SAMPLES)


@pytest.mark.parametrize("value", [v for v in SAMPLES if len(encode(v)) > 1][:20])
def test_every_truncation_is_a_decode_error(value: Any) -> None:
    full = encode(value)
    for cut in range(len(full)):
        with pytest.raises(DecodeError):
            decode(full[:cut])


def test_trailing_bytes_and_unknown_codes_are_decode_errors() -> None:
    with pytest.raises(DecodeError, match="after the value"):
        decode(encode(1) + b"\x40")
    with pytest.raises(DecodeError, match="unknown AMQP type code 0x57"):
        decode(b"\x57\x00")
    with pytest.raises(DecodeError, match="UTF-8"):
        decode(b"\xa1\x01\xff")
    with pytest.raises(DecodeError, match="even number"):
        decode(b"\xc1\x02\x01\x40")
    with pytest.raises(DecodeError, match="map key"):
        decode(b"\xc1\x03\x02\x45\x40")  # a list as a key


def test_nesting_is_bounded() -> None:
    deep = b"\x40"
    for _ in range(MAX_DEPTH + 1):
        deep = b"\xd0" + struct.pack(">II", len(deep) + 4, 1) + deep
    with pytest.raises(DecodeError, match="nested deeper"):
        decode(deep)
    with pytest.raises(DecodeError, match="nested deeper"):
        skip_value(b"\x00" * (MAX_DEPTH + 2) + b"\x40")


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_decode_or_raise_decode_error(raw: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode(raw)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 2**32 - 1).map(UInt),
    st.integers(0, 2**64 - 1).map(ULong),
    st.integers(-(2**63), 2**63 - 1).map(Timestamp),
    st.floats(allow_nan=False),
    st.text(max_size=20),
    st.text(alphabet=st.characters(max_codepoint=127), max_size=20).map(Symbol),
    st.binary(max_size=20),
    st.uuids(),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.text(max_size=5), inner, max_size=4),
        st.builds(Described, st.integers(0, 2**64 - 1).map(ULong), inner),
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(values)
def test_any_value_round_trips(value: Any) -> None:
    assert decode(encode(value)) == value
