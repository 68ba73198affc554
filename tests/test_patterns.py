"""Topic matching: a table of RabbitMQ's cases, plus properties against a regex reference."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import InvalidArgumentError
from tidings.patterns import topic_matches, validate_pattern

TABLE = [
    ("a.b.c", "a.b.c", True),
    ("a.*.c", "a.b.c", True),
    ("a.*.c", "a.c", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("#", "", True),
    ("#", "a.b", True),
    ("*", "", True),
    ("*", "a.b", False),
    ("a.#", "a", True),
    ("#.a", "a", True),
    ("#.#", "a.b", True),
    ("*.#", "", True),
    ("a.*", "a.", True),
    ("a.*", "a", False),
    ("orders.*", "orders.created", True),
    ("orders.*", "orders.eu.created", False),
    ("orders.#", "orders.eu.created", True),
    ("#.created", "orders.eu.created", True),
    ("*.*.created", "orders.created", False),
    ("a.b", "a.b.c", False),
    ("", "", True),
    ("", "a", False),
]


@pytest.mark.parametrize(("pattern", "key", "expected"), TABLE)
def test_topic_matches_table(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


def _reference(pattern: str, key: str) -> bool:
    """Words as a regex over '.'-joined text with sentinels, the textbook way."""
    parts = []
    for word in pattern.split("."):
        if word == "#":
            parts.append(r"(?:\.[^.]*)*")
        elif word == "*":
            parts.append(r"\.[^.]*")
        else:
            parts.append(r"\." + re.escape(word))
    return re.fullmatch("".join(parts), "." + key) is not None


words = st.sampled_from(["a", "b", "c", ""])
pattern_words = st.sampled_from(["a", "b", "*", "#", ""])


@given(st.lists(pattern_words, min_size=1, max_size=6), st.lists(words, min_size=1, max_size=6))
def test_topic_matches_agrees_with_regex_reference(p: list[str], k: list[str]) -> None:
    pattern, key = ".".join(p), ".".join(k)
    assert topic_matches(pattern, key) == _reference(pattern, key)


@given(st.lists(words, min_size=1, max_size=6))
def test_topic_hash_matches_everything_and_key_matches_itself(k: list[str]) -> None:
    key = ".".join(k)
    assert topic_matches("#", key)
    assert topic_matches(key, key)


@pytest.mark.parametrize("bad", ["a.b*", "a#.b", "x" * 300])
def test_validate_pattern_refuses_bad_patterns(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        validate_pattern(bad)
