"""Rebuilding a broker from its store after a restart (or a crash).

Order: vhosts, policies, exchanges, queues, bindings, then messages. Rows of queues that are no
longer durable definitions are dropped. Each durable queue gets its first window of messages in
seq order; the rest stay paged out. A record that cannot be read is quarantined, never allowed
to stop recovery (``storage/quarantine.py``). Messages at or below the queue's delivered mark
may have been delivered before the crash: they come back marked redelivered (AMQP allows a false
"redelivered"; it never allows a silent duplicate), with at least one failed delivery counted. A
requeue rewrites the record with its count, so counts are exact except for a delivery in flight
at the moment of a crash, which may go uncounted once.
"""

from __future__ import annotations

from collections.abc import Callable

from tidings.clock import Clock
from tidings.routing import topology_rows as defs
from tidings.routing.delayed import DelayedMessages, is_delayed_key
from tidings.routing.exchange import Binding, Exchange, freeze_arguments
from tidings.routing.ready import Entry, lane_key, split_lane_key
from tidings.routing.stream import READER_ROWS, StreamQueue
from tidings.routing.vhost import VirtualHosts
from tidings.storage import quarantine
from tidings.storage.base import Store
from tidings.storage.quarantine import decode_or_quarantine


def recover(store: Store, vhosts: VirtualHosts, delayed: DelayedMessages,
            clock: Clock) -> None:
    """Rebuild ``vhosts`` and ``delayed`` from ``store`` (all public operations). A definition
    row that cannot be applied is quarantined and logged, never a failed start; a queue whose
    row is damaged comes back as a plain durable queue, so its messages are kept."""

    def exchange(key: str, data: bytes) -> None:
        vhost, name = defs.split_key(key)
        d = defs.load(data)
        vhosts.declare(vhost).add_exchange(Exchange(
            name, d["kind"], vhost, True, d["auto_delete"], d["internal"], d["arguments"]
        ))

    def queue(key: str, data: bytes) -> None:
        vhost, name = defs.split_key(key)
        d = defs.load(data)
        vhosts.declare(vhost).create_queue(name, durable=True, auto_delete=d["auto_delete"],
                                           arguments=d["arguments"], exclusive_owner=None)

    def plain_queue(key: str) -> None:
        vhost, name = defs.split_key(key)
        if vhosts.find_queue(vhost, name) is None:
            vhosts.declare(vhost).create_queue(name, durable=True, auto_delete=False,
                                               arguments={}, exclusive_owner=None)
            store.put_definition("queue", *defs.queue_record(vhost, name, False, {}))

    def binding(key: str, data: bytes) -> None:
        vhost, _ = defs.split_key(key)
        d = defs.load(data)
        v = vhosts.find(vhost)
        if v is not None:
            v.add_binding(Binding(d["source"], d["destination"], d["routing_key"],
                                  freeze_arguments(d["arguments"]), d["to_exchange"]))

    def reader(key: str, data: bytes) -> None:
        d = defs.load(data)
        stream = vhosts.find_queue(d["vhost"], d["stream"])
        if isinstance(stream, StreamQueue):
            stream.readers[str(d["reader"])] = int(d["offset"])
            if d.get("metadata"):
                stream.reader_notes[str(d["reader"])] = str(d["metadata"])
        else:  # its stream is gone
            store.delete_definition(READER_ROWS, key)

    def policy(kind: str) -> Callable[[str, bytes], None]:
        def apply(key: str, data: bytes) -> None:
            found = defs.load_policy(kind, key, data)
            vhosts.declare(found.vhost).policies.put(found)
        return apply

    for name, _ in store.definitions("vhost"):
        vhosts.declare(name)
    for operator in (False, True):  # before the queues, which are made with them applied
        _apply(store, defs.policy_kind(operator), policy(defs.policy_kind(operator)), clock)
    _apply(store, "exchange", exchange, clock)
    _apply(store, "queue", queue, clock, plain_queue)
    _apply(store, "binding", binding, clock)
    _apply(store, READER_ROWS, reader, clock)
    _recover_messages(store, vhosts, clock)
    delayed.recover()


def _apply(store: Store, kind: str, apply: Callable[[str, bytes], None], clock: Clock,
           fallback: Callable[[str], None] | None = None) -> None:
    """``apply`` every definition row of ``kind``; one that fails is quarantined (then
    ``fallback`` may restore what it can from the row's key)."""
    for key, data in store.definitions(kind):
        try:
            apply(key, data)
        except Exception as e:  # a damaged row, or one this version cannot apply
            quarantine.put_definition(store, kind, key, bytes(data),
                                      f"{type(e).__name__}: {str(e)[:200]}", clock.time())
            if fallback is not None:
                fallback(key)


def _recover_messages(store: Store, vhosts: VirtualHosts, clock: Clock) -> None:
    live = {q.store_key: q for q in vhosts.queues()}
    lanes: dict[str, list[int]] = {}
    for key in store.queues():
        base, level = (key, 0) if key in live else split_lane_key(key)
        queue = live.get(base)
        if queue is not None and level < len(queue.ready.lanes):
            lanes.setdefault(base, []).append(level)
        elif not is_delayed_key(key):
            store.remove_after(key, -1)
    marks = store.delivered_marks()
    max_seq = store.max_seq()
    for base, levels in lanes.items():
        queue = live[base]
        # The window is shared: the highest levels are loaded first, the rest stay paged.
        room, room_bytes = queue.ready.window, queue.ready.window_bytes
        for level in sorted(levels, reverse=True):
            key = lane_key(base, level)
            total = store.count(key)
            if not total:
                continue
            sample = store.record_sizes(key, 100)
            average = max(sum(sample) // max(len(sample), 1), 1)
            limit = min(room, room_bytes // average)
            rows = store.load(key, -1, limit) if limit > 0 else []
            now = clock.time()
            entries = [Entry(seq, record, True) for seq, data in rows
                       if (record := decode_or_quarantine(store, key, seq, data, now))]
            size = sum(e.size for e in entries)
            room -= len(entries)
            room_bytes -= size
            paged = total - len(rows)
            queue.restore(level, entries, paged, average * paged, max_seq, marks.get(key, -1),
                          rows[-1][0] if rows else -1)
