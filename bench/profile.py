"""Where the time goes: sampling profiles of tidings under the benchmark workloads.

    python bench/profile.py A2            # tidings serve under A2 transient (aio-pika)
    python bench/profile.py A1 A2c A4     # several; A2c is A2 with durable confirms
    python bench/profile.py memory        # the embedded memory:// path (E2 and E3 of run.py)
    python bench/profile.py A2 --top 40 --out /tmp/profiles

For the AMQP workloads a real ``tidings serve`` runs under py-spy (a sampling profiler that
reads the process from outside, so the server runs at full speed) while the client of
``bench/amqp.py`` drives it from this process. For ``memory`` the benchmark process itself is
sampled. Each run writes py-spy's collapsed stacks (``<name>.folded``, for flamegraph.pl or
speedscope) and prints two tables: functions by their own time and by time inside them.
Only samples where the process was on the CPU are counted (py-spy leaves out idle waits), so
the percentages are shares of the CPU the process spent.

Install the tools with ``pip install -e '.[bench]'``; py-spy needs permission to read another
process's memory (ptrace), which a container may have to grant.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import amqp as amqp_bench

ROOT = Path(__file__).resolve().parent.parent
RATE_HZ = 250

AMQP_WORKLOADS = {
    "A1": ("pika, durable, confirms", lambda url: amqp_bench.run_a1(url, 3000)),
    "A2": ("aio-pika, transient", lambda url: asyncio.run(amqp_bench.run_a2(url, 20000, False))),
    "A2c": ("aio-pika, durable, confirms",
            lambda url: asyncio.run(amqp_bench.run_a2(url, 20000, True))),
    "A3": ("aio-pika, fan-out to 4", lambda url: asyncio.run(amqp_bench.run_a3(url, 5000))),
    "A4": ("aio-pika, 2,000 msg/s", lambda url: asyncio.run(amqp_bench.run_a4(url, 2000, 6))),
}


def py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        sys.exit("py-spy is not installed: pip install -e '.[bench]'")
    return found


def profile_serve(workload: str, out: Path) -> Path:
    """Run ``tidings serve`` under py-spy while ``workload`` drives it."""
    title, work = AMQP_WORKLOADS[workload]
    folded = out / f"{workload}.folded"
    with tempfile.TemporaryDirectory(prefix="tidings-profile-") as tmp:
        serve, url = amqp_bench.start_tidings(tmp)
        try:  # attached once it listens: start-up (imports, the first login) is left out
            spy = subprocess.Popen(
                [py_spy(), "record", "--nonblocking", "--format", "raw", "--rate",
                 str(RATE_HZ), "--output", str(folded), "--pid", str(serve.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1.0)
            started = time.perf_counter()
            result = work(url)
            elapsed = time.perf_counter() - started
            spy.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
            spy.wait(60)
        finally:
            serve.terminate()
            serve.wait()
    print(f"\n== {workload}: tidings serve under {title}: {result['rate']:,.0f} msg/s, "
          f"{elapsed:.1f} s")
    return folded


def profile_memory(out: Path) -> Path:
    """Sample ``bench/run.py --only E2,E3 --quick`` (the embedded memory:// path)."""
    folded = out / "memory.folded"
    subprocess.run([py_spy(), "record", "--nonblocking", "--format", "raw", "--rate",
                    str(RATE_HZ), "--output", str(folded), "--", sys.executable,
                    str(ROOT / "bench" / "run.py"),
                    "--only", "E2,E3", "--quick"], cwd=ROOT, check=True,
                   stderr=subprocess.DEVNULL)
    print("\n== memory: bench/run.py --only E2,E3 --quick (peers included in the samples)")
    return folded


#: Leaf frames that mean the thread waits, not works (py-spy cannot always tell).
IDLE = re.compile(r"(select|Condition\.wait|thread\.py:_worker|Event\.wait|sleep)$")
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def frame_name(frame: str) -> str:
    """``dispatch (/x/src/tidings/routing/queue.py:120)`` → ``routing/queue.py:dispatch``."""
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m["file"]
    for marker in ("/tidings/", "/site-packages/", "/lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{path}:{m['func']}"


def summarise(folded: Path, top: int) -> None:
    own: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    total = idle = 0
    for line in folded.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [frame_name(f) for f in stack.split(";") if f]
        if not frames:
            continue
        if IDLE.search(frames[-1]):
            idle += n
            continue
        total += n
        own[frames[-1]] += n
        for name in set(frames):
            inside[name] += n
    if not total:
        print("no samples (is ptrace allowed?)")
        return
    print(f"{total} samples on the CPU at {RATE_HZ} Hz ({idle} more waiting in select or "
          f"on a lock, left out); collapsed stacks in {folded}")
    for title, counter in (("own time", own), ("time inside (own + callees)", inside)):
        print(f"\n  {title}")
        for name, n in counter.most_common(top):
            print(f"  {100 * n / total:6.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workloads", nargs="+",
                        help=f"any of {', '.join(AMQP_WORKLOADS)}, memory")
    parser.add_argument("--out", type=Path, help="keep the collapsed stacks here")
    parser.add_argument("--top", type=int, default=25, help="rows per table")
    args = parser.parse_args()
    unknown = [w for w in args.workloads if w not in AMQP_WORKLOADS and w != "memory"]
    if unknown:
        parser.error(f"unknown workload {', '.join(unknown)}")
    out = args.out or Path(tempfile.mkdtemp(prefix="tidings-profiles-"))
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for workload in args.workloads:
        folded = profile_memory(out) if workload == "memory" else profile_serve(workload, out)
        summarise(folded, args.top)


if __name__ == "__main__":
    main()
