"""The paired bootstrap behind every self-check that compares two runs."""

import math

import numpy as np
import pytest

from ftlearn import stats


def test_a_real_difference_clears_its_interval():
    rng = np.random.default_rng(1)
    a = (rng.random(300) < 0.8).astype(int)
    b = (rng.random(300) < 0.3).astype(int)
    d = stats.paired(a, b)
    assert d.low < d.diff < d.high and d.above(0.3) and not d.within(0.3)
    assert d.diff == pytest.approx(a.mean() - b.mean())


def test_noise_does_not():
    rng = np.random.default_rng(2)
    a = (rng.random(100) < 0.5).astype(int)
    b = a.copy()
    b[:3] = 1 - b[:3]  # three questions flipped: a few points of noise on 100 questions
    d = stats.paired(a, b)
    assert d.low < 0 < d.high and not d.above(0)
    assert stats.paired(a, a).within(1e-12)


def test_the_interval_narrows_with_more_questions():
    rng = np.random.default_rng(3)
    widths = []
    for n in (50, 800):
        a, b = (rng.random(n) < 0.6).astype(int), (rng.random(n) < 0.5).astype(int)
        d = stats.paired(a, b)
        widths.append(d.high - d.low)
    assert widths[1] < widths[0] / 2.5  # ~1/sqrt(n): 4x narrower for 16x the questions


def test_the_same_seed_gives_the_same_interval():
    a, b = [1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 0, 1]
    assert stats.paired(a, b) == stats.paired(a, b)


def test_perplexity_difference_is_a_ratio_of_sums():
    losses_a, losses_b, tokens = [4.0, 2.0, 6.0], [2.0, 1.0, 3.0], [4, 2, 6]
    d = stats.ratio_paired(losses_a, losses_b, tokens)
    assert d.a == pytest.approx(math.e) and d.b == pytest.approx(math.exp(0.5))
    assert (
        d.low == pytest.approx(d.diff) == pytest.approx(d.high)
    )  # every text has the same loss rate


def test_mismatched_lists_are_refused():
    with pytest.raises(ValueError, match="equal, non-empty"):
        stats.paired([1, 0], [1])
