"""The bytes form of a record: a round trip gives back an equal record, whatever it holds."""

from __future__ import annotations

import datetime
import decimal
import struct

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from pamqp import commands, decode, encode

from tidings.basic_properties import to_message, to_properties
from tidings.codecs import RecordError, decode_record, encode_record
from tidings.message import Message, Record

header_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=20)
    | st.binary(max_size=20) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)


@given(
    body=st.binary(max_size=300),
    headers=st.none() | st.dictionaries(st.text(max_size=10), header_values, max_size=4),
    priority=st.none() | st.integers(0, 255),
    expiration=st.none() | st.integers(0, 10**9).map(str),
    delivery_count=st.integers(0, 1000),
    persistent=st.booleans(),
)
def test_record_round_trips(body: bytes, headers: dict | None, priority: int | None,  # type: ignore[type-arg]
                            expiration: str | None, delivery_count: int,
                            persistent: bool) -> None:
    record = Record(Message(body, "rk", "ex", headers, persistent, priority=priority,
                            expiration=expiration, message_id="id"), 12.5, delivery_count)
    assert decode_record(encode_record(record)) == record


def test_values_marshal_cannot_carry_fall_back_and_round_trip() -> None:
    headers = {"when": datetime.datetime(2026, 1, 2, 3, 4, 5), "price": decimal.Decimal("1.50"),
               "raw": b"\x00\x01"}
    record = Record(Message(b"x", headers=headers), 1.0, due_at=5.0,
                    target={"vhost": "/", "queue": "q"})
    encoded = encode_record(record)
    assert encoded[:1] == b"\x00"
    assert decode_record(encoded) == record


# -- every AMQP field table survives the store, unambiguously ------------------------------

#: Keys a user may choose, including every tag the JSON form uses for itself.
_keys = st.sampled_from(["$b", "$dt", "$dec", "$t", "a", "x-death", "$"]) | st.text(max_size=6)
_amqp_scalars = (
    st.none() | st.booleans() | st.integers(-2**63, 2**63 - 1) | st.text(max_size=12)
    | st.floats(allow_nan=False, width=32)
    | st.binary(max_size=8).map(bytearray)
    | st.decimals(allow_nan=False, allow_infinity=False, places=2,
                  min_value=-10**6, max_value=10**6)
    | st.datetimes(min_value=datetime.datetime(1970, 1, 2), max_value=datetime.datetime(2100, 1, 1))
    .map(lambda d: d.replace(microsecond=0))
)
amqp_tables = st.dictionaries(_keys, st.recursive(
    _amqp_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_keys, inner, max_size=3),
    max_leaves=10,
), max_size=5)


@given(amqp_tables)
def test_every_amqp_field_table_round_trips_through_the_store(table: dict) -> None:  # type: ignore[type-arg]
    """A table as pamqp decodes it off the wire is stored and read back equal, and encodes to
    the same wire bytes again: no user value (``{"$b": "a"}`` beside a timestamp, say) can be
    mistaken for one of the codec's own tags."""
    try:
        wire = encode.field_table(table)
    except (TypeError, ValueError, struct.error):
        assume(False)
    _, headers = decode.field_table(wire)
    message = to_message(commands.Basic.Properties(headers=headers), b"body", "ex", "rk")
    record = Record(message, 1.0)
    back = decode_record(encode_record(record))
    assert back == record
    assert encode.field_table(to_properties(back.message).headers) == wire


def test_a_tag_shaped_table_beside_a_timestamp_is_kept_as_the_user_sent_it() -> None:
    headers = {"when": datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC), "t": {"$b": "a"},
               "u": {"$t": {"$dec": "x"}}, "v": [{"$dt": "never"}]}
    record = Record(Message(b"x", headers=headers), 1.0)
    assert decode_record(encode_record(record)).message.headers == headers


@pytest.mark.parametrize("data", [b"", b"\x07junk", b"\x01\x00\x01", b"\x00\x00\x00\x00\x09{}",
                                  b"\x00\x00\x00\x00\x0d{\"h\":{\"$b\":\"!\"}}"])
def test_unreadable_bytes_raise_one_error_type(data: bytes) -> None:
    with pytest.raises(RecordError):
        decode_record(data)


@given(
    body=st.binary(max_size=100),
    headers=st.none() | st.dictionaries(st.text(max_size=10), header_values, min_size=1,
                                        max_size=4),
    message_id=st.none() | st.text(max_size=20),
    persistent=st.booleans(),
)
def test_properties_travel_beside_the_body(body: bytes, headers: dict[str, object] | None,
                                          message_id: str | None, persistent: bool) -> None:
    """What NATS headers and Redis stream fields carry: every property, bytes and dates
    included, comes back as it was sent."""
    from tidings.codecs import decode_meta, encode_meta

    sent = Message(body, "orders.eu", "", headers, persistent, content_type="application/json",
                   message_id=message_id, timestamp=1_700_000_000,
                   reply_to="replies", priority=3)
    assert decode_meta(body, encode_meta(sent)) == sent


def test_foreign_or_damaged_properties() -> None:
    from tidings.codecs import decode_meta

    assert decode_meta(b"raw", None) == Message(b"raw")  # a producer that is not tidings
    for bad in ('[1, 2]', '{"h": {"$b": "not base64!"}}', "{not json"):
        with pytest.raises(ValueError):
            decode_meta(b"x", bad)
