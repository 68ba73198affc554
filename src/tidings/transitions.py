"""A state machine's transition as the client hands it to the broker: one step to commit.

Plain data shared by the client (which builds it from a machine's step) and the broker (which
applies it, ``routing/machines.py``): the instance's new row, the messages the transition
sends, the timers it arms and cancels. The event's acknowledgement goes with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tidings.message import Message


@dataclass(frozen=True, slots=True)
class TransitionCommit:
    vhost: str
    machine: str
    key: str
    #: The instance's new row (None: the instance is not changed, as for a dead letter).
    row: bytes | None
    #: Messages it sends: (exchange, message).
    messages: tuple[tuple[str, Message], ...] = ()
    #: Timers it arms: (queue, message, delay in ms); the message's id names the timer.
    timers: tuple[tuple[str, Message, int], ...] = ()
    #: Timers it cancels: (queue, timer id).
    cancels: tuple[tuple[str, str], ...] = ()
