"""Consumer groups: Kafka's classic group protocol, as its group coordinator runs it.

A group moves through Kafka's states: **Empty** (no members), **PreparingRebalance** (members
are asked to rejoin; JoinGroup answers wait until every member has, or the rebalance timeout
drops those that did not), **CompletingRebalance** (a new generation: the leader got every
member's subscription and computes the assignment) and **Stable** (the leader's SyncGroup
handed every member its share). The broker never reads subscriptions or assignments: it picks
the protocol (assignor) every member supports, most preferred first, and passes the bytes
through, so every client-side assignor works (range, round-robin, sticky, cooperative-sticky).

Members are expired when their session times out without a heartbeat (JoinGroup, SyncGroup,
Heartbeat and OffsetCommit count); a new group waits
``group_initial_rebalance_delay_ms`` for more members before its first generation, as Kafka
does. Static members (``group.instance.id``) keep their place across restarts of the client:
a rejoin under the same instance id replaces the old member id (which is then fenced) and,
in a stable group, does not cause a rebalance. From JoinGroup v4 a member without an id is
first given one (MEMBER_ID_REQUIRED) and joins with it.

Group membership lives in memory: after a restart of the broker every member gets
UNKNOWN_MEMBER_ID and rejoins, as after a coordinator move in Kafka. Committed offsets are
durable (:mod:`tidings.kafka.offsets`). Everything a client controls is bounded: members per
group, members in all, and the bytes of subscriptions and assignments held.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

from kio.schema.errors import ErrorCode

from tidings.kafka.errors import GroupError
from tidings.kafka.membership import (
    COMPLETING,
    EMPTY,
    PREPARING,
    STABLE,
    Group,
    JoinResult,
    Member,
)
from tidings.kafka.settings import KafkaSettings

__all__ = ["Coordinator"]

#: How often members' sessions are looked at.
SWEEP_S = 0.25


def _fail(waiting: asyncio.Future[Any] | None, code: ErrorCode) -> None:
    """Answer a waiting JoinGroup or SyncGroup with an error. Its client may be gone (the
    answer is shielded from the request's cancellation), so the error counts as seen: an
    answer nobody waits for any more is dropped, not logged as never retrieved."""
    if waiting is not None and not waiting.done():
        waiting.set_exception(GroupError(code))
        waiting.exception()


class Coordinator:
    """Every group of one Kafka listener."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.groups: dict[str, Group] = {}
        self.member_count = 0
        self.pending_count = 0
        self.state_bytes = 0
        self._sweeper: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for group in self.groups.values():
            if group.timer is not None:
                group.timer.cancel()
            for member in group.members.values():
                for waiting in (member.joining, member.syncing):
                    if waiting is not None and not waiting.done():
                        waiting.cancel()

    @staticmethod
    def _now() -> float:
        return asyncio.get_running_loop().time()

    # -- JoinGroup -------------------------------------------------------------------------

    def join(self, group_id: str, member_id: str, instance_id: str | None, client_id: str,
             client_host: str, session_ms: int, rebalance_ms: int, protocol_type: str,
             protocols: tuple[tuple[str, bytes], ...], version: int
             ) -> JoinResult | Awaitable[JoinResult]:
        s = self.settings
        if not group_id:
            raise GroupError(ErrorCode.invalid_group_id, "a group needs a name")
        if not s.group_min_session_timeout_ms <= session_ms <= s.group_max_session_timeout_ms:
            raise GroupError(ErrorCode.invalid_session_timeout,
                             f"session timeout {session_ms} ms: the broker allows "
                             f"{s.group_min_session_timeout_ms} to "
                             f"{s.group_max_session_timeout_ms}")
        group = self.groups.get(group_id) or Group(group_id)  # (kept once someone joins)
        names = {n for n, _ in protocols}
        if not protocol_type or not protocols or len(names) != len(protocols) or (
                group.members and (protocol_type != group.protocol_type
                                   or not names & group.candidates())):
            raise GroupError(ErrorCode.inconsistent_group_protocol,
                             f"no protocol of type '{protocol_type}' that every member of "
                             f"group '{group_id}' supports")
        now = self._now()
        rebalance_s = (rebalance_ms if rebalance_ms > 0 else session_ms) / 1000
        joined = Member(member_id, instance_id, client_id[:200], client_host, session_ms / 1000,
                        rebalance_s, protocols, expires=now + session_ms / 1000)
        if not member_id:
            if instance_id is not None and group.static.get(instance_id) in group.members:
                return self._static_rejoin(group, joined)
            joined.member_id = f"{(instance_id or client_id)[:200]}-{uuid.uuid4()}"
            if version >= 4 and instance_id is None:
                self._admit(group, joined, pending=True)
                group.pending[joined.member_id] = now + joined.session_s
                self.pending_count += 1
                self.groups[group_id] = group
                self._start_sweeper()
                raise GroupError(ErrorCode.member_id_required, joined.member_id)
            return self._add(group, joined, protocol_type)
        if member_id in group.pending:
            del group.pending[member_id]
            self.pending_count -= 1
            return self._add(group, joined, protocol_type)
        member = self._member(group, member_id, instance_id)
        _fail(member.joining, ErrorCode.rebalance_in_progress)
        changed = member.protocols != protocols
        self._update(member, joined)
        if group.state == PREPARING:
            return self._await_join(group, member)
        if group.state == COMPLETING and not changed:
            return group.join_result(member)
        if group.state == STABLE and not changed and member_id != group.leader:
            return group.join_result(member)
        self._prepare_rebalance(group)
        return self._await_join(group, member)

    def _admit(self, group: Group, member: Member, *, pending: bool = False) -> None:
        s = self.settings
        if len(group.members) + len(group.pending) >= s.group_max_size:
            raise GroupError(ErrorCode.group_max_size_reached,
                             f"group '{group.group_id}' has {s.group_max_size} members")
        if self.member_count + self.pending_count >= s.max_members or (
                not pending and self.state_bytes + member.size > s.max_group_state_bytes):
            raise GroupError(ErrorCode.group_max_size_reached,
                             "the broker holds as many group members as it allows")

    def _add(self, group: Group, member: Member, protocol_type: str) -> Awaitable[JoinResult]:
        self._admit(group, member)
        if not group.members:
            group.protocol_type = protocol_type
        self.groups[group.group_id] = group
        group.members[member.member_id] = member
        self.member_count += 1
        self.state_bytes += member.size
        if member.instance_id is not None:
            group.static[member.instance_id] = member.member_id
        if group.state == EMPTY:
            group.ready_at = self._now() + self.settings.group_initial_rebalance_delay_ms / 1000
        elif group.ready_at > self._now():  # a new group still gathering: wait a bit longer
            group.ready_at = min(self._now() + self.settings.group_initial_rebalance_delay_ms
                                 / 1000, group.deadline)
        self._prepare_rebalance(group)
        self._start_sweeper()
        return self._await_join(group, member)

    def _static_rejoin(self, group: Group, joined: Member) -> JoinResult | Awaitable[JoinResult]:
        """A static member back under a new member id: the old id is fenced."""
        assert joined.instance_id is not None
        old_id = group.static[joined.instance_id]
        member = group.members.pop(old_id)
        for waiting in (member.joining, member.syncing):
            _fail(waiting, ErrorCode.fenced_instance_id)
        member.joining = member.syncing = None
        member.member_id = f"{joined.instance_id[:200]}-{uuid.uuid4()}"
        group.members[member.member_id] = member
        group.static[joined.instance_id] = member.member_id
        was_leader = group.leader == old_id
        if was_leader:
            group.leader = member.member_id
        changed = member.protocols != joined.protocols
        self._update(member, joined)
        if group.state == STABLE and not changed and not was_leader:
            return group.join_result(member)
        if group.state != PREPARING:
            self._prepare_rebalance(group)
        return self._await_join(group, member)

    def _update(self, member: Member, joined: Member) -> None:
        self.state_bytes -= member.size
        member.protocols, member.client_id = joined.protocols, joined.client_id
        member.session_s, member.rebalance_s = joined.session_s, joined.rebalance_s
        member.expires = joined.expires
        self.state_bytes += member.size

    def _member(self, group: Group, member_id: str, instance_id: str | None) -> Member:
        if instance_id is not None and instance_id in group.static and \
                group.static[instance_id] != member_id:
            raise GroupError(ErrorCode.fenced_instance_id,
                             f"instance '{instance_id}' has a newer member id")
        member = group.members.get(member_id)
        if member is None:
            raise GroupError(ErrorCode.unknown_member_id,
                             f"no member '{member_id}' in group '{group.group_id}'")
        return member

    def _await_join(self, group: Group, member: Member) -> Awaitable[JoinResult]:
        member.joining = asyncio.get_running_loop().create_future()
        waiting = member.joining
        self._check_join(group)
        return asyncio.shield(waiting)  # a client gone meanwhile stays a member till it lapses

    # -- rebalancing -----------------------------------------------------------------------

    def _prepare_rebalance(self, group: Group) -> None:
        if group.state == COMPLETING:
            for member in group.members.values():
                _fail(member.syncing, ErrorCode.rebalance_in_progress)
                member.syncing = None
        if group.state != PREPARING:
            timeout = max((m.rebalance_s for m in group.members.values()), default=0.0)
            group.deadline = self._now() + timeout
            group.state = PREPARING
        self._check_join(group)

    def _check_join(self, group: Group) -> None:
        """Complete the join when every member has rejoined (and a new group has waited), or
        at the deadline; otherwise look again when either is due."""
        if group.state != PREPARING:
            return
        now = self._now()
        all_in = not group.pending and all(
            m.joining is not None for m in group.members.values())
        if (all_in and now >= group.ready_at) or now >= group.deadline:
            self._complete_join(group)
            return
        due = min(group.deadline, group.ready_at if all_in else group.deadline)
        if group.timer is not None:
            group.timer.cancel()
        group.timer = asyncio.get_running_loop().call_at(due, self._check_join, group)

    def _complete_join(self, group: Group) -> None:
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        for member in [m for m in group.members.values() if m.joining is None]:
            self._remove(group, member)  # it did not rejoin in time
        group.generation += 1
        if not group.members:
            group.state, group.protocol, group.leader = EMPTY, None, None
            self._forget_if_unused(group)
            return
        group.protocol = group.select_protocol()
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        group.state = COMPLETING
        now = self._now()
        for member in group.members.values():
            member.expires = now + member.session_s
            member.assignment = b""
            joining, member.joining = member.joining, None
            if joining is not None and not joining.done():
                joining.set_result(group.join_result(member))

    def _remove(self, group: Group, member: Member) -> None:
        del group.members[member.member_id]
        self.member_count -= 1
        self.state_bytes -= member.size
        if member.instance_id is not None and \
                group.static.get(member.instance_id) == member.member_id:
            del group.static[member.instance_id]
        for waiting in (member.joining, member.syncing):
            _fail(waiting, ErrorCode.unknown_member_id)

    def _forget_if_unused(self, group: Group) -> None:
        if group.state == EMPTY and not group.members and not group.pending:
            self.groups.pop(group.group_id, None)

    # -- SyncGroup, Heartbeat, LeaveGroup -------------------------------------------------

    def _checked(self, group_id: str, generation: int, member_id: str,
                 instance_id: str | None) -> tuple[Group, Member]:
        group = self.groups.get(group_id)
        if group is None:
            raise GroupError(ErrorCode.unknown_member_id, f"no group '{group_id}'")
        member = self._member(group, member_id, instance_id)
        member.expires = max(member.expires, self._now() + member.session_s)
        if generation != group.generation:
            raise GroupError(ErrorCode.illegal_generation,
                             f"generation {generation} of group '{group_id}' is over (it is "
                             f"{group.generation})")
        return group, member

    def sync(self, group_id: str, generation: int, member_id: str, instance_id: str | None,
             assignments: dict[str, bytes]) -> bytes | Awaitable[bytes]:
        group, member = self._checked(group_id, generation, member_id, instance_id)
        if group.state == PREPARING:
            raise GroupError(ErrorCode.rebalance_in_progress)
        if group.state == STABLE:
            return member.assignment
        member.syncing = asyncio.get_running_loop().create_future()
        waiting = member.syncing
        if member_id == group.leader:
            for each in group.members.values():
                self.state_bytes -= len(each.assignment)
                each.assignment = assignments.get(each.member_id, b"")
                self.state_bytes += len(each.assignment)
            group.state = STABLE
            for each in group.members.values():
                if each.syncing is not None and not each.syncing.done():
                    each.syncing.set_result(each.assignment)
                each.syncing = None
        return asyncio.shield(waiting)

    def heartbeat(self, group_id: str, generation: int, member_id: str,
                  instance_id: str | None) -> None:
        group, _ = self._checked(group_id, generation, member_id, instance_id)
        if group.state == PREPARING:
            raise GroupError(ErrorCode.rebalance_in_progress)

    def leave(self, group_id: str, member_id: str, instance_id: str | None) -> None:
        """One member leaves at once: the others rebalance without waiting for its session."""
        group = self.groups.get(group_id)
        if group is None:
            raise GroupError(ErrorCode.unknown_member_id, f"no group '{group_id}'")
        if instance_id is not None:
            held = group.static.get(instance_id)
            if held is None:
                raise GroupError(ErrorCode.unknown_member_id, f"no instance '{instance_id}'")
            if member_id and held != member_id:
                raise GroupError(ErrorCode.fenced_instance_id)
            member_id = held
        if group.pending.pop(member_id, None) is not None:
            self.pending_count -= 1
            self._forget_if_unused(group)
            return
        member = self._member(group, member_id, None)
        self._remove(group, member)
        self._member_gone(group)

    def _member_gone(self, group: Group) -> None:
        if group.state == PREPARING:
            self._check_join(group)
        elif group.state in (STABLE, COMPLETING) or not group.members:
            self._prepare_rebalance(group)

    def committer(self, group_id: str, generation: int, member_id: str,
                  instance_id: str | None) -> None:
        """Check that an OffsetCommit may commit for the group (Kafka's rules): anyone when
        the group has no members and the commit names no generation, else a member of the
        current generation, not while the new generation's assignment is pending."""
        group = self.groups.get(group_id)
        if group is None or group.state == EMPTY:
            if generation < 0 and not member_id:
                return
            raise GroupError(ErrorCode.unknown_member_id if member_id else
                             ErrorCode.illegal_generation,
                             f"group '{group_id}' has no member '{member_id}'")
        if group.state == COMPLETING:
            raise GroupError(ErrorCode.rebalance_in_progress)
        self._checked(group_id, generation, member_id, instance_id)

    # -- sessions --------------------------------------------------------------------------

    def _start_sweeper(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while self.groups:
            await asyncio.sleep(SWEEP_S)
            self.expire()

    def expire(self) -> None:
        """Drop members whose session lapsed (not those waiting for a rebalance to
        complete: the rebalance's own deadline covers them) and unused member ids."""
        now = self._now()
        for group in list(self.groups.values()):
            lapsed = [m for m, lapses in group.pending.items() if now >= lapses]
            for member_id in lapsed:
                del group.pending[member_id]
            self.pending_count -= len(lapsed)
            gone = [m for m in group.members.values() if m.joining is None and now >= m.expires]
            for member in gone:
                self._remove(group, member)
            if gone:
                self._member_gone(group)
            elif lapsed:  # a rebalance may have waited for an id nobody used
                self._check_join(group)
            self._forget_if_unused(group)
