"""A worker that is not async: the blocking facade over the same broker.

    python examples/worker_blocking.py [DATA_DIR]
"""

from __future__ import annotations

import sys

import tidings

data_dir = sys.argv[1] if len(sys.argv) > 1 else "./tidings-data"
with tidings.connect_blocking(data_dir) as client:
    client.send("thumbnails", {"image": "cat.png"}, delay_ms=200)  # due in 200 ms
    for job in client.receive("thumbnails", timeout_s=2):
        print("resizing", job.json()["image"], "attempt", job.delivery_count)
        job.ack()
        break
