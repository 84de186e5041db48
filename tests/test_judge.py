"""The judge's pairs, parsing and bias measurements (ftlearn.judge), on known verdicts."""

from __future__ import annotations

import pytest

from ftlearn import judge
from ftlearn.world import load_split


def test_pairs_swap_exactly_one_fact():
    towns = load_split("towns")
    pairs = judge.judge_pairs(load_split("instructions_test"), towns, n=30)
    assert len(pairs) == 30
    for p in pairs:
        good, bad = p["good"].split(), p["bad"].split()
        assert len(good) == len(bad) and sum(g != b for g, b in zip(good, bad)) == 1, p


@pytest.mark.parametrize(("reply", "letter"), [("A", "A"), ("b.", "B"), ("Rewrite B keeps them", "B"),
                                               ("**A**", "A"), ("Both", None), ("", None), ("AB", None)])  # fmt: skip
def test_parse(reply, letter):
    assert judge.parse(reply) == letter


def test_verdict_measures_on_known_judges():
    fair = judge.Verdicts(["A", "A", "B", "A"], ["B", "B", "A", "B"], [])  # 3 of 4 pairs right both ways
    assert fair.right() == [1, 1, 0, 1, 1, 1, 0, 1] and fair.consistent() == 1.0 and fair.unparsed == 0
    assert fair.kappa() == pytest.approx(0.5)  # 75% right on balanced labels: (0.75 - 0.5) / 0.5
    always_a = judge.Verdicts(["A"] * 4, ["A"] * 4, [])
    assert always_a.consistent() == 0.0 and always_a.share_a() == 1.0 and always_a.kappa() == pytest.approx(0.0)
    lost = judge.Verdicts(["A", None], ["B", None], [])
    assert lost.unparsed == 2 and lost.right() == [1, 0, 1, 0], "an unparsed reply counts as wrong, and is counted"


def test_verdicts_run_a_model_in_both_orders():
    from ftlearn.models import load
    from ftlearn.profiles import get

    model, tok = load(get("tiny"), "instruct")  # not a judge: the mechanics only
    pairs = judge.judge_pairs(load_split("instructions_test"), load_split("towns"), n=3)
    v = judge.verdicts(model, tok, pairs, pad_bad=True)
    assert len(v.replies) == 6 and len(v.right()) == 6
    assert v.unparsed == sum(judge.parse(r) is None for r in v.replies)
