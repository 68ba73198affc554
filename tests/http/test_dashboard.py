"""The dashboard in Debian's Chromium, driven by Playwright: messages published over AMQP
show up on the page, and the numbers change as more arrive. A screenshot is saved to
``test-artifacts/dashboard.png``."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from ..serverproc import ServerProcess

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def publish(server: ServerProcess, queue: str, count: int) -> None:
    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()
        ch.queue_declare(queue)
        for i in range(count):
            ch.basic_publish("", queue, f"m{i}".encode())
        ch.queue_declare(queue, passive=True)


@pytest.fixture
def browser() -> Iterator[Any]:
    """Debian's Chromium under Playwright (never a browser download)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("TIDINGS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
        pytest.skip("Chromium not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"],
        )
        try:
            yield launched
        finally:
            launched.close()


def test_dashboard_shows_live_queue_numbers(server: ServerProcess, browser: Any) -> None:
    from playwright.sync_api import expect

    publish(server, "dashboard-orders", 5)
    context = browser.new_context(
        http_credentials={"username": "guest", "password": "guest"},
        viewport={"width": 1400, "height": 800})
    page = context.new_page()
    page.goto(f"http://127.0.0.1:{server.http_port}/")
    ready = page.locator('tr[data-queue="dashboard-orders"] td.ready')
    expect(ready).to_have_text("5", timeout=15_000)
    expect(page.locator("#status")).to_contain_text("live")
    publish(server, "dashboard-orders", 3)
    expect(ready).to_have_text("8", timeout=15_000)
    expect(page.locator("#connections")).not_to_have_text("\u2013")  # the placeholder
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


def test_dashboard_shows_streams_with_their_readers_lag(server: ServerProcess,
                                                      browser: Any) -> None:
    from playwright.sync_api import expect

    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()
        ch.queue_declare("dashboard-log", durable=True,
                         arguments={"x-queue-type": "stream", "x-max-age": "3D"})
        ch.confirm_delivery()
        for i in range(7):
            ch.basic_publish("", "dashboard-log", f"e{i}".encode())
        ch.basic_qos(prefetch_count=3)
        ch.basic_consume("dashboard-log", lambda *a: None,
                         arguments={"x-stream-offset": "first"}, consumer_tag="projector")
        conn.process_data_events(0.3)
        page = browser.new_context(
            http_credentials={"username": "guest", "password": "guest"},
            viewport={"width": 1400, "height": 900}).new_page()
        page.goto(f"http://127.0.0.1:{server.http_port}/")
        row = page.locator('tr[data-stream="dashboard-log"]')
        expect(row.locator("td.records")).to_have_text("7", timeout=15_000)
        expect(row.locator("td.readers")).to_contain_text("projector: 4")
        expect(row).to_contain_text("3 d")
        expect(page.locator('tr[data-queue="dashboard-log"]')).to_have_count(0)
        # the READY card counts queues only: not the stream's records, not dead letters
        import httpx

        api = f"http://127.0.0.1:{server.http_port}/api"
        streams = {s["name"] for s in httpx.get(f"{api}/streams", auth=("guest", "guest")).json()}
        queues = httpx.get(f"{api}/queues", auth=("guest", "guest")).json()
        ready = sum(q["messages_ready"] for q in queues
                    if q["name"] not in streams and not q["name"].endswith(".dead"))
        expect(page.locator("#ready")).to_have_text(f"{ready:,}",
                                                    timeout=15_000)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-streams.png"), full_page=True)


def test_dashboard_with_credentials_in_the_url_gets_purges_and_deletes(
    server: ServerProcess, browser: Any,
) -> None:
    from playwright.sync_api import expect

    publish(server, "dashboard-acts", 2)
    page = browser.new_context(viewport={"width": 1600, "height": 800}).new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"http://guest:guest@127.0.0.1:{server.http_port}/")
    row = page.locator('tr[data-queue="dashboard-acts"]')
    expect(row.locator("td.ready")).to_have_text("2", timeout=15_000)
    row.locator("button.action-get").click()
    expect(page.locator("#peek")).to_have_text("dashboard-acts: m0", timeout=10_000)
    expect(row.locator("td.ready")).to_have_text("2", timeout=15_000)  # put back
    row.locator("button.action-purge").click()
    expect(row.locator("td.ready")).to_have_text("0", timeout=15_000)
    row.locator("button.action-delete").click()
    expect(row).to_have_count(0, timeout=15_000)


def _wait_for_history(server: ServerProcess, queue: str) -> None:
    import time

    import httpx

    url = f"http://127.0.0.1:{server.http_port}/api/history/queues/%2F/{queue}"
    for _ in range(80):  # the server samples every 5 s
        if httpx.get(url, auth=("guest", "guest")).json()["samples"]:
            return
        time.sleep(0.1)
    raise AssertionError(f"no history of {queue}")


