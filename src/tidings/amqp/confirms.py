"""Publisher confirms as plain data (RabbitMQ's ``rabbit_confirms`` shape): no sockets, no loop.

A channel in confirm mode numbers its publishes from 1; each is counted here with whether the
broker took it (``ok``) or refused it. The link takes what was counted in one read of the
socket, waits until the store has made it durable, and answers with :func:`replies`: a run of
taken publishes is one ``basic.ack`` with ``multiple``; a refused one (or every one, when the
store failed) a ``basic.nack``.
"""

from __future__ import annotations

from typing import NamedTuple


class Reply(NamedTuple):
    """One confirm to send: ``basic.ack`` (``ack``) or ``basic.nack`` of ``delivery_tag``."""

    delivery_tag: int
    multiple: bool
    ack: bool


class ConfirmBook:
    """Per connection: each confirm-mode channel's last sequence number, and the publishes
    counted since the last :meth:`take`, by channel number."""

    __slots__ = ("_pending", "_seq")

    def __init__(self) -> None:
        self._seq: dict[int, int] = {}
        self._pending: dict[int, list[tuple[int, bool]]] = {}

    def select(self, channel: int) -> None:
        """``confirm.select`` on ``channel``: its publishes are numbered from now on."""
        self._seq.setdefault(channel, 0)

    def published(self, channel: int, ok: bool) -> None:
        """Count one publish on a confirm-mode channel (nothing on any other)."""
        seq = self._seq.get(channel)
        if seq is None:
            return
        self._seq[channel] = seq + 1
        pending = self._pending.get(channel)
        if pending is None:
            self._pending[channel] = [(seq + 1, ok)]
        else:
            pending.append((seq + 1, ok))

    def take(self) -> dict[int, list[tuple[int, bool]]]:
        """What was counted since the last call (and forget it)."""
        pending, self._pending = self._pending, {}
        return pending

    def forget(self, channel: int) -> None:
        """The channel closed: its numbering ends (a reopened one starts again at 1)."""
        self._seq.pop(channel, None)
        self._pending.pop(channel, None)

    def __bool__(self) -> bool:
        return bool(self._pending)


def replies(pending: list[tuple[int, bool]], durable: bool) -> list[Reply]:
    """The confirms for ``pending`` (sequence number, taken) once the store answered:
    runs of taken publishes ack with one ``multiple`` ack at the run's end; a refused publish,
    or any when the store failed (``durable`` false), is nacked on its own."""
    out: list[Reply] = []
    run_end: int | None = None
    for seq, ok in pending:
        if ok and durable:
            run_end = seq
            continue
        if run_end is not None:
            out.append(Reply(run_end, True, True))
            run_end = None
        out.append(Reply(seq, False, False))
    if run_end is not None:
        out.append(Reply(run_end, True, True))
    return out
