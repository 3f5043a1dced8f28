"""Learning-rate schedule: linear warm-up, then cosine decay to a floor (a pure function of the step)."""

from __future__ import annotations

import math

__all__ = ["learning_rate"]


def learning_rate(step: float, total_steps: float, base_lr: float, warmup_steps: float, min_lr: float) -> float:
    """Learning rate for optimizer step ``step`` (0-based) of ``total_steps``.

    Fractional steps are allowed, so a time-budgeted run can ask for the rate at the fraction of its budget it
    has used. Past ``total_steps`` the rate stays at ``min_lr``.

    Args:
        step: Optimizer steps taken so far.
        total_steps: Steps in the whole run (warm-up included).
        base_lr: Peak rate, reached when warm-up ends.
        warmup_steps: Length of the linear warm-up; 0 starts at the peak.
        min_lr: Rate at the end of the cosine.

    Returns:
        The learning rate.
    """
    # 1) linear warm-up: start at base_lr / (warmup + 1) rather than 0 so the first step already learns
    #    (the reference scheduler divided by the wrong count and stayed near zero for its whole warm-up).
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    # 2) after the end of the schedule, hold the floor.
    if step >= total_steps:
        return min_lr
    # 3) in between, cosine from base_lr down to min_lr.
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1e-12)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + coeff * (base_lr - min_lr)
