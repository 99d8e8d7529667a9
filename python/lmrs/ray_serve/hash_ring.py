"""A consistent-hash ring with virtual nodes: which replica owns a session.

Each member is placed at `vnodes` points on a 64-bit ring (blake2b of "member#i"); a key belongs to
the first point clockwise from its own hash. Adding or removing one of R members moves only the keys
whose arc changes hands, about 1/R of them, so sessions stay where their KV cache is while replicas
come and go. No Ray here: the ring is plain Python, unit-tested on its own.
"""

from __future__ import annotations

import bisect
import hashlib
from typing import Iterable

DEFAULT_VNODES = 160


def ring_hash(text: str) -> int:
    """A stable 64-bit hash (Python's hash() is salted per process, so it cannot be shared)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class HashRing:
    """Members (replica names) on a ring; owner(key) is stable under membership changes."""

    def __init__(self, members: Iterable[str] = (), vnodes: int = DEFAULT_VNODES):
        if vnodes < 1:
            raise ValueError("vnodes must be at least 1")
        self.vnodes = vnodes
        self._members: set[str] = set()
        self._points: list[int] = []  # sorted hashes of every virtual node
        self._owners: list[str] = []  # _owners[i] is the member at _points[i]
        for m in members:
            self.add(m)

    @property
    def members(self) -> frozenset[str]:
        return frozenset(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def add(self, member: str) -> None:
        if member in self._members:
            return
        self._members.add(member)
        for i in range(self.vnodes):
            h = ring_hash(f"{member}#{i}")
            at = bisect.bisect_left(self._points, h)
            self._points.insert(at, h)
            self._owners.insert(at, member)

    def remove(self, member: str) -> None:
        if member not in self._members:
            return
        self._members.discard(member)
        keep = [(p, o) for p, o in zip(self._points, self._owners) if o != member]
        self._points = [p for p, _ in keep]
        self._owners = [o for _, o in keep]

    def set_members(self, members: Iterable[str]) -> None:
        """Add the new members and remove the gone ones (the others keep their points)."""
        wanted = set(members)
        for m in self._members - wanted:
            self.remove(m)
        for m in sorted(wanted - self._members):
            self.add(m)

    def owner(self, key: str) -> str:
        if not self._points:
            raise LookupError("the hash ring has no members")
        at = bisect.bisect_right(self._points, ring_hash(key))
        return self._owners[at % len(self._owners)]
