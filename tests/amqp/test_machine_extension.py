"""tidings serve's state machine operations, driven by pika (any client can use them): a
transition committed with the ack of its event in one publish, an instance read back, a
commit from a version no longer current coming back as a return with the channel still open,
and hostile or unpermitted commits refused with the usual codes, changing nothing."""

from __future__ import annotations

import json
import uuid

import pika
import pytest

from tidings.message import Message
from tidings.transitions import (
    FOUND_HEADER,
    VERSION_HEADER,
    TransitionCommit,
    instance_row,
    pack_commit,
    unpack_instances,
)

from ..serverproc import ServerProcess
from .test_security_and_flow import params, tidings_cli

CONTROL = "amq.tidings.control"
Channel = pika.adapters.blocking_connection.BlockingChannel


def _row(state: str, version: int) -> bytes:
    return instance_row(state, {"n": version}, version, version, [], {}, 1, 0.0)


def _commit(machine: str, key: str, state: str, version: int, *,
            messages: tuple[tuple[str, Message], ...] = (),
            timers: tuple[tuple[str, Message, int], ...] = ()) -> TransitionCommit:
    return TransitionCommit("/", machine, key, _row(state, version), messages, timers,
                            expected_version=version - 1, version=version)


def _send(ch: Channel, commit: TransitionCommit, tag: int | None) -> None:
    headers, body = pack_commit(commit)
    if tag is not None:
        headers["x-delivery-tag"] = tag
    ch.basic_publish(CONTROL, "machine-commit", body, pika.BasicProperties(
        headers=headers, message_id=uuid.uuid4().hex), mandatory=True)


def _find(ch: Channel, machine: str, key: str) -> tuple[dict[str, object], bytes]:
    """The answer comes back as the request's return."""
    answers: list[tuple[dict[str, object], bytes]] = []
    ch.add_on_return_callback(lambda _c, _m, props, body: answers.append(
        (props.headers or {}, body)))
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(CONTROL, "machine-find", b"", pika.BasicProperties(
            headers={"x-machine": machine, "x-key": key}), mandatory=True)
    conn = ch.connection
    conn.process_data_events(0)
    return answers[-1]


def _event(ch: Channel, machine: str, body: bytes = b"{}") -> int:
    queue = f"machine.{machine}"
    ch.queue_declare(queue, durable=True)
    ch.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2))
    method, _, _ = ch.basic_get(queue)
    assert method is not None
    return int(method.delivery_tag)


def test_a_plain_client_commits_a_transition_with_its_event(server: ServerProcess) -> None:
    machine = f"m{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        ch.queue_declare(f"{machine}-out", durable=True)
        tag = _event(ch, machine)
        sent = Message(b'{"paid":1}', f"{machine}-out", persistent=True)
        timer = Message(b"", f"machine.{machine}", message_id="t1", persistent=True)
        _send(ch, _commit(machine, "k1", "paid", 1, messages=(("", sent),),
                          timers=((f"machine.{machine}", timer, 60_000),)), tag)
        headers, row = _find(ch, machine, "k1")
        assert headers[FOUND_HEADER] and json.loads(row)["state"] == "paid"
        assert ch.queue_declare(f"machine.{machine}", passive=True).method.message_count == 0
        _, _, body = ch.basic_get(f"{machine}-out", auto_ack=True)
        assert body == b'{"paid":1}'
        # computed from version 0 again: it comes back, the channel stays open
        returned: list[dict[str, object]] = []
        ch.add_on_return_callback(lambda _c, _m, props, _b: returned.append(props.headers))
        tag = _event(ch, machine)
        with pytest.raises(pika.exceptions.UnroutableError):
            _send(ch, _commit(machine, "k1", "shipped", 1), tag)
        conn.process_data_events(0)
        assert returned[-1][VERSION_HEADER] == 1
        assert json.loads(_find(ch, machine, "k1")[1])["state"] == "paid"
        ch.basic_ack(tag)  # the event is still ours to settle
        headers, _ = _find(ch, machine, "nobody")
        assert headers[FOUND_HEADER] is False


