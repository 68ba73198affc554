"""How names and topic patterns reach NATS and Redis: every queue name is a valid stream name
and stays distinct, AMQP topic patterns keep their meaning as NATS filters, and what an
engine cannot take is refused with a clear error."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import tidings
from tidings.client.nats_subjects import escape as _escape
from tidings.client.nats_subjects import event_filter, event_subject, stream_name
from tidings.client.nats_subjects import unescape as _unescape
from tidings.patterns import topic_matches

from ..services import redis_url


@given(st.text(min_size=1, max_size=30))
def test_every_queue_name_is_a_stream_name_and_comes_back(name: str) -> None:
    escaped = stream_name(name)
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in escaped)
    assert _unescape(_escape(name)) == name


def _nats_match(filter_subject: str, subject: str) -> bool:
    f, s = filter_subject.split("."), subject.split(".")
    for i, word in enumerate(f):
        if word == ">":
            return len(s) > i
        if i >= len(s) or (word != "*" and word != s[i]):
            return False
    return len(f) == len(s)


words = st.sampled_from(["a", "b", "orders", "_"])


@given(pattern=st.lists(st.sampled_from(["a", "b", "*", "#"]), min_size=1, max_size=4),
       topic=st.lists(words, min_size=1, max_size=5))
def test_a_pattern_means_on_nats_what_it_means_in_amqp(pattern: list[str],
                                                       topic: list[str]) -> None:
    """The NATS filter selects exactly what the AMQP pattern matches when it says it is
    exact, and never less (the client checks the rest) when it is not."""
    p, t = ".".join(pattern), ".".join(topic)
    subject, exact = event_filter(p)
    wanted, selected = topic_matches(p, t), _nats_match(subject, event_subject(t))
    if exact:
        assert selected == wanted
    else:
        assert selected or not wanted


@pytest.mark.parametrize("bad", ["a b", "a..b", "orders.>", "a.b*"])
def test_topics_nats_cannot_carry_are_refused(bad: str) -> None:
    with pytest.raises(tidings.InvalidArgumentError, match="cannot travel over NATS"):
        event_subject(bad)


async def test_redis_refuses_more_priority_levels_than_it_keeps() -> None:
    async with tidings.connect(redis_url()) as client:
        with pytest.raises(tidings.InvalidArgumentError, match=r"max_priority must be 0\.\.10"):
            await client.declare_queue("too-many-levels", max_priority=255)
