"""The hand-written hot-path codec against pamqp: byte for byte out, field for field in."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import body as pbody
from pamqp import commands, frame, header

from tidings.amqp import codec, frames
from tidings.basic_properties import to_message, to_properties
from tidings.errors import FrameError
from tidings.message import Message

B = commands.Basic

short = st.text(max_size=40)
names = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60)
scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), short,
    st.binary(max_size=20),
)
values = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(short, inner, max_size=3)), max_leaves=8)
deaths = st.lists(st.fixed_dictionaries({
    "queue": short, "reason": st.sampled_from(["rejected", "expired", "maxlen"]),
    "count": st.integers(1, 1000), "time": st.integers(0, 2**32 - 1)}), min_size=1, max_size=2)
headers = st.one_of(
    st.none(), st.just({}),
    st.dictionaries(short, values, max_size=5),
    st.builds(lambda h, d: {**h, "x-death": d}, st.dictionaries(short, values, max_size=2),
              deaths),
)
optional = st.one_of(st.none(), short)


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(
        draw(st.binary(max_size=3000)), draw(names), draw(names), headers=draw(headers),
        persistent=draw(st.booleans()), content_type=draw(optional),
        content_encoding=draw(optional), priority=draw(st.one_of(st.none(), st.integers(0, 255))),
        correlation_id=draw(optional), reply_to=draw(optional), expiration=draw(optional),
        message_id=draw(optional),
        timestamp=draw(st.one_of(st.none(), st.integers(0, 2**32 - 1))),
        type=draw(optional), user_id=draw(optional), app_id=draw(optional),
    )


def pamqp_content(channel: int, message: Message, extra: dict[str, Any] | None,
                  frame_max: int) -> bytes:
    """What pamqp writes for ``message``: its content header, then body frames of at most
    ``frame_max`` bytes (frame overhead included)."""
    body = message.body
    parts = [frame.marshal(header.ContentHeader(0, len(body), to_properties(message, extra)),
                           channel)]
    chunk = frame_max - frames.FRAME_OVERHEAD
    parts += [frame.marshal(pbody.ContentBody(body[i:i + chunk]), channel)
              for i in range(0, len(body), chunk)]
    return b"".join(parts)


PamqpDeliver = frames.any_utf8_names(B.Deliver)  # pamqp, minus its name check


@settings(max_examples=300, deadline=None)
@given(messages(), st.integers(1, 2047), names, st.integers(1, 2**63 - 1), st.booleans(),
       st.one_of(st.none(), st.integers(1, 50)), st.integers(4096, 20000))
def test_delivery_is_written_as_pamqp_writes_it(message: Message, channel: int, tag: str,
                                                 delivery_tag: int, redelivered: bool,
                                                 count: int | None, frame_max: int) -> None:
    extra = {"x-delivery-count": count} if count else None
    ours = codec.encode_deliver(channel, tag, delivery_tag, redelivered, message, extra,
                                frame_max)
    theirs = frame.marshal(PamqpDeliver(tag, delivery_tag, redelivered, message.exchange,
                                          message.routing_key), channel)
    assert ours == theirs + pamqp_content(channel, message, extra, frame_max)


@given(st.integers(1, 2047), st.integers(0, 2**63 - 1), st.booleans())
def test_confirm_is_written_as_pamqp_writes_it(channel: int, tag: int, multiple: bool) -> None:
    assert codec.encode_ack(channel, tag, multiple) == frame.marshal(B.Ack(tag, multiple), channel)


def whole_frame(channel: int, content: bytes) -> bytes:
    """The content header frame of ``content`` (header + bodies)."""
    size = int.from_bytes(content[3:7], "big")
    return content[: 7 + size + 1]


@settings(max_examples=300, deadline=None)
@given(messages(), st.integers(1, 2047))
def test_content_header_is_read_as_pamqp_reads_it(message: Message, channel: int) -> None:
    raw = whole_frame(channel, pamqp_content(channel, message, None, 131072))
    ours = codec.decode_content_header(raw)
    _, _, value = frame.unmarshal(raw)
    assert isinstance(value, header.ContentHeader)
    assert ours.body_size == value.body_size == len(message.body)
    assert ours.message == to_message(value.properties, b"", "", "")


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2047), st.integers(0, 2**40),
       st.one_of(st.none(), st.integers(0, 250_000_000_000_000)),
       st.one_of(st.none(), st.integers(1, 2)))
def test_unusual_headers_fall_back_to_pamqp(channel: int, size: int, timestamp: int | None,
                                            mode: int | None) -> None:
    """Millisecond timestamps, no or other delivery modes: pamqp's reading, unchanged."""
    ts = None if timestamp is None else datetime.datetime.fromtimestamp(
        min(timestamp, 2**32 - 1), datetime.UTC)
    props = B.Properties(timestamp=ts, delivery_mode=mode)
    raw = frame.marshal(header.ContentHeader(0, size, props), channel)
    if ts is not None and timestamp is not None and timestamp > 2**32 - 1:
        # as a sender that writes milliseconds does
        raw = raw.replace(int(ts.timestamp()).to_bytes(8, "big"), timestamp.to_bytes(8, "big"), 1)
    ours = codec.decode_content_header(raw)
    _, _, value = frame.unmarshal(raw)
    assert ours.message == to_message(value.properties, b"", "", "")  # type: ignore[union-attr]


