"""The checks of 09_evaluation's exercises."""

from __future__ import annotations

from ftlearn.exercises import exercise


@exercise("09.1")
def _mcnemar_by_hand(answer, a: list, b: list) -> str:
    from ftlearn import stats

    truth = stats.mcnemar(a, b)
    assert isinstance(answer, float | int), "my_p is one number: the two-sided p-value"
    n = truth.only_a + truth.only_b
    if n and abs(answer - truth.p_value / 2) < 1e-9 and truth.p_value < 1:
        raise AssertionError("that is one tail: the test is two-sided, so double it (at most 1)")
    same = sum(x == y for x, y in zip(a, b))
    assert abs(answer - truth.p_value) < 1e-9, (
        f"not {answer:.4g}: count only the {n} questions the two disagree on ({same} agree and carry no "
        "information), then P(at most the smaller count | n, p = 1/2), twice"
    )
    return f"{truth}: {'a difference' if truth.p_value < 0.05 else 'no difference'} at the 5% level."


@exercise("09.2")
def _signal_or_seed(answer, reference: list, real) -> str:
    from ftlearn import stats

    hits = answer
    assert isinstance(hits, list) and len(hits) == len(reference) and set(hits) <= {0, 1}, (
        f"my_hits: the new run's exact-match hits on the {len(reference)} test questions (metrics.scorecard(...)['exact match'])"
    )
    assert hits != reference, "those are seed 0's own hits: train the run with the new learning rate and score it"
    assert real is not ... and isinstance(real, bool), "my_real: True if the difference is real at the 5% level, else False"
    test = stats.mcnemar(hits, reference)
    assert real == (test.p_value < 0.05), f"McNemar says p = {test.p_value:.3g}: {test}"
    d = stats.paired(hits, reference)
    return f"{d}; {test}. Compare the difference with the spread of section 3's seeds before you call it a better rate."
