"""``tidings worker app.module:client``: run a client's tasks, queue handlers and subscriptions.

Like ``celery -A app worker`` or ``dramatiq app``: the module is imported, the client found by
name, and its handlers run in ``--processes`` processes with ``--concurrency`` calls in flight
each. The supervisor restarts a process that dies (its unsettled messages go back to the queue
and on to the others), after a pause that doubles with each quick failure (capped), so a
crash loop or an unreachable broker is retried gently and logged once per attempt. A process
that exits with a configuration error (exit 2: no tasks for the queues asked) stops the
supervisor with that error instead. A process whose task threads are stuck past their time
limits stops taking work, finishes the rest and exits to be replaced (exit 75). SIGTERM or
Ctrl-C: every process stops taking work, lets its handlers finish within ``--grace-s``,
returns the rest to the queue, and the command exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import signal
import subprocess
import sys
import time
from typing import Any

from tidings.errors import AccessRefusedError, ConfigError, NotSupportedError, TidingsError

log = logging.getLogger("tidings.worker")

#: Seconds between a process's one-line summaries.
SUMMARY_S = 30.0
#: A worker process's exit codes: a configuration error (the supervisor stops too), and
#: "replace me" (stuck task threads; restarted at once).
EXIT_CONFIG, EXIT_RECYCLE = 2, 75
#: Pause before restarting a process that failed, doubled per failure in a row, capped.
RESTART_FIRST_S, RESTART_MAX_S = 0.5, 30.0
#: A process that ran this long before it failed starts the doubling afresh.
HEALTHY_S = 60.0
#: Task threads stuck past their time limit that make a worker process ask to be replaced.
MAX_STUCK_THREADS = 4


def add_worker_parser(commands: Any) -> None:
    worker = commands.add_parser(
        "worker", help="run the tasks, queue handlers and subscriptions of a client")
    worker.add_argument("app", help="module:attribute of a tidings Client, e.g. app.jobs:client")
    worker.add_argument("--processes", type=_positive, default=1,
                        help="worker processes (each its own connection)")
    worker.add_argument("--concurrency", type=_positive, default=8,
                        help="handler calls in flight per process (suits I/O-bound handlers)")
    worker.add_argument("--queues", default=None,
                        help="comma-separated queues to serve (default: every registered one)")
    worker.add_argument("--grace-s", type=_seconds, default=30.0,
                        help="seconds in-flight handlers get to finish on SIGTERM / Ctrl-C")
    worker.add_argument("--summary-s", type=_seconds, default=SUMMARY_S,
                        help="seconds between one-line summaries per process")
    worker.add_argument("--max-stuck-threads", type=_positive, default=MAX_STUCK_THREADS,
                        help="task threads stuck past their time limit after which a process "
                             "finishes its other work and is replaced")
    worker.add_argument("--log-level", default="INFO", type=str.upper,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="log level")
    worker.add_argument("--child", type=int, default=-1, help=argparse.SUPPRESS)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number >= 0")
    return value


def load_object(spec: str, kind: type, what: str, example: str) -> Any:
    """The object of type ``kind`` that ``module:attribute`` names (the current directory is
    importable); ConfigError in one line otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"'{spec}' is not module:attribute (e.g. {example})")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(f"cannot import '{module_name}': {e}") from e
    found = getattr(module, attribute, None)
    if not isinstance(found, kind):
        raise ConfigError(f"'{spec}' is not {what} (found {type(found).__name__})")
    return found


def load_client(spec: str) -> Any:
    """The Client that ``module:attribute`` names."""
    from tidings.client.client import Client

    client = load_object(spec, Client, "a tidings Client", "app.jobs:client")
    from tidings.urls import parse_url

    scheme, _ = parse_url(client.url or "")
    if scheme == "memory":
        raise ConfigError(
            f"'{spec}' uses memory://, which no other process can reach: give the client a "
            f"data directory (tidings.connect('./data')) or an amqp:// URL")
    return client


