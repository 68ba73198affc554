"""State machine benchmark: an order flow (submitted -> paid -> shipped, with a payment timeout
armed at submit and cancelled at payment) over N orders, on tidings and its peers in one run.

    python bench/machines.py                 # 10,000 orders
    python bench/machines.py --quick         # 2,000 orders
    python bench/machines.py --only tidings,postgres

Each contender takes the events in three waves (every order submitted, then paid, then
shipped) and reports transitions per second over the three waves and the p99 latency from an
event sent to its transition applied (durable for the durable ones):

- ``tidings``: the order machine on the embedded broker (a data directory), events published
  with ``publish_many``; a transition is its row, its messages, its timers and the event's ack
  committed together (latency to the commit; the group commit makes it durable within a few
  milliseconds, and each wave ends with a sync);
- ``tidings-serve``: the same runner in a client of a ``tidings serve`` started here: each
  commit is one AMQP publish (the machine extension) confirmed once durable;
- ``dbos``: DBOS Transact on the machine's PostgreSQL: a durable workflow per order that waits
  for its payment (``DBOS.recv`` with the timeout) and its shipping, one step per transition;
- ``postgres``: what teams write by hand: an events table, a state row, an outbox and a timers
  table in PostgreSQL with SQLAlchemy; workers take events with ``FOR UPDATE SKIP LOCKED`` and
  apply each in one transaction (row, outbox, timer, the event marked done);
- ``statemachine``: python-statemachine in memory, nothing durable: the ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
WAVES = ("orders.submitted", "orders.paid", "orders.shipped")
Result = dict[str, float]


def _result(n: int, elapsed: float, latencies: list[float]) -> Result:
    lat = sorted(latencies)
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else float("nan")
    return {"transitions_per_s": 3 * n / elapsed, "p99_ms": p99 * 1000,
            "p50_ms": statistics.median(lat) * 1000 if lat else float("nan")}


# -- tidings ----------------------------------------------------------------------------------


def run_tidings_serve(n: int) -> Result:
    """The same, in a client of a ``tidings serve`` started here (the AMQP extension)."""
    from transports import start_tidings

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_tidings(tmp)
        try:
            return asyncio.run(run_tidings(n, url))
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def run_tidings(n: int, url: str | None = None) -> Result:
    from dataclasses import dataclass

    import tidings

    applied: dict[tuple[str, str], float] = {}

    @dataclass
    class Order:
        amount: int = 0

    m = tidings.Machine("order", key="order_id", initial="new", data=Order,
                        final=["shipped", "cancelled"])

    @m.transition("new", on="orders.submitted", to="submitted")
    def submitted(data: Order, event: tidings.Event, out: tidings.Output) -> None:
        data.amount = event.body["amount"]
        out.schedule("payment", after_s=1800)

    @m.transition("submitted", on="orders.paid", to="paid")
    def paid(data: Order, event: tidings.Event, out: tidings.Output) -> None:
        out.cancel("payment")
        out.send("shipping", {"order_id": event.body["order_id"]})

    @m.transition("paid", on="orders.shipped", to="shipped")
    def shipped(data: Order, event: tidings.Event, out: tidings.Output) -> None:
        pass

    @m.transition("submitted", on="timer:payment", to="cancelled")
    def timed_out(data: Order, event: tidings.Event, out: tidings.Output) -> None:
        pass

    latencies: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with tidings.connect(url or str(Path(tmp) / "data")) as client:
            runner = client.machine(m, prefetch=500)
            commit = runner.transport.commit_transition

            async def timed(token: Any, c: Any) -> None:  # applied: once its commit is made
                await commit(token, c)
                if c.row is not None:
                    applied[(c.key, json.loads(c.row)["state"])] = time.perf_counter()

            runner._transport = _Timed(runner.transport, timed)  # (the bench's stopwatch)
            await runner.start()
            started = time.perf_counter()
            for topic, state in zip(WAVES, ("submitted", "paid", "shipped"), strict=True):
                sent: dict[str, float] = {}
                for i in range(0, n, 500):
                    keys = [f"o{k}" for k in range(i, min(n, i + 500))]
                    now = time.perf_counter()
                    sent.update(dict.fromkeys(keys, now))
                    await client.publish_many(topic, [{"order_id": k, "amount": 1}
                                                      for k in keys])
                while runner.counts["applied"] < len(sent) * (WAVES.index(topic) + 1):
                    await asyncio.sleep(0.005)
                await client.sync()
                latencies += [applied[(k, state)] - t for k, t in sent.items()]
            elapsed = time.perf_counter() - started
            await runner.stop()
    return _result(n, elapsed, latencies)


class _Timed:
    """The client's transport, with the transition commit timed."""

    def __init__(self, inner: Any, commit: Any) -> None:
        self._inner, self.commit_transition = inner, commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# -- hand-written PostgreSQL ------------------------------------------------------------------


