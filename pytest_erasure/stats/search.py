"""The smallest sample size with a property, found by doubling then bisection.

Why one helper: the gate's floor (`crr.smallest_passing_n`: the fewest images at which 0 hits
pass) and the plan's power (`power.samples_needed`: the fewest at which a model at half its
threshold passes with 80%) ask the same question of a property that holds from some n on, and
two copies of the search had drifted apart at their edges (where the limit is, whether the start
itself is a candidate). Doubling keeps the number of evaluations logarithmic in the answer,
which matters when each evaluation is an exact enumeration.
"""

from __future__ import annotations

from collections.abc import Callable


def first_true(ok: Callable[[int], bool], start: int, limit: int) -> int | None:
    """The smallest n in [start, limit] with ok(n), for an `ok` that holds from some n on
    (a discrete rule's pass probability is a sawtooth in n: then the first n of the doubling
    step where it holds); None when ok(n) is False at every n tried up to `limit`. Tries start,
    2 start, 4 start, ... (the last try is `limit` itself), then bisects between the last
    failing try and the first passing one."""
    hi = start
    while not ok(hi):
        if hi >= limit:
            return None
        hi = min(limit, hi * 2)
    lo = max(start - 1, hi // 2)  # ok(lo) is False, or lo is below start
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi
