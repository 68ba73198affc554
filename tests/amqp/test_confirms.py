"""Publisher confirm bookkeeping, without sockets: numbering per channel, runs of acks
collapsed into one ``multiple`` ack, refused publishes nacked alone, a failed store nacking
everything, and a closed channel starting again at 1."""

from __future__ import annotations

from tidings.amqp.confirms import ConfirmBook, Reply, replies


def test_only_confirm_mode_channels_are_numbered() -> None:
    book = ConfirmBook()
    book.published(1, True)  # channel 1 never selected confirms
    assert not book and book.take() == {}
    book.select(1)
    book.select(2)
    book.published(1, True)
    book.published(2, False)
    book.published(1, True)
    assert book
    assert book.take() == {1: [(1, True), (2, True)], 2: [(1, False)]}
    assert not book and book.take() == {}
    book.published(1, True)
    assert book.take() == {1: [(3, True)]}  # numbering goes on across takes


def test_select_twice_keeps_the_numbering_and_forget_restarts_it() -> None:
    book = ConfirmBook()
    book.select(1)
    book.published(1, True)
    book.select(1)  # confirm.select again is allowed and changes nothing
    book.published(1, True)
    assert book.take() == {1: [(1, True), (2, True)]}
    book.published(1, True)
    book.forget(1)
    assert book.take() == {}
    book.published(1, True)  # not in confirm mode any more: not counted
    assert book.take() == {}
    book.select(1)
    book.published(1, True)
    assert book.take() == {1: [(1, True)]}


def test_runs_of_taken_publishes_ack_once_with_multiple() -> None:
    assert replies([(1, True), (2, True), (3, True)], durable=True) == [Reply(3, True, True)]
    assert replies([], durable=True) == []


def test_a_refused_publish_is_nacked_alone_between_runs() -> None:
    assert replies([(1, True), (2, True), (3, False), (4, True), (5, False)], durable=True) == [
        Reply(2, True, True), Reply(3, False, False), Reply(4, True, True),
        Reply(5, False, False)]


def test_a_failed_store_nacks_every_publish() -> None:
    assert replies([(7, True), (8, False)], durable=False) == [
        Reply(7, False, False), Reply(8, False, False)]
