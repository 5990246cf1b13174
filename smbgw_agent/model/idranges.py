"""Ranges of uids or gids, as idmap settings and id maps name them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class IdRange:
    """`low` to `high`, both included, written as smb.conf writes it: ``low-high``."""

    low: int
    high: int

    @property
    def size(self) -> int:
        return self.high - self.low + 1

    def overlaps(self, other: IdRange) -> bool:
        return self.low <= other.high and other.low <= self.high

    def __str__(self) -> str:
        return f"{self.low}-{self.high}"


def merge(ranges: Iterable[IdRange]) -> list[IdRange]:
    """The same ids as fewest ranges, sorted: overlapping and adjacent ones joined."""
    merged: list[IdRange] = []
    for item in sorted(ranges):
        if merged and item.low <= merged[-1].high + 1:
            merged[-1] = IdRange(merged[-1].low, max(merged[-1].high, item.high))
        else:
            merged.append(item)
    return merged
