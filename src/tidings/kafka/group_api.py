"""The group requests (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
ListGroups, DescribeGroups) as answers built from :class:`~tidings.kafka.groups.Coordinator`.

tidings is one node, so it is every group's coordinator. A request that waits (JoinGroup
until the rebalance completes, SyncGroup until the leader's assignment) is answered by a
coroutine; the rest at once. Errors become the response's error code, never a closed
connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from kio.schema.errors import ErrorCode

from tidings.kafka.errors import GroupError
from tidings.kafka.groups import Coordinator
from tidings.kafka.membership import JoinResult
from tidings.kafka.protocol import make, nested
from tidings.kafka.settings import KafkaSettings
from tidings.kafka.topics import NO_THROTTLE

__all__ = ["GroupRequests"]

#: May this connection use this group? (Raises GroupError when not.)
GroupCheck = Callable[[str], None]
T = TypeVar("T")


async def _answered(pending: Awaitable[T], answer: Callable[[T], Any],
                    refused: Callable[[ErrorCode], Any]) -> Any:
    """The response once a waiting JoinGroup or SyncGroup has its outcome."""
    try:
        return answer(await pending)
    except GroupError as e:
        return refused(e.error_code)


class GroupRequests:
    def __init__(self, coordinator: Coordinator, settings: KafkaSettings) -> None:
        self.coordinator, self.settings = coordinator, settings

    def find_coordinator(self, body: Any, schema: type, port: int, may_use: GroupCheck) -> Any:
        code, message = ErrorCode.none, None
        if body.key_type != 0:
            code, message = ErrorCode.coordinator_not_available, "transactions are not supported"
        else:
            try:
                may_use(body.key)
            except GroupError as e:
                code, message = e.error_code, str(e)
        found = code == ErrorCode.none
        s = self.settings
        return make(schema, throttle_time=NO_THROTTLE, error_code=code, error_message=message,
                    node_id=s.node_id if found else -1, host=s.host if found else "",
                    port=port if found else -1)

    def join(self, body: Any, schema: type, version: int, client_id: str, client_host: str,
             may_use: GroupCheck) -> Any:
        member_type = nested(schema, "JoinGroupResponseMember")

        def answer(result: JoinResult | None, code: ErrorCode, member_id: str = "") -> Any:
            members = () if result is None else tuple(
                make(member_type, member_id=m, group_instance_id=i, metadata=data)
                for m, i, data in result.members)
            return make(schema, throttle_time=NO_THROTTLE, error_code=code,
                        generation_id=-1 if result is None else result.generation,
                        protocol_name="" if result is None else result.protocol,
                        leader="" if result is None else result.leader,
                        member_id=member_id if result is None else result.member_id,
                        members=members)

        try:
            may_use(body.group_id)
            session_ms = int(body.session_timeout.total_seconds() * 1000)
            rebalance = getattr(body, "rebalance_timeout", None)
            rebalance_ms = -1 if rebalance is None else int(rebalance.total_seconds() * 1000)
            found = self.coordinator.join(
                body.group_id, body.member_id, getattr(body, "group_instance_id", None),
                client_id, client_host, session_ms, rebalance_ms, body.protocol_type,
                tuple((p.name, p.metadata) for p in body.protocols), version)
        except GroupError as e:
            member_id = str(e) if e.error_code == ErrorCode.member_id_required else body.member_id
            return answer(None, e.error_code, member_id)
        if isinstance(found, JoinResult):
            return answer(found, ErrorCode.none)
        return _answered(found, lambda result: answer(result, ErrorCode.none),
                         lambda code: answer(None, code, body.member_id))

    def sync(self, body: Any, schema: type, may_use: GroupCheck) -> Any:
        def answer(assignment: bytes, code: ErrorCode) -> Any:
            return make(schema, throttle_time=NO_THROTTLE, error_code=code,
                        assignment=assignment, protocol_type=None, protocol_name=None)
        try:
            may_use(body.group_id)
            found = self.coordinator.sync(
                body.group_id, body.generation_id, body.member_id,
                getattr(body, "group_instance_id", None),
                {a.member_id: a.assignment for a in body.assignments})
        except GroupError as e:
            return answer(b"", e.error_code)
        if isinstance(found, bytes):
            return answer(found, ErrorCode.none)
        return _answered(found, lambda assignment: answer(assignment, ErrorCode.none),
                         lambda code: answer(b"", code))

    def heartbeat(self, body: Any, schema: type, may_use: GroupCheck) -> Any:
        code = ErrorCode.none
        try:
            may_use(body.group_id)
            self.coordinator.heartbeat(body.group_id, body.generation_id, body.member_id,
                                       getattr(body, "group_instance_id", None))
        except GroupError as e:
            code = e.error_code
        return make(schema, throttle_time=NO_THROTTLE, error_code=code)

    def leave(self, body: Any, schema: type, may_use: GroupCheck) -> Any:
        try:
            may_use(body.group_id)
        except GroupError as e:
            return make(schema, throttle_time=NO_THROTTLE, error_code=e.error_code, members=())
        leaving = [(m.member_id, m.group_instance_id) for m in body.members] \
            if hasattr(body, "members") else [(body.member_id, None)]
        response_type = nested(schema, "MemberResponse") if hasattr(body, "members") else None
        rows, top = [], ErrorCode.none
        for member_id, instance_id in leaving[:self.settings.group_max_size]:
            code = ErrorCode.none
            try:
                self.coordinator.leave(body.group_id, member_id, instance_id)
            except GroupError as e:
                code = e.error_code
            if response_type is None:
                top = code
            else:
                rows.append(make(response_type, member_id=member_id,
                                 group_instance_id=instance_id, error_code=code))
        return make(schema, throttle_time=NO_THROTTLE, error_code=top, members=tuple(rows))

    def delete_groups(self, body: Any, schema: type, may_delete: GroupCheck,
                      forget: Callable[[str], bool]) -> Any:
        """DeleteGroups: a group without members loses its committed offsets (its named
        readers); one with members is NON_EMPTY_GROUP, one with neither GROUP_ID_NOT_FOUND."""
        result_type = nested(schema, "DeletableGroupResult")
        results = []
        for group_id in body.groups_names[:self.settings.max_topics_per_request]:
            code = ErrorCode.none
            try:
                may_delete(group_id)
                group = self.coordinator.groups.get(group_id)
                if group is not None and (group.members or group.pending):
                    code = ErrorCode.non_empty_group
                elif not forget(group_id):
                    code = ErrorCode.group_id_not_found
            except GroupError as e:
                code = e.error_code
            results.append(make(result_type, group_id=group_id, error_code=code))
        return make(schema, throttle_time=NO_THROTTLE, results=tuple(results))

    def list_groups(self, body: Any, schema: type, may_see: Callable[[str], bool],
                    committed: set[str]) -> Any:
        """Groups with members, and those with only committed offsets (Empty, as Kafka lists
        them): every named reader of a topic's streams is such a group."""
        listed = nested(schema, "ListedGroup")
        live = self.coordinator.groups
        rows = [(g.group_id, g.protocol_type or "", g.state) for g in live.values()]
        rows += [(name, "consumer", "Empty") for name in sorted(committed - set(live))]
        wanted = set(getattr(body, "states_filter", ()) or ())  # (v4: by state)
        groups = tuple(make(listed, group_id=name, protocol_type=kind, group_state=state)
                       for name, kind, state in rows
                       if may_see(name) and (not wanted or state in wanted))
        return make(schema, throttle_time=NO_THROTTLE, error_code=ErrorCode.none,
                    groups=groups)

    def describe_groups(self, body: Any, schema: type, may_use: GroupCheck,
                        committed: Callable[[], set[str]]) -> Any:
        described = nested(schema, "DescribedGroup")
        member_type = nested(schema, "DescribedGroupMember")
        out = []
        offsets_held: set[str] | None = None
        for group_id in body.groups[:self.settings.max_topics_per_request]:
            try:
                may_use(group_id)
            except GroupError as e:
                out.append(make(described, error_code=e.error_code, group_id=group_id,
                                group_state="", protocol_type="", protocol_data="",
                                members=()))
                continue
            group = self.coordinator.groups.get(group_id)
            if group is None:  # Empty when it has offsets, else unknown: Dead, as Kafka says
                if offsets_held is None:
                    offsets_held = committed()
                empty = group_id in offsets_held
                out.append(make(described, error_code=ErrorCode.none, group_id=group_id,
                                group_state="Empty" if empty else "Dead",
                                protocol_type="consumer" if empty else "", protocol_data="",
                                members=()))
                continue
            members = tuple(
                make(member_type, member_id=m.member_id, group_instance_id=m.instance_id,
                     client_id=m.client_id, client_host=m.client_host,
                     member_metadata=dict(m.protocols).get(group.protocol or "", b""),
                     member_assignment=m.assignment)
                for m in group.members.values())
            out.append(make(described, error_code=ErrorCode.none, group_id=group_id,
                            group_state=group.state, protocol_type=group.protocol_type or "",
                            protocol_data=group.protocol or "", members=members))
        return make(schema, throttle_time=NO_THROTTLE, groups=tuple(out))