def run_postgres(n: int, workers: int = 4) -> Result:
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, pool_size=workers + 2)
    with engine.begin() as c:
        for table in ("bench_events", "bench_orders", "bench_outbox", "bench_timers"):
            c.execute(sa.text(f"DROP TABLE IF EXISTS {table}"))
        c.execute(sa.text("CREATE TABLE bench_events (id BIGSERIAL PRIMARY KEY, order_id TEXT, "
                          "topic TEXT, sent DOUBLE PRECISION, done BOOLEAN DEFAULT FALSE)"))
        c.execute(sa.text("CREATE INDEX ON bench_events (id) WHERE NOT done"))
        c.execute(sa.text("CREATE TABLE bench_orders (id TEXT PRIMARY KEY, state TEXT, "
                          "version INT, data JSONB)"))
        c.execute(sa.text("CREATE TABLE bench_outbox (id BIGSERIAL PRIMARY KEY, payload JSONB)"))
        c.execute(sa.text("CREATE TABLE bench_timers (id TEXT PRIMARY KEY, due DOUBLE "
                          "PRECISION)"))
    rules = {("new", "orders.submitted"): "submitted", ("submitted", "orders.paid"): "paid",
             ("paid", "orders.shipped"): "shipped"}
    latencies: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            with engine.begin() as c:
                events = c.execute(sa.text(
                    "SELECT id, order_id, topic, sent FROM bench_events WHERE NOT done "
                    "ORDER BY id LIMIT 50 FOR UPDATE SKIP LOCKED")).fetchall()
            if not events:
                time.sleep(0.002)
                continue
            for eid, order_id, topic, sent in events:
                with engine.begin() as c:  # one transaction per event: row, outbox, timer, done
                    # (claimed again inside it: the batch's locks ended with its transaction,
                    # so another worker may have taken the same event meanwhile)
                    if c.execute(sa.text("SELECT 1 FROM bench_events WHERE id = :i AND NOT done "
                                         "FOR UPDATE SKIP LOCKED"), {"i": eid}).first() is None:
                        continue
                    row = c.execute(sa.text("SELECT state, version FROM bench_orders WHERE "
                                            "id = :i FOR UPDATE"), {"i": order_id}).first()
                    state, version = row if row else ("new", 0)
                    target = rules.get((state, topic))
                    if target is not None:
                        c.execute(sa.text(
                            "INSERT INTO bench_orders (id, state, version, data) VALUES "
                            "(:i, :s, :v, '{}') ON CONFLICT (id) DO UPDATE SET state = :s, "
                            "version = :v"), {"i": order_id, "s": target, "v": version + 1})
                        if target == "submitted":
                            c.execute(sa.text("INSERT INTO bench_timers VALUES (:i, :d)"),
                                      {"i": order_id, "d": time.time() + 1800})
                        elif target == "paid":
                            c.execute(sa.text("DELETE FROM bench_timers WHERE id = :i"),
                                      {"i": order_id})
                            c.execute(sa.text("INSERT INTO bench_outbox (payload) VALUES "
                                              "(:p)"), {"p": json.dumps({"order_id": order_id})})
                    c.execute(sa.text("UPDATE bench_events SET done = TRUE WHERE id = :i"),
                              {"i": eid})
                with lock:
                    latencies.append(time.time() - sent)

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    for topic in WAVES:
        with engine.begin() as c:
            for i in range(0, n, 500):
                now = time.time()
                c.execute(sa.text("INSERT INTO bench_events (order_id, topic, sent) VALUES "
                                  "(:o, :t, :s)"), [{"o": f"o{k}", "t": topic, "s": now}
                                                    for k in range(i, min(n, i + 500))])
        while True:
            with engine.begin() as c:
                left = c.execute(sa.text("SELECT count(*) FROM bench_events WHERE NOT done")
                                 ).scalar()
            if not left:
                break
            time.sleep(0.01)
    elapsed = time.perf_counter() - started
    stop.set()
    for t in threads:
        t.join()
    engine.dispose()
    return _result(n, elapsed, latencies)


# -- DBOS -------------------------------------------------------------------------------------


