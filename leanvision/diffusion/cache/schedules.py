"""Which denoising steps run in full: uniform and DeepCache's non-uniform schedule.

>>> uniform_full_steps(7, 3)
[True, False, False, True, False, False, True]
>>> sum(nonuniform_full_steps(50, 5, center=0.3, power=1.4))
10
"""

from __future__ import annotations

import math

__all__ = ["nonuniform_full_steps", "uniform_full_steps"]


def uniform_full_steps(num_steps: int, interval: int) -> list[bool]:
    """Full steps every ``interval`` steps, starting at step 0."""
    return [step % interval == 0 for step in range(num_steps)]


def nonuniform_full_steps(num_steps: int, interval: int, center: float, power: float) -> list[bool]:
    """``ceil(num_steps / interval)`` full steps, dense around ``center`` (a fraction of the
    run) and sparse far from it, as in DeepCache's non-uniform 1:N strategy.

    Full-step positions are ``c + sign(u) |u|^power`` for ``u`` spaced evenly, so the gaps
    grow with the distance to ``c``. Step 0 is always full (it fills the cache). When
    rounding merges positions, ``power`` is lowered towards 1 (uniform) until they separate.
    """
    wanted = min(num_steps, math.ceil(num_steps / interval))
    last = num_steps - 1
    middle = center * last
    chosen: set[int] = {0}
    exponent = power
    while exponent >= 1.0:
        low, high = -(middle ** (1 / exponent)), (last - middle) ** (1 / exponent)
        count = max(wanted, 2)
        positions = [low + (high - low) * i / (count - 1) for i in range(count)]
        steps = {round(middle + math.copysign(abs(u) ** exponent, u)) for u in positions}
        chosen = {0} | {min(max(step, 0), last) for step in steps}
        if len(chosen) >= wanted:
            break
        exponent -= 0.02
    if len(chosen) < wanted:  # fill the widest gaps with uniform steps
        for step in range(0, num_steps, interval):
            chosen.add(step)
    ordered = sorted(chosen)
    while len(ordered) > wanted:  # drop the densest extras, never step 0
        gaps = [(ordered[i + 1] - ordered[i - 1], i) for i in range(1, len(ordered) - 1)]
        ordered.pop(min(gaps)[1] if gaps else len(ordered) - 1)
    full = set(ordered)
    return [step in full for step in range(num_steps)]
