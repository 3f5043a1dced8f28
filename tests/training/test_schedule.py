"""Warm-up + cosine learning-rate schedule (a pure function), checked against hand-computed values."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from training.schedule import learning_rate


def test_warmup_rises_linearly_from_a_nonzero_rate_to_the_peak() -> None:
    rates = [learning_rate(s, 100, 1.0, 4, 0.0) for s in range(5)]
    assert rates[:4] == pytest.approx([1 / 5, 2 / 5, 3 / 5, 4 / 5])
    assert rates[4] == pytest.approx(1.0)  # first cosine step is the peak


def test_cosine_hits_half_way_and_floor() -> None:
    # 10 warm-up steps then 100 cosine steps from 1.0 to 0.1: mid-way is the mean of the two.
    assert learning_rate(60, 110, 1.0, 10, 0.1) == pytest.approx(0.55)
    assert learning_rate(110, 110, 1.0, 10, 0.1) == pytest.approx(0.1)
    assert learning_rate(500, 110, 1.0, 10, 0.1) == pytest.approx(0.1)


def test_no_warmup_starts_at_the_peak() -> None:
    assert learning_rate(0, 10, 3e-4, 0, 0.0) == pytest.approx(3e-4)
    assert learning_rate(5, 10, 3e-4, 0, 0.0) == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 0.5)))


@given(
    total=st.integers(2, 10_000),
    warmup_share=st.floats(0.0, 0.5),
    base=st.floats(1e-6, 1.0),
    floor_share=st.floats(0.0, 1.0),
)
def test_rate_stays_between_floor_and_peak_and_never_rises_after_warmup(
    total: int, warmup_share: float, base: float, floor_share: float
) -> None:
    warmup = int(total * warmup_share)
    floor = base * floor_share
    rates = [learning_rate(s, total, base, warmup, floor) for s in range(warmup, total + 2)]
    assert all(floor - 1e-12 <= r <= base + 1e-12 for r in rates)
    assert all(later <= earlier + 1e-12 for earlier, later in itertools.pairwise(rates))
