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
