"""Stopping the server with live SSE streams, WebSockets and long-polls: they are ended
cleanly at once, the server exits promptly, and the log holds no traceback."""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path

import httpx
import websockets

from ..serverproc import ServerProcess


async def test_shutdown_ends_streams_and_long_polls_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "data").start()
    base = f"http://127.0.0.1:{server.http_port}"
    auth = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}
    async with httpx.AsyncClient(base_url=base, auth=("guest", "guest"), timeout=30) as http:
        await http.put("/api/queues/%2F/idle", json={})

        async def sse() -> list[str]:
            async with http.stream("GET", "/events/stream") as response:
                return [line async for line in response.aiter_lines()]

        async def long_poll() -> httpx.Response:
            return await http.post("/api/queues/%2F/idle/receive", json={"wait_ms": 30_000})

        ws = await websockets.connect(f"ws://127.0.0.1:{server.http_port}/events/ws",
                                      additional_headers=auth)
        streams = asyncio.ensure_future(sse())
        polls = asyncio.ensure_future(long_poll())
        await asyncio.sleep(0.5)
        started = time.monotonic()
        await asyncio.to_thread(server.stop)
        stopped_s = time.monotonic() - started
        lines = await asyncio.wait_for(streams, 5)  # ended, not broken off
        assert lines[0] == "retry: 2000"
        polled = await asyncio.wait_for(polls, 5)
        assert polled.status_code == 200 and polled.json() == {"messages": []}
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1001
    assert stopped_s < 3, f"shutdown took {stopped_s:.1f} s"
    assert "Traceback" not in server.log.read_text()
