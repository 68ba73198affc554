"""The HTTP gateway: events in by POST, live events out by SSE, queues over REST, metrics and
a dashboard. A Starlette app (``build_app``) served by uvicorn in the broker's event loop."""
