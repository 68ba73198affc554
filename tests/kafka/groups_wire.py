"""JoinGroup requests as the group tests and the fuzzer write them."""

from __future__ import annotations

import datetime

from kio.schema.join_group.v5 import request as join

SESSION = datetime.timedelta(milliseconds=1500)
REBALANCE = datetime.timedelta(seconds=5)


def join_body(group: str, member_id: str = "", instance: str | None = None,
              protocols: tuple[tuple[str, bytes], ...] = (("range", b"sub-a"),),
              session: datetime.timedelta = SESSION) -> join.JoinGroupRequest:
    return join.JoinGroupRequest(
        group_id=group, session_timeout=session, rebalance_timeout=REBALANCE,
        member_id=member_id, group_instance_id=instance, protocol_type="consumer",
        protocols=tuple(join.JoinGroupRequestProtocol(name=n, metadata=m) for n, m in protocols))
