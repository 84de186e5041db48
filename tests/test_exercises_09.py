"""09_evaluation's exercise checks: a right answer passes, each wrong one fails with its hint."""

import math

import pytest

from ftlearn import stats
from ftlearn.exercises import NotAttempted, check

A = [1] * 10 + [0] * 3 + [1] * 40 + [0] * 27  # 10 right only in a, 3 only in b
B = [0] * 10 + [1] * 3 + [1] * 40 + [0] * 27


def test_mcnemar_by_hand():
    p = 2 * sum(math.comb(13, i) for i in range(4)) / 2**13
    check("09.1", p, a=A, b=B)
    with pytest.raises(AssertionError, match="one tail"):
        check("09.1", p / 2, a=A, b=B)
    with pytest.raises(AssertionError, match="disagree on"):
        check("09.1", 0.5, a=A, b=B)
    with pytest.raises(NotAttempted):
        check("09.1", ..., a=A, b=B)


def test_signal_or_seed():
    real = stats.mcnemar(A, B).p_value < 0.05
    check("09.2", A, reference=B, real=real)
    with pytest.raises(AssertionError, match="McNemar says"):
        check("09.2", A, reference=B, real=not real)
    with pytest.raises(AssertionError, match="seed 0's own hits"):
        check("09.2", B, reference=B, real=False)
    with pytest.raises(AssertionError, match="my_real"):
        check("09.2", A, reference=B, real=...)
    with pytest.raises(AssertionError, match="exact-match hits"):
        check("09.2", A[:10], reference=B, real=real)
