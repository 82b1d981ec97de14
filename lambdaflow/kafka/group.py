"""When a consumer in a group may call itself idle.

A worker killed with -9 stays in its group until its session times out, and
keeps its partitions until then. A worker that stops "when caught up" must not
count only the partitions it happens to hold: it stops once it holds all of
the topic's partitions, or once its assignment has not changed for long
enough that the group must have settled (other members are alive and own the
rest).
"""

from __future__ import annotations

import time

from lambdaflow.core.errors import LambdaflowError


class NoPartitionAssigned(LambdaflowError):
    """`--until-idle` cannot tell it is caught up without a partition to be caught up on."""

    def __init__(self, topic: str, group: str, seconds: float) -> None:
        super().__init__(
            f"no partition of {topic} was assigned to this member of the group {group!r} in "
            f"{seconds:.0f} s: other members hold them all, or the broker has not finished "
            "the group's rebalance; try again when those members have stopped"
        )


class AssignmentClock:
    def __init__(self, session_timeout_ms: int) -> None:
        self.settle_seconds = 2 * session_timeout_ms / 1000
        self.changed_at = time.monotonic()

    def changed(self) -> None:
        self.changed_at = time.monotonic()

    def settled(self, owned: set[int], all_partitions: set[int] | None) -> bool:
        if all_partitions and owned >= all_partitions:
            return True
        return time.monotonic() - self.changed_at >= self.settle_seconds
