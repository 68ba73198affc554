"""The bytes form of a record: a round trip gives back an equal record, whatever it holds."""

from __future__ import annotations

import datetime
import decimal

from hypothesis import given
from hypothesis import strategies as st

from tidings.message import Message, Record, decode_record, encode_record

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
