"""Every exception tidings defines is a TidingsError (one tree: each carries its AMQP reply
code and HTTP status), except the one that must not be caught by ``except Exception``."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import tidings
from tidings.errors import TidingsError

#: A task over its time limit is interrupted with it, so a handler's own ``except
#: Exception`` cannot swallow the interruption (Dramatiq's and Celery's rule).
OUTSIDE_ON_PURPOSE = {"tidings.client.task_threads.TimeLimitExceeded"}


def test_every_exception_class_is_in_the_one_tree() -> None:
    outside = []
    for module in pkgutil.walk_packages(tidings.__path__, "tidings."):
        if module.name.endswith("__main__"):
            continue  # (running it is the CLI)
        loaded = importlib.import_module(module.name)
        for name, value in vars(loaded).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and \
                    value.__module__ == loaded.__name__:
                where = f"{value.__module__}.{name}"
                if not issubclass(value, TidingsError) and where not in OUTSIDE_ON_PURPOSE:
                    outside.append(where)
    assert outside == []