def test_a_queue_page_shows_its_history_messages_and_dead_letters_at_800px(
        server: ServerProcess, browser: Any) -> None:
    from playwright.sync_api import expect

    with pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", server.port)) as conn:
        ch = conn.channel()
        ch.queue_declare("dash-page.dead")
        ch.queue_declare("dash-page", arguments={"x-dead-letter-exchange": "",
                                                 "x-dead-letter-routing-key": "dash-page.dead"})
        for i in range(3):
            ch.basic_publish("", "dash-page", f"order {i}".encode(), pika.BasicProperties(
                headers={"tenant": "acme"}, correlation_id=f"c{i}", content_type="text/plain"))
        method, _, _ = ch.basic_get("dash-page")
        ch.basic_reject(method.delivery_tag, requeue=False)  # a dead letter
    _wait_for_history(server, "dash-page")
    page = browser.new_context(http_credentials={"username": "guest", "password": "guest"},
                               viewport={"width": 800, "height": 1000}).new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    page.goto(f"http://127.0.0.1:{server.http_port}/")
    page.locator('tr[data-queue="dash-page"] a').click()  # the overview links to the page
    expect(page.locator("#queue-title")).to_have_text("dash-page", timeout=15_000)
    # the charts start from the server's history: a reload does not start them empty
    assert page.evaluate("queueSeries.samples.length") >= 2
    messages = page.locator("#queue-messages tbody tr")
    expect(messages).to_have_count(2, timeout=15_000)
    expect(messages.first).to_contain_text("acme")
    expect(messages.first).to_contain_text('"correlation_id":"c1"')
    expect(messages.first.locator("td.payload")).to_have_text("order 1")
    expect(page.locator("#queue-dead tbody tr")).to_have_count(1)
    expect(page.locator("#queue-dead")).to_contain_text("rejected")
    assert page.evaluate("document.documentElement.scrollWidth") <= 800  # no page overflow
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-queue.png"), full_page=True)
    page.locator("#dead-replay").click()
    expect(page.locator("#queue-dead tbody tr")).to_have_count(0, timeout=15_000)
    expect(messages).to_have_count(3, timeout=15_000)  # back in the queue


def test_exchanges_connections_and_node_pages(server: ServerProcess, browser: Any) -> None:
    from playwright.sync_api import expect

    conn = pika.BlockingConnection(pika.ConnectionParameters(
        "127.0.0.1", server.port, client_properties={"connection_name": "dash-worker"}))
    ch = conn.channel()
    ch.exchange_declare("dash-orders", "topic")
    ch.queue_declare("dash-bound")
    ch.queue_bind("dash-bound", "dash-orders", "order.#")
    page = browser.new_context(http_credentials={"username": "guest", "password": "guest"},
                               viewport={"width": 800, "height": 900}).new_page()
    page.on("dialog", lambda dialog: dialog.accept())
    base = f"http://127.0.0.1:{server.http_port}/"
    page.goto(base + "#/exchanges")
    expect(page.locator('tr[data-exchange="dash-orders"]')).to_contain_text("topic",
                                                                          timeout=15_000)
    expect(page.locator("#bindings")).to_contain_text("order.#")
    page.goto(base + "#/node")
    expect(page.locator("#node-cards")).to_contain_text("memory", timeout=15_000)
    expect(page.locator("#node-cards")).to_contain_text("descriptors")
    expect(page.locator("#node-facts")).to_contain_text("tidings@")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-node.png"), full_page=True)
    page.goto(base + "#/connections")
    row = page.locator("#connections-table tr", has_text="dash-worker")
    expect(row).to_have_count(1, timeout=15_000)
    page.screenshot(path=str(ARTIFACTS / "dashboard-connections.png"), full_page=True)
    row.locator("button.action-close").click()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        conn.process_data_events(time_limit=5)
    assert closed.value.reply_code == 320
    expect(row).to_have_count(0, timeout=15_000)


def test_the_machines_page_draws_each_machine_with_its_live_counts(
        tmp_path: Path, browser: Any) -> None:
    """A machine run on tidings serve registers its description; the Machines page draws it
    with the instances each state holds and, per transition, what the server counted."""
    import asyncio

    from playwright.sync_api import expect

    import tidings
    from tests.client.order_machine import three_orders_one_paid

    data = tmp_path / "data"
    server = ServerProcess(data).start()

    async def run_machine() -> None:
        url = f"amqp://guest:guest@127.0.0.1:{server.port}/"
        async with tidings.connect(url) as client:
            await (await three_orders_one_paid(client)).stop()

    import threading  # (Playwright's sync API holds this thread's event loop)

    worker = threading.Thread(target=lambda: asyncio.run(run_machine()))
    worker.start()
    worker.join(timeout=60)
    try:
        page = browser.new_context(http_credentials={"username": "guest", "password": "guest"},
                                   viewport={"width": 800, "height": 700}).new_page()
        page.goto(f"http://127.0.0.1:{server.http_port}/#/machines")
        box = page.locator('div.machine[data-machine="order"]')
        expect(box.locator('g[data-state="submitted"]')).to_have_text("submitted (2)",
                                                                       timeout=15_000)
        expect(box.locator('g[data-state="paid"]')).to_have_text("paid (1)")
        expect(box).to_contain_text("3 instances")
        row = box.locator("table.transitions tr", has_text="new -> submitted on orders.submitted")
        expect(row.locator("td").nth(1)).to_have_text("3")
        expect(box.locator("table.transitions tr", has_text="submitted -> paid on orders.paid")
               .locator("td").nth(1)).to_have_text("1")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-machines.png"), full_page=True)
    finally:
        server.stop()