def run_dbos(n: int) -> Result:
    import logging

    from dbos import DBOS, SetWorkflowID

    logging.getLogger("dbos").setLevel(logging.WARNING)
    applied: dict[tuple[str, str], float] = {}
    DBOS(config={"name": "tidings-bench",
                 "system_database_url": "postgresql://postgres@127.0.0.1:5432/dbos_bench"})

    @DBOS.step()
    def apply(order_id: str, state: str) -> str:
        applied[(order_id, state)] = time.perf_counter()
        return state

    @DBOS.workflow()
    def order_flow(order_id: str) -> str:
        apply(order_id, "submitted")
        if DBOS.recv("paid", timeout_seconds=1800) is None:
            return apply(order_id, "cancelled")
        apply(order_id, "paid")
        DBOS.recv("shipped", timeout_seconds=86400)
        return apply(order_id, "shipped")

    DBOS.reset_system_database()
    DBOS.launch()
    latencies: list[float] = []
    try:
        started = time.perf_counter()
        sent = {}
        handles = []
        for k in range(n):
            oid = f"o{k}-{started}"
            sent[oid] = time.perf_counter()
            with SetWorkflowID(oid):
                handles.append(DBOS.start_workflow(order_flow, oid))
        _wait(applied, sent, "submitted", latencies)
        for topic, state in (("paid", "paid"), ("shipped", "shipped")):
            for oid in sent:
                sent[oid] = time.perf_counter()
                DBOS.send(oid, {"ok": True}, topic)
            _wait(applied, sent, state, latencies)
        for h in handles:
            h.get_result()
        elapsed = time.perf_counter() - started
    finally:
        DBOS.destroy()
    return _result(n, elapsed, latencies)


def _wait(applied: dict[tuple[str, str], float], sent: dict[str, float], state: str,
          latencies: list[float]) -> None:
    while sum((oid, state) in applied for oid in sent) < len(sent):
        time.sleep(0.01)
    latencies += [applied[(oid, state)] - t for oid, t in sent.items()]


# -- python-statemachine (memory) --------------------------------------------------------------


def run_statemachine(n: int) -> Result:
    from statemachine import State, StateMachine

    class OrderMachine(StateMachine):
        new = State(initial=True)
        submitted = State()
        paid = State()
        shipped = State(final=True)
        submit = new.to(submitted)
        pay = submitted.to(paid)
        ship = paid.to(shipped)

    machines = {f"o{k}": OrderMachine() for k in range(n)}
    latencies: list[float] = []
    started = time.perf_counter()
    for event in ("submit", "pay", "ship"):
        for m in machines.values():
            t = time.perf_counter()
            m.send(event)
            latencies.append(time.perf_counter() - t)
    return _result(n, time.perf_counter() - started, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 orders instead of 10,000")
    parser.add_argument("--orders", type=int, help="how many orders")
    parser.add_argument("--only", help="comma-separated: tidings,tidings-serve,dbos,postgres,"
                                       "statemachine")
    args = parser.parse_args()
    n = args.orders or (2_000 if args.quick else 10_000)
    chosen = (args.only or "tidings,tidings-serve,dbos,postgres,statemachine").split(",")
    results: dict[str, Any] = {}
    for name in chosen:
        try:
            if name == "tidings":
                results[name] = asyncio.run(run_tidings(n))
            elif name == "tidings-serve":
                results[name] = run_tidings_serve(n)
            elif name == "dbos":
                results[name] = run_dbos(n)
            elif name == "postgres":
                results[name] = run_postgres(n)
            elif name == "statemachine":
                results[name] = run_statemachine(n)
        except Exception as e:  # a peer that cannot run here is reported, not fatal
            results[name] = {"error": f"{type(e).__name__}: {e}"[:300]}
        print(name, results[name], flush=True)
    print(json.dumps(results, indent=1))
    base = results.get("tidings", {}).get("transitions_per_s")
    print(f"\n{n} orders, {3 * n} transitions")
    print(f"{'contender':<14}{'transitions/s':>15}{'p50 ms':>10}{'p99 ms':>10}{'tidings /':>11}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<14}  {r['error']}")
            continue
        ratio = f"{base / r['transitions_per_s']:.2f}x" if base else ""
        print(f"{name:<14}{r['transitions_per_s']:>15,.0f}{r['p50_ms']:>10.2f}"
              f"{r['p99_ms']:>10.2f}{ratio:>11}")


if __name__ == "__main__":
    main()