def run_worker(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # fail here, once, with one line, rather than in every process
    select_subscribers(load_client(args.app), args)
    if args.child < 0:
        return _supervise(args)
    try:
        return asyncio.run(_serve(args))
    except (ConfigError, AccessRefusedError, NotSupportedError):
        raise  # a usage error: exit 2, and the supervisor stops
    except (TidingsError, OSError) as e:  # the broker is unreachable, ...: retried
        print(f"tidings worker: error: {e}", file=sys.stderr)
        return 1


def select_subscribers(client: Any, args: argparse.Namespace) -> list[Any]:
    """The client's subscribers that ``--queues`` asks for (all by default), keeping only
    the state machines whose queue is asked for; ConfigError when nothing is left."""
    wanted = {q.strip() for q in (args.queues or "").split(",") if q.strip()}
    subscribers = client.handlers.keep_only(wanted) if wanted else \
        list(client.handlers.subscribers)
    if wanted:
        client.machines[:] = [m for m in client.machines if m.queue in wanted]
    if not subscribers and not client.machines:
        raise ConfigError(f"'{args.app}' has no tasks, handlers, subscriptions or machines"
                          + (f" for queues {sorted(wanted)}" if wanted else ""))
    return subscribers


def _child_command(args: argparse.Namespace, index: int) -> list[str]:
    command = [sys.executable, "-m", "tidings", "worker", args.app, "--child", str(index),
               "--concurrency", str(args.concurrency), "--grace-s", str(args.grace_s),
               "--summary-s", str(args.summary_s), "--log-level", args.log_level,
               "--max-stuck-threads", str(args.max_stuck_threads)]
    return [*command, "--queues", args.queues] if args.queues else command


class _Child:
    """One worker process slot: the process, when it started, its failures in a row, and
    when it may be started again after one."""

    def __init__(self, args: argparse.Namespace, index: int) -> None:
        self.args, self.index = args, index
        self.failures = 0
        self.restart_at: float | None = None
        self.process = self._start()

    def _start(self) -> subprocess.Popen[bytes]:
        self.started = time.monotonic()
        return subprocess.Popen(_child_command(self.args, self.index))

    def check(self) -> int | None:
        """Restart the process if it ended (now, or after its pause); the exit code of a
        configuration error, which ends the supervisor, else None."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restart_at = None
                self.process = self._start()
            return None
        code = self.process.poll()
        if code is None:
            return None
        pid = self.process.pid
        if code == EXIT_CONFIG:
            log.error("worker process %d (pid %d) cannot run (exit code 2, its error is "
                      "above); stopping", self.index, pid)
            return code
        if code == EXIT_RECYCLE:
            log.warning("worker process %d (pid %d) asked to be replaced (task threads stuck "
                        "past their time limit); restarting it", self.index, pid)
            self.failures = 0
            self.process = self._start()
            return None
        self.failures = 1 if now - self.started >= HEALTHY_S else self.failures + 1
        pause = min(RESTART_FIRST_S * 2 ** (self.failures - 1), RESTART_MAX_S)
        log.error("worker process %d (pid %d) exited with code %s; restarting in %.1f s "
                  "(failure %d in a row)", self.index, pid, code, pause, self.failures)
        self.restart_at = now + pause
        return None


def _supervise(args: argparse.Namespace) -> int:
    """Keep ``--processes`` children running until SIGTERM / SIGINT, then stop them gently."""
    stopping = False
    exit_code = 0

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    children = [_Child(args, index) for index in range(args.processes)]
    while not stopping:
        for child in children:
            if (code := child.check()) is not None:
                stopping, exit_code = True, code
                break
        else:
            time.sleep(0.2)
    for child in children:
        code = child.process.poll()
        if code is None:
            child.process.send_signal(signal.SIGTERM)
        elif code not in (0, EXIT_CONFIG) and child.restart_at is None:
            log.error("worker process %d (pid %d) crashed with exit code %s; not restarted "
                      "(stopping)", child.index, child.process.pid, code)
    deadline = time.monotonic() + args.grace_s + 10
    for child in children:
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
    log.info("worker stopped")
    return exit_code


async def _serve(args: argparse.Namespace) -> int:
    client = load_client(args.app)
    subscribers = select_subscribers(client, args)
    for sub in subscribers:
        sub.concurrency = args.concurrency
        sub.prefetch = max(sub.prefetch, args.concurrency)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await client.open()
    await client.start()
    names = sorted({s.queue for s in subscribers} | {m.queue for m in client.machines})
    log.info("worker process %d (pid %d) started: %s, concurrency %d", args.child,
             os.getpid(), ", ".join(names), args.concurrency)
    summary = loop.create_task(_summaries(client, args))
    orphan = loop.create_task(_until_orphaned(stop))
    stuck = loop.create_task(_until_stuck(client, args, stop))
    await stop.wait()
    for watcher in (summary, orphan, stuck):
        watcher.cancel()
    finished = await client.stop(args.grace_s)
    stats = client.handler_stats()
    log.info("worker process %d (pid %d) stopped: %d handled, %d failed%s", args.child,
             os.getpid(), stats["handled"], stats["failed"],
             "" if finished else "; handlers still running were returned to the queue")
    return EXIT_RECYCLE if client.task_threads.stuck >= args.max_stuck_threads else 0


async def _until_stuck(client: Any, args: argparse.Namespace, stop: asyncio.Event) -> None:
    """A process with ``--max-stuck-threads`` task threads stuck past their time limit stops
    taking work and finishes the rest, to be replaced by its supervisor (Python cannot kill
    a thread)."""
    while client.task_threads.stuck < args.max_stuck_threads:
        await asyncio.sleep(0.5)
    log.warning("worker process %d (pid %d): %d task threads are stuck past their time "
                "limit; finishing the work in flight, then exiting to be replaced",
                args.child, os.getpid(), client.task_threads.stuck)
    stop.set()


async def _until_orphaned(stop: asyncio.Event) -> None:
    """A worker process whose supervisor died (kill -9) stops as on SIGTERM, instead of
    running on unsupervised."""
    parent = os.getppid()
    while os.getppid() == parent:
        await asyncio.sleep(1.0)
    log.warning("worker supervisor (pid %d) is gone; stopping", parent)
    stop.set()


async def _summaries(client: Any, args: argparse.Namespace) -> None:
    last, last_at = 0, time.monotonic()
    with contextlib.suppress(asyncio.CancelledError):
        while True:
            await asyncio.sleep(args.summary_s)
            stats, now = client.handler_stats(), time.monotonic()
            rate = (stats["handled"] - last) / max(now - last_at, 1e-9)
            last, last_at = stats["handled"], now
            log.info("worker process %d: %d handled, %d failed, %d retried, %.1f/s",
                     args.child, stats["handled"], stats["failed"], stats["retried"], rate)
