"""What one Kafka connection's user may do: tidings' vhost permissions, in Kafka's terms.

A topic is one resource whatever its partitions (the permission is checked against the topic
name, which is partition 0's stream name): producing needs *write*, fetching, listing
offsets and reading or committing a group's offsets need *read*, creating and deleting
topics (and auto-creation by Metadata) need *configure*, and a topic is visible (Metadata,
DescribeConfigs) to a user with any of the three. A group is a resource of its own kind
whose name is matched against the user's *read* pattern, as Kafka asks READ on a group to
join it or commit for it (and *configure* to delete it, as for a queue). Refusals are
Kafka's error codes: TOPIC_AUTHORIZATION_FAILED and GROUP_AUTHORIZATION_FAILED.
"""

from __future__ import annotations

from kio.schema.errors import ErrorCode

from tidings.auth import Permission, UserStore
from tidings.errors import AccessRefusedError
from tidings.kafka.errors import GroupError, TopicError

__all__ = ["Access"]


class Access:
    """One connection's user on the listener's vhost (no users store: everything allowed)."""

    def __init__(self, users: UserStore | None, vhost: str, user: str | None = None) -> None:
        self.users, self.vhost, self.user = users, vhost, user

    def _allowed(self, permission: Permission, kind: str, name: str) -> bool:
        if self.users is None:
            return True
        if self.user is None:
            return False
        try:
            self.users.check(self.user, self.vhost, permission, kind, name)
        except AccessRefusedError:
            return False
        return True

    def may(self, permission: Permission, topic: str) -> bool:
        return self._allowed(permission, "topic", topic)

    def check_topic(self, permission: Permission, topic: str) -> None:
        if not self._allowed(permission, "topic", topic):
            raise TopicError(ErrorCode.topic_authorization_failed,
                             f"{permission} access to topic '{topic}' in vhost '{self.vhost}' "
                             f"refused for user '{self.user}'")

    def may_see(self, topic: str) -> bool:
        return any(self._allowed(p, "topic", topic) for p in ("read", "write", "configure"))

    def check_group(self, group: str) -> None:
        if not self._allowed("read", "group", group):
            raise GroupError(ErrorCode.group_authorization_failed,
                             f"read access to group '{group}' in vhost '{self.vhost}' refused "
                             f"for user '{self.user}'")

    def check_group_delete(self, group: str) -> None:
        """Deleting a group's offsets needs *configure* on its name, as deleting a queue."""
        if not self._allowed("configure", "group", group):
            raise GroupError(ErrorCode.group_authorization_failed,
                             f"configure access to group '{group}' in vhost '{self.vhost}' "
                             f"refused for user '{self.user}'")

    def may_see_group(self, group: str) -> bool:
        return self._allowed("read", "group", group)
