"""Summing up a benchmark's samples the same way in every bench script: every sample,
then n, median and max, so a single slow run is visible and the median is what compares."""

from __future__ import annotations

import statistics


def summary(name: str, samples: list[float]) -> float:
    """Print `name`'s samples and return their median."""
    median = statistics.median(samples)
    print(f"{name}: n={len(samples)} median {median:.2f} s max {max(samples):.2f} s "
          f"({', '.join(f'{s:.2f}' for s in samples)})")
    return median
