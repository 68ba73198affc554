"""The idempotent producer: producer ids, epochs and per-partition sequence numbers.

InitProducerId hands out a producer id (epoch 0), or bumps the epoch of the one a client
names (KIP-360). Every batch an idempotent producer sends carries its id, epoch and the
sequence number of its first record; per partition, tidings remembers each producer's
epoch, its last sequence and its last :data:`RECENT` batches:

- a batch already appended (a retry after a lost response) is answered with its original
  offset and not appended again;
- a batch whose first sequence is not the last one plus one is OUT_OF_ORDER_SEQUENCE_NUMBER;
- an epoch older than the producer's latest is INVALID_PRODUCER_EPOCH (it was fenced).

The state is not written anywhere of its own: every stored batch carries its producer's id,
epoch and sequence, so after a restart the state of a partition is read back from the tail
of its log (:data:`REBUILD_RECORDS`) the first time a producer writes to it.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from kio.schema.errors import ErrorCode

from tidings.record_batch import BatchHeader

__all__ = ["PartitionProducers", "ProducerIds"]

#: Batches per producer and partition whose offsets a retry is answered with (Kafka's 5).
RECENT = 5
#: Records at a partition's tail read back to rebuild its producers after a restart.
REBUILD_RECORDS = 200_000
#: Producers remembered per partition (the least recently writing go first).
MAX_PRODUCERS = 10_000
INT32 = 2**31


@dataclass(slots=True)
class _Producer:
    epoch: int
    last_sequence: int
    #: (first sequence, last sequence, base offset) of its latest batches.
    recent: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=RECENT))


class PartitionProducers:
    """The producers of one partition (see the module's docstring)."""

    def __init__(self) -> None:
        self._producers: OrderedDict[int, _Producer] = OrderedDict()

    def check(self, head: BatchHeader) -> tuple[ErrorCode, int | None]:
        """Whether the batch may be appended: ``(none, None)``; a duplicate:
        ``(none, its offset)``; else the error and None."""
        producer = self._producers.get(head.producer_id)
        if producer is None:
            return ErrorCode.none, None
        self._producers.move_to_end(head.producer_id)
        if head.producer_epoch < producer.epoch:
            return ErrorCode.invalid_producer_epoch, None
        if head.producer_epoch > producer.epoch:
            return (ErrorCode.none if head.base_sequence == 0
                    else ErrorCode.out_of_order_sequence_number), None
        for first, last, offset in producer.recent:
            if first == head.base_sequence and last == head.last_sequence % INT32:
                return ErrorCode.none, offset
        if head.base_sequence != (producer.last_sequence + 1) % INT32:
            return ErrorCode.out_of_order_sequence_number, None
        return ErrorCode.none, None

    def appended(self, head: BatchHeader, base_offset: int) -> None:
        producer = self._producers.get(head.producer_id)
        if producer is None or head.producer_epoch != producer.epoch:
            producer = self._producers[head.producer_id] = _Producer(head.producer_epoch, -1)
            while len(self._producers) > MAX_PRODUCERS:
                self._producers.popitem(last=False)
        last = head.last_sequence % INT32
        producer.last_sequence = last
        producer.recent.append((head.base_sequence, last, base_offset))


class ProducerIds:
    """Producer ids unique across restarts without a write: milliseconds since the epoch
    times 1024, plus a counter (a clock that goes back is stepped over)."""

    def __init__(self) -> None:
        self._last = 0

    def new(self) -> int:
        candidate = int(time.time() * 1000) << 10
        self._last = max(candidate, self._last + 1)
        return self._last
