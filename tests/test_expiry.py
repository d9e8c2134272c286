"""Least-recently-active expiry: plain calls with explicit times."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from pollsession.protocol.expiry import ExpiryQueue


def test_expires_in_least_recently_active_order() -> None:
    queue: ExpiryQueue[str] = ExpiryQueue(timeout=10)
    queue.touch("a", 0)
    queue.touch("b", 1)
    queue.touch("c", 2)
    queue.touch("a", 3)  # activity moves "a" to the young end
    assert queue.pop_expired(11.5) == ["b"]
    assert queue.pop_expired(13) == ["c", "a"]
    assert len(queue) == 0


def test_discarded_keys_never_expire() -> None:
    queue: ExpiryQueue[str] = ExpiryQueue(timeout=1)
    queue.touch("held", 0)
    queue.discard("held")
    assert queue.pop_expired(100) == []


class CountingDict(OrderedDict[Any, Any]):
    """An OrderedDict that counts how many entries expiry looks at."""

    looked = 0

    def items(self):  # type: ignore[no-untyped-def, override]
        for item in super().items():
            CountingDict.looked += 1
            yield item


def test_cost_is_proportional_to_what_expires() -> None:
    queue: ExpiryQueue[int] = ExpiryQueue(timeout=10)
    queue._last_active = CountingDict()
    for key in range(100_000):
        queue.touch(key, 5 if key < 3 else 50)
    CountingDict.looked = 0
    assert queue.pop_expired(20) == [0, 1, 2]
    assert CountingDict.looked <= 4  # the three expired ones and the first survivor