@pytest.mark.parametrize(("attempt", "code"), [
    ("unknown delivery tag", 406), ("body cut short", 406), ("messages not named", 406),
    ("not an instance row", 406), ("no such exchange", 404),
])
def test_a_wrong_commit_closes_the_channel_and_changes_nothing(
        server: ServerProcess, attempt: str, code: int) -> None:
    machine = f"m{uuid.uuid4().hex[:8]}"
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        tag = _event(ch, machine)
        commit = _commit(machine, "k", "paid", 1)
        headers, body = pack_commit(commit)
        headers["x-delivery-tag"] = tag
        if attempt == "unknown delivery tag":
            headers["x-delivery-tag"] = tag + 100
        elif attempt == "body cut short":
            body = body[:10]
        elif attempt == "messages not named":
            body += pack_commit(_commit(machine, "k", "x", 1, messages=(
                ("", Message(b"x", "q")),)))[1][4 + len(commit.row or b""):]
        elif attempt == "not an instance row":
            body = b"\x00\x00\x00\x02[]"
        else:
            headers["x-exchanges"] = ["no-such-exchange"]
            body = pack_commit(_commit(machine, "k", "paid", 1, messages=(
                ("no-such-exchange", Message(b"x", "q")),)))[1]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            ch.basic_publish(CONTROL, "machine-commit", body,
                             pika.BasicProperties(headers=headers))
            ch.queue_declare(f"machine.{machine}", passive=True)
        assert info.value.reply_code == code
        ch = conn.channel()  # the event went back to its queue, no instance was written
        assert ch.queue_declare(f"machine.{machine}", passive=True).method.message_count == 1
        ch.confirm_delivery()
        assert _find(ch, machine, "k")[0][FOUND_HEADER] is False


def test_machine_operations_check_permissions(server: ServerProcess) -> None:
    data = server.data_dir
    assert tidings_cli(data, "users", "add", "eve", "secret").returncode == 0
    assert tidings_cli(data, "users", "set-permissions", "eve", "^eve-.*",
                       "^eve-.*|amq.tidings.control", "^eve-.*").returncode == 0
    eve = pika.PlainCredentials("eve", "secret")
    for attempt in ("find", "commit", "describe"):
        with pika.BlockingConnection(params(server, credentials=eve)) as conn:
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                if attempt == "find":
                    ch.basic_publish(CONTROL, "machine-find", b"", pika.BasicProperties(
                        headers={"x-machine": "order", "x-key": "o1"}))
                elif attempt == "describe":
                    ch.basic_publish(CONTROL, "machine-describe", b"{}", pika.BasicProperties(
                        headers={"x-machine": "order"}))
                else:
                    headers, body = pack_commit(_commit("order", "o1", "paid", 1))
                    ch.basic_publish(CONTROL, "machine-commit", body,
                                     pika.BasicProperties(headers=headers))
                ch.queue_declare("eve-x")
            assert info.value.reply_code == 403, attempt


def _page(ch: Channel, machine: str, after: str, limit: int) -> list[str]:
    answers: list[bytes] = []
    ch.add_on_return_callback(lambda _c, _m, _p, body: answers.append(body))
    with pytest.raises(pika.exceptions.UnroutableError):
        ch.basic_publish(CONTROL, "machine-list", b"", pika.BasicProperties(
            headers={"x-machine": machine, "x-after": after, "x-limit": limit}),
            mandatory=True)
    ch.connection.process_data_events(0)
    return [key for key, _ in unpack_instances(answers[-1])]


def test_instances_are_listed_in_pages_in_key_order(server: ServerProcess) -> None:
    machine = f"m{uuid.uuid4().hex[:8]}"
    keys = [f"k{n:02d}" for n in (7, 3, 11, 0, 5, 9, 1)]
    with pika.BlockingConnection(params(server)) as conn:
        ch = conn.channel()
        ch.confirm_delivery()
        for key in keys:
            _send(ch, _commit(machine, key, "paid", 1), _event(ch, machine))
        pages, after = [], ""
        while page := _page(ch, machine, after, 3):
            pages.append(page)
            after = page[-1]
        assert pages == [["k00", "k01", "k03"], ["k05", "k07", "k09"], ["k11"]]
