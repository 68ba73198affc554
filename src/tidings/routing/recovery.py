"""Rebuilding a broker from its store after a restart (or a crash).

Order: vhosts, exchanges, queues, bindings, then messages. Rows of queues that are no longer
durable definitions are dropped. Each durable queue gets its first window of messages in seq
order; the rest stay paged out. A record that cannot be read is quarantined, never allowed to stop
recovery (``routing/quarantine.py``). Messages at or below the queue's delivered mark may have been
delivered before the crash: they come back marked redelivered (AMQP allows a false
"redelivered"; it never allows a silent duplicate), with at least one failed delivery counted.
A requeue rewrites the record with its count, so counts are exact except for a delivery in
flight at the moment of a crash, which may go uncounted once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tidings.routing import definitions as defs
from tidings.routing.delayed import is_delayed_key
from tidings.routing.exchange import Binding, Exchange, freeze_arguments
from tidings.routing.quarantine import decode_or_quarantine
from tidings.routing.queue import Entry, lane_key, split_lane_key

if TYPE_CHECKING:
    from tidings.routing.broker import Broker


def recover(broker: Broker) -> None:
    store = broker.store
    for name, _ in store.definitions("vhost"):
        broker.declare_vhost(name)
    for key, data in store.definitions("exchange"):
        vhost, name = defs.split_key(key)
        d = defs.load(data)
        broker.declare_vhost(vhost)
        broker.vhosts[vhost].exchanges[name] = Exchange(
            name, d["kind"], vhost, True, d["auto_delete"], d["internal"], d["arguments"]
        )
    for key, data in store.definitions("queue"):
        vhost, name = defs.split_key(key)
        d = defs.load(data)
        broker.declare_vhost(vhost)
        broker._make_queue(vhost, name, True, d["auto_delete"], d["arguments"], None)
    for key, data in store.definitions("binding"):
        vhost, _ = defs.split_key(key)
        d = defs.load(data)
        ex = broker.vhosts.get(vhost, None)
        if ex is None or d["source"] not in ex.exchanges:
            continue
        ex.exchanges[d["source"]].add_binding(Binding(
            d["source"], d["destination"], d["routing_key"],
            freeze_arguments(d["arguments"]), d["to_exchange"],
        ))
    _recover_messages(broker)


def _recover_messages(broker: Broker) -> None:
    store = broker.store
    live = {q.store_key: q for v in broker.vhosts.values() for q in v.queues.values()}
    lanes: dict[str, list[int]] = {}
    for key in store.queues():
        base, level = (key, 0) if key in live else split_lane_key(key)
        queue = live.get(base)
        if queue is not None and level < len(queue.lanes):
            lanes.setdefault(base, []).append(level)
        elif not is_delayed_key(key):
            store.remove_after(key, -1)
    marks = store.delivered_marks()
    max_seq = store.max_seq()
    for base, levels in lanes.items():
        queue = live[base]
        # The window is shared: the highest levels are loaded first, the rest stay paged.
        room, room_bytes = queue.window, queue.window_bytes
        for level in sorted(levels, reverse=True):
            key = lane_key(base, level)
            total = store.count(key)
            if not total:
                continue
            sample = store.record_sizes(key, 100)
            average = max(sum(sample) // max(len(sample), 1), 1)
            limit = min(room, room_bytes // average)
            rows = store.load(key, -1, limit) if limit > 0 else []
            now = broker.clock.time()
            entries = [Entry(seq, record, True) for seq, data in rows
                       if (record := decode_or_quarantine(store, key, seq, data, now))]
            size = sum(e.size for e in entries)
            room -= len(entries)
            room_bytes -= size
            paged = total - len(rows)
            queue.restore(level, entries, paged, average * paged, max_seq, marks.get(key, -1),
                          rows[-1][0] if rows else -1)
    broker.delayed.recover()