method_cases = st.one_of(
    st.builds(frames.any_utf8_names(B.Publish), exchange=names, routing_key=names,
              mandatory=st.booleans(), immediate=st.booleans()),
    st.builds(B.Ack, delivery_tag=st.integers(0, 2**63 - 1), multiple=st.booleans()),
    st.builds(B.Nack, delivery_tag=st.integers(0, 2**63 - 1), multiple=st.booleans(),
              requeue=st.booleans()),
    st.builds(B.Reject, delivery_tag=st.integers(0, 2**63 - 1), requeue=st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(method_cases, st.integers(1, 2047))
def test_hot_methods_are_read_as_pamqp_reads_them(method: Any, channel: int) -> None:
    raw = frame.marshal(method, channel)
    ours = codec.decode_method(raw)
    _, _, theirs = frame.unmarshal(raw)
    cls = type(theirs)
    assert type(ours) is cls
    assert {s: getattr(ours, s) for s in cls.__slots__} == \
        {s: getattr(theirs, s) for s in cls.__slots__}


def test_other_methods_are_left_to_pamqp() -> None:
    for method in (B.Qos(0, 10), B.Consume(queue="q"), commands.Queue.Declare(queue="q"),
                   commands.Channel.Close(200, "bye", 0, 0)):
        assert codec.decode_method(frame.marshal(method, 1)) is None


def test_a_content_header_that_is_not_utf8_is_refused_as_pamqp_refuses_it() -> None:
    raw = bytearray(frame.marshal(header.ContentHeader(
        0, 3, B.Properties(content_type="ab")), 1))
    raw[22:24] = b"\xff\xfe"
    reader = frames.FrameReader()
    reader.feed(bytes(raw))
    try:
        reader.next_frame()
    except Exception as e:
        assert type(e).__name__ == "FrameError"
    else:
        raise AssertionError("bytes that are not UTF-8 were read as a content type")


def test_truncated_hot_methods_are_refused_as_pamqp_refuses_them() -> None:
    """A basic.publish or basic.ack cut short is a frame error, never read with the frame
    end octet taken for its bits (which would make a publish ``immediate``)."""
    publish = frame.marshal(frames.any_utf8_names(B.Publish)(0, "ex", "key"), 1)
    ack = frame.marshal(B.Ack(5, False), 1)
    for whole in (publish, ack):
        for cut in range(1, 6):
            payload = whole[7:-1][:-cut]
            raw = whole[:3] + len(payload).to_bytes(4, "big") + payload + b"\xce"
            reader = frames.FrameReader()
            reader.feed(raw)
            with pytest.raises(FrameError):
                reader.next_frame()
            with pytest.raises(Exception):  # noqa: B017  (pamqp's own exceptions vary)
                frame.unmarshal(raw)
