"""A worker app running a state machine over four partitions (for test_machine_worker.py):
each job is started and finished; both handlers record the process that ran them."""

from __future__ import annotations

import os
from dataclasses import dataclass

import tidings

client = tidings.connect(os.environ["MACHINEAPP_URL"])


@dataclass
class Job:
    started_by: int = 0


jobs: tidings.Machine[Job] = tidings.Machine("job", key="job_id", initial="new", data=Job,
                                             final=["done"])


@jobs.transition("new", on="jobs.started", to="running")
def started(data: Job, event: tidings.Event, out: tidings.Output) -> None:
    data.started_by = os.getpid()


@jobs.transition("running", on="jobs.finished", to="done")
def finished(data: Job, event: tidings.Event, out: tidings.Output) -> None:
    out.send("finished", {"job_id": event.body["job_id"], "started_by": data.started_by,
                          "finished_by": os.getpid()})


client.machine(jobs, partitions=4)
