"""A consumer group's members and state, as the coordinator (:mod:`tidings.kafka.groups`)
keeps them: Kafka's four group states, each member's subscriptions (protocols), assignment,
session and pending answers, and the choice of the protocol every member supports."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

__all__ = ["COMPLETING", "EMPTY", "PREPARING", "STABLE", "Group", "JoinResult", "Member"]

EMPTY, PREPARING = "Empty", "PreparingRebalance"
COMPLETING, STABLE = "CompletingRebalance", "Stable"


@dataclass(frozen=True, slots=True)
class JoinResult:
    generation: int
    protocol: str
    leader: str
    member_id: str
    #: (member id, instance id, subscription) of every member: for the leader only.
    members: tuple[tuple[str, str | None, bytes], ...] = ()


@dataclass(eq=False, slots=True)
class Member:
    member_id: str
    instance_id: str | None
    client_id: str
    client_host: str
    session_s: float
    rebalance_s: float
    protocols: tuple[tuple[str, bytes], ...]
    assignment: bytes = b""
    expires: float = 0.0
    #: The answer to this member's JoinGroup while a rebalance waits for the others.
    joining: asyncio.Future[JoinResult] | None = None
    #: The answer to its SyncGroup while the leader computes the assignment.
    syncing: asyncio.Future[bytes] | None = None

    @property
    def size(self) -> int:
        return len(self.assignment) + sum(len(n) + len(m) for n, m in self.protocols)


@dataclass(eq=False)
class Group:
    group_id: str
    state: str = EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    #: Member ids handed out with MEMBER_ID_REQUIRED, not yet joined -> when they lapse.
    pending: dict[str, float] = field(default_factory=dict)
    #: group.instance.id -> the member id it holds.
    static: dict[str, str] = field(default_factory=dict)
    #: PreparingRebalance: when the join completes whoever has rejoined.
    deadline: float = 0.0
    #: A new group's first rebalance waits for more members until then.
    ready_at: float = 0.0
    timer: asyncio.TimerHandle | None = None

    def candidates(self) -> set[str]:
        """The protocols every member supports."""
        sets = [{n for n, _ in m.protocols} for m in self.members.values()]
        return set.intersection(*sets) if sets else set()

    def select_protocol(self) -> str:
        """The candidate most members prefer (ties: the first member's order)."""
        candidates = self.candidates()
        votes: dict[str, int] = {}
        for member in self.members.values():
            first = next(n for n, _ in member.protocols if n in candidates)
            votes[first] = votes.get(first, 0) + 1
        return max(votes, key=votes.__getitem__)

    def join_result(self, member: Member) -> JoinResult:
        assert self.protocol is not None and self.leader is not None
        members: tuple[tuple[str, str | None, bytes], ...] = ()
        if member.member_id == self.leader:
            members = tuple((m.member_id, m.instance_id, dict(m.protocols)[self.protocol])
                            for m in self.members.values())
        return JoinResult(self.generation, self.protocol, self.leader, member.member_id, members)
